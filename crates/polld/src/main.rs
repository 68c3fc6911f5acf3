//! `polld`: the command with every plugin this project ships. A backend, a sink or a
//! store is registered here, one line each.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut plugins = polld_core::Plugins::default();
    plugins.backends.register(polld_git::GitBackend::new());
    plugins.backends.register(polld_svn::SvnBackend::new());
    plugins.backends.register(polld_hg::HgBackend::new());
    plugins.sinks.register(polld_sinks::Stdout);
    plugins.sinks.register(polld_sinks::Jsonl);
    plugins.sinks.register(polld_sinks::Buildbot);
    plugins.sinks.register(polld_sinks::Webhook);
    plugins
        .stores
        .register("sqlite", polld_store_sqlite::Sqlite);
    polld::main(plugins)
}
