//! The Redis token store against a real `redis-server` on 127.0.0.1: the
//! store contract, the documented layout, a server killed and restarted, AUTH,
//! TLS with a private authority, bad URLs, a store that never answers, and
//! sealed records; readers and writers racing on one record, a server that
//! closes every connection, and replicas on two runtimes sharing one grant.
#![cfg(feature = "redis")]

use std::{
    error::Error as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use daxium_auth::{
    StoreError, TokenStore,
    store::{AnyStore, Lease, LeaseOwner, LoginKey, RedisStore},
};
use http::StatusCode;
use redis::AsyncCommands;
use tokio::time::Instant;
use tower::Layer;

use crate::support;

use support::{
    redis::{RedisServer, raw, redis_store},
    scripted::{Api, Endpoint, api_service, layer_with},
    store_contract as contract,
    stores::bounded,
};

fn store(server: &RedisServer) -> RedisStore {
    RedisStore::new(&server.url()).expect("a valid URL")
}

/// Everything an error shows: Display, Debug, and its causes'.
fn shown(err: &StoreError) -> String {
    let mut text = format!("{err} {err:?}");
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(" {cause} {cause:?}"));
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn compare_and_set_writes_only_over_the_expected_version() {
    let server = RedisServer::start();
    contract::compare_and_set(&store(&server)).await;
}

#[tokio::test]
async fn one_owner_holds_the_lease_at_a_time() {
    let server = RedisServer::start();
    contract::one_lease_holder_at_a_time(&store(&server)).await;
}

#[tokio::test]
async fn a_lease_lapses_after_its_ttl_and_another_owner_takes_it() {
    let server = RedisServer::start();
    contract::a_lease_lapses_after_its_ttl(&store(&server), Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_record_of_another_login_is_never_read() {
    let server = RedisServer::start();
    contract::another_login_is_never_read(&store(&server)).await;
}

#[tokio::test]
async fn a_waiter_wakes_when_another_store_commits() {
    let server = RedisServer::start();
    contract::a_waiter_sees_another_handles_write(&store(&server), &store(&server)).await;
}

#[tokio::test]
async fn a_wait_without_a_write_ends_at_its_deadline() {
    let server = RedisServer::start();
    contract::a_wait_without_a_write_times_out(&store(&server)).await;
}

#[tokio::test]
async fn a_wait_subscribes_to_the_logins_channel_and_wakes_on_the_commit() {
    let server = RedisServer::start();
    let (waiter, writer) = (store(&server), store(&server));
    let key = contract::key("subscribed");
    let channel = format!("daxium-auth:{{{}}}:changed", key.id());
    let raw = raw(&server.url()).await;
    // The subscriptions to the login's channel.
    let subscribers = || {
        let (mut raw, channel) = (raw.clone(), channel.clone());
        async move {
            let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut raw)
                .await
                .unwrap();
            counts[0].1
        }
    };
    assert_eq!(subscribers().await, 0);
    contract::a_subscribed_wait_wakes_at_the_commit(waiter, &writer, &key, subscribers).await;

    // The wait's connection is gone with it.
    assert!(
        contract::subscribers_reach(0, subscribers).await,
        "the wait left its subscription behind"
    );
}

#[tokio::test]
async fn records_and_leases_are_stored_as_documented() {
    let server = RedisServer::start();
    let store = store(&server);
    let key = contract::key("layout");
    let owner = LeaseOwner::random();
    assert_eq!(contract::put(&store, &key, None, "layout").await, 1);
    assert!(contract::takes(&store, &key, &owner, Duration::from_secs(30)).await);

    let mut raw = raw(&server.url()).await;
    let record_key = format!("daxium-auth:{{{}}}", key.id());
    let version: String = raw.hget(&record_key, "version").await.unwrap();
    assert_eq!(version, "1");
    let envelope: Vec<u8> = raw.hget(&record_key, "envelope").await.unwrap();
    let envelope: serde_json::Value = serde_json::from_slice(&envelope).unwrap();
    assert_eq!(envelope["login"], key.id());
    assert_eq!(envelope["version"], 1);
    assert_eq!(envelope["record"]["access_token"], "access-layout");
    // The epoch is the replication id of the primary that wrote it.
    let epoch: String = raw.hget(&record_key, "epoch").await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(epoch.len(), 40);
    assert!(info.contains(&format!("master_replid:{epoch}")), "{info}");

    let lease_key = format!("daxium-auth:{{{}}}:lease", key.id());
    let holder: String = raw.get(&lease_key).await.unwrap();
    assert_eq!(holder, owner.as_str());
    let pttl: i64 = raw.pttl(&lease_key).await.unwrap();
    assert!((1..=30_000).contains(&pttl), "{pttl}");

    // A version field that disagrees with the envelope makes it unreadable.
    let _: () = raw.hset(&record_key, "version", "5").await.unwrap();
    assert!(store.read(&key).await.unwrap().is_none());
    let mismatched = contract::conflict(&store, &key, Some(1)).await;
    assert_eq!(mismatched.version(), Some(5));
    assert!(mismatched.record().is_none());

    // Another prefix is another store.
    let other = RedisStore::builder(&server.url())
        .key_prefix("elsewhere:")
        .build()
        .unwrap();
    assert!(other.read(&key).await.unwrap().is_none());
    assert!(contract::takes(&other, &key, &LeaseOwner::random(), Duration::from_secs(1)).await);
}

#[tokio::test]
async fn a_record_moved_to_another_logins_key_is_not_read() {
    let server = RedisServer::start();
    let store = store(&server);
    let alice = LoginKey::new("cid", "alice@example.com");
    let bob = LoginKey::new("cid", "bob@example.com");
    assert_eq!(contract::put(&store, &alice, None, "alice").await, 1);
    let mut raw = raw(&server.url()).await;
    let _: () = raw
        .rename(
            format!("daxium-auth:{{{}}}", alice.id()),
            format!("daxium-auth:{{{}}}", bob.id()),
        )
        .await
        .unwrap();

    assert!(store.read(&alice).await.unwrap().is_none());
    contract::an_unreadable_record_is_replaced_over_its_version(&store, &bob, 1).await;
}

#[tokio::test]
async fn a_killed_redis_fails_fast_and_is_rejoined_after_its_restart() {
    let mut server = RedisServer::start();
    let store = store(&server);
    let key = contract::key("restart");
    assert_eq!(contract::put(&store, &key, None, "before").await, 1);

    server.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let err = store.read(&key).await.unwrap_err();
        let elapsed = started.elapsed();
        eprintln!(
            "down: {} after {} ms",
            if err.is_timeout() {
                "timeout"
            } else {
                "unavailable"
            },
            elapsed.as_millis()
        );
        assert!(err.is_unavailable() || err.is_timeout(), "{err:?}");
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
        let err = store
            .acquire_lease(&key, &LeaseOwner::random(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.is_unavailable() || err.is_timeout(), "{err:?}");
    }

    server.restart();
    let restarted = Instant::now();
    // Bounded: 200 attempts, a few seconds at most.
    let mut answer = None;
    for _ in 0..200 {
        match store.read(&key).await {
            Ok(found) => {
                answer = Some(found);
                break;
            }
            Err(e) => assert!(e.is_unavailable() || e.is_timeout(), "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let rejoined = restarted.elapsed();
    eprintln!("rejoined {} ms after the restart", rejoined.as_millis());
    // Persistence is off: the restarted server is empty.
    assert!(answer.expect("the store answers again").is_none());
    assert!(rejoined < Duration::from_secs(5), "{rejoined:?}");
    assert_eq!(contract::put(&store, &key, None, "after").await, 1);
    assert!(contract::takes(&store, &key, &LeaseOwner::random(), Duration::from_secs(1)).await);
}

#[tokio::test]
async fn a_store_that_never_answers_times_out() {
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let store = RedisStore::builder(&format!("redis://127.0.0.1:{port}/"))
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let key = contract::key("silent");
    for _ in 0..2 {
        let started = Instant::now();
        let err = store.read(&key).await.unwrap_err();
        let elapsed = started.elapsed();
        assert!(err.is_timeout(), "{err:?}");
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    }
    // Waiting for a change meets the same store: it ends within its bound.
    let started = Instant::now();
    let waited = store
        .wait_for_change(&key, None, Duration::from_millis(500))
        .await;
    assert!(waited.is_err() || waited.unwrap().is_none());
    assert!(started.elapsed() < Duration::from_secs(2));
    silent.abort();
}

#[tokio::test]
async fn a_port_without_a_server_is_unavailable_at_once() {
    // A privileged port nothing listens on: a free port probed here could be
    // taken by another test's server before the store connects.
    let port = 1;
    let store = RedisStore::new(&format!("redis://127.0.0.1:{port}/")).unwrap();
    let started = Instant::now();
    let err = store.read(&contract::key("refused")).await.unwrap_err();
    assert!(err.is_unavailable() || err.is_timeout(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(err.store(), "redis");
}

#[tokio::test]
async fn the_password_in_the_url_authenticates_and_never_shows() {
    let password = "sentinel-pass-4e1d";
    let server = RedisServer::with_password(password);
    let good = RedisStore::new(&server.url_with(&format!(":{password}@"))).unwrap();
    contract::compare_and_set(&good).await;
    assert!(!format!("{good:?}").contains(password));

    let wrong_password = "wrong-sentinel-77ab";
    for userinfo in [format!(":{wrong_password}@"), String::new()] {
        let bad = RedisStore::new(&server.url_with(&userinfo)).unwrap();
        let started = Instant::now();
        let err = bad.read(&contract::key("auth")).await.unwrap_err();
        assert!(err.is_auth_failed(), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        let text = shown(&err);
        assert!(!text.contains(wrong_password), "{text}");
        assert!(!text.contains(password), "{text}");
        assert!(!format!("{bad:?}").contains(wrong_password));
    }
}

#[tokio::test]
async fn a_user_and_password_in_the_url_authenticate_as_that_user() {
    let server = RedisServer::start();
    let mut admin = raw(&server.url()).await;
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "fleet",
            "on",
            ">fleet-sentinel-pw",
            "~*",
            "&*",
            "+@all",
        ])
        .query_async(&mut admin)
        .await
        .unwrap();
    let store = RedisStore::new(&server.url_with("fleet:fleet-sentinel-pw@")).unwrap();
    assert_eq!(
        contract::put(&store, &contract::key("acl"), None, "acl").await,
        1
    );
    let whoami: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(&mut raw(&server.url_with("fleet:fleet-sentinel-pw@")).await)
        .await
        .unwrap();
    assert_eq!(whoami, "fleet");

    let wrong = RedisStore::new(&server.url_with("fleet:not-it@")).unwrap();
    let err = wrong.read(&contract::key("acl")).await.unwrap_err();
    assert!(err.is_auth_failed(), "{err:?}");
    assert!(!shown(&err).contains("fleet-sentinel-pw"));
}

#[test]
fn a_bad_url_is_a_config_error_that_never_shows_the_password() {
    let password = "sentinel-pw-9c";
    for url in [
        format!("redis://:{password}@127.0.0.1:notaport/"),
        format!("redis://:{password}@127.0.0.1:6379/notadb"),
        format!("http://user:{password}@127.0.0.1/"),
        format!("unix:///tmp/{password}.sock"),
        format!("redis//:{password}@127.0.0.1"),
        String::new(),
    ] {
        let err = RedisStore::new(&url).unwrap_err();
        assert!(err.is_config(), "{url}: {err:?}");
        let text = shown(&err);
        assert!(!text.contains(password), "{text}");
    }
    let builder = RedisStore::builder(&format!("redis://:{password}@127.0.0.1/"));
    assert!(!format!("{builder:?}").contains(password));
    let err = RedisStore::builder("redis://127.0.0.1/")
        .root_certificates_pem("not a certificate")
        .build()
        .unwrap_err();
    assert!(err.is_config());
    for timeout in [Duration::ZERO, Duration::from_secs(61)] {
        let err = RedisStore::builder("redis://127.0.0.1/")
            .timeout(timeout)
            .build()
            .unwrap_err();
        assert!(err.is_config(), "{timeout:?}");
    }
}

#[tokio::test]
async fn redis_urls_open_a_redis_store() {
    let server = RedisServer::start();
    let store = AnyStore::from_url(&server.url()).unwrap();
    assert_eq!(
        contract::put(&store, &contract::key("any"), None, "any").await,
        1
    );
    assert!(AnyStore::from_url("rediss://127.0.0.1:6380/").is_ok());
}

#[tokio::test]
async fn rediss_works_with_a_private_authority_and_fails_without_it() {
    let (server, ca_pem) = RedisServer::with_tls();
    assert!(server.url().starts_with("rediss://"));
    let store = RedisStore::builder(&server.url())
        .root_certificates_pem(ca_pem)
        .build()
        .unwrap();
    contract::compare_and_set(&store).await;
    contract::a_waiter_sees_another_handles_write(&store, &store.clone()).await;
    assert!(format!("{store:?}").contains("tls: true"));

    let untrusting = RedisStore::builder(&server.url())
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let err = untrusting.read(&contract::key("tls")).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(shown(&err).contains("UnknownIssuer"), "{err:?}");
}

#[tokio::test]
async fn a_lease_taken_over_after_its_ttl_is_not_released_by_its_first_owner() {
    let server = RedisServer::start();
    let (first, second) = (store(&server), store(&server));
    let key = contract::key("takeover");
    let (a, b) = (LeaseOwner::random(), LeaseOwner::random());
    assert!(contract::takes(&first, &key, &a, Duration::from_millis(200)).await);
    match second
        .acquire_lease(&key, &b, Duration::from_secs(5))
        .await
        .unwrap()
    {
        Lease::Held { remaining } => assert!(remaining.unwrap() <= Duration::from_millis(200)),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(contract::takes(&second, &key, &b, Duration::from_secs(5)).await);
    assert!(!first.release_lease(&key, &a).await.unwrap());
    assert!(!contract::takes(&first, &key, &a, Duration::from_secs(5)).await);
    assert!(second.release_lease(&key, &b).await.unwrap());
}

#[cfg(feature = "sealed")]
mod sealed {
    use daxium_auth::store::SealKey;

    use super::*;

    fn sealed_store(server: &RedisServer, key: [u8; 32]) -> RedisStore {
        RedisStore::builder(&server.url())
            .seal(SealKey::new(key))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_sealed_record_in_redis_holds_no_token() {
        let server = RedisServer::start();
        let store = sealed_store(&server, [1; 32]);
        let key = LoginKey::new("cid", "sentinel-user@example.com");
        assert_eq!(contract::put(&store, &key, None, "sentinel").await, 1);

        let mut raw = raw(&server.url()).await;
        let keys: Vec<String> = raw.keys("*").await.unwrap();
        assert!(!keys.is_empty());
        for name in keys {
            assert!(!name.contains("sentinel"), "{name}");
            let value: Vec<(Vec<u8>, Vec<u8>)> = raw.hgetall(&name).await.unwrap();
            for (field, bytes) in value {
                let text = String::from_utf8_lossy(&bytes);
                assert!(!text.contains("sentinel"), "{text}");
                assert!(!String::from_utf8_lossy(&field).contains("sentinel"));
            }
        }
        let read = store.read(&key).await.unwrap().unwrap();
        assert_eq!(
            read.record().access_token().expose_secret(),
            "access-sentinel"
        );
    }

    #[tokio::test]
    async fn a_wrong_seal_key_reads_as_absent_and_can_write_over() {
        let server = RedisServer::start();
        let key = contract::key("wrong-seal");
        let right = sealed_store(&server, [2; 32]);
        assert_eq!(contract::put(&right, &key, None, "right").await, 1);

        assert!(store(&server).read(&key).await.unwrap().is_none());
        let wrong = sealed_store(&server, [3; 32]);
        contract::an_unreadable_record_is_replaced_over_its_version(&wrong, &key, 1).await;
        assert!(right.read(&key).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_sealing_store_refuses_a_record_planted_in_clear() {
        let server = RedisServer::start();
        let key = contract::key("planted");
        assert_eq!(
            contract::put(&store(&server), &key, None, "planted").await,
            1
        );
        assert!(
            sealed_store(&server, [4; 32])
                .read(&key)
                .await
                .unwrap()
                .is_none()
        );
    }
}

#[test]
fn a_store_outlives_the_runtime_that_first_used_it() {
    let server = RedisServer::start();
    let store = store(&server);
    let key = contract::key("runtimes");
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime();
    assert_eq!(
        first.block_on(contract::put(&store, &key, None, "first")),
        1
    );
    drop(first);

    let second = runtime();
    let read = second.block_on(async {
        // The connection's driver died with the first runtime; the manager
        // connects again on this one. Bounded: 40 attempts.
        for _ in 0..40 {
            match store.read(&key).await {
                Ok(found) => return found,
                Err(e) => assert!(e.is_unavailable() || e.is_timeout(), "{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the store never answered on the second runtime");
    });
    assert_eq!(read.expect("the first runtime's write").version(), 1);
    assert_eq!(
        second.block_on(contract::put(&store, &key, Some(1), "second")),
        2
    );
}

// === races, dropped connections and runtimes ===

#[tokio::test]
async fn racing_readers_and_writers_never_see_a_valid_redis_record_vanish() {
    let server = RedisServer::start();
    let store = redis_store(&server);
    let key = contract::key("race");
    assert_eq!(contract::put(&store, &key, None, "first").await, 1);
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                for _ in 0..200 {
                    assert!(store.read(&key).await.unwrap().is_some(), "vanished");
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                for _ in 0..100 {
                    let expected = if w == 0 {
                        // A writer that believes there is none: never lands.
                        None
                    } else {
                        store.read(&key).await.unwrap().map(|r| r.version())
                    };
                    let outcome = store
                        .write(&key, expected, &contract::record("w"))
                        .await
                        .unwrap();
                    assert!(
                        expected.is_some() || !outcome.is_written(),
                        "a write expecting none landed over a valid record"
                    );
                }
            })
        })
        .collect();
    for task in readers.into_iter().chain(writers) {
        task.await.unwrap();
    }
    assert!(store.read(&key).await.unwrap().unwrap().version() > 1);
}

#[tokio::test]
async fn redis_closing_every_connection_is_survived() {
    let server = RedisServer::start();
    let store = redis_store(&server);
    let key = contract::key("killed-clients");
    contract::put(&store, &key, None, "before").await;
    let mut admin = raw(&server.url()).await;
    let id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut admin)
        .await
        .unwrap();
    let _ = id;
    let mut failures = 0;
    let mut read = None;
    for _ in 0..20 {
        match store.read(&key).await {
            Ok(record) => {
                read = record;
                break;
            }
            Err(e) => {
                assert!(e.is_unavailable() || e.is_timeout(), "{e:?}");
                failures += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(failures <= 2, "{failures} failed calls after the kill");
    let read = read.expect("the record after the kill");
    assert_eq!(
        read.record().access_token().expose_secret(),
        "access-before"
    );
    // A lease and a write work too.
    let owner = LeaseOwner::random();
    assert!(contract::takes(&store, &key, &owner, Duration::from_secs(1)).await);
    contract::put(&store, &key, Some(1), "after").await;
}

#[test]
fn replicas_on_two_runtimes_share_one_grant_through_redis() {
    let server = RedisServer::start();
    let store = redis_store(&server);
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.latency.lock().unwrap() = Duration::from_millis(200);
    // Both runtimes stay up until both replicas are done: a runtime that stops
    // just after its callers have their token leaves the record unwritten and
    // the lease to its time to live (as documented).
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let answered = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (store, api, endpoint) = (store.clone(), Arc::clone(&api), Arc::clone(&endpoint));
            let (barrier, answered) = (Arc::clone(&barrier), Arc::clone(&answered));
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let layer = layer_with(&endpoint, |b| b.store(store));
                    let svc = layer.layer(api_service(&api));
                    barrier.wait();
                    let calls: Vec<_> = (0..20)
                        .map(|_| {
                            let svc = svc.clone();
                            tokio::spawn(
                                async move { bounded(&svc, Duration::from_secs(10)).await },
                            )
                        })
                        .collect();
                    for call in calls {
                        let res = call.await.unwrap();
                        let shown = match &res {
                            Some(Ok(r)) if r.status() == StatusCode::OK => None,
                            other => Some(format!("{other:?}")),
                        };
                        answered.lock().unwrap().push(shown);
                    }
                    barrier.wait();
                });
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let answered = answered.lock().unwrap();
    assert_eq!(answered.len(), 40);
    let failed: Vec<_> = answered.iter().flatten().collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(endpoint.grants(), 1, "{:?}", endpoint.log());
}
