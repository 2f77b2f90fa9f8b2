//! Drives concurrent requests through `AuthLayer` over a hyper client and
//! prints what happened: requests, statuses, latency percentiles and their
//! distribution, grants, 401 replays.
//!
//! ```text
//! cargo run --release --example load                 # embedded server, 12 s
//! cargo run --release --example load -- --json --requests 20000
//! RUST_LOG=daxium_auth=debug cargo run --release --example load -- --duration 5
//! cargo run --release --example load -- --replicas 8 --store redis://127.0.0.1:6379/
//! cargo run --release --example load -- --replicas 4 --store file:///tmp/daxium-tokens
//! cargo run --release --example load -- --token-url https://api.daxium-air.com/oauth/v2/token \
//!     --api-url https://api.daxium-air.com/api/v1/structures --requests 100 --concurrency 4
//! ```
//!
//! Without a token URL it starts the embedded Daxium-compatible server on
//! 127.0.0.1 with 4-second tokens and rotation on, and revokes every token
//! half-way through, so that one run shows background refreshes, a new login
//! and the 401 replay. With `--replicas N`, N layers (each its own token
//! cache, as N processes would have) share the login through `--store`, and
//! the summary counts the fleet's grants. Ctrl-C stops the load, closes the
//! replicas cleanly and prints the summary of what ran. Run with `--help` for
//! the options.

use std::process::ExitCode;

use clap::Parser;

#[path = "load/args.rs"]
mod args;
#[path = "load/logging.rs"]
mod logging;
#[path = "load/run.rs"]
mod run;
#[path = "load/summary.rs"]
mod summary;

use args::Args;

fn main() -> ExitCode {
    let argv: Vec<_> = std::env::args_os().collect();
    let args = match Args::try_parse_from(&argv) {
        Ok(args) => args,
        // `--help`: clap prints it on stdout.
        Err(err) if !err.use_stderr() => {
            // Nothing to do when stdout is closed.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            let text = args::refusal(&err);
            if args::wants_json(&argv) {
                println!(
                    "{}",
                    summary::error_json("usage", args::refusal_line(&text))
                );
            }
            eprint!("{text}");
            return ExitCode::from(2);
        }
    };
    let json = args.json;
    let mut config = args.into_config();
    config.progress = run::progress_bar(config.stop);
    if let Err(msg) = logging::init(&config.progress) {
        eprintln!("warning: {msg}; no tracing output");
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let message = format!("could not start the tokio runtime: {err}");
            if json {
                println!("{}", summary::error_json("runtime", &message));
            }
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(config)) {
        Ok(done) => {
            if json {
                println!("{}", done.to_json());
            } else {
                print!("{}", done.table());
            }
            if let Some(reason) = &done.aborted {
                eprintln!("error: the run stopped early: {reason}");
            }
            if done.all_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            let message = err.to_string();
            if json {
                println!("{}", summary::error_json(err.kind(), &message));
            }
            eprintln!("error: {message}");
            ExitCode::from(err.exit_status())
        }
    }
}
