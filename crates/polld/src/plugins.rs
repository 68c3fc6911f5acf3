//! Every plugin this project ships, registered one line each. A new backend, sink or
//! store is a crate of its own (a dependency in this crate's Cargo.toml) and one line
//! here.

use polld_core::Plugins;

/// The backends, sinks and stores of the `polld` binary.
pub fn plugins() -> Plugins {
    let mut plugins = Plugins::default();
    plugins.backends.register(polld_git::GitBackend::new());
    plugins.backends.register(polld_svn::SvnBackend::new());
    plugins.backends.register(polld_hg::HgBackend::new());
    plugins.sinks.register(polld_sinks::Stdout);
    plugins.sinks.register(polld_sinks::Jsonl);
    plugins.sinks.register(polld_sinks::Buildbot);
    plugins.sinks.register(polld_sinks::Webhook);
    plugins.sinks.register(polld_sinks::CloudEvents);
    plugins
        .stores
        .register("sqlite", polld_store_sqlite::Sqlite);
    plugins
        .stores
        .register("postgres", polld_store_postgres::Postgres);
    plugins
}
