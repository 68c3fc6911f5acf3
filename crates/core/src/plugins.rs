//! The plugins a binary is built with: the backends, sinks and stores its config may
//! name. The binary fills each registry, one line per plugin.

use crate::backend::BackendRegistry;
use crate::sink::SinkRegistry;
use crate::store::StoreRegistry;

#[derive(Debug, Default, Clone)]
pub struct Plugins {
    pub backends: BackendRegistry,
    pub sinks: SinkRegistry,
    pub stores: StoreRegistry,
}
