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
//! - a service cloned for each request, replay on or off: none added either;
//! - a token store configured (memory, Redis, a Redis Cluster): none added
//!   to what the layer costs without one.

use std::{fmt, hint::black_box};

use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use tower::{Layer, Service};
use tower_http::auth::AddAuthorization;

#[path = "../benches/support/mod.rs"]
mod bench;

use bench::{TOKEN, auth_layer, auth_layer_with, authorized, request, request_no_replay};

type Body = Empty<bytes::Bytes>;

fn drive<S>(svc: &mut S, no_replay: bool) -> S::Response
where
    S: Service<Request<Body>>,
    S::Error: fmt::Debug,
{
    let req = if no_replay {
        request_no_replay()
    } else {
        request()
    };
    bench::drive(svc, req)
}

/// Allocations made by this thread for one request through `svc`: the
/// largest count over a few requests, after two requests of warm-up (the
/// first request through a service copies the header once).
fn allocations<S>(svc: &mut S, no_replay: bool) -> u64
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: fmt::Debug,
{
    for _ in 0..2 {
        drive(svc, no_replay);
    }
    (0..5)
        .map(|_| {
            allocation_counter::measure(|| {
                let res = drive(svc, no_replay);
                assert_eq!(res.status(), StatusCode::OK);
                drop(black_box(res));
            })
            .count_total
        })
        .max()
        .expect("five runs")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn floor(no_replay: bool) -> u64 {
    allocations(
        &mut AddAuthorization::bearer(authorized(), TOKEN).as_sensitive(true),
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
    let auth = allocations(&mut auth_layer(&rt, false).layer(authorized()), false);
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
    let auth = allocations(&mut auth_layer(&rt, true).layer(authorized()), true);
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
    let memory = auth_layer_with(&rt, |b| {
        b.replay(false).store(daxium_auth::MemoryStore::new())
    });
    let auth = allocations(&mut memory.layer(authorized()), false);
    assert_eq!(auth, floor, "replay off with a MemoryStore");
    let replay = auth_layer_with(&rt, |b| b.store(daxium_auth::MemoryStore::new()));
    let auth = allocations(&mut replay.layer(authorized()), false);
    assert!(
        auth <= floor + 2,
        "replay on with a MemoryStore: {auth} against {floor}"
    );
    #[cfg(feature = "redis")]
    {
        // A real Redis, and a Redis Cluster of three primaries, holding the
        // record this layer wrote: requests never call the store.
        let server = bench::redis::RedisServer::start();
        let cluster = bench::redis::RedisCluster::start(3, 0);
        for (deployment, url) in [("one server", server.url()), ("a cluster", cluster.url())] {
            for replay in [false, true] {
                let without = allocations(&mut auth_layer(&rt, replay).layer(authorized()), false);
                let shared = bench::auth_layer_redis(&rt, replay, &url);
                let auth = allocations(&mut shared.layer(authorized()), false);
                eprintln!(
                    "a RedisStore on {deployment}, replay {replay}: without {without}, with {auth} allocations"
                );
                assert_eq!(
                    auth, without,
                    "replay {replay} with a RedisStore on {deployment}"
                );
            }
        }
        // A Redis that does not answer: the token is this replica's own.
        let store = daxium_auth::store::RedisStore::new("redis://127.0.0.1:1/").expect("a URL");
        let alone = auth_layer_with(&rt, |b| b.replay(false).store(store));
        let auth = allocations(&mut alone.layer(authorized()), false);
        assert_eq!(
            auth, floor,
            "replay off with a RedisStore that does not answer"
        );
    }
}

#[test]
fn replay_on_adds_at_most_two_allocations() {
    let rt = runtime();
    let _guard = rt.enter();
    let floor = floor(false);
    let auth = allocations(&mut auth_layer(&rt, true).layer(authorized()), false);
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
    let service = auth_layer(&rt, false).layer(authorized());
    let mut clone = service.clone();
    let auth = allocations(&mut clone, false);
    assert_eq!(auth, floor);
}

/// Allocations for one request through a fresh clone of `svc`, made for that
/// request (as clients that clone their service per call do), after a few
/// requests through `svc` itself.
fn allocations_through_a_clone_each<S>(svc: &mut S) -> u64
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
    S::Error: fmt::Debug,
{
    for _ in 0..2 {
        drive(svc, false);
    }
    (0..5)
        .map(|_| {
            allocation_counter::measure(|| {
                let mut clone = svc.clone();
                let res = drive(&mut clone, false);
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
        &mut AddAuthorization::bearer(authorized(), TOKEN).as_sensitive(true),
    );
    for replay in [false, true] {
        let auth =
            allocations_through_a_clone_each(&mut auth_layer(&rt, replay).layer(authorized()));
        eprintln!(
            "a clone for each request, replay {replay}: floor {floor}, AuthLayer {auth} allocations"
        );
        assert_eq!(auth, floor, "replay {replay}");
    }
}
