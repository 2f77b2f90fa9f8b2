//! reqwest-middleware with `AuthMiddleware`, against the embedded
//! Daxium-compatible server: requests over several token lifetimes, then a
//! revoked token, answered with one refresh and one replay.
//!
//! ```text
//! cargo run --example reqwest_client --features reqwest
//! ```
//!
//! The middleware shares the `AuthLayer`'s token cache: a tower stack built
//! from the same layer uses the same tokens.

use std::time::Duration;

use daxium_auth::{AuthLayer, mock::MockServer, reqwest::AuthMiddleware};
use reqwest_middleware::ClientBuilder;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(2))
        .start()
        .await?;
    println!("Daxium-compatible server on {}", server.base_url());

    let auth = AuthLayer::builder()
        .token_url(server.token_url())
        .credentials(server.credentials())
        .refresh_margin(Duration::from_millis(500))
        .build()?;
    let client = ClientBuilder::new(reqwest::Client::builder().no_proxy().build()?)
        .with(AuthMiddleware::new(&auth))
        .build();

    let url = server.api_url("v1/submissions");
    for i in 0..20 {
        let response = client
            .post(&url)
            .body(format!("{{\"n\":{i}}}"))
            .send()
            .await?;
        println!(
            "request {i:>2}: {} {}",
            response.status(),
            response.text().await?
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    server.revoke_all();
    let response = client.post(&url).body("after revocation").send().await?;
    println!("after revoke_all: {}", response.status());

    println!("{}", auth.stats());
    // A clean close before the process exits: with a token store, the last
    // pair is written and the lease released for the next process.
    auth.close().await;
    server.shutdown().await;
    Ok(())
}
