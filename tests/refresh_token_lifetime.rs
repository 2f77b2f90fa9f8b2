//! Refresh tokens with a lifetime (`refresh_expires_in`), against the
//! Daxium-compatible server on 127.0.0.1 issuing them: the endpoint states
//! and enforces it, and the layer never sends a refresh token past it; it
//! logs in with the password grant instead. Real time (the server is real),
//! with one-second access tokens and two-second refresh tokens.
#![cfg(all(feature = "mock", feature = "rustls"))]

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use daxium_auth::{GrantRequest, HttpFetcher, TokenFetcher, mock::MockServer};
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::time::sleep;
use tower::{Layer, ServiceExt};

use crate::support;

async fn server() -> MockServer {
    MockServer::builder()
        .token_lifetime(Duration::from_secs(1))
        .refresh_token_lifetime(Duration::from_secs(2))
        .start()
        .await
        .expect("bind 127.0.0.1")
}

#[tokio::test]
async fn the_endpoint_states_the_lifetime_and_refuses_an_expired_refresh_token() {
    let server = server().await;
    let fetcher = HttpFetcher::new(&server.token_url()).unwrap();
    let credentials = Arc::new(server.credentials());
    let pair = fetcher
        .fetch(GrantRequest::password(Arc::clone(&credentials)))
        .await
        .unwrap();
    assert_eq!(pair.refresh_token_lifetime(), Some(Duration::from_secs(2)));
    sleep(Duration::from_millis(2100)).await;
    let refresh = pair.refresh_token().unwrap().clone();
    let err = fetcher
        .fetch(GrantRequest::refresh(credentials, refresh))
        .await
        .unwrap_err();
    assert!(err.is_grant_rejected(), "{err:?}");
    let counters = server.counters();
    assert_eq!(
        (counters.refresh_rejected, counters.refresh_expired),
        (1, 1)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_expired_refresh_token_is_never_sent_the_password_grant_is_used_instead() {
    let server = server().await;
    let layer = support::layer(&server);
    let client = Client::builder(TokioExecutor::new()).build_http::<_>();
    let svc = layer.layer(client);
    let url = server.api_url("v1/items");
    let get = || {
        Request::get(url.as_str())
            .body(Empty::<Bytes>::new())
            .unwrap()
    };

    // The login, then a refresh while the refresh token lives.
    assert_eq!(
        svc.clone().oneshot(get()).await.unwrap().status(),
        StatusCode::OK
    );
    sleep(Duration::from_millis(600)).await;
    assert_eq!(
        svc.clone().oneshot(get()).await.unwrap().status(),
        StatusCode::OK
    );
    sleep(Duration::from_millis(300)).await;
    assert_eq!(
        svc.clone().oneshot(get()).await.unwrap().status(),
        StatusCode::OK
    );
    let counters = server.counters();
    assert_eq!(counters.password_ok, 1);
    assert!(counters.refresh_ok >= 1, "{counters:?}");

    // Idle past both lifetimes: the next request logs in again.
    sleep(Duration::from_millis(2500)).await;
    let refreshes = counters.refresh_ok;
    assert_eq!(
        svc.clone().oneshot(get()).await.unwrap().status(),
        StatusCode::OK
    );
    let counters = server.counters();
    assert_eq!(counters.password_ok, 2, "{counters:?}");
    assert_eq!(counters.refresh_ok, refreshes);
    assert_eq!(counters.refresh_expired, 0, "no expired refresh token sent");
    assert_eq!(counters.refresh_rejected, 0);
    assert_eq!(counters.api_expired, 0);
    server.shutdown().await;
}

/// Through a store: the refresh token's lifetime travels with the record
/// (as wall-clock time), and a replica that adopted the pair never sends
/// the shared refresh token past it. Its forced refresh logs in instead.
#[tokio::test]
async fn a_shared_refresh_token_past_its_expiry_is_never_sent_by_the_replica_that_adopted_it() {
    use daxium_auth::{MemoryStore, TokenSource};

    // Refresh tokens of one second, the shortest lifetime a token is given.
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(1))
        .refresh_token_lifetime(Duration::from_secs(1))
        .start()
        .await
        .expect("bind 127.0.0.1");
    let store = MemoryStore::new();
    let first = support::layer_for(&server, |b| b.store(store.clone()));
    let second = support::layer_for(&server, |b| b.store(store.clone()));
    first.login().await.unwrap();
    second.login().await.unwrap();
    assert_eq!(
        second.subscribe().borrow().source(),
        Some(TokenSource::Store)
    );

    // Past the refresh token's second: the access token (as long) is stale,
    // so a forced refresh makes a grant, and it is a password grant.
    sleep(Duration::from_millis(1200)).await;
    second.refresh().await.unwrap();
    let counters = server.counters();
    assert_eq!(counters.password_ok, 2, "{counters:?}");
    assert_eq!(counters.refresh_expired, 0, "no expired refresh token sent");
    assert_eq!(counters.refresh_ok + counters.refresh_rejected, 0);
    assert_eq!(
        second.subscribe().borrow().source(),
        Some(TokenSource::PasswordGrant)
    );
    server.shutdown().await;
}
