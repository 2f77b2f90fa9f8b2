//! The heap allocations the layer adds to a request, counted by a counting
//! global allocator (`allocation-counter`, which counts per thread, so tests
//! running in parallel do not disturb each other). Each measurement covers
//! building a bodiless GET, `poll_ready` + `call`, one poll of the response
//! future, and dropping the response; the layer's figure is compared with the
//! same work through tower-http's `AddAuthorization` (a constant header):
//!
//! - replay off, as a layer setting or per request (`NoReplay`): no allocation
//!   added;
//! - replay on (the default), fresh token: at most 2 added;
//! - a service cloned for each request, replay on or off: none added either.

use std::{
    convert::Infallible,
    fmt,
    future::{Future, Ready, ready},
    hint::black_box,
    pin::pin,
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{AccessToken, AuthLayer, Credentials, NoReplay, TokenPair, fetcher};
use http::{Request, Response, StatusCode, header::AUTHORIZATION};
use http_body_util::Empty;
use tower::{Layer, Service};
use tower_http::auth::AddAuthorization;

const URI: &str = "http://127.0.0.1:8080/api/v1/items";
const ORIGIN: &str = "http://127.0.0.1:8080";
const TOKEN: &str =
    "NjQ2ZDJjOTRmM2Q4YzE1ZTA0NzFhYjU3ZjAxYjNkNGI5ZDQ0MjE3NjNmMmNlNmQ5MGUwYjEwYmQ3OGI4ZjU2Mg";

/// The inner service of the `hot_path` bench: answers 200 at once. It checks
/// the header so that the comparison is between layers that both attach it.
#[derive(Debug, Clone, Copy)]
struct Inner;

impl<B> Service<Request<B>> for Inner {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        assert!(req.headers().contains_key(AUTHORIZATION));
        drop(black_box(req));
        ready(Ok(Response::new(Empty::new())))
    }
}

fn request(no_replay: bool) -> Request<Empty<Bytes>> {
    let mut req = Request::get(URI).body(Empty::new()).expect("valid request");
    if no_replay {
        req.extensions_mut().insert(NoReplay);
    }
    req
}

fn drive<S>(svc: &mut S, req: Request<Empty<Bytes>>) -> S::Response
where
    S: Service<Request<Empty<Bytes>>>,
    S::Error: fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(res)) => res,
        other => panic!(
            "no response after one poll: {:?}",
            other.map(|r| r.map(|_| ()))
        ),
    }
}

/// Allocations made by this thread for one request through `svc`: the
/// largest count over a few requests, after two requests of warm-up (the
/// first request through a service copies the header once).
fn allocations<S>(svc: &mut S, no_replay: bool) -> u64
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Empty<Bytes>>>,
    S::Error: fmt::Debug,
{
    for _ in 0..2 {
        drive(svc, request(no_replay));
    }
    (0..5)
        .map(|_| {
            allocation_counter::measure(|| {
                let res = drive(svc, request(no_replay));
                assert_eq!(res.status(), StatusCode::OK);
                drop(black_box(res));
            })
            .count_total
        })
        .max()
        .expect("five runs")
}

/// A layer whose cache holds a fresh one-hour token.
fn layer(rt: &tokio::runtime::Runtime, replay: bool) -> AuthLayer {
    layer_with(rt, |b| b.replay(replay))
}

