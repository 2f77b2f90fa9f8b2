//! The one test harness of the integration tests: the `behaviour` binary
//! (`tests/main.rs`) declares `mod support;` and its modules use a part of it
//! through `crate::support`, as do the binaries apart (`load`, `secrets`). `scripted`: a token endpoint and a
//! protected API in memory, for the layer's logic under paused time; `fixed`:
//! a fetcher that always issues one token; `stores`: a token store whose
//! calls go through a hook, and what the store tests share; `store_contract`:
//! what every token store promises; `redis`: real `redis-server` processes;
//! `replicas`: replicas of a service against the crate's server in real time;
//! `secrets`: captured logs and the search for secrets in them; and here, the
//! crate's Daxium-compatible server on 127.0.0.1 with a layer pointed at it.
// A test binary uses a part of the harness: the rest is dead code there.
#![allow(dead_code)]

pub(crate) mod fixed;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(all(feature = "mock", feature = "rustls"))]
pub(crate) mod replicas;
pub(crate) mod scripted;
pub(crate) mod secrets;
pub(crate) mod store_contract;
pub(crate) mod stores;

use std::time::Duration;

use daxium_auth::{AuthLayer, AuthLayerBuilder, mock::MockServer};

/// The embedded server on 127.0.0.1, issuing tokens of `lifetime`.
pub(crate) async fn server(lifetime: Duration) -> MockServer {
    MockServer::builder()
        .token_lifetime(lifetime)
        .start()
        .await
        .expect("bind 127.0.0.1")
}

/// A layer for `server` with the default settings, then `configure`d.
pub(crate) fn layer_for(
    server: &MockServer,
    configure: impl FnOnce(AuthLayerBuilder) -> AuthLayerBuilder,
) -> AuthLayer {
    let builder = AuthLayer::builder()
        .token_url(server.token_url())
        .credentials(server.credentials());
    configure(builder).build().expect("valid settings")
}

/// A layer for `server`, refreshing 500 ms before expiry (half-life for
/// shorter tokens).
pub(crate) fn layer(server: &MockServer) -> AuthLayer {
    layer_for(server, |b| b.refresh_margin(Duration::from_millis(500)))
}
