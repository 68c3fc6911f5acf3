//! Log output: stderr only (stdout is for change records), filtered by `$POLLD_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub fn init(format: Format) {
    let (filter, bad_filter) = match std::env::var("POLLD_LOG") {
        Ok(spec) => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(error) => (EnvFilter::new("info"), Some((spec, error))),
        },
        Err(_) => (EnvFilter::new("info"), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        Format::Text => builder.init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
    if let Some((spec, error)) = bad_filter {
        tracing::warn!(POLLD_LOG = %spec, %error, "ignoring an invalid log filter; logging at info");
    }
}
