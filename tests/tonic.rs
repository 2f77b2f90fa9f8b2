//! A tonic `Channel` with `AuthLayer`, calling tonic-health's `Health`
//! service on a tonic server that accepts only tokens issued by the
//! Daxium-compatible server (an interceptor asks `MockServer::check_authorization`).
//!
//! gRPC reports a refused call as HTTP 200 with `grpc-status: 16`; the layer
//! replays on an HTTP 401 only. The server here therefore wraps its routes in
//! a small tower service that reads the request, lets the interceptor decide,
//! and turns its "unauthenticated" into an HTTP 401. One test shows what
//! happens without it.
//!
//! Real time (the servers are real), with one- and two-second tokens.
#![cfg(feature = "mock")]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use daxium_auth::{AuthLayer, AuthService, ReplayBody, mock::MockServer};
use http::{StatusCode, Uri, header::WWW_AUTHENTICATE};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;
use tonic::{
    Code, Request, Status,
    body::Body,
    transport::{Channel, Server, server::TcpIncoming},
};
use tonic_health::{
    pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        health_server::HealthServer,
    },
    server::{HealthReporter, HealthService},
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, util::BoxCloneService};
use tower_http::map_request_body::MapRequestBodyLayer;

mod support;

// === the server ===

/// Starts the gRPC server on 127.0.0.1; with `http_401`, an unauthenticated
/// call is answered with an HTTP 401.
async fn grpc_server(mock: &Arc<MockServer>, http_401: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let check = {
        let mock = Arc::clone(mock);
        move |req: Request<()>| {
            let authorization = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            match mock.check_authorization(authorization) {
                Ok(()) => Ok(req),
                Err(denial) => Err(Status::unauthenticated(denial.to_string())),
            }
        }
    };
    let health = HealthService::from_health_reporter(HealthReporter::new());
    let router = Server::builder()
        .layer(tower::layer::layer_fn(move |inner| {
            if http_401 {
                unauthenticated_as_http_401(inner)
            } else {
                BoxCloneService::new(inner)
            }
        }))
        .add_service(HealthServer::with_interceptor(health, check));
    tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
    addr
}

type HttpService =
    BoxCloneService<http::Request<Body>, http::Response<Body>, std::convert::Infallible>;

