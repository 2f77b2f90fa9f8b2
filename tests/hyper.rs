//! hyper-util's legacy client with `AuthLayer`, against the Daxium-compatible
//! server on 127.0.0.1: tokens refreshed across several lifetimes, a token
//! that expired while idle, and the one replay after a 401.
//!
//! These run in real time (the server is real): token lifetimes of one or two
//! seconds keep each test within a few seconds.
#![cfg(feature = "mock")]

use std::time::Duration;

use bytes::Bytes;
use daxium_auth::{AuthLayer, AuthService, NoReplay, ReplayBody, mock::MockServer};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tower::{Layer, ServiceExt};

mod support;

use support::{layer, server};

type Inner = Client<HttpConnector, ReplayBody<Full<Bytes>>>;
type Api = AuthService<Inner>;

fn client(layer: &AuthLayer) -> Api {
    let inner = Client::builder(TokioExecutor::new()).build_http();
    layer.layer(inner)
}

fn post(url: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn send(api: &Api, req: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
    let res: Response<_> = tokio::time::timeout(Duration::from_secs(5), api.clone().oneshot(req))
        .await
        .expect("answered within 5 s")
        .expect("no error");
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_across_token_lifetimes_and_after_idle_expiry() {
    let server = server(Duration::from_secs(1)).await;
    let layer = layer(&server);
    let api = client(&layer);
    let url = server.api_url("v1/items");

    // 3.5 s of traffic over 1 s tokens: refreshed in the background each time,
    // no request ever carries an expired token.
    for i in 0..35 {
        let (status, body) = send(&api, post(&url, "ping")).await;
        assert_eq!(status, StatusCode::OK, "request {i}");
        assert_eq!(body, "ping");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counters = server.counters();
    assert_eq!(counters.password_ok, 1, "one login");
    assert!(counters.refresh_ok >= 3, "refreshed: {counters:?}");
    assert_eq!(counters.api_ok, 35);
    assert_eq!(counters.api_expired + counters.api_unknown, 0);
    let stats = layer.stats();
    assert_eq!(stats.refresh_ok, counters.refresh_ok);
    assert_eq!(stats.replays, 0);

    // Idle past the token's lifetime: the next request waits for a refresh
    // (the refresh token is still good) instead of sending an expired token.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let refreshes = server.counters().refresh_ok;
    let waited = layer.stats().waited;
    let (status, _) = send(&api, post(&url, "after idle")).await;
    assert_eq!(status, StatusCode::OK);
    let counters = server.counters();
    assert_eq!(counters.refresh_ok, refreshes + 1);
    assert_eq!(counters.password_ok, 1);
    assert_eq!(counters.api_expired, 0);
    assert_eq!(layer.stats().waited, waited + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_is_replayed_once_with_a_new_token() {
    let server = server(Duration::from_secs(2)).await;
    let layer = layer(&server);
    let api = client(&layer);
    let url = server.api_url("v1/submissions");

    assert_eq!(send(&api, post(&url, "first")).await.0, StatusCode::OK);

    // Revoked on the server (refresh token too): 401, the refresh grant is
    // refused, the password grant succeeds, and the request goes again with
    // its body.
    server.revoke_all();
    let (status, body) = send(&api, post(&url, "{\"n\":1}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "{\"n\":1}");
    let counters = server.counters();
    assert_eq!(counters.api_revoked, 1);
    assert_eq!(counters.refresh_rejected, 1);
    assert_eq!(counters.password_ok, 2);
    assert_eq!(layer.stats().replays, 1);

    // Expired on the server before the client thought so: 401, a refresh
    // grant, the replay.
    server.expire_all();
    let (status, body) = send(&api, post(&url, "again")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"again"[..]));
    let counters = server.counters();
    assert_eq!(counters.api_expired, 1);
    assert!(counters.refresh_ok >= 1);
    assert_eq!(layer.stats().replays, 2);

    // A second 401 goes back as it is: one replay, not a loop.
    server.fail_next_api(2, StatusCode::UNAUTHORIZED);
    let (status, _) = send(&api, post(&url, "twice")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(server.counters().api_injected, 2);
    assert_eq!(layer.stats().replays, 3);

    // `NoReplay`: the 401 goes back without a second attempt.
    server.fail_next_api(1, StatusCode::UNAUTHORIZED);
    let mut req = post(&url, "once only");
    req.extensions_mut().insert(NoReplay);
    let (status, _) = send(&api, req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let stats = layer.stats();
    assert_eq!(stats.replays, 3);
    assert_eq!(stats.replays_skipped, 1);
    assert_eq!(server.counters().api_injected, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_login() {
    let server = server(Duration::from_secs(2)).await;
    let layer = layer(&server);
    let api = client(&layer);
    let url = server.api_url("v1/items");

    let calls = (0..50).map(|_| send(&api, post(&url, "x")));
    for (status, _) in futures_util::future::join_all(calls).await {
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(server.counters().password_ok, 1);
    assert_eq!(layer.stats().grants(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_origins_never_see_the_token() {
    let server = server(Duration::from_secs(2)).await;
    let other = MockServer::start().await.unwrap();
    // The layer's origin is `server`'s; `other` is another port.
    let layer = layer(&server);
    let api = client(&layer);

    let (status, _) = send(&api, post(&other.api_url("x"), "x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(other.counters().api_no_token, 1);
    assert_eq!(layer.stats().grants(), 0, "no login for a foreign origin");
    assert_eq!(layer.stats().replays, 0);
}
