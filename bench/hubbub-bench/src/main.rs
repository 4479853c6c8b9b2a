//! The `hubbub-bench` command: parses arguments, runs one scenario, prints its summary.
//! Exit status: 0 when the scenario ran (its errors are in the report), 1 when it could
//! not run, 2 for bad arguments.

use clap::Parser;
use hubbub_bench::{run, Cli};

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hubbub-bench: could not start the runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(report) => print!("{}", report.summary),
        Err(e) => {
            eprintln!("hubbub-bench: {e}");
            std::process::exit(1);
        }
    }
}
