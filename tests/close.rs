//! The clean close of a layer, through the public API: it finishes the new
//! pair's write to the store, then releases the lease (never before the
//! write), stops the cache's tasks, and every request after it gets a closed
//! error. Under paused time on a `MemoryStore`, and on a real `redis-server`
//! with the crate's Daxium-compatible server, where another replica takes the
//! lease at once and adopts the pair.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use daxium_auth::{
    AuthLayer, MemoryStore, TokenStore,
    store::{Lease, LeaseOwner},
};
use tokio::time::Instant;
use tower::Layer;

use crate::support;

use support::{
    scripted::{Api, Endpoint, api_service, layer_with},
    stores::{Call, Fault, Faulty, bounded, login, ok},
};

/// How long the store takes over a write: the close comes while it runs.
const SLOW_WRITE: Duration = Duration::from_secs(1);

/// A lease far longer than the test: one left held would show.
const LONG_LEASE: Duration = Duration::from_secs(60);

/// A layer on a memory store whose calls of kind `slow` take [`SLOW_WRITE`]:
/// its endpoint, the store, and the layer.
fn slow_at(slow: Call) -> (Arc<Endpoint>, MemoryStore, AuthLayer) {
    let endpoint = Endpoint::new(&Arc::new(Api::default()));
    let memory = MemoryStore::new();
    let store = Faulty::new(memory.clone(), move |call| {
        if call == slow {
            Fault::Delay(SLOW_WRITE)
        } else {
            Fault::Pass
        }
    });
    let layer = layer_with(&endpoint, |b| b.store(store).lease_ttl(LONG_LEASE));
    (endpoint, memory, layer)
}

/// Another owner gets the lease of the scripted login in `memory`.
async fn assert_lease_free(memory: &MemoryStore) {
    let other = LeaseOwner::random();
    let lease = memory.acquire_lease(&login(), &other, LONG_LEASE).await;
    assert_eq!(lease.unwrap(), Lease::Acquired, "the lease is free");
}

#[tokio::test(start_paused = true)]
async fn close_finishes_the_pairs_write_then_releases_the_lease_and_stops_the_cache() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let memory = MemoryStore::new();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let store = {
        let calls = Arc::clone(&calls);
        Faulty::new(memory.clone(), move |call| {
            calls.lock().unwrap().push((call, Instant::now()));
            match call {
                Call::Write => Fault::Delay(SLOW_WRITE),
                _ => Fault::Pass,
            }
        })
    };
    let layer = layer_with(&endpoint, |b| b.store(store).lease_ttl(LONG_LEASE));
    let svc = layer.layer(api_service(&api));
    let res = bounded(&svc, Duration::from_secs(1))
        .await
        .expect("an answer");
    assert!(ok(&res), "{res:?}");

    // The waiter has its token; the pair's write has only begun.
    assert!(memory.read(&login()).await.unwrap().is_none());
    let started = Instant::now();
    layer.close().await;
    assert!(
        started.elapsed() >= SLOW_WRITE / 2,
        "close waited for the write"
    );

    let stored = memory.read(&login()).await.unwrap().expect("the pair");
    assert_eq!(stored.record().access_token().expose_secret(), "access-1");
    assert_lease_free(&memory).await;
    let calls = calls.lock().unwrap().clone();
    let at = |kind| {
        calls
            .iter()
            .rev()
            .find(|(c, _)| *c == kind)
            .map(|(_, at)| *at)
    };
    let (write, release) = (at(Call::Write).unwrap(), at(Call::Release).unwrap());
    assert!(
        release >= write + SLOW_WRITE,
        "the release went out before the write had landed"
    );

    // Every request from now on learns of the close; nothing runs any more.
    let res = bounded(&svc, Duration::from_secs(1))
        .await
        .expect("an answer");
    let err = res.expect_err("no token after the close");
    assert!(err.token_error().is_some_and(|e| e.is_closed()), "{err:?}");
    let err = layer.cache().access_token().await.unwrap_err();
    assert!(err.is_closed(), "{err:?}");
    assert!(err.to_string().contains("shut down"), "{err}");
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    let alive = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert_eq!(alive, 0, "the timer and the store calls have ended");

    // Closing again has nothing left to do.
    let started = Instant::now();
    layer.close().await;
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(endpoint.grants(), 1);
}

#[tokio::test(start_paused = true)]
async fn close_while_the_lease_is_asked_for_releases_it_once_granted() {
    let (endpoint, memory, layer) = slow_at(Call::Lease);
    let cache = layer.cache().clone();
    let waiting = tokio::spawn(async move { cache.access_token().await });
    tokio::time::sleep(Duration::from_millis(10)).await;

    layer.close().await;
    let err = waiting.await.unwrap().unwrap_err();
    assert!(err.is_closed(), "{err:?}");
    assert_lease_free(&memory).await;
    assert_eq!(endpoint.grants(), 0);
}

