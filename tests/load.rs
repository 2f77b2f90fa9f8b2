//! The `load` example's run, in-process against the embedded
//! Daxium-compatible server: every request answered 200 across token
//! refreshes and a revocation, and the error paths (refused login,
//! unreachable endpoint) that must fail fast with one line and no secret.
//! The example's own modules (their unit tests run here too) are included by
//! path.
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

use std::time::{Duration, Instant};

use run::{Config, Embedded, Fatal, Stop};
use secrecy::SecretString;
use summary::Target;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_succeeds_across_refreshes_and_a_revocation() {
    let config = Config {
        concurrency: 16,
        stop: Stop::Duration(Duration::from_millis(3500)),
        embedded: Embedded {
            token_lifetime: Duration::from_secs(1),
            revoke_halfway: true,
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
    assert!(
        stats.replays >= 1,
        "the requests that met the revoked token were replayed"
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
    // Every refused API request is one the layer replayed.
    assert_eq!(counters.api_requests - counters.api_ok, stats.replays);
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
async fn an_unreachable_endpoint_fails_fast() {
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
    assert!(started.elapsed() < Duration::from_secs(5));
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
}

/// A port that was just free on 127.0.0.1: nothing listens there.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
