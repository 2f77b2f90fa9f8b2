//! A tonic `Channel` with `AuthLayer`, calling tonic-health's `Health`
//! service on a tonic server that accepts only tokens issued by the embedded
//! Daxium-compatible server. Calls over several token lifetimes, then every
//! token revoked on the server: one refresh, one replay, over HTTP/2.
//!
//! ```text
//! cargo run --example tonic_client
//! ```
//!
//! # The 401 that the replay needs
//!
//! A tonic interceptor that returns `Status::unauthenticated` answers with
//! HTTP 200 and `grpc-status: 16`: to the layer, which sees HTTP only, that is
//! not a refused token, so there is no refresh and no replay (the token is
//! still dropped when it expires). The server below therefore wraps its routes
//! in a small tower service that reads the request, lets the interceptor
//! decide, and turns its "unauthenticated" into an HTTP 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"`, as an HTTP API would.
//!
//! # Origins
//!
//! `HealthClient::new` makes tonic send relative URIs (`/grpc.health.v1.Health/Check`),
//! and the layer attaches the token to requests without an authority: the
//! channel fixes the destination. With `HealthClient::with_origin`, as here,
//! the URIs are absolute and the gRPC server's origin must be an
//! `api_origin` of the layer.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use daxium_auth::{AuthLayer, mock::MockServer};
use http::{StatusCode, header::WWW_AUTHENTICATE};
use http_body_util::{BodyExt, Full};
use tonic::{
    Request, Status,
    body::Body,
    transport::{Channel, Server, server::TcpIncoming},
};
use tonic_health::{
    pb::{HealthCheckRequest, health_client::HealthClient, health_server::HealthServer},
    server::{HealthReporter, HealthService},
};
use tower::{Service, ServiceBuilder, ServiceExt, util::BoxCloneService};
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
    let stats = auth.stats();
    println!(
        "{} password grants, {} refresh grants ({} refused), {} replays",
        stats.password_ok,
        stats.refresh_ok + stats.refresh_rejected,
        stats.refresh_rejected,
        stats.replays
    );
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
    let router = Server::builder()
        .layer(tower::layer::layer_fn(unauthenticated_as_http_401))
        .add_service(HealthServer::with_interceptor(health, check));
    tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
    Ok(addr)
}

/// Reads the request body, calls the routes, and turns a trailers-only
/// `grpc-status: 16` (UNAUTHENTICATED) into an HTTP 401.
fn unauthenticated_as_http_401<S>(
    inner: S,
) -> BoxCloneService<http::Request<Body>, http::Response<Body>, Infallible>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    BoxCloneService::new(tower::service_fn(move |req: http::Request<Body>| {
        let inner = inner.clone();
        async move {
            // Answering only once the whole request has arrived, as an HTTP API
            // does, lets the client's layer replay a body it has fully sent.
            let (parts, body) = req.into_parts();
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(status) => return Ok(status.into_http()),
            };
            let req = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
            let mut res = inner.oneshot(req).await?;
            if res.headers().get("grpc-status").is_some_and(|v| v == "16") {
                *res.status_mut() = StatusCode::UNAUTHORIZED;
                res.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            Ok(res)
        }
    }))
}