/// Two shutdown paths (a signal handler and the end of `main`, say) may each
/// close the layer: the second close returns no sooner than the first, once
/// the pair's write has landed and the lease is free.
#[tokio::test(start_paused = true)]
async fn a_second_close_during_the_first_returns_once_the_store_is_done_with() {
    let (endpoint, memory, layer) = slow_at(Call::Write);
    layer.login().await.unwrap();
    assert!(
        memory.read(&login()).await.unwrap().is_none(),
        "write begun"
    );

    let first = tokio::spawn(layer.close());
    tokio::task::yield_now().await;
    let started = Instant::now();
    layer.close().await;
    assert!(
        started.elapsed() >= SLOW_WRITE / 2,
        "the second close returned before the pair's write had landed"
    );
    assert!(memory.read(&login()).await.unwrap().is_some(), "the pair");
    assert_lease_free(&memory).await;
    first.await.unwrap();
    assert_eq!(endpoint.grants(), 1);
}

#[tokio::test(start_paused = true)]
async fn close_without_a_store_only_closes() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let layer = layer_with(&endpoint, |b| b);
    let svc = layer.layer(api_service(&api));
    assert!(ok(&bounded(&svc, Duration::from_secs(1)).await.unwrap()));
    let started = Instant::now();
    layer.close().await;
    assert_eq!(started.elapsed(), Duration::ZERO);
    let err = layer.cache().access_token().await.unwrap_err();
    assert!(err.is_closed(), "{err:?}");
}

#[cfg(all(feature = "mock", feature = "rustls", feature = "redis"))]
mod on_redis {
    use std::{sync::Arc, time::Duration};

    use bytes::Bytes;
    use daxium_auth::store::{AnyStore, Lease, LeaseOwner, RedisStore, TokenStore};
    use http::Request;
    use http_body_util::Empty;
    use tower::ServiceExt;

    use super::{
        LONG_LEASE,
        support::redis::RedisServer,
        support::replicas::{Issued, blocking, login_key, replica, server},
        support::stores::{Call, Fault, Faulty},
    };

    /// The server's token lifetime: longer than the test.
    const LIFETIME: Duration = Duration::from_secs(3600);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_close_the_pair_is_in_redis_and_the_lease_is_free_at_once() {
        let redis = blocking(RedisServer::start).await;
        let server = server(LIFETIME).await;
        let issued = Arc::new(Issued::default());
        let redis_store = || AnyStore::new(RedisStore::new(&redis.url()).expect("a valid URL"));
        // Writes take a moment longer than a round trip: the close comes
        // while the pair's write is on its way.
        let slow_writes = Faulty::new(redis_store(), |call| match call {
            Call::Write => Fault::Delay(Duration::from_millis(300)),
            _ => Fault::Pass,
        });
        let first = replica(&server, Some(AnyStore::new(slow_writes)), &issued, |b| {
            b.lease_ttl(LONG_LEASE)
        });
        let token = first.token().await;
        first.layer.close().await;

        let key = login_key(&server);
        let check = redis_store();
        let stored = check.read(&key).await.unwrap().expect("the pair in Redis");
        assert_eq!(stored.record().access_token().expose_secret(), token);
        let other = LeaseOwner::random();
        let lease = check.acquire_lease(&key, &other, Duration::from_secs(1));
        assert_eq!(lease.await.unwrap(), Lease::Acquired, "the lease is free");
        assert!(check.release_lease(&key, &other).await.unwrap());

        let request = Request::get(server.api_url("v1/items"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let err = first.api.clone().oneshot(request).await.unwrap_err();
        assert!(err.token_error().is_some_and(|e| e.is_closed()), "{err:?}");

        // The next replica adopts the pair: no login of its own.
        let second = replica(&server, Some(redis_store()), &issued, |b| b);
        assert_eq!(second.token().await, token);
        assert_eq!(server.counters().password_ok, 1);
        assert_eq!(server.counters().grant_requests, 1);
    }
}

/// A forced refresh waiting for a slow grant when the layer closes learns of
/// the close at once, as do the login's handles called afterwards: none
/// waits, the grant is stopped, and subscribers see the close.
#[tokio::test(start_paused = true)]
async fn the_logins_handles_get_closed_errors_at_once_during_and_after_the_close() {
    use daxium_auth::LoginStatus;

    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let layer = layer_with(&endpoint, |b| b);
    layer.login().await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    *endpoint.latency.lock().unwrap() = Duration::from_secs(30);
    let forced = tokio::spawn({
        let layer = layer.clone();
        async move { layer.refresh().await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(endpoint.grants(), 2, "the refresh grant is in flight");

    let started = Instant::now();
    layer.close().await;
    let err = forced.await.unwrap().unwrap_err();
    assert!(err.is_closed(), "{err:?}");
    for err in [
        layer.refresh().await.unwrap_err(),
        layer.login().await.unwrap_err(),
    ] {
        assert!(err.is_closed(), "{err:?}");
    }
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(!layer.is_ready());
    assert_eq!(layer.subscribe().borrow().status(), LoginStatus::Closed);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(endpoint.grants(), 2, "no grant after the close");
}
