//! The `load` example's command line: its flags and `DAXIUM_*` environment
//! variables (clap), grouped as the help shows them, and turned into a run
//! [`Config`]. Secrets are read into `SecretString`, never shown in the help,
//! and never quoted by an error about the command line.

use std::{ffi::OsString, time::Duration};

use clap::{
    Parser,
    error::{ContextKind, ContextValue, ErrorKind},
};
use secrecy::SecretString;

use crate::run::{Config, Stop};

/// The most requests in flight: each is a task and a connection.
const MAX_CONCURRENCY: i64 = 100_000;
/// The most replicas in one run: each is a layer with its own clients.
const MAX_REPLICAS: i64 = 1_000;
/// The longest run `--duration` takes, in seconds (about 115 days).
const MAX_DURATION_SECS: f64 = 1e7;
/// How long a run lasts without `--requests` or `--duration`.
pub(crate) const DEFAULT_DURATION: Duration = Duration::from_secs(12);

const ABOUT: &str =
    "Load test for daxium-auth: concurrent GETs through AuthLayer over a hyper client.";

const AFTER_HELP: &str = "\
Without --token-url, load starts the embedded Daxium-compatible server on 127.0.0.1
(4 s tokens, rotation on) and revokes every token half-way through, so that one run
shows background refreshes, a new login and the 401 replay.

--replicas N runs N layers in this process, each with its own token cache and clients as
N processes would have, sharing the login through --store (redis://HOST:PORT/[DB],
redis+cluster://HOST:PORT,HOST:PORT/ for a Redis Cluster,
redis+sentinel://HOST:PORT,HOST:PORT/MASTER[/DB] for a Sentinel-watched primary, each
with rediss… for TLS; file:///ABSOLUTE/DIR, or memory:, the default for more than one
replica); the summary counts the grants of the whole fleet.

RUST_LOG (e.g. RUST_LOG=daxium_auth=debug) shows the layer's spans and events on
stderr, above the progress bar.

Secrets are never printed. Exit status: 0 when every request got a 2xx, 1 when the run
could not start or some request failed, 2 for a bad command line.";

/// The command line of `load`.
#[derive(Debug, Parser)]
#[command(name = "load", about = ABOUT, after_help = AFTER_HELP)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    #[command(flatten)]
    pub(crate) login: LoginArgs,
    #[command(flatten)]
    pub(crate) load: LoadArgs,
    #[command(flatten)]
    pub(crate) fleet: FleetArgs,
    /// Print one JSON object at the end, nothing else on stdout (a run that
    /// cannot start prints {"error": {"kind", "message"}})
    #[arg(long, help_heading = "Output")]
    pub(crate) json: bool,
}

/// Where the requests go.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Target")]
pub(crate) struct TargetArgs {
    /// The token endpoint; without it, the embedded server
    #[arg(
        long,
        env = "DAXIUM_TOKEN_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub(crate) token_url: Option<String>,
    /// The protected URL to GET; required with --token-url
    #[arg(
        long,
        env = "DAXIUM_API_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub(crate) api_url: Option<String>,
}

/// The login: required with `--token-url`; with the embedded server, what is
/// given replaces its own (a wrong one shows the error path).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Login (required with --token-url; replaces the embedded server's)")]
pub(crate) struct LoginArgs {
    /// OAuth2 client id
    #[arg(
        long,
        env = "DAXIUM_CLIENT_ID",
        value_name = "ID",
        hide_env_values = true
    )]
    pub(crate) client_id: Option<String>,
    /// OAuth2 client secret
    #[arg(
        long,
        env = "DAXIUM_CLIENT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub(crate) client_secret: Option<SecretString>,
    /// Account name
    #[arg(
        long,
        env = "DAXIUM_USERNAME",
        value_name = "USER",
        hide_env_values = true
    )]
    pub(crate) username: Option<String>,
    /// Account password
    #[arg(
        long,
        env = "DAXIUM_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub(crate) password: Option<SecretString>,
}

/// How much load, and for how long.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Load")]
pub(crate) struct LoadArgs {
    /// Requests in flight
    #[arg(
        long,
        value_name = "N",
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..=MAX_CONCURRENCY),
        allow_negative_numbers = true
    )]
    pub(crate) concurrency: u32,
    /// Stop after N requests
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..),
        conflicts_with = "duration",
        allow_negative_numbers = true
    )]
    pub(crate) requests: Option<u64>,
    /// Stop after SECS seconds (fractions allowed) [default: 12]
    #[arg(
        long,
        value_name = "SECS",
        value_parser = seconds,
        allow_negative_numbers = true
    )]
    pub(crate) duration: Option<Duration>,
}

/// A fleet sharing one login.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Fleet")]
pub(crate) struct FleetArgs {
    /// Share the login through this token store: redis://[USER:PASSWORD@]HOST[:PORT][/DB],
    /// redis+cluster://[USER:PASSWORD@]HOST:PORT,HOST:PORT/,
    /// redis+sentinel://[USER:PASSWORD@]HOST:PORT,HOST:PORT/MASTER[/DB], rediss… (TLS),
    /// file:///ABSOLUTE/DIR, memory:
    #[arg(long, env = "DAXIUM_STORE", value_name = "URL", hide_env_values = true)]
    pub(crate) store: Option<SecretString>,
    /// Independent layers in this process (each its own token cache, as that
    /// many processes would be), sharing the store; the concurrency is split
    /// between them
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=MAX_REPLICAS),
        allow_negative_numbers = true
    )]
    pub(crate) replicas: u32,
}

