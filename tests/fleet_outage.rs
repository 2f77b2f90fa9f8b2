//! A fleet whose token store goes away and comes back: the replicas go on
//! alone with grants of their own (never the shared refresh token), count the
//! store's failures, and share one record again once it answers. A store
//! whose calls never answer is down once the store timeout has passed; one
//! that fails every other call never gets a refresh token sent twice. Under
//! paused time with a memory store, and in real time with a directory that
//! vanishes and a Redis frozen with SIGSTOP.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
    },
    time::Duration,
};

use daxium_auth::{
    AuthLayer, MemoryStore, StoreError, TokenStore,
    store::{FileStore, RedisStore},
};
use http::StatusCode;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

use crate::support;

use support::{
    redis::RedisServer,
    scripted::{Api, Endpoint, api_service, get, layer_with, send},
    store_contract as contract,
    stores::{Call, Fault, Faulty, Svc, bounded, login, ok},
};

/// The store timeout's documented default.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test(start_paused = true)]
async fn replicas_go_on_alone_while_the_store_is_down_and_share_again_after() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.lifetime.lock().unwrap() = Duration::from_secs(60);
    // A store that can be switched off: every call fails while it is.
    let down = Arc::new(AtomicBool::new(false));
    let switch = Arc::clone(&down);
    let store = Faulty::new(MemoryStore::new(), move |_| {
        if switch.load(SeqCst) {
            Fault::Fail(StoreError::unavailable(
                "flaky",
                std::io::Error::other("switched off"),
            ))
        } else {
            Fault::Pass
        }
    });
    let layers: Vec<AuthLayer> = (0..3)
        .map(|_| layer_with(&endpoint, |b| b.store(store.clone())))
        .collect();
    let services: Vec<_> = layers.iter().map(|l| l.layer(api_service(&api))).collect();
    let round = || async {
        for svc in &services {
            let res = svc.clone().oneshot(get()).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
    };
    round().await;
    assert_eq!(endpoint.password.load(SeqCst), 1, "one login for the fleet");

    // The store goes away for five minutes: every request still succeeds,
    // each replica with grants of its own.
    down.store(true, SeqCst);
    let at_outage = endpoint.grants();
    for _ in 0..300 {
        round().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let alone = endpoint.grants() - at_outage;
    assert!(
        alone >= 3 * 8,
        "three replicas alone made {alone} grants in 300 s"
    );
    let errors: u64 = layers.iter().map(|l| l.stats().store_errors).sum();
    assert!(errors > 0, "the store's failures are counted");

    // It comes back. After the next refreshes the fleet shares one record
    // again: over 100 s of 60 s tokens it makes the grants of one replica (a
    // refresh at 50-60% of each lifetime: 2 or 3), where three alone make
    // three times as many; its requests carry those tokens and at most the
    // three held when the window opened.
    down.store(false, SeqCst);
    for _ in 0..100 {
        round().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (grants, seen) = (endpoint.grants(), api.seen.lock().unwrap().len());
    for _ in 0..100 {
        round().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let window = endpoint.grants() - grants;
    assert!(
        window <= 4,
        "{window} grants in 100 s once the store is back"
    );
    let tokens: HashSet<_> = api.seen.lock().unwrap()[seen..].iter().cloned().collect();
    assert!(
        tokens.len() <= window + 3,
        "{} tokens from {window} grants",
        tokens.len()
    );

    endpoint.assert_no_refresh_token_sent_twice();
}

/// A store one kind of whose calls never answers: the layer goes on as with a
/// dead store once the store timeout has passed, so that a request gets its
/// token within that timeout (and a grant's time), and so does the request
/// that needs the next grant, long after. The calls that timed out count as
/// store errors.
#[tokio::test(start_paused = true)]
async fn a_store_call_that_never_answers_is_the_store_down_after_the_store_timeout() {
    let within = STORE_TIMEOUT + Duration::from_millis(100);
    for hung in [Call::Lease, Call::Read, Call::Write, Call::Release] {
        let api = Arc::new(Api::default());
        let endpoint = Endpoint::new(&api);
        *endpoint.lifetime.lock().unwrap() = Duration::from_secs(60);
        let store = Faulty::new(MemoryStore::new(), move |call| {
            if call == hung {
                Fault::Hang
            } else {
                Fault::Pass
            }
        });
        let layer = layer_with(&endpoint, |b| b.store(store));
        let svc = layer.layer(api_service(&api));
        for round in 1..=3 {
            let started = Instant::now();
            let res = bounded(&svc, within).await;
            let res = res.unwrap_or_else(|| panic!("{hung:?} hung, round {round}: no answer"));
            assert!(ok(&res), "{hung:?} hung, round {round}: {res:?}");
            assert!(started.elapsed() < within);
            // Past the token's lifetime: the next request needs a grant.
            tokio::time::sleep(Duration::from_secs(61)).await;
        }
        assert!(endpoint.grants() >= 3, "{hung:?} hung: a grant each round");
        assert!(
            layer.stats().store_errors >= 3,
            "{hung:?} hung: {:?}",
            layer.stats()
        );
        endpoint.assert_no_refresh_token_sent_twice();
    }
}

/// The store timeout is the layer's setting: a store that never answers holds
/// the first request for exactly that long, then it gets its token.
#[tokio::test(start_paused = true)]
async fn the_store_timeout_bounds_how_long_a_silent_store_holds_a_request() {
    for (timeout, set) in [(STORE_TIMEOUT, false), (Duration::from_millis(300), true)] {
        let api = Arc::new(Api::default());
        let endpoint = Endpoint::new(&api);
        *endpoint.latency.lock().unwrap() = Duration::ZERO;
        let store = Faulty::new(MemoryStore::new(), |_| Fault::Hang);
        let layer = layer_with(&endpoint, |b| {
            let b = b.store(store);
            if set { b.store_timeout(timeout) } else { b }
        });
        let svc = layer.layer(api_service(&api));
        let started = Instant::now();
        let res = bounded(&svc, timeout * 2).await.expect("an answer");
        assert!(ok(&res), "{res:?}");
        assert_eq!(started.elapsed(), timeout);
        assert_eq!(layer.stats().store_errors, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_flapping_store_never_gets_a_refresh_token_sent_twice_and_everyone_recovers() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.lifetime.lock().unwrap() = Duration::from_secs(20);
    // Two calls in three fail while it flaps; a write that "fails" lands all
    // the same half of the time: the caller cannot tell.
    let flapping = Arc::new(AtomicBool::new(true));
    let (on, calls) = (Arc::clone(&flapping), AtomicU64::new(0));
    let store = Faulty::new(MemoryStore::new(), move |call| {
        let n = calls.fetch_add(1, SeqCst);
        if !on.load(SeqCst) || n.is_multiple_of(3) {
            return Fault::Pass;
        }
        let reset = StoreError::unavailable("flapping", std::io::Error::other("connection reset"));
        if call == Call::Write && n.is_multiple_of(2) {
            Fault::LandThenFail(reset)
        } else {
            Fault::Fail(reset)
        }
    });
    // A lease shorter than the wait budget: a lease left behind by a release
    // that failed holds the others off for less than their budget (see
    // a_lease_left_by_a_failed_release_does_not_fail_the_other_replicas).
    let layers: Vec<AuthLayer> = (0..4)
        .map(|_| {
            layer_with(&endpoint, |b| {
                b.store(store.clone()).lease_ttl(Duration::from_secs(5))
            })
        })
        .collect();
    let services: Vec<Svc> = layers.iter().map(|l| l.layer(api_service(&api))).collect();
    // Five minutes of flapping, with a revocation of every token now and then.
    for second in 0..300u64 {
        if second % 45 == 44 {
            api.revoke_all();
        }
        for svc in &services {
            let res = send(svc, get()).await;
            assert!(ok(&res), "at {second} s: {res:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    endpoint.assert_no_refresh_token_sent_twice();

    // The faults stop: every replica still answers, and they share again.
    flapping.store(false, SeqCst);
    for second in 0..60 {
        for svc in &services {
            let res = send(svc, get()).await;
            assert!(ok(&res), "{second} s after the faults stopped: {res:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let before = endpoint.grants();
    for _ in 0..100 {
        for svc in &services {
            assert!(ok(&send(svc, get()).await));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let grants = endpoint.grants() - before;
    // One replica alone refreshes 20 s tokens at 50-60% of their life: at
    // most ten grants in 100 s; four alone would make 40.
    assert!(
        grants <= 12,
        "{grants} grants in 100 s after the store healed"
    );
    endpoint.assert_no_refresh_token_sent_twice();
}

#[tokio::test]
async fn a_file_store_whose_directory_vanishes_fails_and_the_replica_goes_on() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let store = FileStore::new(&dir).unwrap();
    std::fs::remove_dir(&dir).unwrap();
    let key = contract::key("vanished");
    let err = store
        .write(&key, None, &contract::record("x"))
        .await
        .unwrap_err();
    assert!(err.is_io(), "{err:?}");

    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let layer = layer_with(&endpoint, |b| b.store(store.clone()));
    let svc = layer.layer(api_service(&api));
    assert!(ok(&bounded(&svc, Duration::from_secs(5)).await.unwrap()));
    assert!(layer.stats().store_errors > 0);
    // The directory comes back: the next grant is shared again.
    std::fs::create_dir(&dir).unwrap();
    layer.cache().refresh_now();
    let mut shared = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if store.read(&login()).await.unwrap().is_some() {
            shared = true;
            break;
        }
    }
    assert!(shared, "the record was written once the directory was back");
}

#[tokio::test]
async fn a_frozen_redis_costs_a_cold_replica_a_short_timeout_then_the_fleet_shares_again() {
    let server = RedisServer::start();
    let url = server.url();
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let make = || {
        layer_with(&endpoint, |b| {
            // The default call timeout: 250 ms.
            b.store(RedisStore::new(&url).unwrap())
        })
    };
    let a = make();
    let sa = a.layer(api_service(&api));
    {
        let _frozen = server.freeze();
        let started = std::time::Instant::now();
        let res = bounded(&sa, Duration::from_secs(5))
            .await
            .expect("an answer");
        assert!(ok(&res), "{:?}", res.err());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(a.stats().store_errors > 0);
    }
    // Redis answers again: the next replica logs in and shares, the one
    // after adopts.
    let b = make();
    let sb = b.layer(api_service(&api));
    assert!(ok(&bounded(&sb, Duration::from_secs(5)).await.unwrap()));
    let grants = endpoint.grants();
    let c = make();
    let sc = c.layer(api_service(&api));
    assert!(ok(&bounded(&sc, Duration::from_secs(5)).await.unwrap()));
    assert_eq!(endpoint.grants(), grants, "{:?}", endpoint.log());
    endpoint.assert_no_refresh_token_sent_twice();
}
