//! The fleet's lease on a login's grant. A lease that lapses soon is taken
//! within a short wait budget; one whose holder says nothing of its time left
//! is asked for at a pace, in memory and in a directory; a request or a replica
//! dropped mid-grant, and a failed release, leave it free for the others; a
//! lease left without expiry in Redis gets the contenders' TTL; another
//! process's lease delays a replica by its TTL at most; and a grant slower than
//! the lease costs a password grant, never a reused refresh token. The
//! release of a flight that ended, landing after the same replica's next
//! flight took the lease again, does not free that one.
#![cfg(all(
    feature = "redis",
    feature = "file",
    feature = "sealed",
    feature = "mock"
))]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::SeqCst},
    },
    time::Duration,
};

use daxium_auth::{
    MemoryStore, StoreError, TokenSource, TokenStore,
    store::{Lease, LeaseOwner},
};
use tower::Layer;

use crate::support;

use support::{
    redis::{RedisServer, lease_key, raw, redis_store},
    scripted::{Api, Endpoint, api_service, get, layer_with, send},
    store_contract as contract,
    stores::{Call, Fault, Faulty, Svc, bounded, file_store, login, ok},
};

// === memory store, paused time ===

#[tokio::test(start_paused = true)]
async fn a_lease_that_lapses_soon_is_taken_within_a_short_wait_budget() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.latency.lock().unwrap() = Duration::from_millis(10);
    let store = MemoryStore::new();
    // Another process holds the lease for 20 ms more and then goes away.
    let other = LeaseOwner::random();
    let held = store
        .acquire_lease(&login(), &other, Duration::from_millis(20))
        .await
        .unwrap();
    assert!(held.is_acquired());
    let layer = layer_with(&endpoint, |b| {
        b.store(store.clone())
            .wait_budget(Duration::from_millis(80))
    });
    let svc = layer.layer(api_service(&api));
    let started = tokio::time::Instant::now();
    let res = bounded(&svc, Duration::from_secs(5)).await.unwrap();
    assert!(
        ok(&res),
        "the lease was free after 20 ms, the budget 80 ms, the grant 10 ms; after {:?}: {:?}",
        started.elapsed(),
        res.err()
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_whose_holder_said_nothing_left_is_asked_for_at_a_pace() {
    // A holder frozen past its expiry: the store says it is held, 0 left.
    let leases = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&leases);
    let store = Faulty::new(MemoryStore::new(), move |call| {
        if call != Call::Lease {
            return Fault::Pass;
        }
        counted.fetch_add(1, SeqCst);
        Fault::Held(Some(Duration::ZERO))
    });
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let layer = layer_with(&endpoint, |b| {
        b.store(store.clone()).wait_budget(Duration::from_secs(1))
    });
    let svc = layer.layer(api_service(&api));
    let _ = bounded(&svc, Duration::from_secs(5)).await;
    let asked = leases.load(SeqCst);
    assert!(asked <= 15, "{asked} leases asked within a 1 s budget");
}

