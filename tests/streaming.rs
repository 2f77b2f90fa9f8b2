//! Streaming request bodies through the layer over hyper's HTTP/1 client and
//! the crate's Daxium-compatible server on 127.0.0.1. A stream of known length
//! goes out with a `Content-Length`, and hyper stops polling it once that many
//! bytes are written: its replay after a 401 must not wait for an end it never
//! sees, and a stream that is not the length it said is never replayed. A
//! stream that ends with trailers, after which hyper polls no more, is
//! replayed over HTTP/1 and HTTP/2 alike.
#![cfg(all(feature = "mock", feature = "rustls"))]

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{AuthLayer, AuthService, ReplayBody, mock::MockServer};
use futures_util::stream::{self, Iter};
use http::{Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tower::{Layer, Service, ServiceExt};

use crate::support;

use support::layer_for;

type Frames = StreamBody<Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// A stream of frames that says it is `len` bytes long, truly or not. Like
/// any stream, it never says it has ended before it is polled past its end.
struct Known {
    frames: Frames,
    len: u64,
}

impl Known {
    fn new(chunks: &[Bytes], len: u64) -> Self {
        let frames: Vec<_> = chunks.iter().cloned().map(|c| Ok(Frame::data(c))).collect();
        Self {
            frames: StreamBody::new(stream::iter(frames)),
            len,
        }
    }
}

impl Body for Known {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.frames).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

type Svc = AuthService<Client<HttpConnector, ReplayBody<Known>>>;

async fn setup() -> (MockServer, AuthLayer, Svc) {
    let server = MockServer::start().await.expect("bind 127.0.0.1");
    let layer = layer_for(&server, |b| b);
    let client = Client::builder(TokioExecutor::new()).build_http();
    let svc = layer.layer(client);
    (server, layer, svc)
}

/// Takes the layer's token, then revokes it on the server, so that the next
/// request meets a 401.
async fn revoke_the_current_token(server: &MockServer, layer: &AuthLayer) {
    let token = layer.cache().access_token().await.expect("a token");
    assert!(server.revoke(token.expose_secret()));
}

async fn post(svc: &Svc, server: &MockServer, body: Known) -> Response<Incoming> {
    let req = Request::post(server.api_url("uploads"))
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), svc.clone().oneshot(req))
        .await
        .expect("no request hangs")
        .expect("the request is answered")
}

/// `req` through `svc`, bounded in time, answered 200 (replayed with a new
/// token): the body the API echoed.
async fn echoed<S, B>(svc: S, req: Request<B>) -> Bytes
where
    S: Service<Request<B>, Response = Response<Incoming>>,
    S::Error: std::fmt::Debug,
{
    let res = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
        .await
        .expect("no request hangs")
        .expect("the request is answered");
    assert_eq!(res.status(), StatusCode::OK, "replayed with a new token");
    res.into_body().collect().await.unwrap().to_bytes()
}

/// Three chunks of 20 KB, 60,000 bytes in all.
fn upload() -> (Vec<Bytes>, Vec<u8>) {
    let whole: Vec<u8> = (0..60_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let chunks = whole.chunks(20_000).map(Bytes::copy_from_slice).collect();
    (chunks, whole)
}

#[tokio::test]
async fn a_stream_of_known_length_is_replayed_byte_for_byte_after_a_401() {
    let (server, layer, svc) = setup().await;
    revoke_the_current_token(&server, &layer).await;
    let (chunks, whole) = upload();

    let res = post(&svc, &server, Known::new(&chunks, whole.len() as u64)).await;

    assert_eq!(res.status(), StatusCode::OK, "replayed with a new token");
    let echoed = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed, whole, "the replay sent the identical body");
    let stats = layer.stats();
    assert_eq!((stats.replays, stats.replays_skipped), (1, 0));
    let c = server.counters();
    assert_eq!((c.api_revoked, c.api_ok, c.refresh_ok), (1, 1, 1));
}

#[tokio::test]
async fn a_stream_longer_than_it_said_is_not_replayed() {
    let (server, layer, svc) = setup().await;
    revoke_the_current_token(&server, &layer).await;
    let (chunks, whole) = upload();

    // hyper writes the 50,000 bytes it was told of, and cuts the third chunk.
    let res = post(&svc, &server, Known::new(&chunks, 50_000)).await;

    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "the original 401");
    let stats = layer.stats();
    assert_eq!((stats.replays, stats.replays_skipped), (0, 1));
    assert_eq!(server.counters().api_requests, 1, "sent once");
    assert!(whole.len() > 50_000);
}

#[tokio::test]
async fn a_stream_shorter_than_it_said_fails_and_is_not_replayed() {
    let (server, layer, svc) = setup().await;
    revoke_the_current_token(&server, &layer).await;
    let (chunks, _) = upload();

    let req = Request::post(server.api_url("uploads"))
        .body(Known::new(&chunks, 70_000))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), svc.clone().oneshot(req))
        .await
        .expect("no request hangs");

    // hyper refuses to end a body short of its Content-Length.
    let err = res.expect_err("the request fails");
    assert!(err.is_inner(), "{err:?}");
    assert_eq!(layer.stats().replays, 0);
    assert_eq!(server.counters().api_ok, 0);
}

#[tokio::test]
async fn a_plain_stream_with_a_content_length_header_is_replayed_after_a_401() {
    let server = MockServer::start().await.expect("bind 127.0.0.1");
    let layer = layer_for(&server, |b| b);
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Frames>>();
    let svc = layer.layer(client);
    revoke_the_current_token(&server, &layer).await;
    let (chunks, whole) = upload();
    let frames: Vec<_> = chunks.into_iter().map(|c| Ok(Frame::data(c))).collect();
    // The stream itself knows no size: only the header says how long it is.
    let req = Request::post(server.api_url("uploads"))
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(http::header::CONTENT_LENGTH, whole.len())
        .body(StreamBody::new(stream::iter(frames)))
        .unwrap();
    let echoed = echoed(svc, req).await;
    assert_eq!(echoed, whole, "the replay sent the identical body");
    assert_eq!(layer.stats().replays, 1);
}

/// The upload's chunks, then trailers: a stream that never says it has
/// ended, and after whose trailers hyper polls no more.
fn with_trailers(chunks: &[Bytes]) -> Frames {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", http::HeaderValue::from_static("60000"));
    let mut frames: Vec<_> = chunks.iter().cloned().map(|c| Ok(Frame::data(c))).collect();
    frames.push(Ok(Frame::trailers(trailers)));
    StreamBody::new(stream::iter(frames))
}

#[tokio::test]
async fn a_stream_that_ends_with_trailers_is_replayed_over_http1_and_http2() {
    for http2 in [false, true] {
        let server = MockServer::start().await.expect("bind 127.0.0.1");
        let layer = layer_for(&server, |b| b);
        let client = Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .build_http::<ReplayBody<Frames>>();
        let svc = layer.layer(client);
        revoke_the_current_token(&server, &layer).await;
        let (chunks, whole) = upload();
        let req = Request::post(server.api_url("uploads"))
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(http::header::TE, "trailers")
            .body(with_trailers(&chunks))
            .unwrap();
        let echoed = echoed(svc, req).await;
        assert_eq!(
            echoed, whole,
            "http2 {http2}: the replay sent the identical body"
        );
        let stats = layer.stats();
        assert_eq!(
            (stats.replays, stats.replays_skipped),
            (1, 0),
            "http2 {http2}"
        );
    }
}
