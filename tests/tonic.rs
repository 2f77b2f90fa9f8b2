//! A tonic `Channel` with `AuthLayer` and `Refusal::grpc()`, against a real
//! tonic server whose interceptor accepts only tokens issued by the
//! Daxium-compatible server (`MockServer::check_authorization`) and refuses
//! the rest with `Status::unauthenticated`: HTTP 200 with `grpc-status: 16`
//! in a trailers-only response, as every gRPC server refuses a token.
//!
//! The layer sees that refusal, refreshes and replays: unary calls
//! (tonic-health's `Check`) and client-streaming calls (a counter whose
//! request is a stream of messages) alike. A `grpc-status: 16` in trailers
//! after messages is passed through, since the response had begun; a server
//! that refuses every token gets few grants and prompt answers; without the
//! gRPC rule the layer passes a gRPC refusal through.
//!
//! Real time (the servers are real), with one- and two-second tokens.
#![cfg(feature = "mock")]

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes};
use daxium_auth::{AuthLayer, AuthService, Refusal, ReplayBody, mock::MockServer};
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Uri, uri::PathAndQuery};
use http_body::Frame;
use http_body_util::StreamBody;
use tokio::net::TcpListener;
use tonic::{
    Code, Request, Response, Status, Streaming,
    body::Body,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    server::NamedService,
    service::interceptor::InterceptedService,
    transport::{Channel, Server, server::TcpIncoming},
};
use tonic_health::{
    pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        health_server::HealthServer,
    },
    server::{HealthReporter, HealthService},
};
use tower::{Layer, Service, ServiceBuilder, util::BoxCloneService};
use tower_http::map_request_body::MapRequestBodyLayer;

use crate::support;

// === the server ===

/// The counter's client-streaming method: answers `"<messages>:<bytes>"`.
const COUNT: &str = "/daxium.test.Counter/Count";
/// A server-streaming method that sends one message, then refuses in its
/// trailers: UNAUTHENTICATED after the response has begun.
const LATE: &str = "/daxium.test.Counter/Late";

/// Starts the gRPC server on 127.0.0.1: tonic-health and the counter, both
/// behind an interceptor that asks the mock server about the token.
async fn grpc_server(mock: &Arc<MockServer>) -> SocketAddr {
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
        .add_service(HealthServer::with_interceptor(health, check.clone()))
        .add_service(InterceptedService::new(Counter, check));
    tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
    addr
}

/// Messages as they are: the gRPC framing is tonic's.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The counter service, by hand (no generated code needed for two methods).
#[derive(Debug, Clone)]
struct Counter;

impl NamedService for Counter {
    const NAME: &'static str = "daxium.test.Counter";
}

impl Service<http::Request<Body>> for Counter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            match req.uri().path() {
                COUNT => {
                    let count = tower::service_fn(|req: Request<Streaming<Bytes>>| async move {
                        let mut stream = req.into_inner();
                        let (mut messages, mut bytes) = (0, 0);
                        while let Some(message) = stream.message().await? {
                            messages += 1;
                            bytes += message.len();
                        }
                        Ok::<_, Status>(Response::new(Bytes::from(format!("{messages}:{bytes}"))))
                    });
                    Ok(tonic::server::Grpc::new(Raw)
                        .client_streaming(count, req)
                        .await)
                }
                LATE => Ok(late_refusal()),
                _ => Ok(Status::unimplemented("no such method").into_http()),
            }
        })
    }
}