/// Reads the request body, calls the routes, and turns a trailers-only
/// `grpc-status: 16` (UNAUTHENTICATED, as the interceptor answers) into an HTTP
/// 401 with `WWW-Authenticate`. Reading the body first answers after the
/// whole request, as an HTTP API does.
fn unauthenticated_as_http_401<S>(inner: S) -> HttpService
where
    S: Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    BoxCloneService::new(tower::service_fn(move |req: http::Request<Body>| {
        let inner = inner.clone();
        async move {
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

// === the client ===

async fn mock(lifetime: Duration) -> Arc<MockServer> {
    Arc::new(support::server(lifetime).await)
}

/// The test support's layer for `mock`; with `grpc`, that server's origin as
/// the API origin.
fn layer(mock: &MockServer, grpc: Option<SocketAddr>) -> AuthLayer {
    match grpc {
        Some(grpc) => support::layer_for(mock, |b| {
            b.refresh_margin(Duration::from_millis(500))
                .api_origin(format!("http://{grpc}"))
        }),
        None => support::layer(mock),
    }
}

/// The URIs the channel was given, as the layer saw them.
type Seen = Arc<Mutex<Vec<Uri>>>;

/// What the layer wraps: the body mapping tonic needs, a recorder of URIs,
/// and the channel.
type Inner =
    BoxCloneService<http::Request<ReplayBody<Body>>, http::Response<Body>, tonic::transport::Error>;

type Client = HealthClient<AuthService<Inner>>;

/// A health client over `Channel` with `AuthLayer`; `origin` makes tonic send
/// absolute URIs.
async fn client(layer: &AuthLayer, grpc: SocketAddr, origin: bool) -> (Client, Seen) {
    let channel = Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let seen = Seen::default();
    let record = {
        let seen = Arc::clone(&seen);
        move |req: http::Request<ReplayBody<Body>>| {
            seen.lock().unwrap().push(req.uri().clone());
            req
        }
    };
    let inner: Inner = BoxCloneService::new(
        ServiceBuilder::new()
            .map_request(record)
            .layer(MapRequestBodyLayer::new(Body::new))
            .service(channel),
    );
    let service = layer.layer(inner);
    let client = if origin {
        HealthClient::with_origin(service, format!("http://{grpc}").parse().unwrap())
    } else {
        HealthClient::new(service)
    };
    (client, seen)
}

async fn check(client: &mut Client) -> Result<ServingStatus, Status> {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let response = tokio::time::timeout(Duration::from_secs(5), client.check(request))
        .await
        .expect("answered within 5 s")?;
    Ok(response.into_inner().status())
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_and_replays_over_http2() {
    let mock = mock(Duration::from_secs(1)).await;
    let grpc = grpc_server(&mock, true).await;
    let layer = layer(&mock, Some(grpc));
    let (mut client, seen) = client(&layer, grpc, true).await;

    // Over three token lifetimes.
    for i in 0..30 {
        assert_eq!(
            check(&mut client).await.unwrap(),
            ServingStatus::Serving,
            "call {i}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counters = mock.counters();
    assert_eq!(counters.password_ok, 1, "one login");
    assert!(counters.refresh_ok >= 2, "refreshed: {counters:?}");
    assert_eq!(counters.api_ok, 30);
    assert_eq!(counters.api_expired, 0);
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|uri| uri.authority().is_some())
    );

    // Revoked: the interceptor refuses, the server answers 401, the layer
    // logs in again and replays the call (its body recorded on the way).
    mock.revoke_all();
    assert_eq!(check(&mut client).await.unwrap(), ServingStatus::Serving);
    let counters = mock.counters();
    assert_eq!(counters.api_revoked, 1);
    assert_eq!(counters.password_ok, 2);
    assert_eq!(layer.stats().replays, 1);

    // Expired on the server: 401, a refresh grant, the replay.
    let refreshes = counters.refresh_ok;
    mock.expire_all();
    assert_eq!(check(&mut client).await.unwrap(), ServingStatus::Serving);
    assert_eq!(mock.counters().api_expired, 1);
    assert!(mock.counters().refresh_ok > refreshes);
    assert_eq!(layer.stats().replays, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_uris_get_the_token_whatever_the_origins() {
    let mock = mock(Duration::from_secs(2)).await;
    let grpc = grpc_server(&mock, true).await;
    // Only the token endpoint's origin is configured, not the gRPC server's.
    let layer = layer(&mock, None);
    let (mut client, seen) = client(&layer, grpc, false).await;

    assert_eq!(check(&mut client).await.unwrap(), ServingStatus::Serving);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authority(), None, "tonic sends {}", seen[0]);
    assert_eq!(seen[0].path(), "/grpc.health.v1.Health/Check");
    assert_eq!(mock.counters().api_ok, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_uris_need_the_origin() {
    let mock = mock(Duration::from_secs(2)).await;
    let grpc = grpc_server(&mock, true).await;
    let layer = layer(&mock, None);
    let (mut client, _) = client(&layer, grpc, true).await;

    let err = check(&mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(mock.counters().api_no_token, 1);
    assert_eq!(layer.stats().grants(), 0, "no token for another origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_status_alone_is_not_a_401() {
    let mock = mock(Duration::from_secs(2)).await;
    let grpc = grpc_server(&mock, false).await;
    let layer = layer(&mock, Some(grpc));
    let (mut client, _) = client(&layer, grpc, true).await;
    assert_eq!(check(&mut client).await.unwrap(), ServingStatus::Serving);

    // HTTP 200 with grpc-status 16: the layer cannot tell a refused token
    // from any other failure, so there is no refresh and no replay.
    mock.revoke_all();
    let err = check(&mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(layer.stats().replays, 0);
    assert_eq!(layer.stats().grants(), 1);
}
