//! The layer over hyper-util's legacy client, against the crate's
//! Daxium-compatible server on 127.0.0.1 with the default token client: one
//! login for concurrent first calls; tokens refreshed across several
//! lifetimes and after an idle expiry; the one replay after a 401 (a revoked
//! login, an expired token, a POST byte for byte, a second 401, `NoReplay`);
//! a wrong password, a gateway's page, a reset refresh and an outage at the
//! token endpoint; and other origins, which never see the token.
//!
//! These run in real time (the server is real): token lifetimes of one or two
//! seconds keep each test within a few seconds.
#![cfg(all(feature = "mock", feature = "rustls"))]

use std::time::Duration;

use bytes::Bytes;
use daxium_auth::{
    AuthLayer, AuthService, Credentials, NoReplay, ReplayBody,
    mock::{Fault, MockServer},
};
use futures_util::future::join_all;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tower::{Layer, ServiceExt};

use crate::support;

use support::{layer, layer_for, server};

type Http = Client<HttpConnector, ReplayBody<Full<Bytes>>>;
type Svc = AuthService<Http>;

fn service(layer: &AuthLayer) -> Svc {
    layer.layer(Client::builder(TokioExecutor::new()).build_http())
}

/// A layer for `server` that backs off 20 ms after a failed grant, then up to
/// 100 ms.
fn quick_layer(server: &MockServer) -> AuthLayer {
    layer_for(server, |b| {
        b.backoff(Duration::from_millis(20), Duration::from_millis(100))
    })
}

