//! A fleet sharing one login through a token store: several layers, each with
//! its own cache (as replicas in separate processes would have), on one
//! `MemoryStore` under paused time against a scripted endpoint; and, in real
//! time, on a real `redis-server` and on a `FileStore` against the crate's
//! Daxium-compatible server with 2 s tokens and refresh token reuse
//! protection: ten lifetimes of traffic, Redis killed and restarted (and
//! restarted at once, its record lost), a lease holder that dies mid-grant, a
//! stampede on an expired record, sealed records that leave no token at rest;
//! and, ignored with the defect each shows, a revocation of every token,
//! replicas waiting for a slow grant, and a write that timed out but landed.

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use daxium_auth::{AuthLayer, MemoryStore, TokenStore};
use futures_util::future::join_all;
use http::StatusCode;
use tower::{Layer, ServiceExt};

use crate::support;

use support::scripted::{Api, Endpoint, api_service, get, layer_with};

fn fleet(
    endpoint: &std::sync::Arc<Endpoint>,
    store: impl TokenStore + Clone,
    n: usize,
) -> Vec<AuthLayer> {
    (0..n)
        .map(|_| layer_with(endpoint, |b| b.store(store.clone())))
        .collect()
}

/// Drives every service once a second for `seconds`; every request succeeds.
async fn drive<S>(services: &[S], seconds: u64)
where
    S: tower::Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<http_body_util::Full<bytes::Bytes>>,
        > + Clone,
    S::Error: std::fmt::Debug,
{
    for _ in 0..seconds {
        let calls = services.iter().map(|svc| svc.clone().oneshot(get()));
        for res in join_all(calls).await {
            assert_eq!(res.unwrap().status(), StatusCode::OK);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_fleet_on_one_store_makes_the_grants_of_one_replica() {
    let api = std::sync::Arc::new(Api::default());
    // Ten lifetimes of 60 s tokens, for one replica alone and for 8 sharing.
    let solo = Endpoint::new(&api);
    *solo.lifetime.lock().unwrap() = Duration::from_secs(60);
    let alone = fleet(&solo, MemoryStore::new(), 1);
    drive(&[alone[0].layer(api_service(&api))], 600).await;

    let shared = Endpoint::new(&api);
    *shared.lifetime.lock().unwrap() = Duration::from_secs(60);
    let layers = fleet(&shared, MemoryStore::new(), 8);
    let services: Vec<_> = layers.iter().map(|l| l.layer(api_service(&api))).collect();
    drive(&services, 600).await;

    shared.assert_no_refresh_token_sent_twice();
    assert_eq!(shared.password.load(SeqCst), 1, "one login for the fleet");
    let (fleet_grants, solo_grants) = (shared.grants(), solo.grants());
    assert!(
        fleet_grants <= solo_grants + 4,
        "8 replicas made {fleet_grants} grants, one alone {solo_grants}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fleet_stampede_on_an_empty_store_makes_one_grant() {
    let api = std::sync::Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let layers = fleet(&endpoint, MemoryStore::new(), 8);
    let calls = layers.iter().flat_map(|layer| {
        let svc = layer.layer(api_service(&api));
        (0..1000).map(move |_| tokio::spawn(svc.clone().oneshot(get())))
    });
    for res in join_all(calls.collect::<Vec<_>>()).await {
        assert_eq!(res.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        endpoint.grants(),
        1,
        "8 replicas x 1,000 callers, one grant"
    );
}

/// The settings of the fleets in real time.
#[cfg(all(feature = "mock", feature = "rustls"))]
mod real {
    use std::{sync::Arc, time::Duration};

    use daxium_auth::mock::{MockCounters, MockServer};
    use tokio::time::Instant;

    use super::support::replicas::{
        Replica, assert_grants_of_one, assert_sound, drive, grants, solo,
    };

    /// The server's token lifetime: the cache refreshes at half-life (plus up
    /// to a fifth of it at random), so one replica alone makes about two
    /// grants per lifetime.
    pub(crate) const LIFETIME: Duration = Duration::from_secs(2);
    /// Ten lifetimes.
    pub(crate) const RUN: Duration = Duration::from_secs(20);
    /// Each caller's pause between requests; two callers per replica.
    pub(crate) const PACE: Duration = Duration::from_millis(50);
    pub(crate) const CALLERS: usize = 2;
    /// One store call's timeout: above the default, for a loaded test
    /// machine, and still far below the token's lifetime.
    pub(crate) const STORE_TIMEOUT: Duration = Duration::from_secs(1);
    /// The slack over a single replica's grants that a fleet may make.
    pub(crate) const SLACK: u64 = 4;

    /// Drives the replicas of `shared` for `run` and, side by side, one
    /// replica alone against a server of its own; checks that every request
    /// was answered, no refresh token was sent twice, the fleet logged in
    /// once (twice at the most), and made the grants of the replica alone,
    /// which made at least `at_least`. The fleet's server's counters.
    pub(crate) async fn beside_one(
        what: &str,
        shared: &MockServer,
        replicas: &[Arc<Replica>],
        run: Duration,
        at_least: u64,
    ) -> MockCounters {
        let (alone, solo) = solo(LIFETIME).await;
        let until = Instant::now() + run;
        let (driven, driven_alone) = tokio::join!(
            drive(replicas, shared.api_url("v1/items"), CALLERS, PACE, until),
            drive(&solo, alone.api_url("v1/items"), CALLERS, PACE, until),
        );
        let (fleet, one) = (shared.counters(), alone.counters());
        eprintln!(
            "{what}: {} requests; fleet: {}; one replica alone: {}",
            driven.requests,
            grants(&fleet),
            grants(&one)
        );
        assert_sound(&driven, &driven_alone, &fleet, 2);
        let (fleet_grants, one_grants) = (fleet.grant_requests, one.grant_requests);
        assert_grants_of_one(what, fleet_grants, one_grants, at_least, SLACK);
        fleet
    }
}

#[cfg(all(feature = "mock", feature = "rustls", feature = "redis"))]
mod on_redis {
    use std::{convert::Infallible, sync::Arc, time::Duration};

    use bytes::Bytes;
    use daxium_auth::{
        ReplayBody,
        mock::MockServer,
        store::{AnyStore, LoginKey, RedisStore, TokenStore},
    };
    use http::{Request, Response, StatusCode, header::AUTHORIZATION};
    use http_body_util::Empty;
    use tokio::time::{Instant, sleep, sleep_until};
    use tower::{Layer, ServiceExt};

    use super::{
        real::*,
        support::redis::RedisServer,
        support::replicas::{
            Issued, Replica, StoreWatch, Then, assert_grants_of_one, assert_sound, blocking, drive,
            eventually, login_key, replica, server, solo, spawn_drive,
        },
    };

    type Fleet = Vec<Arc<Replica>>;

    fn store(url: &str) -> AnyStore {
        AnyStore::new(
            RedisStore::builder(url)
                .timeout(STORE_TIMEOUT)
                .build()
                .expect("a valid URL"),
        )
    }

    /// `n` replicas of `server`'s login, each with a Redis store of its own
    /// on `url`.
    fn fleet(
        server: &MockServer,
        url: &str,
        n: usize,
        issued: &Arc<Issued>,
        configure: impl Fn(daxium_auth::AuthLayerBuilder) -> daxium_auth::AuthLayerBuilder,
    ) -> Vec<Arc<Replica>> {
        (0..n)
            .map(|_| Arc::new(replica(server, Some(store(url)), issued, &configure)))
            .collect()
    }

    /// Eight replicas of a new server's login, each with a Redis store of
    /// its own on `url`, beside one replica alone against a server of its
    /// own: the server, the replicas, the replica alone's, and the login's
    /// key in the store.
    async fn eight_beside_one(url: &str) -> (MockServer, Fleet, (MockServer, Fleet), LoginKey) {
        let shared = server(LIFETIME).await;
        let replicas = fleet(&shared, url, 8, &Arc::new(Issued::default()), |b| b);
        let key = login_key(&shared);
        (shared, replicas, solo(LIFETIME).await, key)
    }

    /// A number from Redis's `INFO`.
    async fn info(url: &str, field: &str) -> u64 {
        let mut raw = super::support::redis::raw(url).await;
        let text: String = redis::cmd("INFO").query_async(&mut raw).await.unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in INFO"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eight_replicas_on_one_redis_make_the_grants_of_one_replica() {
        let redis = blocking(RedisServer::start).await;
        let shared = server(LIFETIME).await;
        let issued = Arc::new(Issued::default());
        let replicas = fleet(&shared, &redis.url(), 8, &issued, |b| b);
        let fleet = beside_one("redis fleet", &shared, &replicas, RUN, 10).await;
        assert_eq!(issued.pairs(), fleet.password_ok + fleet.refresh_ok);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eight_replicas_ride_out_a_redis_restart_and_share_one_record_again() {
        let mut redis = blocking(RedisServer::start).await;
        let url = redis.url();
        let (shared, replicas, (alone, solo), key) = eight_beside_one(&url).await;

        let started = Instant::now();
        let until = started + RUN;
        let driving = spawn_drive(&replicas, &shared, CALLERS, PACE, until);
        let driving_alone = spawn_drive(&solo, &alone, CALLERS, PACE, until);

        // Killed at 6 s, back at 9 s on the same port, with nothing stored.
        sleep_until(started + Duration::from_secs(6)).await;
        let before_outage = shared.counters();
        tokio::task::block_in_place(|| redis.stop());
        sleep_until(started + Duration::from_secs(9)).await;
        let after_outage = shared.counters();
        tokio::task::block_in_place(|| redis.restart());

        // Every access token the store holds from the restart on.
        let watch = StoreWatch::start(store(&url), key.clone(), RUN);

        // The rejoined fleet against the replica alone, over the last 7 s.
        sleep_until(started + Duration::from_secs(13)).await;
        let (fleet_from, one_from) = (shared.counters(), alone.counters());
        let driven = driving.await.unwrap();
        let driven_alone = driving_alone.await.unwrap();
        let (fleet, one) = (shared.counters(), alone.counters());
        // Every replica holds a token of the shared record.
        let last = watch
            .assert_shared(&replicas, &store(&url), &key, "the restart")
            .await;

        let fleet_window = fleet.grant_requests - fleet_from.grant_requests;
        let one_window = one.grant_requests - one_from.grant_requests;
        eprintln!(
            "redis restart: {} requests; grants before the outage {}, during it {}, \
             after it {} (password {} in all), reuse {}; last 7 s: fleet {fleet_window}, \
             one replica alone {one_window}; record version {} after the restart",
            driven.requests,
            before_outage.grant_requests,
            after_outage.grant_requests - before_outage.grant_requests,
            fleet.grant_requests - after_outage.grant_requests,
            fleet.password_ok,
            fleet.refresh_reuse,
            last.version()
        );
        // One login, and at most one of its own per replica while Redis was away.
        assert_sound(&driven, &driven_alone, &fleet, 1 + 8);
        // Rejoined: the fleet makes the grants of one replica again.
        assert_grants_of_one("the 7 s after the restart", fleet_window, one_window, 3, 2);
        assert!(
            last.version() >= 3,
            "the record moved on: {}",
            last.version()
        );
        drop(redis);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_quick_restart_that_lost_the_record_the_fleet_shares_the_new_one() {
        let redis = blocking(RedisServer::start).await;
        let url = redis.url();
        let (shared, replicas, (alone, solo), key) = eight_beside_one(&url).await;

        let started = Instant::now();
        let until = started + Duration::from_secs(16);
        let driving = {
            let (replicas, api) = (replicas.clone(), shared.api_url("v1/items"));
            tokio::spawn(async move { drive(&replicas, &api, CALLERS, PACE, until).await })
        };
        let driving_alone = {
            let (solo, api) = (solo.clone(), alone.api_url("v1/items"));
            tokio::spawn(async move { drive(&solo, &api, CALLERS, PACE, until).await })
        };
        // Several versions in, Redis restarts at once, with nothing stored:
        // most replicas still hold a token of a version the store no longer has.
        sleep_until(started + Duration::from_secs(8)).await;
        let before = store(&url).read(&key).await.unwrap().expect("the record");
        let redis = blocking(move || {
            let mut redis = redis;
            redis.restart();
            redis
        })
        .await;
        let restarted = shared.counters();
        sleep_until(started + Duration::from_secs(11)).await;
        let (fleet_from, one_from) = (shared.counters(), alone.counters());
        let driven = driving.await.unwrap();
        let driven_alone = driving_alone.await.unwrap();
        let (fleet, one) = (shared.counters(), alone.counters());
        let last = store(&url)
            .read(&key)
            .await
            .unwrap()
            .expect("the new record");

        let fleet_window = fleet.grant_requests - fleet_from.grant_requests;
        let one_window = one.grant_requests - one_from.grant_requests;
        eprintln!(
            "quick restart at version {}: grants in the 3 s after it {}, then in 5 s: \
             fleet {fleet_window}, one replica alone {one_window}; reuse {}; version now {}",
            before.version(),
            fleet_from.grant_requests - restarted.grant_requests,
            fleet.refresh_reuse,
            last.version()
        );
        driven.assert_all_ok();
        driven_alone.assert_all_ok();
        assert_eq!(fleet.refresh_reuse, 0, "{fleet:?}");
        assert!(before.version() >= 7, "{}", before.version());
        // Each replica holding a version the store lost refreshes once on its
        // own (under the lease, from the stored refresh token) before it holds
        // one of the new record's versions.
        let settling = fleet_from.grant_requests - restarted.grant_requests;
        assert!(
            settling <= 8 + 3,
            "{settling} grants in the 3 s after the restart"
        );
        assert!(
            fleet_window <= one_window + 2,
            "after the restart the fleet made {fleet_window} grants in 5 s, one replica alone {one_window}"
        );
        drop(redis);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_holder_that_dies_mid_grant_delays_the_fleet_by_its_lease_at_most() {
        const LEASE: Duration = Duration::from_secs(2);
        let redis = blocking(RedisServer::start).await;
        let shared = Arc::new(server(LIFETIME).await);
        let issued = Arc::new(Issued::default());
        let mut replicas = fleet(&shared, &redis.url(), 8, &issued, |b| b.lease_ttl(LEASE));
        let api = shared.api_url("v1/items");

        // One login; every replica adopts it.
        for replica in &replicas {
            assert_eq!(replica.get(&api).await, Ok(StatusCode::OK));
        }
        assert_eq!(shared.counters().grant_requests, 1);

        // Once its token is stale, the first replica takes the lease, marks
        // the refresh token spent, sends it, and dies with the answer unread.
        let holder = replicas.remove(0);
        holder.after_refresh.set(Then::Hang);
        sleep(LIFETIME.mul_f64(0.65)).await;
        assert_eq!(holder.get(&api).await, Ok(StatusCode::OK));
        assert!(
            holder.after_refresh.fired(Duration::from_secs(5)).await,
            "the holder's refresh never reached the server"
        );
        let died_at = Instant::now();
        assert_eq!(shared.counters().refresh_ok, 1);
        // It crashes: nothing of it runs again, and its lease stays until it
        // lapses. (A layer dropped in an orderly way releases its lease, and
        // the others take over at once.)
        std::mem::forget(holder);

        // The others carry on; the recovery grant is a login, since the
        // stored refresh token is marked spent.
        let recovery = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let found = eventually(Duration::from_secs(10), || {
                    let shared = Arc::clone(&shared);
                    async move { shared.counters().password_ok >= 2 }
                })
                .await;
                found.then(Instant::now)
            })
        };
        let until = Instant::now() + 3 * LIFETIME;
        let driven = drive(&replicas, &api, CALLERS, PACE, until).await;
        let recovery = recovery.await.unwrap().map(|at| at - died_at);
        let counters = shared.counters();
        eprintln!(
            "dead holder: {} requests; recovered {recovery:?} after the holder died \
             (lease {LEASE:?}); grants {} (password {}, refresh {}), reuse {}",
            driven.requests,
            counters.grant_requests,
            counters.password_ok,
            counters.refresh_ok,
            counters.refresh_reuse
        );
        driven.assert_all_ok();
        assert_eq!(counters.refresh_reuse, 0, "{counters:?}");
        assert_eq!(counters.refresh_rejected, 0, "{counters:?}");
        let recovery = recovery.expect("a new login within 10 s");
        assert!(
            recovery <= LEASE + Duration::from_secs(1),
            "the fleet waited {recovery:?} for a lease of {LEASE:?}"
        );
        // Nobody jumped the dead holder's lease.
        assert!(
            recovery >= LEASE - Duration::from_millis(500),
            "recovered {recovery:?} into a lease of {LEASE:?}"
        );
        assert_eq!(counters.password_ok, 2, "{counters:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stampede_of_eight_replicas_on_an_expired_record_makes_one_grant() {
        let redis = blocking(RedisServer::start).await;
        let url = redis.url();
        let shared = Arc::new(server(LIFETIME).await);
        let issued = Arc::new(Issued::default());
        let replicas = fleet(&shared, &url, 8, &issued, |b| b);

        for replica in &replicas {
            replica.token().await;
        }
        assert_eq!(shared.counters().grant_requests, 1, "one login");
        // Every replica's token, and the stored one, expire.
        sleep(LIFETIME + Duration::from_millis(300)).await;
        let (commands, connections) = (
            info(&url, "total_commands_processed").await,
            info(&url, "total_connections_received").await,
        );

        // 1,000 callers on each replica, against the server's own check of
        // the token (no socket per request).
        let api = {
            let shared = Arc::clone(&shared);
            tower::service_fn(move |req: Request<ReplayBody<Empty<Bytes>>>| {
                let shared = Arc::clone(&shared);
                async move {
                    let auth = req
                        .headers()
                        .get(AUTHORIZATION)
                        .and_then(|v| v.to_str().ok());
                    let status = match shared.check_authorization(auth) {
                        Ok(()) => StatusCode::OK,
                        Err(_) => StatusCode::UNAUTHORIZED,
                    };
                    let response = Response::builder()
                        .status(status)
                        .body(Empty::<Bytes>::new());
                    Ok::<_, Infallible>(response.unwrap())
                }
            })
        };
        let started = Instant::now();
        let mut callers = tokio::task::JoinSet::new();
        for replica in &replicas {
            let svc = replica.layer.layer(api.clone());
            for _ in 0..1000 {
                let request = Request::get(shared.api_url("v1/items"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let call = svc.clone().oneshot(request);
                callers.spawn(
                    async move { tokio::time::timeout(Duration::from_secs(15), call).await },
                );
            }
        }
        let mut ok = 0;
        while let Some(done) = callers.join_next().await {
            let response = done.unwrap().expect("answered within 15 s").unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            ok += 1;
        }
        let took = started.elapsed();
        let counters = shared.counters();
        let commands = info(&url, "total_commands_processed").await - commands;
        // The last INFO's own connection is one.
        let connections = info(&url, "total_connections_received").await - connections - 1;
        eprintln!(
            "stampede: {ok} callers answered in {took:?}; grants {} after the login \
             (refresh {}), reuse {}; Redis: {commands} commands, {connections} connections",
            counters.grant_requests - 1,
            counters.refresh_ok,
            counters.refresh_reuse
        );
        assert_eq!(ok, 8 * 1000);
        assert_eq!(
            counters.grant_requests, 2,
            "one grant for 8 replicas x 1,000 callers: {counters:?}"
        );
        assert_eq!(counters.refresh_ok, 1, "the stored refresh token, once");
        assert_eq!(counters.refresh_reuse, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_the_server_revokes_every_token_each_refused_request_is_replayed_with_a_new_one()
    {
        let redis = blocking(RedisServer::start).await;
        let shared = server(Duration::from_secs(10)).await;
        let issued = Arc::new(Issued::default());
        let replicas = fleet(&shared, &redis.url(), 8, &issued, |b| b);
        let api = shared.api_url("v1/items");
        for replica in &replicas {
            assert_eq!(replica.get(&api).await, Ok(StatusCode::OK));
        }
        assert_eq!(shared.counters().grant_requests, 1);

        // Between refreshes, the server revokes the login's every token.
        shared.revoke_all();
        let until = Instant::now() + Duration::from_secs(2);
        let driven = drive(&replicas, &api, CALLERS, PACE, until).await;
        let counters = shared.counters();
        let replays: u64 = replicas.iter().map(|r| r.layer.stats().replays).sum();
        eprintln!(
            "revoked: {} of {} requests ok, {replays} replays; grants {} (password {}), reuse {}",
            driven.ok,
            driven.requests,
            counters.grant_requests - 1,
            counters.password_ok,
            counters.refresh_reuse
        );
        driven.assert_all_ok();
        assert_eq!(counters.refresh_reuse, 0, "{counters:?}");
        // The revoked refresh token is refused once, then one login for all.
        assert_eq!(counters.password_ok, 2, "{counters:?}");
    }

    /// Sends `signal` (`STOP`, `CONT`) to the process `pid`.
    fn signal(pid: u64, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_that_wait_for_a_slow_grant_wait_quietly() {
        let redis = blocking(RedisServer::start).await;
        let url = redis.url();
        // A grant that takes a second, on tokens that live four.
        let shared = MockServer::builder()
            .token_lifetime(Duration::from_secs(4))
            .reuse_protection(true)
            .grant_latency(Duration::from_secs(1))
            .start()
            .await
            .expect("bind 127.0.0.1");
        let issued = Arc::new(Issued::default());
        let replicas = fleet(&shared, &url, 8, &issued, |b| b);
        for replica in &replicas {
            replica.token().await;
        }
        sleep(Duration::from_millis(4300)).await;
        let (commands, connections) = (
            info(&url, "total_commands_processed").await,
            info(&url, "total_connections_received").await,
        );

        let mut callers = tokio::task::JoinSet::new();
        for replica in &replicas {
            for _ in 0..10 {
                let replica = Arc::clone(replica);
                callers.spawn(async move { replica.token().await });
            }
        }
        while let Some(done) = callers.join_next().await {
            done.expect("a token");
        }
        let commands = info(&url, "total_commands_processed").await - commands;
        // The last INFO's own connection is one.
        let connections = info(&url, "total_connections_received").await - connections - 1;
        let counters = shared.counters();
        eprintln!(
            "slow grant: {} grants after the login; Redis: {commands} commands, \
             {connections} connections while 7 replicas waited about a second",
            counters.grant_requests - 1
        );
        assert_eq!(counters.grant_requests, 2, "{counters:?}");
        // Waiting is a subscription and a few reads per change of the record:
        // a handful of connections and a few dozen commands for the fleet.
        assert!(
            connections <= 8 * 4,
            "{connections} connections to Redis while waiting"
        );
        assert!(commands <= 250, "{commands} Redis commands while waiting");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_timed_out_and_landed_later_never_has_a_refresh_token_sent_twice() {
        let redis = blocking(RedisServer::start).await;
        let url = redis.url();
        let pid = info(&url, "process_id").await;
        let shared = server(LIFETIME).await;
        let issued = Arc::new(Issued::default());
        // Redis's default call timeout (250 ms), and a short lease.
        let (a, b) = {
            let make = || {
                let store = AnyStore::new(RedisStore::new(&url).expect("a valid URL"));
                Arc::new(replica(&shared, Some(store), &issued, |b| {
                    b.lease_ttl(Duration::from_secs(1))
                }))
            };
            (make(), make())
        };
        let api = shared.api_url("v1/items");
        let key = login_key(&shared);
        assert_eq!(a.get(&api).await, Ok(StatusCode::OK));
        assert_eq!(b.get(&api).await, Ok(StatusCode::OK));
        assert_eq!(shared.counters().grant_requests, 1, "one login, adopted");

        // A's refresh is answered while Redis is frozen: A's write of the new
        // pair times out, and lands when Redis thaws.
        a.after_refresh
            .set(Then::Run(Box::new(move || signal(pid, "STOP"))));
        sleep(LIFETIME.mul_f64(0.65)).await;
        assert_eq!(a.get(&api).await, Ok(StatusCode::OK));
        assert!(a.after_refresh.fired(Duration::from_secs(5)).await);
        let refreshed_at = Instant::now();
        sleep(Duration::from_millis(700)).await;
        signal(pid, "CONT");
        let rotated = issued
            .tokens()
            .last()
            .cloned()
            .expect("the new refresh token");
        let observer = store(&url);
        let landed = eventually(Duration::from_secs(2), || {
            let (observer, key, rotated) = (observer.clone(), key.clone(), rotated.clone());
            async move {
                observer
                    .read(&key)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|stored| {
                        stored
                            .record()
                            .refresh_token()
                            .is_some_and(|r| r.expose_secret() == rotated)
                    })
            }
        })
        .await;
        assert!(landed, "the write that timed out landed");

        // A's next refresh, with Redis frozen again: A goes on alone.
        sleep_until(refreshed_at + LIFETIME.mul_f64(0.55)).await;
        signal(pid, "STOP");
        assert_eq!(a.get(&api).await, Ok(StatusCode::OK));
        // The refresh token of the write that timed out may be the fleet's now:
        // A never sends it alone, and logs in on its own instead.
        let alone = eventually(Duration::from_secs(3), || {
            std::future::ready(shared.counters().password_ok >= 2)
        })
        .await;
        signal(pid, "CONT");
        assert!(alone, "A logged in on its own: {:?}", shared.counters());

        // B, whose token expired, takes the stored pair under the lease.
        sleep_until(refreshed_at + LIFETIME + Duration::from_millis(100)).await;
        assert_eq!(b.get(&api).await, Ok(StatusCode::OK));
        let counters = shared.counters();
        eprintln!("write landed late: {counters:?}");
        assert_eq!(
            counters.refresh_reuse, 0,
            "a refresh token sent twice: {counters:?}"
        );
    }
}

#[cfg(all(feature = "mock", feature = "rustls", feature = "file"))]
mod on_files {
    use std::{sync::Arc, time::Duration};

    use daxium_auth::store::{AnyStore, FileStore};

    use super::{
        real::*,
        support::replicas::{Issued, Replica, replica, server},
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eight_replicas_on_one_directory_make_the_grants_of_one_replica() {
        const RUN_FILES: Duration = Duration::from_secs(10);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let shared = server(LIFETIME).await;
        let issued = Arc::new(Issued::default());
        // A store each: their locks contend as separate processes' do.
        let replicas: Vec<Arc<Replica>> = (0..8)
            .map(|_| {
                let store = FileStore::builder(dir.path())
                    .timeout(STORE_TIMEOUT)
                    .build()
                    .expect("a file store");
                Arc::new(replica(&shared, Some(AnyStore::new(store)), &issued, |b| b))
            })
            .collect();
        beside_one("file fleet", &shared, &replicas, RUN_FILES, 5).await;
    }
}

#[cfg(all(
    feature = "mock",
    feature = "rustls",
    feature = "sealed",
    feature = "redis",
    feature = "file"
))]
mod sealed {
    use std::{path::Path, sync::Arc, time::Duration};

    use daxium_auth::{
        mock::MockServer,
        store::{AnyStore, FileStore, RedisStore, SealKey},
    };
    use redis::AsyncCommands;
    use tokio::time::Instant;

    use super::{
        real::*,
        support::redis::RedisServer,
        support::replicas::{Issued, blocking, drive, eventually, replica, server},
    };

    /// Three lifetimes of four replicas on stores that `store` makes; every
    /// request succeeds and no refresh token is sent twice. Returns what the
    /// server issued, each token of it.
    async fn fleet_run(store: impl Fn() -> AnyStore) -> (MockServer, Vec<String>) {
        let shared = server(LIFETIME).await;
        let issued = Arc::new(Issued::default());
        let replicas: Vec<_> = (0..4)
            .map(|_| Arc::new(replica(&shared, Some(store()), &issued, |b| b)))
            .collect();
        let until = Instant::now() + 3 * LIFETIME;
        let driven = drive(&replicas, shared.api_url("v1/items"), CALLERS, PACE, until).await;
        driven.assert_all_ok();
        let counters = shared.counters();
        assert_eq!(counters.refresh_reuse, 0, "{counters:?}");
        assert!(
            counters.refresh_ok >= 2,
            "the fleet refreshed: {counters:?}"
        );
        // Every pair the server issued reached a fetcher: the list is whole.
        assert_eq!(issued.pairs(), counters.password_ok + counters.refresh_ok);
        let tokens = issued.tokens();
        assert_eq!(tokens.len() as u64, 2 * issued.pairs());
        (shared, tokens)
    }

    fn assert_no_token_in(bytes: &[u8], tokens: &[String], place: &str) {
        let text = String::from_utf8_lossy(bytes);
        for token in tokens {
            assert!(
                !text.contains(token.as_str()),
                "a token the server issued is in {place}"
            );
        }
    }

    /// Every file of `dir`, by name and contents.
    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&path).unwrap())
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sealed_fleet_leaves_no_token_in_redis() {
        let redis = blocking(RedisServer::start).await;
        let url = redis.url();
        let key = SealKey::generate().unwrap();
        let (_server, tokens) = fleet_run(|| {
            AnyStore::new(
                RedisStore::builder(&url)
                    .seal(key.clone())
                    .timeout(STORE_TIMEOUT)
                    .build()
                    .unwrap(),
            )
        })
        .await;

        let mut raw = super::support::redis::raw(&url).await;
        let names: Vec<String> = raw.keys("*").await.unwrap();
        let mut envelopes = 0;
        for name in &names {
            assert_no_token_in(name.as_bytes(), &tokens, "a key's name");
            let kind: String = redis::cmd("TYPE")
                .arg(name)
                .query_async(&mut raw)
                .await
                .unwrap();
            let values: Vec<Vec<u8>> = match kind.as_str() {
                "hash" => {
                    let fields: Vec<(String, Vec<u8>)> = raw.hgetall(name).await.unwrap();
                    envelopes += fields.iter().filter(|(f, _)| f == "envelope").count();
                    fields.into_iter().map(|(_, value)| value).collect()
                }
                "string" => vec![raw.get(name).await.unwrap()],
                other => panic!("{name} is a {other}"),
            };
            for value in values {
                assert_no_token_in(&value, &tokens, &format!("Redis key {name}"));
            }
        }
        assert_eq!(envelopes, 1, "the fleet's one record: {names:?}");
        eprintln!(
            "sealed redis: {} tokens issued, none among {} keys",
            tokens.len(),
            names.len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sealed_fleet_leaves_no_token_in_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let key = SealKey::generate().unwrap();
        let (_server, tokens) = fleet_run(|| {
            AnyStore::new(
                FileStore::builder(dir.path())
                    .seal(key.clone())
                    .timeout(STORE_TIMEOUT)
                    .build()
                    .unwrap(),
            )
        })
        .await;
        let found = files(dir.path());
        assert!(
            found.iter().any(|(name, _)| name.ends_with(".json")),
            "the record file: {:?}",
            found.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        for (name, bytes) in &found {
            assert_no_token_in(bytes, &tokens, name);
        }
        eprintln!(
            "sealed files: {} tokens issued, none among {} files",
            tokens.len(),
            found.len()
        );

        // The same look finds the token in a record kept in clear.
        let clear = tempfile::tempdir().unwrap();
        let server = server(LIFETIME).await;
        let issued = Arc::new(Issued::default());
        let store = FileStore::new(clear.path()).unwrap();
        let one = replica(&server, Some(AnyStore::new(store)), &issued, |b| b);
        let token = one.token().await;
        // The record is written just after the token is handed out.
        let holds = || {
            files(clear.path())
                .iter()
                .any(|(_, bytes)| String::from_utf8_lossy(bytes).contains(&token))
        };
        let shown = eventually(Duration::from_secs(5), || std::future::ready(holds())).await;
        assert!(shown, "a record in clear holds the token");
    }
}