fn seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs > 0.0 && *secs <= MAX_DURATION_SECS)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("seconds above zero and at most {MAX_DURATION_SECS:e} wanted"))
}

impl Args {
    /// The run these arguments ask for, without a progress bar.
    pub(crate) fn into_config(self) -> Config {
        let stop = match (self.load.requests, self.load.duration) {
            (Some(n), _) => Stop::Requests(n),
            (None, Some(d)) => Stop::Duration(d),
            (None, None) => Stop::Duration(DEFAULT_DURATION),
        };
        Config {
            token_url: self.target.token_url,
            api_url: self.target.api_url,
            client_id: self.login.client_id,
            client_secret: self.login.client_secret,
            username: self.login.username,
            password: self.login.password,
            concurrency: self.load.concurrency as usize,
            stop,
            store: self.fleet.store,
            replicas: self.fleet.replicas as usize,
            ..Config::default()
        }
    }
}

/// Whether a command line that clap refused asked for `--json`.
pub(crate) fn wants_json(argv: &[OsString]) -> bool {
    argv.iter().skip(1).any(|arg| arg == "--json")
}

/// What to print for a command line that clap refused: its message, except
/// for an unexpected value, which is not quoted: it may be a secret (half of
/// a password with a space in it, or one given after a flag without a value).
/// Clap names an unknown flag without its `=value`.
pub(crate) fn refusal(err: &clap::Error) -> String {
    if err.kind() == ErrorKind::UnknownArgument
        && let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg)
        && !arg.starts_with('-')
    {
        return "error: an unexpected value (not shown: it could be a secret)\n\n\
                Usage: load [OPTIONS]\n\nFor more information, try '--help'.\n"
            .to_owned();
    }
    err.render().to_string()
}

/// The first line of [`refusal`], without its `error: `.
pub(crate) fn refusal_line(text: &str) -> &str {
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use secrecy::ExposeSecret;

    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("load").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn flags_make_the_config() {
        let config = parse(&[
            "--token-url=https://api.daxium-air.com/oauth/v2/token",
            "--api-url",
            "https://api.daxium-air.com/api/v1/structures",
            "--client-id",
            "id",
            "--client-secret",
            "s",
            "--username",
            "me@example.com",
            "--password",
            "p",
            "--concurrency",
            "8",
            "--requests",
            "100",
        ])
        .unwrap()
        .into_config();
        assert_eq!(config.concurrency, 8);
        assert_eq!(config.stop, Stop::Requests(100));
        assert_eq!(
            config.api_url.as_deref(),
            Some("https://api.daxium-air.com/api/v1/structures")
        );

        assert!(config.store.is_none());
        assert_eq!(config.replicas, 1);

        let config = parse(&["--duration", "0.5"]).unwrap().into_config();
        assert_eq!(config.stop, Stop::Duration(Duration::from_millis(500)));
        assert_eq!(config.concurrency, 64);
        let config = parse(&["--store", "redis://127.0.0.1:6379/2", "--replicas", "8"])
            .unwrap()
            .into_config();
        assert_eq!(
            config.store.as_ref().map(ExposeSecret::expose_secret),
            Some("redis://127.0.0.1:6379/2")
        );
        assert_eq!(config.replicas, 8);
        let config = parse(&[]).unwrap().into_config();
        assert_eq!(config.stop, Stop::Duration(DEFAULT_DURATION));
    }

    #[test]
    fn bad_values_are_refused_with_status_two() {
        for args in [
            &["--concurrency", "0"][..],
            &["--concurrency", "-3"],
            &["--concurrency", "many"],
            &["--concurrency", "100001"],
            &["--requests", "0"],
            &["--duration", "0"],
            &["--duration", "-1"],
            &["--duration", "inf"],
            &["--duration", "NaN"],
            &["--requests", "5", "--duration", "1"],
            &["--replicas", "0"],
            &["--replicas", "1001"],
            &["--replicas", "some"],
            &["--store"],
            &["--token-url"],
            &["--bogus"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert!(refusal(&err).starts_with("error: "), "{args:?}");
        }
    }

    #[test]
    fn secrets_are_not_in_debug_nor_in_refusals() {
        let args = parse(&[
            "--client-secret",
            "cs-sentinel",
            "--password=pw-sentinel",
            "--store",
            "redis://user:store-sentinel@127.0.0.1:6379/",
        ])
        .unwrap();
        let mut debug = format!("{args:?}");
        debug.push_str(&format!("{:?}", args.into_config()));
        assert!(!debug.contains("sentinel"), "{debug}");

        for args in [
            &["--password", "two words-sentinel", "words-sentinel"][..],
            &["--pasword=pw-sentinel"],
            &["--password", "pw", "sentinel"],
        ] {
            let err = parse(args).unwrap_err();
            let text = refusal(&err);
            assert!(!text.contains("sentinel"), "{args:?}: {text}");
            assert!(text.contains("unexpected"), "{text}");
        }
        let err = parse(&["--pasword=pw-sentinel"]).unwrap_err();
        assert_eq!(
            refusal_line(&refusal(&err)),
            "unexpected argument '--pasword' found"
        );
    }

    #[test]
    fn the_json_flag_is_found_in_a_refused_command_line() {
        let argv = |args: &[&str]| -> Vec<OsString> {
            std::iter::once("load")
                .chain(args.iter().copied())
                .map(OsString::from)
                .collect()
        };
        assert!(wants_json(&argv(&["--concurrency", "0", "--json"])));
        assert!(!wants_json(&argv(&["--concurrency", "0"])));
    }
}