/// One message, then `grpc-status: 16` in the trailers.
fn late_refusal() -> http::Response<Body> {
    let message = b"first";
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("16"));
    trailers.insert("grpc-message", HeaderValue::from_static("token%20revoked"));
    let frames: Vec<Result<Frame<Bytes>, Status>> = vec![
        Ok(Frame::data(Bytes::from(frame))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = Body::new(StreamBody::new(futures_util::stream::iter(frames)));
    http::Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap()
}

// === the client ===

async fn mock(lifetime: Duration) -> Arc<MockServer> {
    Arc::new(support::server(lifetime).await)
}

/// The test support's layer for `mock`, with the gRPC refusal rule; with
/// `grpc`, that server's origin as the API origin.
fn layer(mock: &MockServer, grpc: Option<SocketAddr>) -> AuthLayer {
    layer_with(mock, grpc, Refusal::grpc())
}

fn layer_with(mock: &MockServer, grpc: Option<SocketAddr>, refusal: Refusal) -> AuthLayer {
    support::layer_for(mock, |b| {
        let b = b
            .refresh_margin(Duration::from_millis(500))
            .refused_when(refusal);
        match grpc {
            Some(grpc) => b.api_origin(format!("http://{grpc}")),
            None => b,
        }
    })
}

/// The URIs the channel was given, as the layer saw them.
type Seen = Arc<Mutex<Vec<Uri>>>;

/// What the layer wraps: the body mapping tonic needs, a recorder of URIs,
/// and the channel.
type Inner =
    BoxCloneService<http::Request<ReplayBody<Body>>, http::Response<Body>, tonic::transport::Error>;

type Authed = AuthService<Inner>;
type Client = HealthClient<Authed>;

/// The layer over a `Channel` to `grpc`, recording the URIs it is given.
async fn authed(layer: &AuthLayer, grpc: SocketAddr) -> (Authed, Seen) {
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
    (layer.layer(inner), seen)
}

/// A health client over the layer; `origin` makes tonic send absolute URIs.
async fn client(layer: &AuthLayer, grpc: SocketAddr, origin: bool) -> (Client, Seen) {
    let (service, seen) = authed(layer, grpc).await;
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

/// A generic gRPC client for the counter's methods.
async fn counter(layer: &AuthLayer, grpc: SocketAddr) -> tonic::client::Grpc<Authed> {
    let (service, _) = authed(layer, grpc).await;
    tonic::client::Grpc::with_origin(service, format!("http://{grpc}").parse().unwrap())
}

/// The counter's answer to a stream of `messages`.
async fn count(
    grpc: &mut tonic::client::Grpc<Authed>,
    messages: Vec<&'static [u8]>,
) -> Result<String, Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let stream = futures_util::stream::iter(messages.into_iter().map(Bytes::from_static));
    let call = grpc.client_streaming(Request::new(stream), PathAndQuery::from_static(COUNT), Raw);
    let response = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("answered within 5 s")?;
    Ok(String::from_utf8(response.into_inner().to_vec()).unwrap())
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_are_refreshed_across_token_lifetimes() {
    let mock = mock(Duration::from_secs(1)).await;
    let grpc = grpc_server(&mock).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_are_replayed_after_a_revocation_and_an_expiry() {
    // Long tokens: no background refresh races the revocation below.
    let mock = mock(Duration::from_secs(60)).await;
    let grpc = grpc_server(&mock).await;
    let layer = layer(&mock, Some(grpc));
    let (mut client, _) = client(&layer, grpc, true).await;
    assert_eq!(check(&mut client).await.unwrap(), ServingStatus::Serving);

    // Revoked: the interceptor answers UNAUTHENTICATED in a trailers-only
    // response; the layer logs in again and sends the call again (its body
    // recorded on the way, or read on if the refusal came first): a resend,
    // since the token had worked.
    mock.revoke_all();
    let answer = check(&mut client).await;
    assert!(
        matches!(answer, Ok(ServingStatus::Serving)),
        "{answer:?} {:?}",
        layer.stats()
    );
    let counters = mock.counters();
    assert_eq!(counters.api_revoked, 1);
    assert_eq!(counters.password_ok, 2);
    let stats = layer.stats();
    assert_eq!((stats.replays, stats.resends), (0, 1));

    // Expired on the server: refused, a refresh grant, a resend.
    let refreshes = counters.refresh_ok;
    mock.expire_all();
    let answer = check(&mut client).await;
    assert!(
        matches!(answer, Ok(ServingStatus::Serving)),
        "{answer:?} {:?}",
        layer.stats()
    );
    assert_eq!(mock.counters().api_expired, 1);
    assert!(mock.counters().refresh_ok > refreshes);
    let stats = layer.stats();
    assert_eq!((stats.replays, stats.resends), (0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_streaming_call_is_replayed_whole_after_a_refusal() {
    let mock = mock(Duration::from_secs(60)).await;
    let grpc = grpc_server(&mock).await;
    let layer = layer(&mock, Some(grpc));
    let mut grpc = counter(&layer, grpc).await;
    let messages: Vec<&'static [u8]> = vec![b"one", b"three", b"seventeen"];
    assert_eq!(count(&mut grpc, messages.clone()).await.unwrap(), "3:17");

    mock.revoke_all();
    let answer = count(&mut grpc, messages).await;
    assert!(
        matches!(answer.as_deref(), Ok("3:17")),
        "{answer:?} {:?}",
        layer.stats()
    );
    let counters = mock.counters();
    assert_eq!(counters.api_revoked, 1, "{counters:?}");
    assert_eq!(counters.api_ok, 2);
    let stats = layer.stats();
    assert_eq!(
        (stats.replays, stats.resends, stats.replays_skipped),
        (0, 1, 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_in_trailers_after_messages_is_passed_through() {
    let mock = mock(Duration::from_secs(60)).await;
    let grpc = grpc_server(&mock).await;
    let layer = layer(&mock, Some(grpc));
    let mut grpc = counter(&layer, grpc).await;
    grpc.ready().await.unwrap();
    let response = grpc
        .server_streaming(
            Request::new(Bytes::new()),
            PathAndQuery::from_static(LATE),
            Raw,
        )
        .await
        .expect("the response begins");
    let mut stream = response.into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap(), "first");
    let err = stream.message().await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // The response had begun: no refresh, no replay, and the token stays.
    let stats = layer.stats();
    assert_eq!((stats.replays, stats.resends, stats.grants()), (0, 0, 1));
    assert_eq!(count(&mut grpc, vec![b"x"]).await.unwrap(), "1:1");
    assert_eq!(layer.stats().grants(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_every_token_gets_few_grants_and_prompt_answers() {
    let mock = mock(Duration::from_secs(60)).await;
    let grpc = grpc_server(&mock).await;
    let layer = layer(&mock, Some(grpc));
    let (mut client, _) = client(&layer, grpc, true).await;
    assert_eq!(check(&mut client).await.unwrap(), ServingStatus::Serving);

    mock.refuse_every_token(true);
    let started = tokio::time::Instant::now();
    let mut refused = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let asked = tokio::time::Instant::now();
        let err = check(&mut client).await.unwrap_err();
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "answered at once, not after a wait: {:?}",
            asked.elapsed()
        );
        // The server's refusal, or the layer's word that the API refuses
        // every new token for now.
        let layer_said = std::error::Error::source(&err)
            .and_then(|e| e.downcast_ref::<daxium_auth::Error<tonic::transport::Error>>())
            .and_then(daxium_auth::Error::token_error)
            .is_some_and(daxium_auth::TokenError::is_refused);
        assert!(err.code() == Code::Unauthenticated || layer_said, "{err:?}");
        refused += u32::from(layer_said);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused > 0, "the layer said so at least once");
    // The first login, the revoked token's refresh, two more new tokens
    // refused on first use, then one after each pause of 1 and 2 s.
    let grants = layer.stats().grants();
    assert!(grants <= 1 + 3 + 2, "{grants} grants in 4 s");

    // The server recovers: so does the layer, after the pause.
    mock.refuse_every_token(false);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(check(&mut client).await.unwrap(), ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_grpc_rule_a_grpc_refusal_is_passed_through() {
    let mock = mock(Duration::from_secs(2)).await;
    let grpc = grpc_server(&mock).await;
    let layer = layer_with(&mock, Some(grpc), Refusal::unauthorized());
    let (mut client, _) = client(&layer, grpc, true).await;
    assert_eq!(check(&mut client).await.unwrap(), ServingStatus::Serving);

    // HTTP 200 with grpc-status 16: under the plain HTTP rule that is no
    // refusal, so there is no refresh and no replay.
    mock.revoke_all();
    let err = check(&mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(layer.stats().replays, 0);
    assert_eq!(layer.stats().grants(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_uris_get_the_token_whatever_the_origins() {
    let mock = mock(Duration::from_secs(2)).await;
    let grpc = grpc_server(&mock).await;
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
    let grpc = grpc_server(&mock).await;
    let layer = layer(&mock, None);
    let (mut client, _) = client(&layer, grpc, true).await;

    let err = check(&mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(mock.counters().api_no_token, 1);
    assert_eq!(layer.stats().grants(), 0, "no token for another origin");
}
