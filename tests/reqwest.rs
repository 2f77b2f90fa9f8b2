//! reqwest-middleware with `AuthMiddleware`, against the Daxium-compatible
//! server on 127.0.0.1: refreshes across token lifetimes, the one replay
//! after a 401, the cases that are not replayed, the origin rule, and one
//! token cache shared with a tower stack.
//!
//! Real time (the server is real), with one- and two-second tokens.
#![cfg(all(feature = "mock", feature = "reqwest"))]

use std::time::Duration;

use bytes::Bytes;
use daxium_auth::{AuthLayer, NoReplay, TokenError, mock::MockServer, reqwest::AuthMiddleware};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use reqwest::StatusCode;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tower::{Layer, ServiceExt};

use crate::support;

use support::{layer, server};

fn new_client(layer: &AuthLayer) -> ClientWithMiddleware {
    let reqwest = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    ClientBuilder::new(reqwest)
        .with(AuthMiddleware::new(layer))
        .build()
}

async fn text(res: reqwest::Response) -> (StatusCode, String) {
    let status = res.status();
    (status, res.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_across_token_lifetimes() {
    let server = server(Duration::from_secs(1)).await;
    let layer = layer(&server);
    let client = new_client(&layer);
    let url = server.api_url("v1/items");

    for i in 0..30 {
        let res = client
            .post(&url)
            .body(format!("n={i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(text(res).await, (StatusCode::OK, format!("n={i}")));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counters = server.counters();
    assert_eq!(counters.password_ok, 1, "one login");
    assert!(counters.refresh_ok >= 2, "refreshed: {counters:?}");
    assert_eq!(counters.api_ok, 30);
    assert_eq!(counters.api_expired, 0);
    assert_eq!(layer.stats().refresh_ok, counters.refresh_ok);

    // Idle past the lifetime: the next request waits for a refresh.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let refreshes = counters.refresh_ok;
    let res = client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(server.counters().refresh_ok, refreshes + 1);
    assert_eq!(server.counters().api_expired, 0);
}

/// A request with a valid token takes it as the layer does, at once and
/// without the cache's lock: only the first, which waited for the login,
/// counts as waiting; the cache's own `access_token` likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_a_valid_token_do_not_wait() {
    let server = server(Duration::from_secs(3600)).await;
    let layer = layer(&server);
    let client = new_client(&layer);
    let url = server.api_url("v1/items");
    for _ in 0..10 {
        let res = client.get(&url).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    layer.cache().access_token().await.unwrap();
    let stats = layer.stats();
    assert_eq!((stats.waited, stats.password_ok), (1, 1), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_is_replayed_once_with_a_new_token() {
    let server = server(Duration::from_secs(2)).await;
    let layer = layer(&server);
    let client = new_client(&layer);
    let url = server.api_url("v1/submissions");
    assert_eq!(
        client.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );

    // Revoked: 401, refresh refused, password grant, sent again with the
    // body; the token had worked, so that is a resend, not the replay.
    server.revoke_all();
    let res = client.post(&url).body("{\"n\":1}").send().await.unwrap();
    assert_eq!(text(res).await, (StatusCode::OK, "{\"n\":1}".to_owned()));
    let counters = server.counters();
    assert_eq!(counters.api_revoked, 1);
    assert_eq!(counters.refresh_rejected, 1);
    assert_eq!(counters.password_ok, 2);
    let stats = layer.stats();
    assert_eq!((stats.replays, stats.resends), (0, 1));
    assert_eq!(stats.grants(), 3);

    // Expired on the server: 401, a refresh grant, a resend.
    server.expire_all();
    let res = client.put(&url).body("x").send().await.unwrap();
    assert_eq!(text(res).await, (StatusCode::OK, "x".to_owned()));
    assert_eq!(server.counters().api_expired, 1);
    assert!(server.counters().refresh_ok >= 1);
    let stats = layer.stats();
    assert_eq!((stats.replays, stats.resends), (0, 2));

    // The token that had worked, then the new one before it worked (the
    // replay), then the next: the third 401 goes back as it is.
    server.fail_next_api(3, StatusCode::UNAUTHORIZED);
    let res = client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(server.counters().api_injected, 3);
    let stats = layer.stats();
    assert_eq!(
        (stats.replays, stats.resends, stats.replays_skipped),
        (1, 3, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_replayed() {
    let server = server(Duration::from_secs(2)).await;
    let layer = AuthLayer::builder()
        .token_url(server.token_url())
        .credentials(server.credentials())
        .replay_limit(16)
        .build()
        .unwrap();
    let client = new_client(&layer);
    let url = server.api_url("v1/submissions");

    // A request the API answers first, so that the refusal below is one of
    // a token that worked (a revocation), not a streak of new tokens refused
    // on first use, which would slow the grants down.
    accepted(&client, &url).await;
    // The `NoReplay` extension.
    server.fail_next_api(1, StatusCode::UNAUTHORIZED);
    let res = client
        .post(&url)
        .body("once")
        .with_extension(NoReplay)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // A request the API answers first, so that the refusal below is one of
    // a token that worked (a revocation), not a streak of new tokens refused
    // on first use, which would slow the grants down.
    accepted(&client, &url).await;
    // A streaming body reqwest cannot clone.
    server.fail_next_api(1, StatusCode::UNAUTHORIZED);
    let res = client
        .post(&url)
        .body(reqwest::Body::wrap(String::from("streamed")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // A request the API answers first, so that the refusal below is one of
    // a token that worked (a revocation), not a streak of new tokens refused
    // on first use, which would slow the grants down.
    accepted(&client, &url).await;
    // A body over the layer's replay limit.
    server.fail_next_api(1, StatusCode::UNAUTHORIZED);
    let res = client.post(&url).body("x".repeat(17)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let stats = layer.stats();
    assert_eq!((stats.replays, stats.replays_skipped), (0, 3));
    assert_eq!(server.counters().api_injected, 3);
    assert_eq!(server.counters().api_ok, 3);

    // A request the API answers first, so that the refusal below is one of
    // a token that worked (a revocation), not a streak of new tokens refused
    // on first use, which would slow the grants down.
    accepted(&client, &url).await;
    // At the limit it is sent again (a resend: the token had worked).
    server.fail_next_api(1, StatusCode::UNAUTHORIZED);
    let res = client.post(&url).body("y".repeat(16)).send().await.unwrap();
    assert_eq!(text(res).await, (StatusCode::OK, "y".repeat(16)));
    let stats = layer.stats();
    assert_eq!((stats.replays, stats.resends), (0, 1));

    // Replay off for the layer.
    let layer = AuthLayer::builder()
        .token_url(server.token_url())
        .credentials(server.credentials())
        .replay(false)
        .build()
        .unwrap();
    server.fail_next_api(1, StatusCode::UNAUTHORIZED);
    let res = new_client(&layer).get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(layer.stats().replays_skipped, 1);
}

/// Sends one request that the API answers 200.
async fn accepted(client: &ClientWithMiddleware, url: &str) {
    let res = client.get(url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_origins_never_see_the_token() {
    let server = server(Duration::from_secs(2)).await;
    let other = MockServer::start().await.unwrap();
    let layer = layer(&server);
    let client = new_client(&layer);

    let res = client.get(other.api_url("x")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(other.counters().api_no_token, 1);
    assert_eq!(layer.stats().grants(), 0);

    // Once the origin is configured, it gets the token.
    let layer = AuthLayer::builder()
        .token_url(server.token_url())
        .credentials(server.credentials())
        .api_origin(server.base_url())
        .api_origin(other.base_url())
        .build()
        .unwrap();
    let res = new_client(&layer)
        .get(server.api_url("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_a_typed_middleware_error() {
    let server = server(Duration::from_secs(2)).await;
    let good = server.credentials();
    let credentials = daxium_auth::Credentials::new(
        good.client_id(),
        "wrong secret",
        good.username(),
        "wrong password",
    );
    let layer = AuthLayer::builder()
        .token_url(server.token_url())
        .credentials(credentials)
        .build()
        .unwrap();
    let err = new_client(&layer)
        .get(server.api_url("x"))
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(err) = err else {
        panic!("a middleware error: {err:?}");
    };
    let token = err.downcast_ref::<TokenError>().expect("a TokenError");
    assert!(token.is_grant_rejected());
    assert!(
        !format!("{err:?} {err}").contains("wrong"),
        "no secret shown"
    );
    assert_eq!(server.counters().api_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_cache_for_reqwest_and_tower() {
    let server = server(Duration::from_secs(2)).await;
    let layer = layer(&server);
    let reqwest = new_client(&layer);
    let hyper = layer.layer(Client::builder(TokioExecutor::new()).build_http());
    let url = server.api_url("v1/items");

    assert_eq!(reqwest.get(&url).send().await.unwrap().status(), 200);
    let req = http::Request::get(&url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = hyper.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
    assert_eq!(server.counters().password_ok, 1, "one login for both");
    assert_eq!(layer.stats().grants(), 1);
}
