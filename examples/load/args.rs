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

use crate::run::{Config, Embedded, SlowApi, Stop, Window};

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
shows background refreshes, a new login and the 401 replay. Its flags above make it
behave as other real servers do; the summary counts what it did.

--replicas N runs N layers in this process, each with its own token cache and clients as
N processes would have, sharing the login through --store (redis://HOST:PORT/[DB],
redis+cluster://HOST:PORT,HOST:PORT/ for a Redis Cluster,
redis+sentinel://HOST:PORT,HOST:PORT/MASTER[/DB] for a Sentinel-watched primary, each
with rediss… for TLS; file:///ABSOLUTE/DIR, or memory:, the default for more than one
replica); the summary counts the grants of the whole fleet.

RUST_LOG (e.g. RUST_LOG=daxium_auth=debug) shows the layer's spans and events on
stderr, above the progress bar.

Ctrl-C stops the load, closes the replicas (with a store: the last pair written, the
lease released) and prints the summary of what ran.

Secrets are never printed. Exit status: 0 when every request got a 2xx, 1 when the run
could not start, was interrupted or some request failed, 2 for a bad command line.";

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
    #[command(flatten)]
    pub(crate) embedded: EmbeddedArgs,
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

/// What the embedded server does: each flag only without `--token-url`.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Embedded server (without --token-url)")]
#[group(id = "embedded", multiple = true, conflicts_with = "token_url")]
pub(crate) struct EmbeddedArgs {
    /// Access token lifetime, in seconds (fractions allowed) [default: 4]
    #[arg(
        long,
        value_name = "SECS",
        value_parser = seconds,
        allow_negative_numbers = true
    )]
    pub(crate) token_lifetime: Option<Duration>,
    /// Revoke a valid token presented with this probability (0 to 1), answered
    /// as a revoked token, as servers that end sessions at any time do
    #[arg(
        long,
        value_name = "RATE",
        value_parser = probability,
        allow_negative_numbers = true
    )]
    pub(crate) revoke_rate: Option<f64>,
    /// Each refresh revokes the access token of the pair it replaces, as
    /// django-oauth-toolkit does
    #[arg(long)]
    pub(crate) revoke_on_refresh: bool,
    /// Hold back FRACTION (0 to 1) of the API's answers by MILLIS
    /// milliseconds each, e.g. 0.05:200
    #[arg(
        long,
        value_name = "FRACTION:MILLIS",
        value_parser = slow_api
    )]
    pub(crate) slow_api: Option<SlowApi>,
    /// Refuse every token (401 invalid_token, nothing revoked) from AT
    /// seconds into the load for SECS seconds, e.g. 2:1.5
    #[arg(
        long,
        value_name = "AT:SECS",
        value_parser = window
    )]
    pub(crate) refuse_all: Option<Window>,
    /// Refuse the gRPC way: HTTP 200, grpc-status 16 (UNAUTHENTICATED), no
    /// body; counted under grpc_status
    #[arg(long)]
    pub(crate) grpc_refusals: bool,
}

/// The longest `--slow-api` latency, in milliseconds: an hour.
const MAX_SLOW_MILLIS: u64 = 3_600_000;

fn probability(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| "a probability from 0 to 1 wanted".to_owned())
}

fn slow_api(text: &str) -> Result<SlowApi, String> {
    let wanted =
        || format!("FRACTION:MILLIS wanted, FRACTION from 0 to 1, MILLIS up to {MAX_SLOW_MILLIS}");
    let (fraction, millis) = text.split_once(':').ok_or_else(wanted)?;
    let fraction = probability(fraction).map_err(|_| wanted())?;
    let millis: u64 = millis
        .parse()
        .ok()
        .filter(|ms| *ms <= MAX_SLOW_MILLIS)
        .ok_or_else(wanted)?;
    Ok(SlowApi {
        fraction,
        latency: Duration::from_millis(millis),
    })
}

fn window(text: &str) -> Result<Window, String> {
    let wanted = || "AT:SECS wanted: seconds into the load, and seconds above zero".to_owned();
    let (at, length) = text.split_once(':').ok_or_else(wanted)?;
    let at = at
        .parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs >= 0.0 && *secs <= MAX_DURATION_SECS)
        .ok_or_else(wanted)?;
    Ok(Window {
        at: Duration::from_secs_f64(at),
        length: seconds(length).map_err(|_| wanted())?,
    })
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
            embedded: self.embedded.into_embedded(),
            ..Config::default()
        }
    }
}

impl EmbeddedArgs {
    fn into_embedded(self) -> Embedded {
        let defaults = Embedded::default();
        Embedded {
            token_lifetime: self.token_lifetime.unwrap_or(defaults.token_lifetime),
            revoke_rate: self.revoke_rate.unwrap_or(defaults.revoke_rate),
            revoke_on_refresh: self.revoke_on_refresh,
            slow_api: self.slow_api,
            refuse_all: self.refuse_all,
            grpc_refusals: self.grpc_refusals,
            ..defaults
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
        assert_eq!(config.embedded, Embedded::default());
    }

    #[test]
    fn embedded_flags_make_the_servers_settings() {
        let config = parse(&[
            "--token-lifetime",
            "0.5",
            "--revoke-rate",
            "0.01",
            "--revoke-on-refresh",
            "--slow-api",
            "0.05:200",
            "--refuse-all=2:1.5",
            "--grpc-refusals",
        ])
        .unwrap()
        .into_config();
        let embedded = config.embedded;
        assert_eq!(embedded.token_lifetime, Duration::from_millis(500));
        assert_eq!(embedded.revoke_rate, 0.01);
        assert!(embedded.revoke_on_refresh && embedded.grpc_refusals);
        assert_eq!(
            embedded.slow_api,
            Some(SlowApi {
                fraction: 0.05,
                latency: Duration::from_millis(200)
            })
        );
        assert_eq!(
            embedded.refuse_all,
            Some(Window {
                at: Duration::from_secs(2),
                length: Duration::from_millis(1500)
            })
        );
        assert!(embedded.revoke_halfway, "as without the flags");
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
            &["--token-lifetime", "0"],
            &["--revoke-rate", "1.5"],
            &["--revoke-rate", "-0.1"],
            &["--revoke-rate", "NaN"],
            &["--slow-api", "0.5"],
            &["--slow-api", "2:10"],
            &["--slow-api", "0.5:-1"],
            &["--slow-api", "0.5:3600001"],
            &["--refuse-all", "1"],
            &["--refuse-all", "-1:1"],
            &["--refuse-all", "1:0"],
            &[
                "--token-url=https://h/oauth/v2/token",
                "--revoke-rate",
                "0.1",
            ],
            &["--token-url=https://h/oauth/v2/token", "--grpc-refusals"],
            &[
                "--token-url=https://h/oauth/v2/token",
                "--token-lifetime",
                "2",
            ],
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