#[tokio::test(start_paused = true)]
async fn a_grant_slower_than_the_lease_costs_a_password_grant_never_a_reused_refresh_token() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.lifetime.lock().unwrap() = Duration::from_secs(120);
    let store = MemoryStore::new();
    let services: Vec<Svc> = (0..4)
        .map(|_| {
            layer_with(&endpoint, |b| {
                b.store(store.clone())
                    .refresh_margin(Duration::from_secs(60))
            })
            .layer(api_service(&api))
        })
        .collect();
    for svc in &services {
        assert!(ok(&bounded(svc, Duration::from_secs(5)).await.unwrap()));
    }
    assert_eq!(endpoint.log(), ["password:user@example.com"]);
    // Every grant from now on takes 7 s: past the 5 s lease.
    *endpoint.latency.lock().unwrap() = Duration::from_secs(7);
    tokio::time::sleep(Duration::from_secs(61)).await;
    // Stale everywhere at once; a minute of traffic on every replica.
    for second in 0..60 {
        let answers = futures_util::future::join_all(
            services
                .iter()
                .map(|svc| bounded(svc, Duration::from_secs(15))),
        )
        .await;
        for (i, res) in answers.iter().enumerate() {
            assert!(
                res.as_ref().is_some_and(ok),
                "replica {i} at {second} s: {:?}",
                res.as_ref().map(|r| r.as_ref().err())
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    endpoint.assert_no_refresh_token_sent_twice();
    let log = endpoint.log();
    assert!(
        log.iter().any(|g| g == "refresh:refresh-1"),
        "the shared refresh token was used: {log:?}"
    );
    // The lease lapsed mid-grant: the next holder found the token spent and
    // logged in; no more than that.
    let passwords = endpoint.password.load(SeqCst);
    assert!((2..=3).contains(&passwords), "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_mid_grant_still_publishes_the_pair_and_frees_the_lease() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.latency.lock().unwrap() = Duration::from_secs(2);
    let store = MemoryStore::new();
    let a = layer_with(&endpoint, |b| b.store(store.clone()));
    let b = layer_with(&endpoint, |b| b.store(store.clone()));
    let (sa, sb) = (a.layer(api_service(&api)), b.layer(api_service(&api)));

    // The only caller gives up 100 ms into the grant, lease held.
    assert!(bounded(&sa, Duration::from_millis(100)).await.is_none());
    tokio::time::sleep(Duration::from_secs(5)).await;

    let stored = store.read(&login()).await.unwrap().expect("the pair");
    assert_eq!(stored.version(), 1);
    let someone = LeaseOwner::random();
    let lease = store
        .acquire_lease(&login(), &someone, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(lease, Lease::Acquired, "the lease was released");
    assert!(store.release_lease(&login(), &someone).await.unwrap());

    // Both replicas now use that pair: one grant in all.
    assert!(ok(&send(&sa, get()).await));
    assert!(ok(&send(&sb, get()).await));
    assert_eq!(endpoint.grants(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_replica_dropped_mid_grant_frees_the_lease_for_the_others() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.latency.lock().unwrap() = Duration::from_secs(2);
    let store = MemoryStore::new();
    let a = layer_with(&endpoint, |b| b.store(store.clone()));
    let sa = a.layer(api_service(&api));
    let pending = tokio::spawn(async move { send(&sa, get()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The replica shuts down mid-grant: its caller is dropped with it.
    pending.abort();
    let _ = pending.await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(10)).await;

    let b = layer_with(&endpoint, |b| b.store(store.clone()));
    let sb = b.layer(api_service(&api));
    let started = tokio::time::Instant::now();
    let res = bounded(&sb, Duration::from_secs(60))
        .await
        .expect("an answer");
    assert!(ok(&res));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?} for a lease of a replica that is gone",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_left_by_a_failed_release_does_not_fail_the_other_replicas() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    // Replica a: the lease (call 0) is taken, then the store blips: the
    // read under it (call 1) and the release (call 2) fail. Replica a goes
    // on alone, as it should, and its lease stays behind.
    let calls = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&calls);
    let store = Faulty::new(MemoryStore::new(), move |_| {
        match counted.fetch_add(1, SeqCst) {
            1 | 2 => Fault::Fail(StoreError::timeout("fail-calls")),
            _ => Fault::Pass,
        }
    });
    let a = layer_with(&endpoint, |b| b.store(store.clone()));
    let sa = a.layer(api_service(&api));
    assert!(ok(&send(&sa, get()).await));
    assert_eq!(calls.load(SeqCst), 3, "lease, read, release");
    assert!(a.stats().store_errors > 0);

    // The store answers again. A cold replica, with the default settings,
    // needs a token.
    let b = layer_with(&endpoint, |b| b.store(store.clone()));
    let sb = b.layer(api_service(&api));
    let res = bounded(&sb, Duration::from_secs(60))
        .await
        .expect("an answer");
    assert!(ok(&res), "{res:?}");
}

// === a late release (memory store, paused time) ===

// The store's lease across a replica's flights: the release of a flight
// that ended goes out in a task of its own, and may land after the next
// flight of the same replica took the lease again. It must not free that
// one: another replica would take the lease while the grant runs, and make
// a grant of its own instead of adopting the pair. Under paused time, with
// a store that is slow to release.

/// How long the store takes to release a lease.
const SLOW_RELEASE: Duration = Duration::from_millis(500);

/// How long a grant takes: it outlasts the slow release.
const SLOW_GRANT: Duration = Duration::from_secs(2);

#[tokio::test(start_paused = true)]
async fn a_late_release_of_a_finished_flight_leaves_the_next_flights_lease_held() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let memory = MemoryStore::new();
    let store = Faulty::new(memory.clone(), |call| match call {
        Call::Release => Fault::Delay(SLOW_RELEASE),
        _ => Fault::Pass,
    });
    let lease = Duration::from_secs(5);
    let first = layer_with(&endpoint, |b| b.store(store.clone()).lease_ttl(lease));
    let second = layer_with(&endpoint, |b| b.store(store.clone()).lease_ttl(lease));

    // The first replica logs in; its flight writes the pair and lets the
    // lease go, slowly.
    first.login().await.unwrap();
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    // The API revokes the token at once: the next flight starts, takes the
    // lease again, and refreshes, slowly, while the first's release lands.
    *endpoint.latency.lock().unwrap() = SLOW_GRANT;
    api.revoke_all();
    let svc = first.layer(api_service(&api));
    let request = tokio::spawn(async move { bounded(&svc, Duration::from_secs(10)).await });
    tokio::time::sleep(SLOW_RELEASE + Duration::from_millis(100)).await;
    assert_eq!(endpoint.log().len(), 2, "{:?}", endpoint.log());

    // The second replica finds the lease held and adopts the new pair.
    second.login().await.unwrap();
    assert!(ok(&request.await.unwrap().expect("an answer")));
    assert_eq!(
        endpoint.log(),
        ["password:user@example.com", "refresh:refresh-1"],
        "the second replica made a grant while the first held the lease"
    );
    let state = *second.subscribe().borrow();
    assert_eq!(state.source(), Some(TokenSource::Store), "{state:?}");
    endpoint.assert_no_refresh_token_sent_twice();
}

// === in a directory ===

#[tokio::test]
async fn a_file_lease_held_past_its_expiry_is_not_retried_in_a_tight_loop() {
    let dir = tempfile::tempdir().unwrap();
    // Another holder of the directory takes the lease for 100 ms on a runtime
    // that then stops: nothing ends its lock, as with a frozen process.
    let holder = file_store(&dir);
    let taker = holder.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let lease = taker
                .acquire_lease(&login(), &LeaseOwner::random(), Duration::from_millis(100))
                .await
                .unwrap();
            assert!(lease.is_acquired());
        });
    })
    .join()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let leases = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&leases);
    let store = Faulty::new(file_store(&dir), move |call| {
        if call == Call::Lease {
            counted.fetch_add(1, SeqCst);
        }
        Fault::Pass
    });
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let layer = layer_with(&endpoint, |b| {
        b.store(store.clone())
            .lease_ttl(Duration::from_millis(300))
            .wait_budget(Duration::from_millis(500))
    });
    let svc = layer.layer(api_service(&api));
    let _ = bounded(&svc, Duration::from_secs(2)).await;
    let before = leases.load(SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = leases.load(SeqCst) - before;
    // Polling at the store's pace (10 ms to 250 ms) asks a handful of times.
    assert!(asked <= 20, "{asked} leases asked in 500 ms");
    drop(holder);
}

// === in Redis ===

#[tokio::test]
async fn a_lease_left_without_expiry_does_not_stall_the_fleet_for_ever() {
    let server = RedisServer::start();
    let key = login();
    let mut c = raw(&server.url()).await;
    let _: () = redis::cmd("SET")
        .arg(lease_key(&key))
        .arg("a-process-that-never-releases")
        .query_async(&mut c)
        .await
        .unwrap();
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let layer = layer_with(&endpoint, |b| {
        b.store(redis_store(&server))
            .lease_ttl(Duration::from_millis(300))
            .wait_budget(Duration::from_secs(2))
    });
    let svc = layer.layer(api_service(&api));
    let mut answered = false;
    for _ in 0..2 {
        if bounded(&svc, Duration::from_secs(4))
            .await
            .is_some_and(|r| ok(&r))
        {
            answered = true;
            break;
        }
    }
    assert!(
        answered,
        "no token while a stray lease without expiry sits in Redis"
    );
}

#[tokio::test]
async fn a_lease_without_expiry_gets_the_contenders_ttl_and_lapses() {
    let server = RedisServer::start();
    let store = redis_store(&server);
    let key = contract::key("no-expiry");
    let mut c = raw(&server.url()).await;
    let _: () = redis::cmd("SET")
        .arg(lease_key(&key))
        .arg("someone")
        .query_async(&mut c)
        .await
        .unwrap();
    let me = LeaseOwner::random();
    let ttl = Duration::from_millis(200);
    let held = store.acquire_lease(&key, &me, ttl).await.unwrap();
    let Lease::Held { remaining } = held else {
        panic!("a lease someone holds was taken: {held:?}");
    };
    assert_eq!(remaining, Some(ttl));
    let mut taken = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if store
            .acquire_lease(&key, &me, ttl)
            .await
            .unwrap()
            .is_acquired()
        {
            taken = true;
            break;
        }
    }
    assert!(taken, "the stray lease never lapsed");
}

#[tokio::test]
async fn a_lease_held_by_another_process_delays_a_replica_by_its_ttl_at_most() {
    let server = RedisServer::start();
    let key = login();
    let mut c = raw(&server.url()).await;
    let _: () = redis::cmd("SET")
        .arg(lease_key(&key))
        .arg("a-process-that-died")
        .arg("PX")
        .arg(700)
        .query_async(&mut c)
        .await
        .unwrap();
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let layer = layer_with(&endpoint, |b| b.store(redis_store(&server)));
    let svc = layer.layer(api_service(&api));
    let started = std::time::Instant::now();
    let res = bounded(&svc, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert!(ok(&res));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(endpoint.grants(), 1);
}
