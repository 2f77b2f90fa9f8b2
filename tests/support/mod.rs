//! What the loopback integration tests share: the Daxium-compatible server with
//! a given token lifetime, and a layer pointed at it.

use std::time::Duration;

use daxium_auth::{AuthLayer, mock::MockServer};

/// The embedded server on 127.0.0.1, issuing tokens of `lifetime`.
pub(crate) async fn server(lifetime: Duration) -> MockServer {
    MockServer::builder()
        .token_lifetime(lifetime)
        .start()
        .await
        .expect("bind 127.0.0.1")
}

/// A layer for `server`, refreshing 500 ms before expiry (half-life for
/// shorter tokens).
pub(crate) fn layer(server: &MockServer) -> AuthLayer {
    AuthLayer::builder()
        .token_url(server.token_url())
        .credentials(server.credentials())
        .refresh_margin(Duration::from_millis(500))
        .build()
        .expect("valid settings")
}
