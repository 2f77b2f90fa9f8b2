//! The heap allocations the layer adds to a request, counted by a counting
//! global allocator (`allocation-counter`, which counts per thread, so tests
//! running in parallel do not disturb each other). Each measurement covers
//! building a bodiless GET, `poll_ready` + `call`, one poll of the response
//! future, and dropping the response; the layer's figure is compared with the
//! same work through tower-http's `AddAuthorization` (a constant header):
//!
//! - replay off, as a layer setting or per request (`NoReplay`): no allocation
//!   added, also when each request goes through a clone of the service made
//!   for it (as hyper, axum and `svc.clone().oneshot` do);
//! - replay on (the default), fresh token: at most 2 added.
//!
//! The inner service, the URI and the token are the `hot_path` bench's
//! (`benches/support`); the layer's token comes from the test support's
//! fixed-token fetcher.

use std::{
    convert::Infallible,
    fmt,
    future::{Future, Ready},
    hint::black_box,
    pin::pin,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use daxium_auth::{AuthLayer, NoReplay};
use http::{Request, Response, StatusCode, header::AUTHORIZATION};
use http_body_util::Empty;
use tower::{Layer, Service};
use tower_http::auth::AddAuthorization;

#[path = "../benches/support/mod.rs"]
mod bench;
mod support;

use bench::{ORIGIN, TOKEN};
use support::{fixed::FixedToken, scripted::credentials};

/// The bench's inner service, checking that the request carries the header,
/// so that the comparison is between layers that both attach it.
#[derive(Debug, Clone, Copy)]
struct Checked;

impl<B> Service<Request<B>> for Checked {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request<B>>::poll_ready(&mut bench::Inner, cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        assert!(req.headers().contains_key(AUTHORIZATION));
        bench::Inner.call(req)
    }
}

fn request(no_replay: bool) -> Request<Empty<Bytes>> {
    let mut req = bench::request();
    if no_replay {
        req.extensions_mut().insert(NoReplay);
    }
    req
}

/// One request through `svc`: answered 200 at the first poll, then dropped.
fn one_request<S>(svc: &mut S, no_replay: bool)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Empty<Bytes>>>,
    S::Error: fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let fut = pin!(svc.call(request(no_replay)));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(res)) => {
            assert_eq!(res.status(), StatusCode::OK);
            drop(black_box(res));
        }
        other => panic!(
            "no response after one poll: {:?}",
            other.map(|r| r.map(|_| ()))
        ),
    }
}

/// Allocations made by this thread for one run of `run`: the largest count
/// over five runs, after two runs of warm-up (the first request through a
/// service copies the header once).
fn allocations(mut run: impl FnMut()) -> u64 {
    for _ in 0..2 {
        run();
    }
    (0..5)
        .map(|_| allocation_counter::measure(&mut run).count_total)
        .max()
        .expect("five runs")
}

/// A layer whose cache holds a fresh one-hour token.
fn layer(rt: &tokio::runtime::Runtime, replay: bool) -> AuthLayer {
    let layer = AuthLayer::builder()
        .credentials(credentials())
        .fetcher(FixedToken::new(TOKEN))
        .api_origin(ORIGIN)
        .replay(replay)
        .build()
        .expect("valid layer");
    rt.block_on(layer.cache().access_token()).expect("a token");
    layer
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn floor_service() -> AddAuthorization<Checked> {
    AddAuthorization::bearer(Checked, TOKEN).as_sensitive(true)
}

fn floor(no_replay: bool) -> u64 {
    let mut floor = floor_service();
    allocations(|| one_request(&mut floor, no_replay))
}

#[test]
fn the_counter_counts() {
    let counted = allocation_counter::measure(|| drop(black_box(Box::new(7u64)))).count_total;
    assert_eq!(counted, 1);
    assert!(floor(false) > 0, "building a request allocates");
}

/// The floor's and the layer's allocations for one request, the layer with
/// `replay` and the request with `NoReplay` when `no_replay`.
fn floor_and_layer(replay: bool, no_replay: bool) -> (u64, u64) {
    let rt = runtime();
    let _guard = rt.enter();
    let floor = floor(no_replay);
    let mut service = layer(&rt, replay).layer(Checked);
    let auth = allocations(|| one_request(&mut service, no_replay));
    (floor, auth)
}

#[test]
fn replay_off_adds_no_allocation() {
    let (floor, auth) = floor_and_layer(false, false);
    eprintln!("replay off (layer setting): floor {floor}, AuthLayer {auth} allocations");
    assert_eq!(
        auth, floor,
        "replay off adds no allocation to a bodiless request"
    );
}

#[test]
fn no_replay_extension_adds_no_allocation() {
    let (floor, auth) = floor_and_layer(true, true);
    eprintln!("replay off (NoReplay extension): floor {floor}, AuthLayer {auth} allocations");
    assert_eq!(
        auth, floor,
        "NoReplay adds no allocation to a bodiless request"
    );
}

#[test]
fn replay_on_adds_at_most_two_allocations() {
    let (floor, auth) = floor_and_layer(true, false);
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
    let service = layer(&rt, false).layer(Checked);
    let mut clone = service.clone();
    let auth = allocations(|| one_request(&mut clone, false));
    assert_eq!(auth, floor);
}

/// The per-service copy of the header (`own_copy`) was made by the service
/// that called; a clone made per request (hyper, axum, `svc.clone().oneshot`)
/// started from its parent's cached copy, which was absent or stale once the
/// token rotated, so every request copied the header: two allocations (the
/// `Bytes` vec, and its promotion to shared on the first clone), against the
/// design's zero with replay off.
#[test]
fn clone_per_request_adds_no_allocation() {
    let rt = runtime();
    let _guard = rt.enter();
    let floor_parent = floor_service();
    let parent = layer(&rt, false).layer(Checked);
    let floor = allocations(|| one_request(&mut floor_parent.clone(), false));
    let auth = allocations(|| one_request(&mut parent.clone(), false));
    assert_eq!(
        auth, floor,
        "clone-per-request: {auth} allocations against {floor}"
    );
}
