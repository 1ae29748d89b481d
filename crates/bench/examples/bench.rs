//! The bench command line without the `banter` binary: `bench <scenario> …` takes the same arguments as
//! `banter bench <scenario> …`. Give the server binary with `--server-bin` or `BANTER_BIN` when no target
//! is given (the default would be this example itself).

use clap::Parser;

#[derive(Parser)]
#[command(name = "bench")]
struct Cli {
    #[command(subcommand)]
    scenario: bench::cli::ScenarioCmd,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match bench::cli::run(bench::cli::BenchArgs {
        scenario: cli.scenario,
    }) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
