//! Drives concurrent requests through `AuthLayer` over a hyper client and
//! prints what happened: requests, statuses, latency, grants, 401 replays.
//!
//! ```text
//! cargo run --release --example load                 # embedded server, 12 s
//! cargo run --release --example load -- --json --requests 20000
//! cargo run --release --example load -- --token-url https://api.daxium-air.com/oauth/v2/token \
//!     --api-url https://api.daxium-air.com/api/v1/structures --requests 100 --concurrency 4
//! ```
//!
//! Without a token URL it starts the embedded Daxium-compatible server on
//! 127.0.0.1 with 4-second tokens and rotation on, and revokes every token
//! half-way through, so that one run shows background refreshes, a new login
//! and the 401 replay. Run with `--help` for the options.

use std::{process::ExitCode, time::Duration};

use secrecy::SecretString;

#[path = "load/run.rs"]
mod run;

use run::{Config, Fatal, Stop};

const USAGE: &str = "\
Load test for daxium-auth: concurrent GETs through AuthLayer over a hyper client.

Usage: load [OPTIONS]

Options:
  --token-url URL     token endpoint (env DAXIUM_TOKEN_URL); absent: the embedded
                      Daxium-compatible server on 127.0.0.1 (4 s tokens, rotation on,
                      every token revoked half-way through)
  --api-url URL       the protected URL to GET (env DAXIUM_API_URL); required with
                      --token-url
  --client-id ID      (env DAXIUM_CLIENT_ID)
  --client-secret S   (env DAXIUM_CLIENT_SECRET)
  --username U        (env DAXIUM_USERNAME)
  --password P        (env DAXIUM_PASSWORD)
                      required with --token-url; with the embedded server they
                      replace its login (a wrong one shows the error path)
  --concurrency N     requests in flight (default 64)
  --requests N        stop after N requests
  --duration SECS     stop after SECS seconds (default 12)
  --json              print one JSON object at the end, nothing else on stdout
  -h, --help          print this help

Secrets are never printed. Exit status: 0 when every request got a 2xx, 1 when
the run could not start or some request failed, 2 for a bad command line.
";

enum Parsed {
    Run { config: Config, json: bool },
    Help,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut config = Config {
        token_url: env("DAXIUM_TOKEN_URL"),
        api_url: env("DAXIUM_API_URL"),
        client_id: env("DAXIUM_CLIENT_ID"),
        client_secret: env("DAXIUM_CLIENT_SECRET").map(SecretString::from),
        username: env("DAXIUM_USERNAME"),
        password: env("DAXIUM_PASSWORD").map(SecretString::from),
        progress: true,
        ..Config::default()
    };
    let mut json = false;
    let (mut requests, mut duration) = (None, None);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // `--flag=value` and `--flag value` both work.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--json" => json = true,
            "--token-url" => config.token_url = Some(value()?),
            "--api-url" => config.api_url = Some(value()?),
            "--client-id" => config.client_id = Some(value()?),
            "--client-secret" => config.client_secret = Some(SecretString::from(value()?)),
            "--username" => config.username = Some(value()?),
            "--password" => config.password = Some(SecretString::from(value()?)),
            "--concurrency" => config.concurrency = number(&flag, &value()?)?,
            "--requests" => requests = Some(number(&flag, &value()?)?),
            "--duration" => {
                let text = value()?;
                let secs: f64 = text
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s < 1e7)
                    .ok_or_else(|| format!("--duration wants seconds above zero, not '{text}'"))?;
                duration = Some(Duration::from_secs_f64(secs));
            }
            // The value is not echoed: it could be a secret given to the wrong flag.
            other => return Err(format!("unknown option {other} (see --help)")),
        }
    }
    config.stop = match (requests, duration) {
        (Some(_), Some(_)) => return Err("give --requests or --duration, not both".into()),
        (Some(n), None) => Stop::Requests(n),
        (None, Some(d)) => Stop::Duration(d),
        (None, None) => config.stop,
    };
    Ok(Parsed::Run { config, json })
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag} wants a whole number, not '{text}'"))
}

fn main() -> ExitCode {
    let (config, json) = match parse(std::env::args().skip(1)) {
        Ok(Parsed::Run { config, json }) => (config, json),
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: could not start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(config)) {
        Ok(summary) => {
            if json {
                println!("{}", summary.to_json());
            } else {
                print!("{}", summary.table());
            }
            if let Some(reason) = &summary.aborted {
                eprintln!("error: the run stopped early: {reason}");
            }
            if summary.all_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err @ Fatal::Usage(_)) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