/// A layer with a fixed token, as `configure` sets it up, holding its token.
fn layer_with(
    rt: &tokio::runtime::Runtime,
    configure: impl FnOnce(daxium_auth::AuthLayerBuilder) -> daxium_auth::AuthLayerBuilder,
) -> AuthLayer {
    let builder = AuthLayer::builder()
        .credentials(Credentials::new(
            "client-id",
            "client-secret",
            "user",
            "password",
        ))
        .fetcher(fetcher::from_fn(|_grant| async {
            Ok(TokenPair::new(
                AccessToken::new(TOKEN)?,
                None,
                Duration::from_secs(3600),
            ))
        }))
        .api_origin(ORIGIN);
    let layer = configure(builder).build().expect("valid layer");
    rt.block_on(layer.cache().access_token()).expect("a token");
    layer
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn floor(no_replay: bool) -> u64 {
    allocations(
        &mut AddAuthorization::bearer(Inner, TOKEN).as_sensitive(true),
        no_replay,
    )
}

#[test]
fn the_counter_counts() {
    let counted = allocation_counter::measure(|| drop(black_box(Box::new(7u64)))).count_total;
    assert_eq!(counted, 1);
    assert!(floor(false) > 0, "building a request allocates");
}

#[test]
fn replay_off_adds_no_allocation() {
    let rt = runtime();
    let _guard = rt.enter();
    let floor = floor(false);
    let auth = allocations(&mut layer(&rt, false).layer(Inner), false);
    eprintln!("replay off (layer setting): floor {floor}, AuthLayer {auth} allocations");
    assert_eq!(
        auth, floor,
        "replay off adds no allocation to a bodiless request"
    );
}

#[test]
fn no_replay_extension_adds_no_allocation() {
    let rt = runtime();
    let _guard = rt.enter();
    let floor = floor(true);
    let auth = allocations(&mut layer(&rt, true).layer(Inner), true);
    eprintln!("replay off (NoReplay extension): floor {floor}, AuthLayer {auth} allocations");
    assert_eq!(
        auth, floor,
        "NoReplay adds no allocation to a bodiless request"
    );
}

/// The token store is on the slow path only: with one configured (shared by a
/// fleet), a request with a valid token costs what it costs without.
#[test]
fn a_token_store_adds_no_allocation_to_the_hot_path() {
    let rt = runtime();
    let _guard = rt.enter();
    let floor = floor(false);
    let memory = layer_with(&rt, |b| {
        b.replay(false).store(daxium_auth::MemoryStore::new())
    });
    let auth = allocations(&mut memory.layer(Inner), false);
    assert_eq!(auth, floor, "replay off with a MemoryStore");
    let replay = layer_with(&rt, |b| b.store(daxium_auth::MemoryStore::new()));
    let auth = allocations(&mut replay.layer(Inner), false);
    assert!(
        auth <= floor + 2,
        "replay on with a MemoryStore: {auth} against {floor}"
    );
    #[cfg(feature = "redis")]
    {
        // A Redis that does not answer: the token is this replica's own, and
        // requests never call the store.
        let store = daxium_auth::store::RedisStore::new("redis://127.0.0.1:1/").expect("a URL");
        let redis = layer_with(&rt, |b| b.replay(false).store(store));
        let auth = allocations(&mut redis.layer(Inner), false);
        assert_eq!(auth, floor, "replay off with a RedisStore");
    }
}

#[test]
fn replay_on_adds_at_most_two_allocations() {
    let rt = runtime();
    let _guard = rt.enter();
    let floor = floor(false);
    let auth = allocations(&mut layer(&rt, true).layer(Inner), false);
    eprintln!("replay on: floor {floor}, AuthLayer {auth} allocations");
    assert!(
        auth <= floor + 2,
        "replay on adds {} allocations",
        auth.saturating_sub(floor)
    );
}

#[test]
fn clones_of_a_service_add_no_allocation_either() {
    // A clone shares its parent's copy of the header: still nothing added.
    let rt = runtime();
    let _guard = rt.enter();
    let floor = floor(false);
    let service = layer(&rt, false).layer(Inner);
    let mut clone = service.clone();
    let auth = allocations(&mut clone, false);
    assert_eq!(auth, floor);
}

/// Allocations for one request through a fresh clone of `svc`, made for that
/// request (as clients that clone their service per call do), after a few
/// requests through `svc` itself.
fn allocations_through_a_clone_each<S>(svc: &mut S) -> u64
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Empty<Bytes>>> + Clone,
    S::Error: fmt::Debug,
{
    for _ in 0..2 {
        drive(svc, request(false));
    }
    (0..5)
        .map(|_| {
            allocation_counter::measure(|| {
                let mut clone = svc.clone();
                let res = drive(&mut clone, request(false));
                assert_eq!(res.status(), StatusCode::OK);
                drop(black_box(res));
            })
            .count_total
        })
        .max()
        .expect("five runs")
}

#[test]
fn a_clone_for_each_request_adds_no_allocation() {
    let rt = runtime();
    let _guard = rt.enter();
    let floor = allocations_through_a_clone_each(
        &mut AddAuthorization::bearer(Inner, TOKEN).as_sensitive(true),
    );
    for replay in [false, true] {
        let auth = allocations_through_a_clone_each(&mut layer(&rt, replay).layer(Inner));
        eprintln!(
            "a clone for each request, replay {replay}: floor {floor}, AuthLayer {auth} allocations"
        );
        assert_eq!(auth, floor, "replay {replay}");
    }
}
