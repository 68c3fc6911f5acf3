//! The backends this binary knows, by `type` name. (The seam itself, `Backend` and
//! `Poller`, is the `polld-backend` crate.)

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use polld_backend::{Backend, Poller, PollerContext};
use serde::Deserialize;

use crate::sink::KeysError;

/// A backend with its config type erased, so the registry can hold any of them.
trait ErasedBackend: Send + Sync {
    fn check(
        &self,
        context: PollerContext,
        keys: toml::de::ValueDeserializer<'_>,
    ) -> Result<(), KeysError>;
    fn build(&self, context: PollerContext, keys: &toml::Table) -> Result<Arc<dyn Poller>, String>;
}

impl<B: Backend> ErasedBackend for B {
    fn check(
        &self,
        context: PollerContext,
        keys: toml::de::ValueDeserializer<'_>,
    ) -> Result<(), KeysError> {
        let config = B::Config::deserialize(keys).map_err(KeysError::Keys)?;
        Backend::build(self, context, config)
            .map(drop)
            .map_err(KeysError::Invalid)
    }

    fn build(&self, context: PollerContext, keys: &toml::Table) -> Result<Arc<dyn Poller>, String> {
        let config =
            B::Config::deserialize(toml::Value::Table(keys.clone())).map_err(|e| e.to_string())?;
        Backend::build(self, context, config).map_err(|refusal| refusal.message)
    }
}

/// The backends this binary knows, by `type` name. The binary fills it, one line each.
#[derive(Default, Clone)]
pub struct BackendRegistry {
    backends: BTreeMap<&'static str, Arc<dyn ErasedBackend>>,
}

impl fmt::Debug for BackendRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.backends.keys()).finish()
    }
}

impl BackendRegistry {
    /// Adds a backend under its [`Backend::TYPE`].
    pub fn register<B: Backend>(&mut self, backend: B) -> &mut Self {
        self.backends.insert(B::TYPE, Arc::new(backend));
        self
    }

    /// The registered type names, sorted: for error messages.
    pub fn types(&self) -> Vec<&'static str> {
        self.backends.keys().copied().collect()
    }

    /// The registered name for `type_name`, if there is such a backend.
    pub(crate) fn name_of(&self, type_name: &str) -> Option<&'static str> {
        self.backends
            .get_key_value(type_name)
            .map(|(name, _)| *name)
    }

    /// Validates a poller's own keys by building it (see [`Backend::build`]).
    pub(crate) fn check(
        &self,
        type_name: &str,
        context: PollerContext,
        keys: toml::de::ValueDeserializer<'_>,
    ) -> Option<Result<(), KeysError>> {
        Some(self.backends.get(type_name)?.check(context, keys))
    }

    /// Builds the poller a loaded config describes.
    pub fn build(&self, poller: &crate::config::PollerConfig) -> Result<Arc<dyn Poller>, String> {
        let backend = self
            .backends
            .get(poller.vcs)
            .ok_or_else(|| format!("no backend `{}` in this binary", poller.vcs))?;
        backend.build(poller.context(), &poller.keys)
    }
}
