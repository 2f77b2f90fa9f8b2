//! The Redis token store on replicated Redis, against real servers on
//! 127.0.0.1: a primary whose replica is promoted while the primary still
//! takes writes (the writes a failover loses), and the store's epoch rule
//! there; a Redis Cluster of 3 primaries and 3 replicas, shared by the
//! cluster tests, with the store contract, every key of a login in one slot,
//! a wait woken by a commit that another node publishes, no password in
//! errors, and 8 replicas of a service sharing one login through it while the
//! primary of the login's slot is failed over (`CLUSTER FAILOVER`) and,
//! separately, killed; a Sentinel-watched primary killed under the same
//! fleet, and one frozen with SIGSTOP under a store that must find the
//! promoted replica. The fleets run against the crate's Daxium-compatible
//! server with reuse protection on: every request succeeds, no refresh token
//! is sent twice, and the fleet shares one record again after the failover.
#![cfg(all(feature = "redis", feature = "mock", feature = "rustls"))]

use std::time::Duration;

use daxium_auth::store::{RedisStore, TokenStore, WriteOutcome};

use crate::support;

use support::{redis::RedisServer, store_contract as contract};

/// One call's timeout: above the default, for a loaded test machine.
const STORE_TIMEOUT: Duration = Duration::from_secs(1);

fn store(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .timeout(STORE_TIMEOUT)
        .build()
        .expect("a valid URL")
}

/// Sends one command to the server at `url`.
async fn command<T: redis::FromRedisValue>(url: &str, args: &[&str]) -> T {
    let mut connection = support::redis::raw(url).await;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut connection).await.unwrap()
}