async fn send_within(
    limit: Duration,
    svc: &Svc,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, daxium_auth::Error<hyper_util::client::legacy::Error>> {
    tokio::time::timeout(limit, svc.clone().oneshot(req))
        .await
        .unwrap_or_else(|_| panic!("no answer within {limit:?}: the request hung"))
}

async fn send(
    svc: &Svc,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, daxium_auth::Error<hyper_util::client::legacy::Error>> {
    send_within(Duration::from_secs(10), svc, req).await
}

async fn get(
    svc: &Svc,
    server: &MockServer,
) -> Result<Response<Incoming>, daxium_auth::Error<hyper_util::client::legacy::Error>> {
    let req = Request::get(server.api_url("items"))
        .body(Full::default())
        .unwrap();
    send(svc, req).await
}

fn post(url: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// The status and the body of the answer, within 5 s and without an error.
async fn text(svc: &Svc, req: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
    let res = send_within(Duration::from_secs(5), svc, req)
        .await
        .expect("no error");
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

// === one login ===

#[tokio::test]
async fn concurrent_first_calls_share_one_password_grant() {
    let server = MockServer::builder()
        .grant_latency(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let layer = quick_layer(&server);
    let svc = service(&layer);
    let calls = (0..200).map(|_| get(&svc, &server));
    for res in join_all(calls).await {
        assert_eq!(res.unwrap().status(), StatusCode::OK);
    }
    let c = server.counters();
    assert_eq!(
        (c.password_ok, c.refresh_ok, c.api_ok, c.api_no_token),
        (1, 0, 200, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_login() {
    let server = server(Duration::from_secs(2)).await;
    let layer = layer(&server);
    let api = service(&layer);
    let url = server.api_url("v1/items");

    let calls = (0..50).map(|_| text(&api, post(&url, "x")));
    for (status, _) in join_all(calls).await {
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(server.counters().password_ok, 1);
    assert_eq!(layer.stats().grants(), 1);
}

// === refreshes ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_across_token_lifetimes_and_after_idle_expiry() {
    let server = server(Duration::from_secs(1)).await;
    let layer = layer(&server);
    let api = service(&layer);
    let url = server.api_url("v1/items");

    // 3.5 s of traffic over 1 s tokens: refreshed in the background each time,
    // no request ever carries an expired token.
    for i in 0..35 {
        let (status, body) = text(&api, post(&url, "ping")).await;
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
    let (status, _) = text(&api, post(&url, "after idle")).await;
    assert_eq!(status, StatusCode::OK);
    let counters = server.counters();
    assert_eq!(counters.refresh_ok, refreshes + 1);
    assert_eq!(counters.password_ok, 1);
    assert_eq!(counters.api_expired, 0);
    assert_eq!(layer.stats().waited, waited + 1);
}

#[tokio::test]
async fn tokens_are_refreshed_across_expiries() {
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let layer = quick_layer(&server);
    let svc = service(&layer);
    for _ in 0..25 {
        assert_eq!(get(&svc, &server).await.unwrap().status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = server.counters();
    assert_eq!(c.password_ok, 1);
    // 2.5 s of 1 s tokens, refreshed at about half-life.
    assert!((3..=6).contains(&c.refresh_ok), "{c:?}");
    assert_eq!(c.api_ok, 25);
    assert_eq!(c.refresh_reuse, 0);
}

// === the replay after a 401 ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_is_replayed_once_with_a_new_token() {
    let server = server(Duration::from_secs(2)).await;
    let layer = layer(&server);
    let api = service(&layer);
    let url = server.api_url("v1/submissions");

    assert_eq!(text(&api, post(&url, "first")).await.0, StatusCode::OK);

    // Revoked on the server (refresh token too): 401, the refresh grant is
    // refused, the password grant succeeds, and the request goes again with
    // its body. The token had worked: a resend, not the request's replay.
    server.revoke_all();
    let (status, body) = text(&api, post(&url, "{\"n\":1}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "{\"n\":1}");
    let counters = server.counters();
    assert_eq!(counters.api_revoked, 1);
    assert_eq!(counters.refresh_rejected, 1);
    assert_eq!(counters.password_ok, 2);
    let stats = layer.stats();
    assert_eq!((stats.replays, stats.resends), (0, 1));

    // Expired on the server before the client thought so: 401, a refresh
    // grant, the resend (that token had worked too).
    server.expire_all();
    let (status, body) = text(&api, post(&url, "again")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"again"[..]));
    let counters = server.counters();
    assert_eq!(counters.api_expired, 1);
    assert!(counters.refresh_ok >= 1);
    let stats = layer.stats();
    assert_eq!((stats.replays, stats.resends), (0, 2));

    // A refusal of the token that had worked, then of the new one, which
    // never did (the replay), then of the next: the third 401 goes back as
    // it is, not a loop.
    server.fail_next_api(3, StatusCode::UNAUTHORIZED);
    let (status, _) = text(&api, post(&url, "thrice")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(server.counters().api_injected, 3);
    let stats = layer.stats();
    assert_eq!(
        (stats.replays, stats.resends, stats.replays_skipped),
        (1, 3, 1)
    );

    // `NoReplay`: the 401 goes back without a second attempt.
    server.fail_next_api(1, StatusCode::UNAUTHORIZED);
    let mut req = post(&url, "once only");
    req.extensions_mut().insert(NoReplay);
    let (status, _) = text(&api, req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let stats = layer.stats();
    assert_eq!((stats.replays, stats.resends), (1, 3));
    assert_eq!(stats.replays_skipped, 2);
    assert_eq!(server.counters().api_injected, 4);
}

#[tokio::test]
async fn a_revoked_login_falls_back_to_the_password_grant_in_the_same_call() {
    let server = MockServer::start().await.unwrap();
    let layer = quick_layer(&server);
    let svc = service(&layer);
    assert_eq!(get(&svc, &server).await.unwrap().status(), StatusCode::OK);
    // Every token of the login is revoked: the API refuses the access token,
    // the endpoint refuses the refresh token.
    server.revoke_all();
    assert_eq!(get(&svc, &server).await.unwrap().status(), StatusCode::OK);
    let c = server.counters();
    assert_eq!(
        (c.password_ok, c.refresh_rejected, c.api_revoked, c.api_ok),
        (2, 1, 1, 2)
    );
    // The token had worked: sent again as a resend, not the replay.
    let stats = layer.stats();
    assert_eq!((stats.replays, stats.resends), (0, 1));
}

#[tokio::test]
async fn a_post_is_replayed_byte_for_byte_after_a_401() {
    let server = MockServer::start().await.unwrap();
    let layer = quick_layer(&server);
    let svc = service(&layer);
    assert_eq!(get(&svc, &server).await.unwrap().status(), StatusCode::OK);
    server.fail_next_api(1, StatusCode::UNAUTHORIZED);
    let body: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let req = Request::post(server.api_url("submissions"))
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let res = send(&svc, req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), body);
    // The token had worked: a refusal of it is a revocation, resent.
    let stats = layer.stats();
    assert_eq!((stats.replays, stats.resends), (0, 1));
    assert_eq!(server.counters().api_injected, 1);
}

// === failures at the token endpoint ===

#[tokio::test]
async fn a_wrong_password_is_tried_once_and_reported_with_its_code() {
    let server = MockServer::start().await.unwrap();
    let wrong = Credentials::new(
        server.credentials().client_id(),
        "daxium-client-secret",
        "user@example.com",
        "wrong password",
    );
    let layer = layer_for(&server, |b| b.credentials(wrong));
    let svc = service(&layer);
    let calls = (0..100).map(|_| get(&svc, &server));
    for res in join_all(calls).await {
        let err = res.unwrap_err();
        let token = err.token_error().unwrap();
        assert!(token.is_grant_rejected());
        assert_eq!(token.status(), Some(StatusCode::UNAUTHORIZED));
        assert!(token.error_code().unwrap().starts_with("DAERR-"));
        assert!(!format!("{err:?} {token}").contains("wrong password"));
    }
    let c = server.counters();
    assert_eq!(
        (c.password_rejected, c.grant_requests, c.api_requests),
        (1, 1, 0)
    );

    // Fixing the credentials lets the next call in.
    layer.set_credentials(server.credentials());
    assert_eq!(get(&svc, &server).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_gateway_page_on_the_login_is_retried_not_taken_for_a_wrong_password() {
    let server = MockServer::start().await.unwrap();
    server.fail_next_grants(
        1,
        Fault::Respond {
            status: StatusCode::FORBIDDEN,
            content_type: "text/html".into(),
            body: Bytes::from_static(b"<html><h1>403 Forbidden</h1></html>"),
            retry_after: None,
        },
    );
    let layer = quick_layer(&server);
    let svc = service(&layer);
    // The next attempt comes after one backoff (20 ms), not after the
    // rejected-password cool-down (minutes).
    let mut ok = false;
    for _ in 0..20 {
        match get(&svc, &server).await {
            Ok(res) => {
                assert_eq!(res.status(), StatusCode::OK);
                ok = true;
                break;
            }
            Err(err) => {
                let token = err.token_error().expect("a token error");
                assert!(!token.is_grant_rejected(), "{token:?}");
                assert_eq!(token.status(), Some(StatusCode::FORBIDDEN));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the login went through after the gateway's page");
    let c = server.counters();
    assert_eq!(
        (c.faults_injected, c.password_ok, c.grant_requests),
        (1, 1, 2)
    );
    let stats = layer.stats();
    assert_eq!((stats.password_rejected, stats.password_ok), (0, 1));
}

#[tokio::test]
async fn a_reset_refresh_never_sends_its_refresh_token_again() {
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(2))
        .reuse_protection(true)
        .start()
        .await
        .unwrap();
    let layer = quick_layer(&server);
    let svc = service(&layer);
    assert_eq!(get(&svc, &server).await.unwrap().status(), StatusCode::OK);
    // The refresh reaches the server, which spends the token, then the
    // connection breaks before the answer.
    server.fail_next_grants(1, Fault::Reset);
    server.expire_all();
    for _ in 0..3 {
        let res = get(&svc, &server).await;
        if res.as_ref().is_ok_and(|r| r.status() == StatusCode::OK) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert_eq!(get(&svc, &server).await.unwrap().status(), StatusCode::OK);
    let c = server.counters();
    assert_eq!(
        c.refresh_reuse, 0,
        "the spent refresh token was never sent again"
    );
    assert_eq!(c.faults_injected, 1);
    let grants: Vec<_> = server
        .grant_log()
        .into_iter()
        .filter_map(|g| g.grant_type)
        .collect();
    assert_eq!(grants, ["password", "refresh_token", "password"]);
}

#[tokio::test]
async fn an_outage_during_a_background_refresh_is_invisible() {
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let layer = layer_for(&server, |b| {
        b.backoff(Duration::from_millis(50), Duration::from_millis(100))
    });
    let svc = service(&layer);
    assert_eq!(get(&svc, &server).await.unwrap().status(), StatusCode::OK);
    server.fail_next_grants(3, Fault::ServerError);
    // Requests every 50 ms across the refresh point (about 1 s) and past the
    // first token's expiry (2 s).
    for _ in 0..50 {
        assert_eq!(get(&svc, &server).await.unwrap().status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = server.counters();
    assert_eq!(c.faults_injected, 3);
    assert!(c.password_ok + c.refresh_ok >= 2, "recovered: {c:?}");
    assert_eq!(c.api_ok, 51);
    assert_eq!(c.api_expired + c.api_unknown + c.api_revoked, 0);
}

// === origins ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_origins_never_see_the_token() {
    let server = server(Duration::from_secs(2)).await;
    let other = MockServer::start().await.unwrap();
    // The layer's origin is `server`'s; `other` is another port.
    let layer = layer(&server);
    let api = service(&layer);

    let (status, _) = text(&api, post(&other.api_url("x"), "x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(other.counters().api_no_token, 1);
    assert_eq!(layer.stats().grants(), 0, "no login for a foreign origin");
    assert_eq!(layer.stats().replays, 0);
}
