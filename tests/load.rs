//! The `load` example's run, in-process against the embedded
//! Daxium-compatible server: every request answered 200 across token
//! refreshes and a revocation, the JSON summary with exactly the documented
//! keys, and the error paths (refused login, unreachable endpoint) that must
//! fail fast with one line and no secret.
#![cfg(all(feature = "mock", feature = "rustls"))]

#[path = "../examples/load/run.rs"]
#[allow(dead_code)]
mod run;

use std::time::{Duration, Instant};

use run::{Config, Embedded, Fatal, Stop, Target};
use secrecy::SecretString;

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
    let stats = summary.stats;
    assert!(stats.refresh_ok >= 1, "a background refresh: {stats:?}");
    // The revocation: the refresh token is refused, one new login.
    assert_eq!(stats.refresh_rejected, 1, "{stats:?}");
    assert_eq!(stats.password_ok, 2, "{stats:?}");
    assert!(
        stats.replays >= 1,
        "the requests that met the revoked token were replayed"
    );
    assert!(summary.p50_ms > 0.0 && summary.p50_ms <= summary.p99_ms);
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
async fn json_has_exactly_the_documented_keys() {
    // Long-lived tokens: however slow the machine, the only refresh grant is
    // the one the revocation refuses.
    let config = Config {
        concurrency: 8,
        stop: Stop::Requests(2000),
        embedded: Embedded {
            token_lifetime: Duration::from_secs(60),
            revoke_halfway: true,
        },
        ..Config::default()
    };
    let summary = run::run(config).await.expect("the run starts");
    assert_eq!(summary.requests, 2000);
    assert_eq!(summary.ok, 2000);

    let json: serde_json::Value = serde_json::from_str(&summary.to_json()).unwrap();
    let object = json.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "elapsed_s",
            "errors",
            "grants",
            "ok",
            "p50_ms",
            "p99_ms",
            "requests",
            "retries_401",
            "status"
        ]
    );
    assert_eq!(json["requests"], 2000);
    assert_eq!(json["ok"], 2000);
    assert_eq!(json["status"]["200"], 2000);
    assert_eq!(json["errors"], serde_json::json!({}));
    assert_eq!(
        json["grants"]["password"], 2,
        "login, then again after the revocation"
    );
    assert_eq!(
        json["grants"]["refresh_token"], 1,
        "the revoked refresh token: {json}"
    );
    assert_eq!(json["retries_401"], summary.stats.replays);
    assert!(json["p99_ms"].as_f64().unwrap() >= json["p50_ms"].as_f64().unwrap());
    assert!(json["elapsed_s"].as_f64().unwrap() > 0.0);
    // The keys in the documented order, on one line.
    let text = summary.to_json();
    assert!(text.starts_with("{\"requests\":2000,\"ok\":2000,\"status\":{\"200\":2000}"));
    assert!(!text.contains('\n'));
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
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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

    let config = Config {
        concurrency: 0,
        ..Config::default()
    };
    assert!(matches!(run::run(config).await, Err(Fatal::Usage(_))));
}
