//! Two token endpoints on one store: a staging and a production layer with
//! the same client id and username share a `MemoryStore`, a `FileStore`
//! directory or a Redis (with the default key prefix). Each keeps the tokens
//! of its own endpoint: every API request carries a token that its server
//! issued, and no refresh token reaches a server that did not issue it.
#![cfg(all(feature = "mock", feature = "rustls"))]

use std::sync::Arc;

use daxium_auth::{MemoryStore, mock::MockServer, store::AnyStore};
use http::StatusCode;

use crate::support;

use support::replicas::{Issued, Replica, replica, server};

/// Tokens that outlive the test: only the test's `expire_all` retires them.
const LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// A layer of `server`'s login on `store`; both servers accept one login.
fn layer(server: &MockServer, store: AnyStore) -> Replica {
    replica(server, Some(store), &Arc::new(Issued::default()), |b| b)
}

async fn get_ok(replica: &Replica, server: &MockServer) {
    let status = replica.get(&server.api_url("v1/items")).await;
    assert_eq!(status, Ok(StatusCode::OK));
}

/// Staging logs in first, production second, both again, then both refresh
/// after their servers expired every token: each server saw one login, one
/// refresh with a refresh token of its own, and only its own access tokens.
async fn each_endpoint_keeps_its_own_tokens(staging_store: AnyStore, production_store: AnyStore) {
    let staging = server(LIFETIME).await;
    let production = server(LIFETIME).await;
    assert_eq!(
        format!("{:?}", staging.credentials()),
        format!("{:?}", production.credentials()),
        "one login at both endpoints"
    );
    let on_staging = layer(&staging, staging_store);
    let on_production = layer(&production, production_store);

    get_ok(&on_staging, &staging).await;
    get_ok(&on_production, &production).await;
    get_ok(&on_staging, &staging).await;
    get_ok(&on_production, &production).await;
    staging.expire_all();
    production.expire_all();
    get_ok(&on_staging, &staging).await;
    get_ok(&on_production, &production).await;

    for (name, server) in [("staging", &staging), ("production", &production)] {
        let seen = server.counters();
        assert_eq!(
            seen.api_unknown, 0,
            "{name} got another server's token: {seen:?}"
        );
        assert_eq!(seen.api_ok, 3, "{name}: {seen:?}");
        assert_eq!(seen.api_expired, 1, "{name}: {seen:?}");
        assert_eq!(seen.password_ok, 1, "{name} logged in once: {seen:?}");
        assert_eq!(seen.refresh_ok, 1, "{name} refreshed once: {seen:?}");
        assert_eq!(
            seen.refresh_rejected, 0,
            "{name} got another server's refresh token: {seen:?}"
        );
        assert_eq!(seen.grant_requests, 2, "{name}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_endpoints_on_one_memory_store_keep_their_own_tokens() {
    let store = AnyStore::new(MemoryStore::new());
    each_endpoint_keeps_its_own_tokens(store.clone(), store).await;
}

#[cfg(feature = "file")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_endpoints_on_one_file_store_keep_their_own_tokens() {
    use daxium_auth::store::FileStore;

    let dir = tempfile::tempdir().expect("a temporary directory");
    // A store each, as two processes on one host would have.
    let store = || AnyStore::new(FileStore::new(dir.path()).expect("a file store"));
    each_endpoint_keeps_its_own_tokens(store(), store()).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_endpoints_on_one_redis_keep_their_own_tokens() {
    use daxium_auth::store::RedisStore;

    let redis = support::replicas::blocking(support::redis::RedisServer::start).await;
    // The default key prefix for both: nothing but the key tells them apart.
    let store = || AnyStore::new(RedisStore::new(&redis.url()).expect("a valid URL"));
    each_endpoint_keeps_its_own_tokens(store(), store()).await;
}

/// Token URLs that differ in their query alone (Azure AD B2C's `?p=` picks a
/// policy) are two logins on one store, each with tokens of its own; the same
/// query again is the same login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_urls_that_differ_in_their_query_are_two_logins() {
    let server = server(LIFETIME).await;
    let store = AnyStore::new(MemoryStore::new());
    let at_policy = |policy: &str| {
        let url = format!("{}?p={policy}", server.token_url());
        replica(
            &server,
            Some(store.clone()),
            &Arc::new(Issued::default()),
            |b| b.token_url(url),
        )
    };

    let signin = at_policy("b2c_1_signin");
    get_ok(&signin, &server).await;
    // Closed, the layer has written its record.
    signin.layer.close().await;
    let admin = at_policy("b2c_1_admin");
    get_ok(&admin, &server).await;
    let seen = server.counters();
    assert_eq!(seen.password_ok, 2, "the other policy logs in: {seen:?}");

    let signin_again = at_policy("b2c_1_signin");
    get_ok(&signin_again, &server).await;
    let seen = server.counters();
    assert_eq!(
        seen.password_ok, 2,
        "the same policy shares its login: {seen:?}"
    );
    assert_eq!(seen.grant_requests, 2, "{seen:?}");
    assert_eq!(seen.api_ok, 3, "{seen:?}");
}
