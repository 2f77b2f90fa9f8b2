//! hyper-util's client with `AuthLayer`, against the embedded
//! Daxium-compatible server: a request every 200 ms over several token
//! lifetimes, then a token revoked on the server, which the layer answers with
//! one refresh and one replay.
//!
//! ```text
//! cargo run --example hyper_client
//! ```
//!
//! Against the real API, build the layer with
//! `AuthLayer::new("https://api.daxium-air.com/oauth/v2/token", credentials)`
//! and give the client an HTTPS connector (see the crate docs).

use std::time::Duration;

use bytes::Bytes;
use daxium_auth::{AuthLayer, ReplayBody, mock::MockServer};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tower::{ServiceBuilder, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Tokens live two seconds, so that a few seconds show several refreshes.
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(2))
        .start()
        .await?;
    println!("Daxium-compatible server on {}", server.base_url());

    // The API is served from the token endpoint's origin, the default origin.
    let auth = AuthLayer::builder()
        .token_url(server.token_url())
        .credentials(server.credentials())
        .refresh_margin(Duration::from_millis(500))
        .build()?;

    // The inner client sees `ReplayBody<B>`: the layer records the body as it
    // streams, so that it can send it again after a 401.
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let api = ServiceBuilder::new().layer(auth.clone()).service(client);

    let url = server.api_url("v1/submissions");
    let mut last = auth.stats();
    for i in 0..25 {
        let request = http::Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::from(format!("{{\"n\":{i}}}")))?;
        let response = api.clone().oneshot(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let stats = auth.stats();
        let note = if stats.password_ok > last.password_ok {
            "  (logged in: password grant)"
        } else if stats.refresh_ok > last.refresh_ok {
            "  (token refreshed in the background)"
        } else {
            ""
        };
        println!(
            "request {i:>2}: {status} {}{note}",
            String::from_utf8_lossy(&body)
        );
        last = stats;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every token revoked on the server: the next request meets a 401; the
    // layer refreshes once (the refresh token is revoked too, so it logs in
    // again) and replays the request, body included.
    server.revoke_all();
    let request = http::Request::post(&url).body(Full::from("after revocation"))?;
    let response = api.clone().oneshot(request).await?;
    println!("after revoke_all: {}", response.status());

    let counters = server.counters();
    println!("client: {}", auth.stats());
    println!(
        "server: {} requests let through, {} refused (revoked {}, expired {})",
        counters.api_ok,
        counters.api_requests - counters.api_ok,
        counters.api_revoked,
        counters.api_expired,
    );
    // A clean close before the process exits: with a token store, the last
    // pair is written and the lease released for the next process.
    auth.close().await;
    server.shutdown().await;
    Ok(())
}
