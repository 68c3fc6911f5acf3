//! `polld` with the README's example backend and sink registered on top of its own:
//! the guides' registration lines, built and run by `tests/guides.rs`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut plugins = polld::plugins();
    plugins.backends.register(polld_changelog::Changelog);
    plugins.sinks.register(polld_lines::Lines);
    polld::main(plugins)
}
