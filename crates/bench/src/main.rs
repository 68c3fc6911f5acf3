//! `polld-bench`: see the crate documentation, or `polld-bench --help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let options = polld_bench::Options::parse();
    match polld_bench::run(&options) {
        Ok(report) => {
            println!("{}", report.markdown());
            let problems = report.problems();
            for problem in &problems {
                eprintln!("polld-bench: PROBLEM: {problem}");
            }
            if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("polld-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