/// Waits (polling, at most 10 s) until `done` holds; whether it did.
async fn eventually<F: Future<Output = bool>>(mut done: impl FnMut() -> F) -> bool {
    for _ in 0..1_000 {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// The writes that a failover loses, made by hand: the replica is promoted
/// while the old primary still takes writes, so the spend mark that the old
/// primary acknowledges never reaches the new one. The new primary holds the
/// record with its refresh token usable; the store withholds the token and
/// refuses a spend mark over it.
#[tokio::test]
async fn a_record_from_before_a_promotion_never_has_its_refresh_token_spent_again() {
    let primary = RedisServer::start();
    let replica =
        RedisServer::with_args(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
    let (old, new) = (store(&primary.url()), store(&replica.url()));
    let key = contract::key("epoch");
    assert_eq!(contract::put(&old, &key, None, "before").await, 1);
    // Replicated, and read on the replica with its refresh token: a replica
    // shares its primary's epoch.
    let replicated = eventually(|| async {
        new.read(&key)
            .await
            .is_ok_and(|r| r.is_some_and(|r| r.record().refresh_token().is_some()))
    })
    .await;
    assert!(replicated, "the record never reached the replica whole");

    let promoted: String = command(&replica.url(), &["REPLICAOF", "NO", "ONE"]).await;
    assert_eq!(promoted, "OK");
    let stored = old.read(&key).await.unwrap().expect("the record");
    let spent = stored.record().clone().with_refresh_spent();
    let marked = old.write(&key, Some(1), &spent).await.unwrap();
    assert_eq!(marked.version(), Some(2), "the old primary took the mark");

    // The new primary: version 1, its refresh token usable in Redis, withheld
    // by the store.
    let seen = new.read(&key).await.unwrap().expect("the record");
    assert_eq!(seen.version(), 1);
    assert!(seen.record().is_refresh_spent());
    assert!(seen.record().refresh_token().is_none());
    let envelope: Vec<u8> = command(
        &replica.url(),
        &["HGET", &format!("daxium-auth:{{{}}}", key.id()), "envelope"],
    )
    .await;
    assert!(
        String::from_utf8_lossy(&envelope).contains("refresh-before"),
        "the token is still in the new primary's bytes"
    );

    // A spend mark over it is refused: a holder that read the record before
    // the failover makes a password grant instead.
    let refused = new.write(&key, Some(1), &spent).await.unwrap();
    let WriteOutcome::Conflict(conflict) = refused else {
        panic!("a spend mark over a record of another epoch was written: {refused:?}");
    };
    assert_eq!(conflict.version(), Some(1));
    assert!(
        conflict
            .record()
            .expect("readable")
            .record()
            .is_refresh_spent()
    );

    // A new pair (a password grant's) goes over it, in the new epoch, and
    // its refresh token is the fleet's again.
    assert_eq!(contract::put(&new, &key, Some(1), "after").await, 2);
    let after = new.read(&key).await.unwrap().expect("the new record");
    let refresh = after.record().refresh_token().expect("usable");
    assert_eq!(refresh.expose_secret(), "refresh-after");
    let spend = after.record().clone().with_refresh_spent();
    assert_eq!(
        new.write(&key, Some(2), &spend).await.unwrap().version(),
        Some(3)
    );
}

/// 8 replicas sharing a login through a replicated Redis, with one replica
/// alone beside them, in real time, through a failover.
mod fleets {
    use std::{sync::Arc, time::Duration};

    use daxium_auth::store::{AnyStore, RedisStore};
    use tokio::time::{Instant, sleep_until};

    use super::{
        STORE_TIMEOUT,
        support::replicas::{
            Issued, Replica, StoreWatch, assert_grants_of_one, assert_sound, blocking, login_key,
            replica, server, solo, spawn_drive,
        },
    };

    /// The server's token lifetime: one replica alone refreshes about twice
    /// per lifetime.
    const LIFETIME: Duration = Duration::from_secs(2);
    /// The whole run, and when the fault comes.
    const RUN: Duration = Duration::from_secs(15);
    const FAULT_AT: Duration = Duration::from_secs(5);
    /// From the new primary on, how long the fleet has to share again before
    /// its grants are counted against the replica alone.
    const REJOIN: Duration = Duration::from_secs(3);
    /// Each caller's pause between requests; two callers per replica.
    const PACE: Duration = Duration::from_millis(50);
    const CALLERS: usize = 2;
    /// The slack over a single replica's grants that a fleet may make.
    const SLACK: u64 = 4;

    /// The store of one replica: its own connections, and keys of the test's
    /// own (tests may share a Redis).
    pub(super) fn store(url: &str, test: &str) -> RedisStore {
        RedisStore::builder(url)
            .timeout(STORE_TIMEOUT)
            .key_prefix(format!("{test}:"))
            .build()
            .expect("a valid URL")
    }

    /// Drives the fleet on `url` for 15 s; at 5 s, `fault` runs with the
    /// login's record key (on the blocking pool, until the new primary
    /// serves), and what it returns lives to the end of the run and is
    /// returned. Every request succeeds, no refresh token is reused or
    /// refused, the fleet makes the grants of one replica before the fault
    /// and again after it, and every replica ends on a token the store held
    /// after the fault.
    pub(super) async fn ride_out<T: Send + 'static>(
        url: &str,
        test: &str,
        fault: impl FnOnce(String) -> T + Send + 'static,
    ) -> T {
        let shared = server(LIFETIME).await;
        let issued = Arc::new(Issued::default());
        let replicas: Vec<Arc<Replica>> = (0..8)
            .map(|_| {
                let store = AnyStore::new(store(url, test));
                Arc::new(replica(&shared, Some(store), &issued, |b| b))
            })
            .collect();
        let (alone, solo) = solo(LIFETIME).await;
        let key = login_key(&shared);

        let started = Instant::now();
        let until = started + RUN;
        let driving = spawn_drive(&replicas, &shared, CALLERS, PACE, until);
        let driving_alone = spawn_drive(&solo, &alone, CALLERS, PACE, until);

        sleep_until(started + FAULT_AT).await;
        let (fleet_before, one_before) = (shared.counters(), alone.counters());
        let record_key = format!("{test}:{{{}}}", key.id());
        let kept = blocking(move || fault(record_key)).await;
        let promoted = Instant::now();

        // Every access token the store holds from the new primary on.
        let observer = || AnyStore::new(store(url, test));
        let watch = StoreWatch::start(observer(), key.clone(), RUN);

        sleep_until(promoted + REJOIN).await;
        let (fleet_from, one_from) = (shared.counters(), alone.counters());
        let driven = driving.await.unwrap();
        let driven_alone = driving_alone.await.unwrap();
        let (fleet, one) = (shared.counters(), alone.counters());
        // Every replica on a token of the shared record.
        let last = watch
            .assert_shared(&replicas, &observer(), &key, "the fault")
            .await;

        let window = |to: u64, from: u64| to - from;
        let (fleet_window, one_window) = (
            window(fleet.grant_requests, fleet_from.grant_requests),
            window(one.grant_requests, one_from.grant_requests),
        );
        eprintln!(
            "{test}: {} requests; before the fault: fleet {} grants, one replica alone {}; \
             the fault took {:.1} s; from {:.1} s after it: fleet {fleet_window}, alone \
             {one_window}; password grants {} in all, refresh {}, reuse {}; record \
             version {} at the end",
            driven.requests,
            fleet_before.grant_requests,
            one_before.grant_requests,
            (promoted - started - FAULT_AT).as_secs_f64(),
            REJOIN.as_secs_f64(),
            fleet.password_ok,
            fleet.refresh_ok,
            fleet.refresh_reuse,
            last.version()
        );
        // One login, one more for the new epoch, and at most one of its own
        // per replica while no primary answered.
        assert_sound(&driven, &driven_alone, &fleet, 2 + 8);
        // One grant per refresh while the primary serves, and again once the
        // new primary serves.
        assert_grants_of_one(
            "before the fault",
            fleet_before.grant_requests,
            one_before.grant_requests,
            3,
            SLACK,
        );
        assert_grants_of_one("after the fault", fleet_window, one_window, 3, 2);
        kept
    }
}

/// A Redis Cluster of 3 primaries and 3 replicas, shared by the tests of
/// this binary.
mod cluster {
    use std::time::Duration;

    use daxium_auth::store::{LeaseOwner, LoginKey, TokenStore};

    use super::{
        contract,
        fleets::ride_out,
        store,
        support::redis::{RedisCluster, command},
        support::replicas::blocking,
    };

    async fn cluster() -> &'static RedisCluster {
        blocking(RedisCluster::shared).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_contract_holds_on_a_cluster() {
        let cluster = cluster().await;
        let _quiet = cluster.quiet().await;
        let (a, b) = (store(&cluster.url()), store(&cluster.url()));
        contract::compare_and_set(&a).await;
        contract::one_lease_holder_at_a_time(&a).await;
        contract::another_login_is_never_read(&a).await;
        contract::a_lease_lapses_after_its_ttl(&a, Duration::from_millis(300)).await;
        contract::a_waiter_sees_another_handles_write(&a, &b).await;
        contract::a_wait_without_a_write_times_out(&a).await;
    }

    /// The cluster itself says that a login's keys share a slot, and every
    /// script runs on each of the three primaries without a CROSSSLOT.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_key_of_a_login_is_in_one_slot_and_every_script_runs_on_every_primary() {
        let cluster = cluster().await;
        let _quiet = cluster.quiet().await;
        let store = store(&cluster.url());
        let mut primaries = std::collections::HashSet::new();
        for n in 0..24 {
            let key = LoginKey::new("slots", format!("user-{n}@example.com"));
            let id = key.id();
            let names = [
                format!("daxium-auth:{{{id}}}"),
                format!("daxium-auth:{{{id}}}:lease"),
                format!("daxium-auth:{{{id}}}:changed"),
            ];
            let slots: Vec<u16> = blocking({
                let names = names.clone();
                move || names.iter().map(|n| cluster.slot(n)).collect()
            })
            .await;
            assert!(slots.iter().all(|&s| s == slots[0]), "{n}: {slots:?}");
            let owner = LeaseOwner::random();
            assert!(contract::takes(&store, &key, &owner, Duration::from_secs(5)).await);
            assert_eq!(contract::put(&store, &key, None, "slot").await, 1);
            let read = store.read(&key).await.unwrap().expect("the record");
            let spent = read.record().clone().with_refresh_spent();
            assert_eq!(
                store.write(&key, Some(1), &spent).await.unwrap().version(),
                Some(2)
            );
            assert!(store.release_lease(&key, &owner).await.unwrap());
            let slot = slots[0];
            primaries.insert(blocking(move || cluster.primary_of(slot)).await);
        }
        assert_eq!(
            primaries.len(),
            3,
            "the logins' slots covered every primary"
        );
    }

    /// A wait subscribes on a seed node; the commit is published by the
    /// primary of the login's slot, another node, and reaches the wait
    /// through the cluster at once, not at the next poll.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_on_a_cluster_wakes_on_a_commit_that_another_node_publishes() {
        let cluster = cluster().await;
        let _quiet = cluster.quiet().await;
        let (waiter, writer) = (store(&cluster.url()), store(&cluster.url()));
        let (seed, key) = blocking(move || {
            let seed = cluster.seed();
            let elsewhere = (0..64)
                .map(|n| LoginKey::new("bus", format!("user-{n}@example.com")))
                .find(|key| {
                    let slot = cluster.slot(&format!("daxium-auth:{{{}}}", key.id()));
                    cluster.primary_of(slot) != seed
                });
            (seed, elsewhere.expect("a login that another node serves"))
        })
        .await;
        let channel = format!("daxium-auth:{{{}}}:changed", key.id());
        let subscribers = move || {
            let channel = channel.clone();
            blocking(move || {
                let counts: Vec<(String, i64)> =
                    command(seed, &["PUBSUB", "NUMSUB", &channel]).expect("PUBSUB NUMSUB");
                counts[0].1
            })
        };

        contract::a_subscribed_wait_wakes_at_the_commit(waiter, &writer, &key, subscribers).await;
    }

    /// A password the cluster refuses, and Sentinels and a cluster that do
    /// not answer: the calls fail, and no error, cause or `Debug` shows the
    /// password.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_password_shows_in_the_errors_of_a_cluster_or_sentinel_store() {
        let cluster = cluster().await;
        let _quiet = cluster.quiet().await;
        let secret = "pw-sentinel-5e1f";
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let refused = cluster.url().replace("://", &format!("://u:{secret}@"));
        for url in [
            refused,
            format!("redis+cluster://:{secret}@127.0.0.1:{closed}/"),
            format!("redis+sentinel://:{secret}@127.0.0.1:{closed}/daxium"),
        ] {
            let store = store(&url);
            let key = contract::key("secret");
            let err = store
                .read(&key)
                .await
                .expect_err("no answer with that password");
            let mut shown = format!("{err} {err:?} {store:?}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                shown.push_str(&format!(" {cause} {cause:?}"));
                source = cause.source();
            }
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eight_replicas_ride_out_a_failover_of_their_slots_primary() {
        let cluster = cluster().await;
        let _alone = cluster.alone().await;
        ride_out(&cluster.url(), "cluster-failover", move |key| {
            cluster.fail_over(cluster.slot(&key))
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eight_replicas_ride_out_their_slots_primary_killed() {
        let cluster = cluster().await;
        let _alone = cluster.alone().await;
        let killed = ride_out(&cluster.url(), "cluster-kill", move |key| {
            cluster.kill_primary(cluster.slot(&key))
        })
        .await;
        // Whole again (the killed node a replica now) for the tests after.
        blocking(move || cluster.restart(killed)).await;
    }
}

/// A primary, its replica and three Sentinels, for one test.
mod sentinel {
    use daxium_auth::store::TokenStore;

    use super::{
        contract, fleets::ride_out, store, support::redis::Sentinels, support::replicas::blocking,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eight_replicas_follow_the_sentinels_to_the_new_primary_when_theirs_is_killed() {
        let sentinels = blocking(Sentinels::start).await;
        let url = sentinels.url();
        // The store finds the primary and waits on it.
        let (a, b) = (store(&url), store(&url));
        contract::compare_and_set(&a).await;
        contract::a_waiter_sees_another_handles_write(&a, &b).await;

        let sentinels = ride_out(&url, "sentinel-kill", move |_| {
            let mut sentinels = sentinels;
            sentinels.kill_primary();
            sentinels
        })
        .await;
        blocking(move || drop(sentinels)).await;
    }

    /// A primary that stops answering without closing its connections: the
    /// calls on it time out, and the store asks the Sentinels again until
    /// they name the promoted replica.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_follows_the_sentinels_away_from_a_frozen_primary() {
        let sentinels = blocking(Sentinels::start).await;
        let store = store(&sentinels.url());
        let key = contract::key("frozen");
        assert_eq!(contract::put(&store, &key, None, "before").await, 1);

        let sentinels = blocking(move || {
            let mut sentinels = sentinels;
            sentinels.freeze_primary();
            sentinels
        })
        .await;
        // Bounded: each call gives up within the store's timeout.
        let mut written = None;
        for _ in 0..20 {
            let expected = match store.read(&key).await {
                Ok(record) => record.map(|r| r.version()),
                Err(_) => continue,
            };
            if let Ok(outcome) = store
                .write(&key, expected, &contract::record("after"))
                .await
            {
                written = outcome.version();
                break;
            }
        }
        let version = written.expect("the store never wrote to the new primary");
        let read = store.read(&key).await.unwrap().expect("the new record");
        assert_eq!(read.version(), version);
        blocking(move || drop(sentinels)).await;
    }
}
