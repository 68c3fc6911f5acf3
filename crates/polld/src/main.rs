//! `polld`: the command, with every plugin this project ships (see `plugins.rs`).

use std::process::ExitCode;

fn main() -> ExitCode {
    polld::main(polld::plugins())
}
