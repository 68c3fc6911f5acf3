//! `polld-bench`: see the crate documentation, or `polld-bench --help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let options = polld_bench::Options::parse();
    let result = if options.replicas {
        polld_bench::replicas(&options).map(|report| (report.markdown(), report.problems()))
    } else if options.hooks {
        polld_bench::hooks(&options).map(|report| (report.markdown(), report.problems()))
    } else if options.soak_minutes > 0 {
        polld_bench::soak(&options).map(|report| (report.markdown(), report.problems()))
    } else {
        polld_bench::run(&options).map(|report| (report.markdown(), report.problems()))
    };
    match result {
        Ok((markdown, problems)) => {
            println!("{markdown}");
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
