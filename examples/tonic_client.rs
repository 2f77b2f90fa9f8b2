//! A tonic `Channel` with `AuthLayer`, calling tonic-health's `Health`
//! service on a tonic server that accepts only tokens issued by the embedded
//! Daxium-compatible server. Calls over several token lifetimes, then every
//! token revoked on the server: one refresh, one replay, over HTTP/2.
//!
//! ```text
//! cargo run --example tonic_client
//! ```
//!
//! # gRPC's refusal
//!
//! A tonic interceptor that returns `Status::unauthenticated` answers with
//! HTTP 200 and `grpc-status: 16` in a trailers-only response. The layer is
//! built with `refused_when(Refusal::grpc())`, so it sees that answer as a
//! refused token, as it sees an HTTP 401: it drops the token, refreshes and
//! replays the call.
//!
//! # Origins
//!
//! `HealthClient::new` makes tonic send relative URIs (`/grpc.health.v1.Health/Check`),
//! and the layer attaches the token to requests without an authority: the
//! channel fixes the destination. With `HealthClient::with_origin`, as here,
//! the URIs are absolute and the gRPC server's origin must be an
//! `api_origin` of the layer.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use daxium_auth::{AuthLayer, Refusal, mock::MockServer};
use tonic::{
    Request, Status,
    body::Body,
    transport::{Channel, Server, server::TcpIncoming},
};
use tonic_health::{
    pb::{HealthCheckRequest, health_client::HealthClient, health_server::HealthServer},
    server::{HealthReporter, HealthService},
};
use tower::ServiceBuilder;
use tower_http::map_request_body::MapRequestBodyLayer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mock = Arc::new(
        MockServer::builder()
            .token_lifetime(Duration::from_secs(2))
            .start()
            .await?,
    );
    let grpc = grpc_server(&mock).await?;
    println!(
        "token endpoint {}, gRPC server http://{grpc}",
        mock.token_url()
    );

    let auth = AuthLayer::builder()
        .token_url(mock.token_url())
        .credentials(mock.credentials())
        .api_origin(format!("http://{grpc}"))
        .refresh_margin(Duration::from_millis(500))
        .refused_when(Refusal::grpc())
        .build()?;

    let channel = Channel::from_shared(format!("http://{grpc}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    // The layer hands `ReplayBody<tonic::body::Body>` down; the channel wants
    // `tonic::body::Body`.
    let service = ServiceBuilder::new()
        .layer(auth.clone())
        .layer(MapRequestBodyLayer::new(Body::new))
        .service(channel);
    let mut client = HealthClient::with_origin(service, format!("http://{grpc}").parse()?);

    for i in 0..16 {
        let response = client.check(HealthCheckRequest::default()).await?;
        let stats = auth.stats();
        println!(
            "call {i:>2}: {:?} (grants so far: {} password, {} refresh)",
            response.into_inner().status(),
            stats.password_ok,
            stats.refresh_ok,
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    mock.revoke_all();
    let response = client.check(HealthCheckRequest::default()).await?;
    println!("after revoke_all: {:?}", response.into_inner().status());
    println!("{}", auth.stats());
    // A clean close before the process exits: with a token store, the last
    // pair is written and the lease released for the next process.
    auth.close().await;
    Ok(())
}

/// The gRPC server: the `Health` service behind an interceptor that checks
/// the bearer token with the Daxium-compatible server.
async fn grpc_server(mock: &Arc<MockServer>) -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mock = Arc::clone(mock);
    let check = move |req: Request<()>| {
        let authorization = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match mock.check_authorization(authorization) {
            Ok(()) => Ok(req),
            Err(denial) => Err(Status::unauthenticated(denial.to_string())),
        }
    };
    let health = HealthService::from_health_reporter(HealthReporter::new());
    let router = Server::builder().add_service(HealthServer::with_interceptor(health, check));
    tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
    Ok(addr)
}
