//! The `load` example, two ways. In-process against the embedded
//! Daxium-compatible server: every request answered 200 across token
//! refreshes and a revocation, and the error paths (refused login,
//! unreachable endpoint) that must fail fast with one line and no secret.
//! As a program, built by cargo and run as a subprocess: the command line
//! (`--help`, bad flags with status 2), the `--json` summary and error object,
//! the table with its latency histogram, `RUST_LOG`, and no secret on stdout
//! or stderr. A fleet: replicas in one process on a memory store, several
//! processes on one `FileStore`, on one `redis-server`, on a Redis Cluster
//! and on a Sentinel-watched primary making one login between them (against one Daxium-compatible server started here), a second
//! run adopting the stored pair, and store URLs that are refused without
//! their password. The example's own modules (their unit tests run here too)
//! are included by path.
#![cfg(all(feature = "mock", feature = "rustls"))]

#[path = "../examples/load/args.rs"]
#[allow(dead_code)]
mod args;
#[path = "../examples/load/logging.rs"]
#[allow(dead_code)]
mod logging;
#[path = "../examples/load/run.rs"]
#[allow(dead_code)]
mod run;
#[path = "../examples/load/summary.rs"]
#[allow(dead_code)]
mod summary;

use std::{
    io::Read,
    path::PathBuf,
    process::{Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use run::{Config, Embedded, Fatal, Stop};
use secrecy::SecretString;
use serde_json::Value;
use summary::Target;

mod support;

// === in-process ===

/// A run against `server` (started by the test) rather than the embedded one.
fn against(server: &daxium_auth::mock::MockServer) -> Config {
    let credentials = server.credentials();
    Config {
        token_url: Some(server.token_url()),
        api_url: Some(server.api_url("v1/structures")),
        client_id: Some(credentials.client_id().to_owned()),
        client_secret: Some(credentials.client_secret().clone()),
        username: Some(credentials.username().to_owned()),
        password: Some(credentials.password().clone()),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_succeeds_across_refreshes_and_a_revocation() {
    let config = Config {
        concurrency: 16,
        stop: Stop::Duration(Duration::from_millis(3500)),
        embedded: Embedded {
            token_lifetime: Duration::from_secs(1),
            revoke_halfway: true,
            ..Embedded::default()
        },
        ..Config::default()
    };
    let summary = run::run(config).await.expect("the run starts");

    assert!(summary.requests > 100, "{summary:?}");
    assert_eq!(summary.ok, summary.requests, "{}", summary.table());
    assert_eq!(summary.status.get(&200), Some(&summary.requests));
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert!(summary.all_ok());
    // Every answer is in the histogram.
    assert_eq!(summary.latency.count(), summary.requests);
    let stats = summary.stats;
    assert!(stats.refresh_ok >= 1, "a background refresh: {stats:?}");
    // The revocation: the refresh token is refused, one new login.
    assert_eq!(stats.refresh_rejected, 1, "{stats:?}");
    assert_eq!(stats.password_ok, 2, "{stats:?}");
    // The token had worked: the requests that met its revocation were sent
    // again as resends (or replays, for a refusal that came before the
    // layer heard of an answer).
    assert!(
        stats.replays + stats.resends >= 1,
        "the requests that met the revoked token were sent again"
    );
    let latency = &summary.latency;
    assert!(latency.percentile_ms(50.0) > 0.0);
    assert!(latency.percentile_ms(50.0) <= latency.percentile_ms(99.0));
    let Target::Embedded {
        revoked_at,
        counters,
        ..
    } = summary.target
    else {
        panic!("the embedded server");
    };
    assert!(revoked_at.is_some());
    // Every refused API request is one the layer sent again: its replay, or
    // a resend after its token was replaced in flight.
    assert_eq!(
        counters.api_requests - counters.api_ok,
        stats.replays + stats.resends
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_at_the_first_login_is_ridden_out() {
    let server = daxium_auth::mock::MockServer::start()
        .await
        .expect("bind 127.0.0.1");
    server.fail_next_grants(1, daxium_auth::mock::Fault::ServerError);
    let config = Config {
        stop: Stop::Requests(50),
        ..against(&server)
    };
    let summary = run::run(config)
        .await
        .expect("the run starts after one 500");
    assert_eq!(summary.ok, 50);
    assert_eq!(summary.stats.password_failed, 1);
    assert_eq!(summary.stats.password_ok, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_fails_fast_without_the_secret() {
    let started = Instant::now();
    let config = Config {
        password: Some(SecretString::from("hunter2-not-the-password")),
        stop: Stop::Requests(10),
        ..Config::default()
    };
    let err = run::run(config).await.unwrap_err();
    assert!(
        matches!(&err, Fatal::Login(e) if e.is_grant_rejected()),
        "{err:?}"
    );
    assert_eq!(err.kind(), "login_refused");
    assert_eq!(err.exit_status(), 1);
    let line = err.to_string();
    assert!(
        line.starts_with("login refused by the token endpoint"),
        "{line}"
    );
    assert!(!line.contains('\n'));
    assert!(!line.contains("hunter2") && !format!("{err:?}").contains("hunter2"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_fails_within_the_wait_budget() {
    let port = closed_port();
    let started = Instant::now();
    let config = Config {
        token_url: Some(format!("http://127.0.0.1:{port}/oauth/v2/token")),
        api_url: Some(format!("http://127.0.0.1:{port}/api/v1/structures")),
        client_id: Some("id".into()),
        client_secret: Some(SecretString::from("s3cret-value")),
        username: Some("me@example.com".into()),
        password: Some(SecretString::from("pa55word-value")),
        stop: Stop::Requests(10),
        ..Config::default()
    };
    let err = run::run(config).await.unwrap_err();
    let line = err.to_string();
    assert!(matches!(&err, Fatal::Login(e) if e.is_connect()), "{line}");
    assert_eq!(err.kind(), "connect");
    assert!(line.starts_with("login failed: "), "{line}");
    assert!(
        !line.contains("s3cret") && !line.contains("pa55word"),
        "{line}"
    );
    // It rides out the attempts that start within the wait budget (10 s),
    // then reports the last error.
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn incomplete_settings_are_usage_errors() {
    let config = Config {
        token_url: Some("https://api.daxium-air.com/oauth/v2/token".into()),
        ..Config::default()
    };
    let err = run::run(config).await.unwrap_err();
    assert_eq!(err.to_string(), "missing --api-url (or DAXIUM_API_URL)");
    assert_eq!((err.kind(), err.exit_status()), ("usage", 2));

    let config = Config {
        concurrency: 0,
        ..Config::default()
    };
    assert!(matches!(run::run(config).await, Err(Fatal::Usage(_))));

    // The embedded server's settings, for a real server.
    let config = Config {
        token_url: Some("https://api.daxium-air.com/oauth/v2/token".into()),
        api_url: Some("https://api.daxium-air.com/api/v1/structures".into()),
        embedded: Embedded {
            revoke_rate: 0.1,
            ..Embedded::default()
        },
        ..Config::default()
    };
    let err = run::run(config).await.unwrap_err();
    assert!(err.to_string().contains("not with --token-url"), "{err}");
    assert_eq!(err.exit_status(), 2);
    // A rate the server cannot take is refused before it starts.
    let config = Config {
        embedded: Embedded {
            revoke_rate: f64::NAN,
            ..Embedded::default()
        },
        ..Config::default()
    };
    let err = run::run(config).await.unwrap_err();
    assert!(err.to_string().starts_with("--revoke-rate"), "{err}");
}

/// A port that was just free on 127.0.0.1: nothing listens there.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// === as a program ===

/// Secrets given on the command line or in the environment of the program;
/// none may appear in what it prints.
const SECRET_SENTINELS: [&str; 4] = [
    "cs-sentinel-7f3a",
    "pw-sentinel-91c2",
    "env-cs-sentinel-55d0",
    "env-pw-sentinel-0b8e",
];

const SECRET_ENV: [(&str, &str); 2] = [
    ("DAXIUM_CLIENT_SECRET", "env-cs-sentinel-55d0"),
    ("DAXIUM_PASSWORD", "env-pw-sentinel-0b8e"),
];

/// The `load` example's executable, built once by cargo with the features
/// of this test, every one of them (so that nothing is rebuilt: under
/// `--all-features`, the one `cargo test` built already).
fn load_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let mut features = vec!["mock", "rustls"];
        for (on, feature) in [
            (cfg!(feature = "reqwest"), "reqwest"),
            (cfg!(feature = "file"), "file"),
            (cfg!(feature = "redis"), "redis"),
            (cfg!(feature = "sealed"), "sealed"),
            (cfg!(feature = "metrics"), "metrics"),
        ] {
            if on {
                features.push(feature);
            }
        }
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args(["build", "--example", "load", "--message-format=json"])
            .arg("--features")
            .arg(features.join(","))
            .arg("--manifest-path")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        if !cfg!(debug_assertions) {
            cargo.arg("--release");
        }
        // What cargo sets for this test describes this package; a build
        // script that watches one of them (ring watches CARGO_MANIFEST_DIR)
        // would otherwise run again, and rebuild everything above it.
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|prefix| name_text.starts_with(prefix))
                || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"]
                    .contains(&&*name_text)
            {
                cargo.env_remove(&name);
            }
        }
        let output = cargo.output().expect("cargo runs");
        assert!(
            output.status.success(),
            "cargo build --example load failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|message| {
                message["reason"] == "compiler-artifact" && message["target"]["name"] == "load"
            })
            .find_map(|message| message["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the example's executable")
    })
}

/// What one run of the program did.
#[derive(Debug)]
struct Ran {
    status: Option<i32>,
    /// From the start of the program to its exit.
    took: Duration,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn assert_no_secret(&self) {
        let printed = format!("{}\n{}", self.stdout, self.stderr);
        support::secrets::assert_no_secret(&printed, &SECRET_SENTINELS, "what the program printed");
    }

    /// stdout as its one JSON object.
    fn json(&self) -> Value {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stdout: {self:#?}");
        serde_json::from_str(lines[0]).unwrap_or_else(|err| panic!("{err}: {self:#?}"))
    }

    /// The error object, alone on stdout: its kind and message.
    fn error_object(&self) -> (String, String) {
        let json = self.json();
        let object = json.as_object().unwrap();
        assert_eq!(object.keys().collect::<Vec<_>>(), ["error"], "{self:#?}");
        let error = json["error"].as_object().unwrap();
        assert_eq!(error.len(), 2, "kind and message: {self:#?}");
        (
            error["kind"].as_str().unwrap().to_owned(),
            error["message"].as_str().unwrap().to_owned(),
        )
    }
}

/// Runs `load` with `args` and `env`, in an environment without any other
/// `DAXIUM_*` variable or `RUST_LOG`; killed after 60 s.
fn load(args: &[&str], env: &[(&str, &str)]) -> Ran {
    Running::start(args, env).finish()
}

/// A `load` process under way, its output drained as it comes.
struct Running {
    args: Vec<String>,
    child: std::process::Child,
    started: Instant,
    stdout: thread::JoinHandle<std::io::Result<String>>,
    stderr: thread::JoinHandle<std::io::Result<String>>,
}

impl Running {
    /// Starts `load` as [`load`] runs it.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(load_binary());
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("DAXIUM_") {
                command.env_remove(name);
            }
        }
        command.env_remove("RUST_LOG");
        command.envs(env.iter().copied());
        let started = Instant::now();
        let mut child = command.spawn().expect("the example starts");
        let drain = |mut pipe: Box<dyn Read + Send>| {
            thread::spawn(move || {
                let mut text = String::new();
                pipe.read_to_string(&mut text).map(|_| text)
            })
        };
        let stdout = drain(Box::new(child.stdout.take().unwrap()));
        let stderr = drain(Box::new(child.stderr.take().unwrap()));
        Self {
            args: args.iter().map(|a| a.to_string()).collect(),
            child,
            started,
            stdout,
            stderr,
        }
    }

    /// Sends the process SIGINT, as Ctrl-C in a terminal does.
    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill on the PATH");
        assert!(status.success(), "kill -INT failed");
    }

    /// Waits for the exit, at most 60 s from the start, and collects what it
    /// printed.
    fn finish(mut self) -> Ran {
        let deadline = self.started + Duration::from_secs(60);
        let (status, took) = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break (status, self.started.elapsed());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("load {:?} still running after 60 s", self.args);
            }
            thread::sleep(Duration::from_millis(20));
        };
        Ran {
            status: status.code(),
            took,
            stdout: self.stdout.join().unwrap().unwrap(),
            stderr: self.stderr.join().unwrap().unwrap(),
        }
    }
}

#[test]
fn help_lists_every_flag_and_variable_and_no_secret() {
    let ran = load(&["--help"], &SECRET_ENV);
    assert_eq!(ran.status, Some(0), "{ran:#?}");
    for name in [
        "--token-url",
        "DAXIUM_TOKEN_URL",
        "--api-url",
        "DAXIUM_API_URL",
        "--client-id",
        "DAXIUM_CLIENT_ID",
        "--client-secret",
        "DAXIUM_CLIENT_SECRET",
        "--username",
        "DAXIUM_USERNAME",
        "--password",
        "DAXIUM_PASSWORD",
        "--concurrency",
        "[default: 64]",
        "--requests",
        "--duration",
        "--json",
        "--store",
        "DAXIUM_STORE",
        "--replicas",
        "[default: 1]",
        "--token-lifetime",
        "--revoke-rate",
        "--revoke-on-refresh",
        "--slow-api",
        "--refuse-all",
        "--grpc-refusals",
        "RUST_LOG",
    ] {
        assert!(ran.stdout.contains(name), "{name} in the help: {ran:#?}");
    }
    assert!(ran.stderr.is_empty(), "{ran:#?}");
    ran.assert_no_secret();
}

#[test]
fn bad_command_lines_exit_2_with_a_clear_message() {
    for (args, says) in [
        (&["--bogus"][..], "unexpected argument '--bogus'"),
        (
            &["--concurrency", "0"],
            "invalid value '0' for '--concurrency",
        ),
        (
            &["--concurrency", "lots"],
            "invalid value 'lots' for '--concurrency",
        ),
        (&["--requests", "0"], "invalid value '0' for '--requests"),
        (&["--duration", "-1"], "invalid value '-1' for '--duration"),
        (
            &["--duration", "soon"],
            "invalid value 'soon' for '--duration",
        ),
        (
            &["--requests", "5", "--duration", "1"],
            "'--requests <N>' cannot be used with '--duration <SECS>'",
        ),
        (&["--token-url"], "a value is required for '--token-url"),
        // Half of a password with a space, and a secret after a misspelled
        // flag: neither is quoted.
        (
            &["--password", "pw-sentinel-91c2", "cs-sentinel-7f3a"],
            "an unexpected value (not shown",
        ),
        (
            &[
                "--pasword=pw-sentinel-91c2",
                "--client-secret",
                "cs-sentinel-7f3a",
            ],
            "unexpected argument '--pasword'",
        ),
        // Refused by the run's own checks, before anything starts.
        (
            &["--token-url", "http://127.0.0.1:9/oauth/v2/token"],
            "missing --api-url (or DAXIUM_API_URL)",
        ),
        (
            &["--api-url", "http://127.0.0.1:9/api/v1/structures"],
            "--api-url needs --token-url",
        ),
        // The embedded server's flags, for a real server.
        (
            &[
                "--token-url",
                "http://127.0.0.1:9/oauth/v2/token",
                "--revoke-rate",
                "0.1",
            ],
            "the argument '--token-url <URL>' cannot be used with",
        ),
        (
            &["--slow-api", "0.1"],
            "invalid value '0.1' for '--slow-api <FRACTION:MILLIS>'",
        ),
        (
            &["--revoke-rate", "2"],
            "invalid value '2' for '--revoke-rate <RATE>'",
        ),
    ] {
        let ran = load(args, &SECRET_ENV);
        assert_eq!(ran.status, Some(2), "{args:?}: {ran:#?}");
        assert!(ran.stdout.is_empty(), "{args:?}: {ran:#?}");
        let first = ran.stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.contains(says),
            "{args:?}: {says:?} in {ran:#?}"
        );
        ran.assert_no_secret();
    }
}

#[test]
fn with_json_a_bad_command_line_is_also_an_error_object() {
    let ran = load(&["--json", "--concurrency", "0"], &SECRET_ENV);
    assert_eq!(ran.status, Some(2), "{ran:#?}");
    let (kind, message) = ran.error_object();
    assert_eq!(kind, "usage");
    assert_eq!(
        message,
        "invalid value '0' for '--concurrency <N>': 0 is not in 1..=100000"
    );
    ran.assert_no_secret();
}

#[test]
fn a_refused_login_prints_the_error_object_and_no_secret() {
    let ran = load(
        &[
            "--json",
            "--requests",
            "10",
            "--client-secret",
            "cs-sentinel-7f3a",
            "--password=pw-sentinel-91c2",
        ],
        &[],
    );
    assert_eq!(ran.status, Some(1), "{ran:#?}");
    let (kind, message) = ran.error_object();
    assert_eq!(kind, "login_refused");
    assert!(
        message.starts_with("login refused by the token endpoint"),
        "{message}"
    );
    assert_eq!(ran.stderr.trim_end(), format!("error: {message}"));
    ran.assert_no_secret();
    assert!(ran.took < Duration::from_secs(5), "{:?}", ran.took);
}

#[test]
fn an_unreachable_token_endpoint_prints_the_error_object_and_no_secret() {
    let port = closed_port();
    let token_url = format!("http://127.0.0.1:{port}/oauth/v2/token");
    let api_url = format!("http://127.0.0.1:{port}/api/v1/structures");
    // Secrets from the environment this time.
    let ran = load(
        &["--json", "--requests", "10", "--client-id", "id"],
        &[
            ("DAXIUM_TOKEN_URL", &token_url),
            ("DAXIUM_API_URL", &api_url),
            ("DAXIUM_USERNAME", "me@example.com"),
            SECRET_ENV[0],
            SECRET_ENV[1],
        ],
    );
    assert_eq!(ran.status, Some(1), "{ran:#?}");
    let (kind, message) = ran.error_object();
    assert_eq!(kind, "connect");
    assert!(message.starts_with("login failed: "), "{message}");
    ran.assert_no_secret();
    // The login rides out the attempts that start within the wait budget
    // (10 s), then reports the last error.
    assert!(ran.took < Duration::from_secs(15), "{:?}", ran.took);
}

#[test]
fn a_short_run_prints_every_documented_key_with_consistent_values() {
    let ran = load(&["--json", "--requests", "400", "--concurrency", "8"], &[]);
    assert_eq!(ran.status, Some(0), "{ran:#?}");
    // Without RUST_LOG, and with no terminal for the bar, stderr stays empty.
    assert!(ran.stderr.is_empty(), "{ran:#?}");
    let json = ran.json();
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "aborted",
            "concurrency",
            "elapsed_s",
            "errors",
            "grants",
            "grpc_status",
            "max_ms",
            "mean_ms",
            "ok",
            "p50_ms",
            "p90_ms",
            "p999_ms",
            "p99_ms",
            "per_replica",
            "replicas",
            "requests",
            "requests_per_s",
            "resends",
            "retries_401",
            "server",
            "status",
            "store",
            "waited_for_token",
        ]
    );
    // The documented keys first, in the documented order.
    assert!(
        ran.stdout.starts_with(
            r#"{"requests":400,"ok":400,"status":{"200":400},"errors":{},"grants":{"password":"#
        ),
        "{}",
        ran.stdout
    );
    let n = |key: &str| {
        json[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key}: {json}"))
    };
    let ms = |key: &str| {
        json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {json}"))
    };
    let sum = |key: &str| -> u64 {
        json[key]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum()
    };
    assert_eq!(n("requests"), 400);
    assert!(n("ok") <= n("requests"));
    assert_eq!(sum("status") + sum("errors"), n("requests"));
    assert_eq!(json["status"]["200"].as_u64(), Some(n("ok")));
    let grants = &json["grants"];
    let (password, refresh) = (
        grants["password"].as_u64().unwrap(),
        grants["refresh_token"].as_u64().unwrap(),
    );
    assert!(password >= 1, "at least the login: {json}");
    assert!(
        password + refresh <= 10,
        "a few grants, not one per request: {json}"
    );
    assert_eq!(grants.as_object().unwrap().len(), 2);
    // A request is replayed at most once.
    assert!(n("retries_401") <= n("requests"), "{json}");
    assert_eq!(n("concurrency"), 8);
    let percentiles = ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"].map(ms);
    assert!(percentiles[0] > 0.0, "{json}");
    assert!(
        percentiles.windows(2).all(|pair| pair[0] <= pair[1]),
        "p50 <= p90 <= p99 <= p99.9 <= max: {json}"
    );
    assert!(ms("mean_ms") > 0.0 && ms("mean_ms") <= ms("max_ms"));
    assert!(ms("elapsed_s") > 0.0);
    // The rate from the unrounded time: within what rounding elapsed_s to
    // the millisecond allows.
    let (requests, elapsed) = (n("requests") as f64, ms("elapsed_s"));
    let rate = ms("requests_per_s");
    assert!(
        requests / (elapsed + 0.0005) - 0.001 <= rate
            && rate <= requests / (elapsed - 0.0005).max(1e-9) + 0.001,
        "{json}"
    );
    assert_eq!(json["aborted"], Value::Null);
    assert!(n("waited_for_token") <= n("requests"));
    // One replica, no store.
    assert_eq!(n("replicas"), 1);
    assert_eq!(json["store"], Value::Null);
    assert_eq!(json["per_replica"][0]["requests"], 400);
    // The embedded server's counters: every API request it answered is one
    // of the run's, a replay or a resend.
    let server = &json["server"];
    assert_eq!(json["grpc_status"], serde_json::json!({}));
    assert_eq!(
        server["api_requests"].as_u64(),
        Some(n("requests") + n("retries_401") + n("resends") + 1),
        "the run's, the replays, the resends and the first request: {json}"
    );
    for key in [
        "api_revoked_in_use",
        "api_refused_all",
        "api_slowed",
        "refresh_revoked_access",
    ] {
        assert_eq!(server[key], 0, "{key} without its flag: {json}");
    }
}

