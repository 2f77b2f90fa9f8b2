//! Requests that carry an `Authorization` of their own, both ways of
//! [`keep_authorization`](daxium_auth::AuthLayerBuilder::keep_authorization):
//! on, they reach the inner service unchanged (no token, no replay, nothing
//! reported to the cache); off (the default), the layer's token replaces
//! their header. Through the tower layer under paused time, with a
//! `tower_test::mock` and a scripted endpoint, and through
//! reqwest-middleware against the Daxium-compatible server on 127.0.0.1.
#![cfg(all(feature = "mock", feature = "reqwest"))]

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use bytes::Bytes;
use daxium_auth::{ReplayBody, reqwest::AuthMiddleware};
use http::{HeaderValue, Request, Response, StatusCode, header::AUTHORIZATION};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_test::mock;

use crate::support;

use support::scripted::{get, send, setup, setup_with};

const OWN: &str = "Basic b3RoZXI6YWNjb3VudA==";

/// A request for the API that carries `OWN`.
fn with_own_authorization() -> Request<Full<Bytes>> {
    let mut req = get();
    req.headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_static(OWN));
    req
}

type Mock = mock::Mock<Request<ReplayBody<Full<Bytes>>>, Response<Full<Bytes>>>;
type Handle = mock::Handle<Request<ReplayBody<Full<Bytes>>>, Response<Full<Bytes>>>;

fn refusal() -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .body(Full::default())
        .unwrap()
}

/// Sends `req` through `svc` and answers it with `answer` from the mock;
/// returns what the inner service received and what the caller got.
async fn through_mock(
    svc: &mut daxium_auth::AuthService<Mock>,
    handle: &mut Handle,
    req: Request<Full<Bytes>>,
    answer: Response<Full<Bytes>>,
) -> (Option<HeaderValue>, StatusCode) {
    handle.allow(1);
    std::future::poll_fn(|cx| svc.poll_ready(cx))
        .await
        .expect("the mock is ready");
    let fut = tokio::spawn(svc.call(req));
    let (received, respond) = handle.next_request().await.expect("the request");
    respond.send_response(answer);
    let res = fut.await.unwrap().unwrap();
    (received.headers().get(AUTHORIZATION).cloned(), res.status())
}

#[tokio::test(start_paused = true)]
async fn a_kept_authorization_reaches_the_inner_service_unchanged_and_its_refusal_goes_back() {
    let s = setup_with(|b| b.keep_authorization(true));
    let (inner, mut handle) = mock::pair();
    let mut svc = s.layer.layer(inner);

    let (sent, status) =
        through_mock(&mut svc, &mut handle, with_own_authorization(), refusal()).await;
    assert_eq!(
        sent.as_ref().map(HeaderValue::as_bytes),
        Some(OWN.as_bytes())
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED, "its refusal, unchanged");
    assert_eq!(s.endpoint.grants(), 0, "no token wanted for it");
    let stats = s.layer.stats();
    assert_eq!(
        (stats.replays, stats.replays_skipped, stats.waited),
        (0, 0, 0)
    );

    // Requests without a header of their own get the token as ever, and the
    // refusal above said nothing about it.
    s.layer.login().await.unwrap();
    let ok = Response::new(Full::default());
    let (sent, status) = through_mock(&mut svc, &mut handle, get(), ok).await;
    assert_eq!(sent.unwrap(), "Bearer access-1");
    assert_eq!(status, StatusCode::OK);
    let (sent, _) = through_mock(&mut svc, &mut handle, with_own_authorization(), refusal()).await;
    assert_eq!(sent.unwrap(), OWN);
    assert_eq!(s.endpoint.grants(), 1, "the token is kept: no refresh");
    assert!(s.layer.is_ready());
}

#[tokio::test(start_paused = true)]
async fn by_default_the_token_replaces_an_authorization_of_the_request() {
    let s = setup();
    let svc = s.service();
    let res = send(&svc, with_own_authorization()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = s.api.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].clone().unwrap(), "Bearer access-1");
    assert_eq!(s.endpoint.password.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn with_the_switch_on_a_request_without_authorization_is_authorized() {
    let s = setup_with(|b| b.keep_authorization(true));
    let svc = s.service();
    assert_eq!(send(&svc, get()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        s.api.seen.lock().unwrap()[0].clone().unwrap(),
        "Bearer access-1"
    );
    // The scripted API does not know `OWN`: its 401 comes back as it is,
    // with no replay and no grant.
    let res = send(&svc, with_own_authorization()).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(s.api.attempts.load(SeqCst), 2);
    assert_eq!(s.endpoint.grants(), 1);
    // The origin rule holds as ever: another origin gets no token.
    let elsewhere = Request::get("http://elsewhere.example/api")
        .body(Full::default())
        .unwrap();
    send(&svc, elsewhere).await.unwrap();
    assert_eq!(s.api.seen.lock().unwrap()[2], None);
}

// === reqwest-middleware, against the real server ===

/// What `url` answers, through a reqwest client with `layer`'s middleware,
/// to a request that carries an `Authorization` the server never issued.
async fn status_with_own_header(layer: &daxium_auth::AuthLayer, url: &str) -> reqwest::StatusCode {
    let reqwest = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(reqwest)
        .with(AuthMiddleware::new(layer))
        .build();
    let res = client
        .get(url)
        .header(AUTHORIZATION, "Bearer not-issued-here")
        .send()
        .await
        .unwrap();
    res.status()
}

#[tokio::test]
async fn the_reqwest_middleware_follows_the_same_switch() {
    let server = support::server(Duration::from_secs(60)).await;
    let url = server.api_url("v1/items");

    // On: the request goes as it is; the server refuses the unknown header.
    let kept = support::layer_for(&server, |b| b.keep_authorization(true));
    let status = status_with_own_header(&kept, &url).await;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    let counters = server.counters();
    assert_eq!((counters.grant_requests, counters.api_unknown), (0, 1));
    assert_eq!(kept.stats().replays, 0);

    // Off: the layer's token replaces it, and the request succeeds.
    let replaced = support::layer_for(&server, |b| b);
    let status = status_with_own_header(&replaced, &url).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let counters = server.counters();
    assert_eq!((counters.password_ok, counters.api_ok), (1, 1));
    server.shutdown().await;
}
