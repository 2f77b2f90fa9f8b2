//! The layer against the crate's Daxium-compatible server over loopback:
//! hyper-util's client, the default token client, real HTTP.
#![cfg(all(feature = "mock", feature = "rustls"))]

use std::time::Duration;

use bytes::Bytes;
use daxium_auth::{
    AuthLayer, AuthService, Credentials, ReplayBody,
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

type Http = Client<HttpConnector, ReplayBody<Full<Bytes>>>;
type Svc = AuthService<Http>;

fn client() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

fn layer(server: &MockServer) -> AuthLayer {
    AuthLayer::builder()
        .token_url(server.token_url())
        .credentials(server.credentials())
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .build()
        .unwrap()
}

async fn get(
    svc: &Svc,
    server: &MockServer,
) -> Result<Response<Incoming>, daxium_auth::Error<hyper_util::client::legacy::Error>> {
    let req = Request::get(server.api_url("items"))
        .body(Full::default())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), svc.clone().oneshot(req))
        .await
        .expect("no request hangs")
}

#[tokio::test]
async fn concurrent_first_calls_share_one_password_grant() {
    let server = MockServer::builder()
        .grant_latency(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let layer = layer(&server);
    let svc = layer.layer(client());
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

#[tokio::test]
async fn a_revoked_login_falls_back_to_the_password_grant_in_the_same_call() {
    let server = MockServer::start().await.unwrap();
    let layer = layer(&server);
    let svc = layer.layer(client());
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
    assert_eq!(layer.stats().replays, 1);
}

#[tokio::test]
async fn a_wrong_password_is_tried_once_and_reported_with_its_code() {
    let server = MockServer::start().await.unwrap();
    let wrong = Credentials::new(
        server.credentials().client_id(),
        "daxium-client-secret",
        "user@example.com",
        "wrong password",
    );
    let layer = AuthLayer::builder()
        .token_url(server.token_url())
        .credentials(wrong)
        .build()
        .unwrap();
    let svc = layer.layer(client());
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
    let layer = layer(&server);
    let svc = layer.layer(client());
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
    let layer = layer(&server);
    let svc = layer.layer(client());
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
    let layer = AuthLayer::builder()
        .token_url(server.token_url())
        .credentials(server.credentials())
        .backoff(Duration::from_millis(50), Duration::from_millis(100))
        .build()
        .unwrap();
    let svc = layer.layer(client());
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

#[tokio::test]
async fn a_post_is_replayed_byte_for_byte_after_a_401() {
    let server = MockServer::start().await.unwrap();
    let layer = layer(&server);
    let svc = layer.layer(client());
    assert_eq!(get(&svc, &server).await.unwrap().status(), StatusCode::OK);
    server.fail_next_api(1, StatusCode::UNAUTHORIZED);
    let body: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let req = Request::post(server.api_url("submissions"))
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), body);
    assert_eq!(layer.stats().replays, 1);
    assert_eq!(server.counters().api_injected, 1);
}

#[tokio::test]
async fn tokens_are_refreshed_across_expiries() {
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let layer = layer(&server);
    let svc = layer.layer(client());
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
