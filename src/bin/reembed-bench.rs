//! `reembed-bench`: the benchmark suite (issue 5). Each benchmark measures a figure of the
//! service against a baseline measured in the same run, and prints one Markdown section;
//! `bench/run.sh` wraps the output with the machine and the date into `bench/RESULTS.md`.
//!
//! `--smoke` runs every benchmark at tiny sizes in seconds, so CI keeps the code compiling and
//! running; it asserts no timing. The benchmark code lives in `src/bench/`, outside the
//! library, and uses only the library's public API.

#[path = "../bench/mod.rs"]
mod bench;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match bench::Options::parse(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}\n\n{}", bench::USAGE);
            return ExitCode::from(2);
        }
    };
    // The in-process servers log their warnings and errors, so a failed request says why.
    reembed::telemetry::init_with("warn");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("benchmark failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}