/// `load --json` with `args` against the embedded server: the JSON object,
/// and its counters of the server. The run may exit 1: some refusals reach
/// their caller (a replay revoked too, a window of refusals).
fn embedded_run(args: &[&str]) -> (Value, Value) {
    let mut all = vec!["--json", "--concurrency", "4"];
    all.extend_from_slice(args);
    let ran = load(&all, &[]);
    assert!(matches!(ran.status, Some(0 | 1)), "{ran:#?}");
    let json = ran.json();
    assert_eq!(json["aborted"], Value::Null, "{json}");
    let server = json["server"].clone();
    (json, server)
}

fn count(json: &Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(json, |value, key| &value[*key])
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn revocations_at_a_rate_show_in_the_json() {
    let (json, server) = embedded_run(&["--duration", "1.5", "--revoke-rate", "0.002"]);
    assert!(count(&server, &["api_revoked_in_use"]) > 0, "{json}");
    assert!(
        count(&json, &["retries_401"]) + count(&json, &["resends"]) >= 1,
        "{json}"
    );
    // Each revocation is a 401 that the layer sent again, or (the sends
    // used up) one that reached its caller.
    assert!(
        count(&json, &["status", "401"]) <= count(&server, &["api_revoked"]),
        "only refusals of the server: {json}"
    );
    assert_eq!(
        count(&json, &["ok"]) + count(&json, &["status", "401"]),
        count(&json, &["requests"]),
        "{json}"
    );
}

#[test]
fn revocations_on_refresh_and_slow_answers_show_in_the_json() {
    let (json, server) = embedded_run(&[
        "--duration",
        "1.5",
        "--token-lifetime",
        "0.4",
        "--revoke-on-refresh",
        "--slow-api",
        "0.05:20",
    ]);
    assert!(count(&json, &["grants", "refresh_token"]) >= 1, "{json}");
    assert!(count(&server, &["refresh_revoked_access"]) >= 1, "{json}");
    assert!(count(&server, &["api_slowed"]) > 0, "{json}");
    // The slow answers are in the latencies.
    assert!(json["max_ms"].as_f64().unwrap() >= 20.0, "{json}");
}

#[test]
fn a_window_of_refusals_shows_in_the_json_and_the_run_goes_on() {
    let (json, server) = embedded_run(&["--duration", "2", "--refuse-all", "0.3:0.4"]);
    let refused = count(&server, &["api_refused_all"]);
    assert!(refused > 0, "{json}");
    // Refusals of a token that never worked reach their callers.
    assert!(count(&json, &["status", "401"]) > 0, "{json}");
    assert!(count(&json, &["ok"]) > 0, "{json}");
    assert_eq!(
        count(&server, &["api_revoked_in_use"]),
        0,
        "nothing revoked"
    );
    // Callers turned away at once do not take the runtime from the others:
    // no request waits for the end of the run.
    assert!(json["max_ms"].as_f64().unwrap() < 1_000.0, "{json}");
}

#[test]
fn grpc_refusals_are_seen_by_the_layer_and_replayed() {
    let (json, server) = embedded_run(&[
        "--requests",
        "300",
        "--grpc-refusals",
        "--revoke-rate",
        "0.05",
    ]);
    assert!(count(&server, &["api_revoked_in_use"]) > 0, "{json}");
    // No 401: every refusal is a 200 with grpc-status 16, which the layer
    // knows (`Refusal::grpc`): it refreshes and sends the call again, as a
    // resend when the refused token had worked (revoked), as the one replay
    // when it never had. A caller sees one only when all five sends were
    // refused (with three sends: 0 to 5 of the 300 in 110 runs, 1 in the
    // median; the bound was 15 when a revocation used the replay, and 18
    // were seen).
    assert_eq!(json["status"].as_object().unwrap().len(), 1, "{json}");
    assert_eq!(count(&json, &["status", "200"]), 300, "{json}");
    let refused = count(&json, &["grpc_status", "16"]);
    let again = count(&json, &["retries_401"]) + count(&json, &["resends"]);
    assert_eq!(count(&json, &["ok"]) + refused, 300, "{json}");
    assert!(again > 0, "{json}");
    assert!(refused <= again, "{json}");
    assert!(refused <= 10, "{json}");
}

#[test]
fn the_table_has_the_percentiles_and_a_histogram_of_every_answer() {
    let ran = load(&["--requests", "300", "--concurrency", "4"], &[]);
    assert_eq!(ran.status, Some(0), "{ran:#?}");
    assert!(ran.stderr.is_empty(), "{ran:#?}");
    let latency = ran
        .stdout
        .lines()
        .find(|line| line.trim_start().starts_with("latency "))
        .unwrap_or_else(|| panic!("{}", ran.stdout));
    for label in ["p50 ", "p90 ", "p99 ", "p99.9 ", "max "] {
        assert!(latency.contains(label), "{latency}");
    }
    // The histogram's rows: `  0.2-0.5 ms  ####   1,234  12.3%`.
    let rows: Vec<&str> = ran
        .stdout
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("distribution"))
        .take_while(|line| line.ends_with('%'))
        .collect();
    assert!(!rows.is_empty(), "{}", ran.stdout);
    let counted: u64 = rows
        .iter()
        .map(|row| {
            let words: Vec<&str> = row.split_whitespace().collect();
            words[words.len() - 2]
                .replace(',', "")
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(counted, 300, "{}", ran.stdout);
    assert!(
        rows.iter().any(|row| row.contains(&"#".repeat(40))),
        "{}",
        ran.stdout
    );
}

#[test]
fn rust_log_shows_the_layers_spans_and_events_on_stderr_only() {
    let ran = load(
        &["--json", "--requests", "50", "--concurrency", "4"],
        &[("RUST_LOG", "daxium_auth=debug")],
    );
    assert_eq!(ran.status, Some(0), "{ran:#?}");
    // stdout is still the one JSON object.
    assert_eq!(ran.json()["requests"], 50);
    // The login: its span, its event, and the span closing with its time.
    let grant = ran
        .stderr
        .lines()
        .find(|line| line.contains("grant succeeded"))
        .unwrap_or_else(|| panic!("{}", ran.stderr));
    assert!(
        grant.contains("INFO") && grant.contains("daxium_auth.grant{grant_type=\"password\""),
        "{grant}"
    );
    assert!(ran.stderr.contains("close time.busy="), "{}", ran.stderr);

    // A refused login, in the log too, without the secrets.
    let ran = load(
        &["--requests", "5", "--client-secret", "cs-sentinel-7f3a"],
        &[("RUST_LOG", "trace"), SECRET_ENV[1]],
    );
    assert_eq!(ran.status, Some(1), "{ran:#?}");
    assert!(ran.stderr.contains("grant failed"), "{}", ran.stderr);
    assert!(
        ran.stderr
            .lines()
            .any(|line| line.starts_with("error: login refused")),
        "{}",
        ran.stderr
    );
    ran.assert_no_secret();
}

// === a fleet ===

/// The Daxium-compatible server that every `load` process of a test shares,
/// on a runtime of its own that serves it while the test waits for the
/// processes.
struct Shared {
    server: daxium_auth::mock::MockServer,
    _runtime: tokio::runtime::Runtime,
}

impl Shared {
    /// 30 s tokens: no run here lasts long enough to refresh.
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime
            .block_on(
                daxium_auth::mock::MockServer::builder()
                    .token_lifetime(Duration::from_secs(30))
                    .reuse_protection(true)
                    .start(),
            )
            .expect("bind 127.0.0.1");
        Self {
            server,
            _runtime: runtime,
        }
    }

    /// The flags that point `load` at this server, with the login's id and
    /// username; the secrets go in [`Shared::env`].
    fn args(&self) -> Vec<String> {
        let credentials = self.server.credentials();
        vec![
            "--token-url".into(),
            self.server.token_url(),
            "--api-url".into(),
            self.server.api_url("v1/structures"),
            "--client-id".into(),
            credentials.client_id().to_owned(),
            "--username".into(),
            credentials.username().to_owned(),
        ]
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        use secrecy::ExposeSecret;
        let credentials = self.server.credentials();
        vec![
            (
                "DAXIUM_CLIENT_SECRET",
                credentials.client_secret().expose_secret().to_owned(),
            ),
            (
                "DAXIUM_PASSWORD",
                credentials.password().expose_secret().to_owned(),
            ),
        ]
    }
}

/// `processes` runs of `load` at once, each with `args` after the server's
/// flags and `env`; each must succeed. Their JSON summaries.
fn fleet_of_processes(
    shared: &Shared,
    processes: usize,
    args: &[&str],
    env: &[(&str, &str)],
) -> Vec<Value> {
    let runs: Vec<_> = (0..processes)
        .map(|_| {
            let mut all = shared.args();
            all.extend(args.iter().map(|a| a.to_string()));
            let mut vars: Vec<(String, String)> = shared
                .env()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            thread::spawn(move || {
                let args: Vec<&str> = all.iter().map(String::as_str).collect();
                let env: Vec<(&str, &str)> =
                    vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                load(&args, &env)
            })
        })
        .collect();
    runs.into_iter()
        .map(|run| {
            let ran = run.join().expect("a load process");
            assert_eq!(ran.status, Some(0), "{ran:#?}");
            ran.json()
        })
        .collect()
}

/// The fleet's password grants, by the summaries of its processes.
fn logins(summaries: &[Value]) -> u64 {
    summaries
        .iter()
        .map(|json| json["grants"]["password"].as_u64().unwrap())
        .sum()
}

fn assert_each_shares(summaries: &[Value], scheme: &str, replicas: u64, requests: u64) {
    for json in summaries {
        assert_eq!(json["store"], scheme, "{json}");
        assert_eq!(json["replicas"].as_u64(), Some(replicas), "{json}");
        assert_eq!(json["requests"].as_u64(), Some(requests), "{json}");
        assert_eq!(json["ok"], json["requests"], "{json}");
        let per_replica = json["per_replica"].as_array().unwrap();
        assert_eq!(per_replica.len() as u64, replicas);
        let sum = |key: &str| -> u64 { per_replica.iter().map(|r| r[key].as_u64().unwrap()).sum() };
        assert_eq!(sum("requests"), requests, "{json}");
        let password: u64 = per_replica
            .iter()
            .map(|r| r["grants"]["password"].as_u64().unwrap())
            .sum();
        assert_eq!(password, json["grants"]["password"].as_u64().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_in_one_process_share_one_login_through_a_memory_store() {
    let server = daxium_auth::mock::MockServer::builder()
        .reuse_protection(true)
        .start()
        .await
        .expect("bind 127.0.0.1");
    let config = Config {
        concurrency: 8,
        replicas: 4,
        stop: Stop::Requests(400),
        ..against(&server)
    };
    let summary = run::run(config).await.expect("the run starts");
    assert!(summary.all_ok(), "{}", summary.table());
    assert_eq!(summary.store, Some("memory"));
    assert_eq!(summary.replicas.len(), 4);
    assert_eq!(
        summary.replicas.iter().map(|r| r.requests).sum::<u64>(),
        400
    );
    // Every replica drove requests; one of them logged in for all.
    assert!(
        summary
            .replicas
            .iter()
            .all(|r| r.requests > 0 && r.ok == r.requests)
    );
    assert_eq!(summary.stats.password_ok, 1, "{:?}", summary.stats);
    assert_eq!(server.counters().password_ok, 1);
    let logins: Vec<u64> = summary
        .replicas
        .iter()
        .map(|r| r.stats.password_ok)
        .collect();
    assert_eq!(logins.iter().sum::<u64>(), 1, "{logins:?}");
}

#[test]
fn load_processes_on_one_file_store_log_in_once_and_a_second_run_not_at_all() {
    let shared = Shared::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let args = [
        "--json",
        "--store",
        url.as_str(),
        "--replicas",
        "2",
        "--concurrency",
        "4",
        "--requests",
        "200",
    ];
    let first = fleet_of_processes(&shared, 3, &args, &[]);
    assert_each_shares(&first, "file", 2, 200);
    let counters = shared.server.counters();
    assert_eq!(logins(&first), 1, "one login for 3 processes x 2 replicas");
    assert_eq!(counters.password_ok, 1, "{counters:?}");
    assert_eq!(counters.refresh_reuse, 0, "{counters:?}");

    // A second run, with the store from the environment, adopts the pair.
    let second = fleet_of_processes(
        &shared,
        1,
        &["--json", "--requests", "50", "--concurrency", "2"],
        &[("DAXIUM_STORE", url.as_str())],
    );
    assert_each_shares(&second, "file", 1, 50);
    assert_eq!(logins(&second), 0, "{}", second[0]);
    assert_eq!(second[0]["grants"]["refresh_token"], 0);
    assert_eq!(shared.server.counters().password_ok, 1);
}

#[test]
fn load_processes_on_one_redis_log_in_once() {
    let redis = support::redis::RedisServer::start();
    processes_on_one_store_log_in_once(&redis.url(), "redis");
}

#[test]
fn load_processes_on_one_redis_cluster_log_in_once() {
    let cluster = support::redis::RedisCluster::start(3, 0);
    processes_on_one_store_log_in_once(&cluster.url(), "redis+cluster");
}

#[test]
fn load_processes_on_one_sentinel_watched_redis_log_in_once() {
    let sentinels = support::redis::Sentinels::start();
    processes_on_one_store_log_in_once(&sentinels.url(), "redis+sentinel");
}

/// Three `load` processes of 4 replicas each on the store at `url` make one
/// login between them, and each says it shared `scheme`.
fn processes_on_one_store_log_in_once(url: &str, scheme: &str) {
    let shared = Shared::start();
    let args = [
        "--json",
        "--store",
        url,
        "--replicas",
        "4",
        "--concurrency",
        "8",
        "--requests",
        "400",
    ];
    let summaries = fleet_of_processes(&shared, 3, &args, &[]);
    assert_each_shares(&summaries, scheme, 4, 400);
    let counters = shared.server.counters();
    assert_eq!(
        logins(&summaries),
        1,
        "one login for 3 processes x 4 replicas"
    );
    assert_eq!(counters.password_ok, 1, "{counters:?}");
    assert_eq!(counters.refresh_reuse, 0, "{counters:?}");
    assert_eq!(counters.grant_requests, 1, "{counters:?}");
}

/// Ctrl-C stops the load, prints the summary of what ran, and closes the
/// replicas: the pair is in Redis, the lease is free, and the next run adopts
/// the pair without a login.
#[test]
fn an_interrupted_run_closes_its_replicas_and_the_next_run_adopts_the_pair() {
    use daxium_auth::store::{Lease, LeaseOwner, LoginKey, RedisStore, TokenStore};

    let shared = Shared::start();
    let redis = support::redis::RedisServer::start();
    let url = redis.url();
    let mut args = shared.args();
    args.extend(
        [
            "--json",
            "--store",
            &url,
            "--replicas",
            "2",
            "--concurrency",
            "4",
            "--duration",
            "50",
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = shared.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let running = Running::start(&args, &env);
    // Interrupted once the load is under way.
    let under_way = (0..1_000).any(|_| {
        thread::sleep(Duration::from_millis(20));
        shared.server.counters().api_ok > 100
    });
    assert!(under_way, "the load did not start");
    running.interrupt();
    let ran = running.finish();
    assert!(ran.took < Duration::from_secs(30), "{ran:#?}");
    assert_eq!(ran.status, Some(1), "an interrupted run fails: {ran:#?}");
    let json = ran.json();
    assert_eq!(json["aborted"], "interrupted (Ctrl-C)", "{json}");
    assert_eq!(json["ok"], json["requests"], "{json}");
    assert_eq!(json["grants"]["password"], 1, "{json}");
    assert!(ran.stderr.contains("interrupted"), "{ran:#?}");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let endpoint = shared.server.token_url().parse().unwrap();
    let key = LoginKey::from_credentials(&shared.server.credentials()).with_endpoint(&endpoint);
    runtime.block_on(async {
        let store = RedisStore::new(&url).unwrap();
        assert!(store.read(&key).await.unwrap().is_some(), "the pair");
        let other = LeaseOwner::random();
        let lease = store.acquire_lease(&key, &other, Duration::from_secs(1));
        assert_eq!(lease.await.unwrap(), Lease::Acquired, "the lease is free");
        assert!(store.release_lease(&key, &other).await.unwrap());
    });

    let next = fleet_of_processes(
        &shared,
        1,
        &[
            "--json",
            "--store",
            &url,
            "--requests",
            "50",
            "--concurrency",
            "2",
        ],
        &[],
    );
    assert_eq!(logins(&next), 0, "{}", next[0]);
    assert_eq!(shared.server.counters().password_ok, 1);
}

#[test]
fn store_urls_that_cannot_work_are_refused_without_their_password() {
    let not_a_dir = tempfile::NamedTempFile::new().unwrap();
    let under_a_file = format!("file://{}/tokens", not_a_dir.path().display());
    for (store, status, kind, says) in [
        (
            "postgres://user:pw-sentinel-91c2@127.0.0.1/db",
            2,
            "usage",
            "unknown store URL scheme",
        ),
        ("file://relative/dir", 2, "usage", "file:///ABSOLUTE/PATH"),
        (
            "redis://user:pw-sentinel-91c2@[::1/",
            2,
            "usage",
            "does not parse",
        ),
        (
            "redis+sentinel://:pw-sentinel-91c2@127.0.0.1:26379/",
            2,
            "usage",
            "MASTER-NAME",
        ),
        // A directory that cannot be made: the run cannot start.
        (under_a_file.as_str(), 1, "store", "file system error"),
    ] {
        let ran = load(&["--json", "--requests", "10", "--store", store], &[]);
        assert_eq!(ran.status, Some(status), "{store}: {ran:#?}");
        let (got, message) = ran.error_object();
        assert_eq!(got, kind, "{store}: {ran:#?}");
        assert!(message.contains(says), "{store}: {message}");
        assert_eq!(ran.stderr.trim_end(), format!("error: {message}"));
        ran.assert_no_secret();
    }

    // A Redis that refuses the password: the run cannot start, and says so
    // without the password.
    let redis = support::redis::RedisServer::with_password("the-right-one");
    let url = redis.url_with(":pw-sentinel-91c2@");
    let ran = load(&["--json", "--requests", "10"], &[("DAXIUM_STORE", &url)]);
    assert_eq!(ran.status, Some(1), "{ran:#?}");
    let (kind, message) = ran.error_object();
    assert_eq!(kind, "store");
    assert!(message.contains("refused its credentials"), "{message}");
    ran.assert_no_secret();

    // A Redis that does not answer is a warning: the replicas go on alone.
    let shared = Shared::start();
    let port = closed_port();
    let url = format!("redis://user:pw-sentinel-91c2@127.0.0.1:{port}/");
    let mut args = shared.args();
    args.extend(
        [
            "--json",
            "--requests",
            "50",
            "--replicas",
            "2",
            "--store",
            &url,
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = shared.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let ran = load(&args, &env);
    assert_eq!(ran.status, Some(0), "{ran:#?}");
    assert!(ran.stderr.starts_with("warning: "), "{ran:#?}");
    assert!(ran.stderr.contains("goes on alone"), "{ran:#?}");
    let json = ran.json();
    assert_eq!(json["store"], "redis");
    assert_eq!(json["ok"], 50);
    // Alone, each replica logged in for itself.
    assert_eq!(json["grants"]["password"], 2, "{json}");
    ran.assert_no_secret();
}

#[test]
fn embedded_runs_on_a_kept_store_each_log_in_with_their_own_server() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    for run in 0..2 {
        let ran = load(
            &[
                "--json",
                "--requests",
                "100",
                "--replicas",
                "2",
                "--concurrency",
                "4",
                "--store",
                &url,
            ],
            &[],
        );
        assert_eq!(ran.status, Some(0), "run {run}: {ran:#?}");
        let json = ran.json();
        assert_eq!(json["ok"], 100, "run {run}: {json}");
        // Each run's server is new: the record of the run before is not its,
        // so each run logs in (once, or twice when the server's revocation
        // half-way through comes before the run ends).
        let logins = json["grants"]["password"].as_u64().unwrap();
        assert!((1..=2).contains(&logins), "run {run}: {json}");
    }
    let records = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(records, 2, "a record per run's login");
}
