//! Attacks on the token stores and the fleet protocol through the public API:
//! records the stores cannot parse (garbage in the Redis hash, a key of
//! another type, a huge or damaged file, a future format, an absurd or past
//! expiry, a version at the end of the range), a lease that its taker never
//! releases, a Redis that stops answering or drops its connections, symlinks
//! and loose modes in a store's directory, replicas on two runtimes, a request
//! dropped mid-grant, a change of login while the store holds the old login's
//! record, a flapping store, and secrets in `Debug` output and logs.
//!
//! Eleven of them found a defect when they were written (a version at the end
//! of the range, a lease without expiry, an absurd expiry, an unreadable
//! record never replaced, garbage in the Redis hash, a key of another type, a
//! directory at the record's name, a file lease retried in a loop, a
//! symlinked lock file followed, a lease left by a failed release or by a
//! change of login that failed the other replicas): each is fixed, and its
//! test guards it.
#![cfg(all(
    feature = "redis",
    feature = "file",
    feature = "sealed",
    feature = "mock"
))]

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
    },
    time::{Duration, SystemTime},
};

use daxium_auth::{
    AccessToken, AuthLayer, Credentials, MemoryStore, RefreshToken, StoreError, TokenStore,
    store::{
        FileStore, Lease, LeaseOwner, LoginKey, Record, RedisStore, SealKey, StoredRecord,
        WriteOutcome,
    },
};
use http::StatusCode;
use tempfile::TempDir;
use tower::Layer;

mod support;

use support::{redis::RedisServer, store_contract as contract};
use support::{
    scripted::{Api, Endpoint, api_service, get, layer_with, send},
    stores::{Call, Fault, Faulty, Svc, bounded, login, ok},
};

/// Three replicas on the stores `store` makes each get a token, with one
/// login between them: they share the record.
async fn three_replicas_log_in_once<S: TokenStore + Clone>(store: impl Fn() -> S) {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let services: Vec<Svc> = (0..3)
        .map(|_| layer_with(&endpoint, |b| b.store(store())).layer(api_service(&api)))
        .collect();
    for svc in &services {
        assert!(ok(&bounded(svc, Duration::from_secs(5)).await.unwrap()));
    }
    assert_eq!(
        endpoint.password.load(SeqCst),
        1,
        "three replicas, one login: {:?}",
        endpoint.log()
    );
}

/// The bearer token the API saw last.
fn last_token(api: &Api) -> Option<String> {
    let seen = api.seen.lock().unwrap();
    let value = seen.last()?.as_ref()?;
    value
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

fn access(token: &str) -> AccessToken {
    AccessToken::new(token).unwrap()
}

/// A record of the scripted login expiring `in_` from now (wall clock).
fn planted(token: &str, refresh: Option<&str>, expires_at: SystemTime) -> Record {
    Record::new(
        access(token),
        refresh.map(|r| RefreshToken::new(r).unwrap()),
        expires_at,
    )
}

/// The envelope of a record in clear, as the file and Redis stores keep it,
/// with every field chosen by the caller.
fn envelope(
    key: &LoginKey,
    format: u32,
    version: &str,
    token: &str,
    expires_at_ms: &str,
) -> String {
    format!(
        r#"{{"format":{format},"login":"{id}","version":{version},"record":{{"client_id":"{cid}","username":"{user}","access_token":"{token}","refresh_token":null,"refresh_spent":false,"expires_at_ms":{expires_at_ms},"scope":null}}}}"#,
        id = key.id(),
        cid = key.client_id(),
        user = key.username(),
    )
}

// ---------------------------------------------------------------------------
// Memory store, paused time: expiry, logins, cancellation, a flapping store.
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_stored_token_is_never_served_past_its_records_expiry() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let store = MemoryStore::new();
    // Valid at the API: only its expiry may keep it from being served.
    api.valid.lock().unwrap().insert("planted".into());
    let expires = SystemTime::now() + Duration::from_secs(120);
    let written = store
        .write(&login(), None, &planted("planted", None, expires))
        .await
        .unwrap();
    assert!(written.is_written());

    let layer = layer_with(&endpoint, |b| b.store(store.clone()));
    let svc = layer.layer(api_service(&api));
    assert!(ok(&send(&svc, get()).await));
    assert_eq!(last_token(&api).as_deref(), Some("planted"));
    assert_eq!(endpoint.grants(), 0, "the stored record is adopted");

    // Past its expiry (the record's own, not 24 h or never): a new token.
    for _ in 0..130 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(ok(&send(&svc, get()).await));
    }
    assert_ne!(last_token(&api).as_deref(), Some("planted"));
    assert!(endpoint.grants() >= 1);
}

#[tokio::test(start_paused = true)]
async fn a_stored_record_that_expired_already_is_not_adopted() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let store = MemoryStore::new();
    api.valid.lock().unwrap().insert("stale".into());
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
    let _ = store
        .write(&login(), None, &planted("stale", None, past))
        .await
        .unwrap();
    let layer = layer_with(&endpoint, |b| b.store(store.clone()));
    let svc = layer.layer(api_service(&api));
    assert!(ok(&send(&svc, get()).await));
    assert_eq!(last_token(&api).as_deref(), Some("access-1"));
    assert_eq!(endpoint.log(), ["password:user@example.com"]);
    // The fresh pair replaced the expired record.
    let stored = store.read(&login()).await.unwrap().unwrap();
    assert_eq!(stored.record().access_token().expose_secret(), "access-1");
}

#[tokio::test(start_paused = true)]
async fn a_stored_record_with_an_absurd_expiry_is_not_served_for_ever() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let store = MemoryStore::new();
    api.valid.lock().unwrap().insert("for-ever".into());
    // A century: what no grant can make (expires_in is clamped to 24 h).
    let far = SystemTime::now() + Duration::from_secs(100 * 365 * 86_400);
    let _ = store
        .write(&login(), None, &planted("for-ever", None, far))
        .await
        .unwrap();
    let layer = layer_with(&endpoint, |b| b.store(store.clone()));
    let svc = layer.layer(api_service(&api));
    assert!(ok(&send(&svc, get()).await));
    assert_eq!(last_token(&api).as_deref(), Some("for-ever"));
    // Two days later (paused time), hourly traffic.
    for _ in 0..48 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(ok(&send(&svc, get()).await));
    }
    assert!(
        endpoint.grants() >= 1,
        "the token of a record said to live a century was served for two days"
    );
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
async fn a_replica_that_changes_login_mid_grant_does_not_stall_the_old_logins_fleet() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.latency.lock().unwrap() = Duration::from_secs(3);
    let store = MemoryStore::new();
    // Defaults: a 30 s lease, a 10 s wait budget.
    let a = layer_with(&endpoint, |b| b.store(store.clone()));
    let b = layer_with(&endpoint, |b| b.store(store.clone()));
    let (sa, sb) = (a.layer(api_service(&api)), b.layer(api_service(&api)));
    let first = tokio::spawn(async move { send(&sa, get()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Replica a moves to another account while it holds the lease.
    a.set_credentials(Credentials::new(
        "client",
        "client-secret",
        "other@example.com",
        "password",
    ));
    let res = bounded(&sb, Duration::from_secs(60))
        .await
        .expect("an answer");
    assert!(
        ok(&res),
        "replica b of the old login: {:?}",
        res.as_ref().err()
    );
    let _ = first.await;
}

#[tokio::test(start_paused = true)]
async fn after_a_change_of_login_no_request_carries_the_old_logins_token() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let store = MemoryStore::new();
    let a = layer_with(&endpoint, |b| b.store(store.clone()));
    let sa = a.layer(api_service(&api));
    assert!(ok(&send(&sa, get()).await));
    let old = last_token(&api).unwrap();

    let other = Credentials::new("client", "client-secret", "other@example.com", "pw-2");
    a.cache().set_credentials(other.clone());
    for _ in 0..5 {
        assert!(ok(&send(&sa, get()).await));
        assert_ne!(last_token(&api).as_deref(), Some(old.as_str()));
    }
    assert_eq!(
        endpoint.log(),
        ["password:user@example.com", "password:other@example.com"]
    );
    // The old login's record is untouched, and a replica of it still adopts it.
    let stored = store.read(&login()).await.unwrap().unwrap();
    assert_eq!(stored.record().access_token().expose_secret(), old);
    let b = layer_with(&endpoint, |b| b.store(store.clone()));
    let sb = b.layer(api_service(&api));
    assert!(ok(&send(&sb, get()).await));
    assert_eq!(last_token(&api).as_deref(), Some(old.as_str()));
    // A replica of the new login adopts the new login's record.
    let c = layer_with(&endpoint, |b| b.store(store.clone()).credentials(other));
    let sc = c.layer(api_service(&api));
    assert!(ok(&send(&sc, get()).await));
    assert_eq!(last_token(&api).as_deref(), Some("access-2"));
    assert_eq!(endpoint.grants(), 2);
    endpoint.assert_no_refresh_token_sent_twice();
}

#[tokio::test(start_paused = true)]
async fn switching_back_and_forth_between_logins_never_mixes_their_tokens() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let store = MemoryStore::new();
    let a = layer_with(&endpoint, |b| b.store(store.clone()));
    let sa = a.layer(api_service(&api));
    let users = ["user@example.com", "other@example.com"];
    let mut tokens: [HashSet<String>; 2] = Default::default();
    for round in 0..6 {
        let user = users[round % 2];
        a.set_credentials(Credentials::new(
            "client",
            "client-secret",
            user,
            "password",
        ));
        for _ in 0..3 {
            assert!(ok(&send(&sa, get()).await));
            tokens[round % 2].insert(last_token(&api).unwrap());
        }
    }
    assert!(tokens[0].is_disjoint(&tokens[1]), "{tokens:?}");
    // Each login logged in once: after that, the store gave each its own.
    assert_eq!(endpoint.password.load(SeqCst), 2, "{:?}", endpoint.log());
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

/// A store whose record is at the last version there is: every write over it
/// fails, as the file and Redis stores' writes do.
#[derive(Clone)]
struct AtTheEnd;

impl TokenStore for AtTheEnd {
    async fn read(&self, key: &LoginKey) -> Result<Option<StoredRecord>, StoreError> {
        let expired = planted("end", None, SystemTime::UNIX_EPOCH);
        Ok(Some(StoredRecord::new(key.clone(), u64::MAX, expired)))
    }

    async fn write(
        &self,
        _: &LoginKey,
        _: Option<u64>,
        _: &Record,
    ) -> Result<WriteOutcome, StoreError> {
        Err(StoreError::server(
            "end",
            std::io::Error::other("record version at its maximum"),
        ))
    }

    async fn acquire_lease(
        &self,
        _: &LoginKey,
        _: &LeaseOwner,
        _: Duration,
    ) -> Result<Lease, StoreError> {
        Ok(Lease::Acquired)
    }

    async fn release_lease(&self, _: &LoginKey, _: &LeaseOwner) -> Result<bool, StoreError> {
        Ok(true)
    }
}

#[tokio::test(start_paused = true)]
async fn a_record_at_the_last_version_does_not_wedge_the_cache() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.lifetime.lock().unwrap() = Duration::from_secs(10);
    let layer = layer_with(&endpoint, |b| b.store(AtTheEnd));
    let svc = layer.layer(api_service(&api));
    // Three lifetimes: every token must be followed by another.
    for second in 0..30 {
        let res = bounded(&svc, Duration::from_secs(20)).await;
        assert!(
            res.as_ref().is_some_and(ok),
            "no token at {second} s: {:?}",
            res.map(|r| r.err())
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(endpoint.grants() >= 3);
}

// ---------------------------------------------------------------------------
// File store, on a temporary directory.
// ---------------------------------------------------------------------------

fn file_store(dir: &TempDir) -> FileStore {
    FileStore::new(dir.path()).expect("a file store")
}

fn record_file(dir: &TempDir, key: &LoginKey) -> std::path::PathBuf {
    dir.path().join(format!("{}.json", key.id()))
}

#[tokio::test]
async fn a_file_record_at_the_last_version_does_not_wedge_a_replica() {
    let dir = tempfile::tempdir().unwrap();
    let key = login();
    std::fs::write(
        record_file(&dir, &key),
        envelope(&key, 1, &u64::MAX.to_string(), "end", "1000"),
    )
    .unwrap();
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.lifetime.lock().unwrap() = Duration::from_secs(1);
    let layer = layer_with(&endpoint, |b| {
        b.store(file_store(&dir))
            .wait_budget(Duration::from_secs(2))
    });
    let svc = layer.layer(api_service(&api));
    assert!(ok(&bounded(&svc, Duration::from_secs(5)).await.unwrap()));
    // Past the first token's expiry: a second one.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let res = bounded(&svc, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert!(ok(&res), "{:?}", res.err());
    assert_eq!(endpoint.grants(), 2);
}

#[tokio::test]
async fn a_huge_record_file_reads_as_absent_and_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir);
    let key = contract::key("huge");
    // 8 MiB of a valid-looking start: the store reads no more than 64 KiB.
    let mut huge = envelope(&key, 1, "3", "big", "99999999999999").into_bytes();
    huge.resize(8 << 20, b' ');
    std::fs::write(record_file(&dir, &key), &huge).unwrap();
    assert!(store.read(&key).await.unwrap().is_none());
    assert_eq!(contract::put(&store, &key, None, "small").await, 1);
    let len = std::fs::metadata(record_file(&dir, &key)).unwrap().len();
    assert!(len < 4096, "{len} bytes");
}

#[tokio::test]
async fn negative_absurd_and_future_file_records_read_as_absent() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir);
    let key = contract::key("odd");
    let cases = [
        // A negative expiry and a negative version do not parse at all.
        (envelope(&key, 1, "4", "neg", "-5"), None),
        (envelope(&key, 1, "-1", "neg", "5"), None),
        // An expiry past u64 does not parse either.
        (envelope(&key, 1, "4", "big", "1e30"), None),
        // A future format names its version: a write over it replaces it.
        (envelope(&key, 2, "9", "future", "5"), Some(9)),
        // A version as a string is not a version.
        (envelope(&key, 1, "\"9\"", "str", "5"), None),
    ];
    for (text, version) in cases {
        std::fs::write(record_file(&dir, &key), &text).unwrap();
        assert!(store.read(&key).await.unwrap().is_none(), "{text}");
        let outcome = store
            .write(&key, None, &contract::record("x"))
            .await
            .unwrap();
        match version {
            None => assert!(outcome.is_written(), "{text}"),
            Some(v) => {
                let WriteOutcome::Conflict(conflict) = outcome else {
                    panic!("written over a record it did not expect: {text}");
                };
                assert_eq!(conflict.version(), Some(v));
                assert!(conflict.record().is_none());
            }
        }
    }
    // The largest expiry there is parses, and does not panic anyone.
    std::fs::write(
        record_file(&dir, &key),
        envelope(&key, 1, "4", "max", &u64::MAX.to_string()),
    )
    .unwrap();
    let read = store.read(&key).await.unwrap().unwrap();
    assert_eq!(read.record().expires_at_unix_ms(), u64::MAX);
    assert!(read.record().remaining_at(SystemTime::now()) > Duration::from_secs(1 << 40));
}

#[tokio::test]
async fn an_unreadable_record_is_replaced_by_the_next_grant_and_shared_again() {
    let dir = tempfile::tempdir().unwrap();
    let key = login();
    // Written under the seal key the fleet used before a rotation.
    let old = FileStore::builder(dir.path())
        .seal(SealKey::new([1; 32]))
        .build()
        .unwrap();
    contract::put(&old, &key, None, "old").await;
    contract::put(&old, &key, Some(1), "old").await;

    let new_store = || {
        FileStore::builder(dir.path())
            .seal(SealKey::new([2; 32]))
            .build()
            .unwrap()
    };
    three_replicas_log_in_once(new_store).await;
}

#[tokio::test]
async fn a_loose_record_file_is_read_and_the_next_write_makes_it_private() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir);
    let key = contract::key("loose");
    contract::put(&store, &key, None, "first").await;
    let path = record_file(&dir, &key);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(store.read(&key).await.unwrap().unwrap().version(), 1);
    contract::put(&store, &key, Some(1), "second").await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
}

#[tokio::test]
async fn a_symlinked_record_file_is_replaced_not_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let store = file_store(&dir);
    let key = contract::key("linked");
    let victim = elsewhere.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, record_file(&dir, &key)).unwrap();
    assert!(store.read(&key).await.unwrap().is_none());
    assert_eq!(contract::put(&store, &key, None, "new").await, 1);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[tokio::test]
async fn a_symlinked_lock_file_does_not_clobber_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let store = file_store(&dir);
    let key = contract::key("lock-link");
    let victim = elsewhere.path().join("victim");
    std::fs::write(&victim, b"precious data that is not a lease").unwrap();
    let lock = dir.path().join(format!("{}.lock", key.id()));
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let owner = LeaseOwner::random();
    let taken = store
        .acquire_lease(&key, &owner, Duration::from_secs(1))
        .await;
    assert!(taken.is_err(), "a symlinked lock file is refused");
    let _ = store.release_lease(&key, &owner).await;
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"precious data that is not a lease"
    );
}

#[tokio::test]
async fn a_file_store_in_a_missing_directory_creates_it_private() {
    use std::os::unix::fs::PermissionsExt;

    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a/b/c");
    let store = FileStore::new(&dir).unwrap();
    let key = contract::key("missing");
    assert!(store.read(&key).await.unwrap().is_none());
    contract::put(&store, &key, None, "made").await;
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{mode:o}");
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

#[tokio::test]
async fn a_directory_in_place_of_the_record_file_does_not_split_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(record_file(&dir, &login())).unwrap();
    three_replicas_log_in_once(|| file_store(&dir)).await;
}

// ---------------------------------------------------------------------------
// Redis, on a real redis-server of 127.0.0.1.
// ---------------------------------------------------------------------------

fn record_key(key: &LoginKey) -> String {
    format!("daxium-auth:{{{}}}", key.id())
}

fn lease_key(key: &LoginKey) -> String {
    format!("daxium-auth:{{{}}}:lease", key.id())
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("redis-server answers")
}

async fn redis_pid(url: &str) -> u32 {
    let text: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut raw(url).await)
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("process_id in INFO")
}

/// Stops a process with SIGSTOP; continues it when dropped.
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> Self {
        signal(pid, "-STOP");
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn redis_store(server: &RedisServer) -> RedisStore {
    RedisStore::builder(&server.url())
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

#[tokio::test]
async fn garbage_in_the_redis_version_field_reads_as_absent() {
    let server = RedisServer::start();
    let store = redis_store(&server);
    let key = contract::key("garbage-version");
    let mut c = raw(&server.url()).await;
    let _: () = redis::cmd("HSET")
        .arg(record_key(&key))
        .arg("version")
        .arg("\u{fffd}not a number")
        .arg("envelope")
        .arg(&b"\x00\xff garbage"[..])
        .query_async(&mut c)
        .await
        .unwrap();
    let read = store.read(&key).await;
    assert!(matches!(read, Ok(None)), "{read:?}");
}

#[tokio::test]
async fn a_redis_key_of_another_type_does_not_split_the_fleet() {
    let server = RedisServer::start();
    let key = login();
    let mut c = raw(&server.url()).await;
    let _: () = redis::cmd("SET")
        .arg(record_key(&key))
        .arg("left here by something else")
        .query_async(&mut c)
        .await
        .unwrap();
    three_replicas_log_in_once(|| redis_store(&server)).await;
}

#[tokio::test]
async fn a_garbage_or_huge_redis_envelope_reads_as_absent_and_is_replaced() {
    let server = RedisServer::start();
    let store = redis_store(&server);
    let mut c = raw(&server.url()).await;
    for (name, envelope) in [
        ("bytes", b"\x00\xff\xfe garbage".to_vec()),
        ("huge", vec![b'{'; 1 << 20]),
        ("empty", Vec::new()),
    ] {
        let key = contract::key(name);
        let _: () = redis::cmd("HSET")
            .arg(record_key(&key))
            .arg("version")
            .arg("5")
            .arg("envelope")
            .arg(envelope)
            .query_async(&mut c)
            .await
            .unwrap();
        contract::an_unreadable_record_is_replaced_over_its_version(&store, &key, 5).await;
    }
}

#[tokio::test]
async fn a_redis_record_of_another_version_or_login_is_not_read() {
    let server = RedisServer::start();
    let store = redis_store(&server);
    let key = contract::key("mismatch");
    let other = contract::key("someone-else");
    let mut c = raw(&server.url()).await;
    for (version, text) in [
        // The envelope says 3, the hash 4: a replayed older envelope.
        ("4", envelope(&key, 1, "3", "replayed", "99999999999999")),
        // Another login's envelope under this login's key.
        ("4", envelope(&other, 1, "4", "theirs", "99999999999999")),
    ] {
        let _: () = redis::cmd("HSET")
            .arg(record_key(&key))
            .arg("version")
            .arg(version)
            .arg("envelope")
            .arg(&text)
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(store.read(&key).await.unwrap().is_none(), "{text}");
    }
}

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

#[tokio::test]
async fn a_frozen_redis_costs_a_cold_replica_a_short_timeout_then_the_fleet_shares_again() {
    let server = RedisServer::start();
    let url = server.url();
    let pid = redis_pid(&url).await;
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
        let _frozen = Frozen::new(pid);
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

// ---------------------------------------------------------------------------
// Secrets.
// ---------------------------------------------------------------------------

/// Log lines, kept in memory.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log of this test binary at every level: a global subscriber, since a
/// scoped one misses events whose callsites other threads registered first.
fn logs() -> Capture {
    static LOGS: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        capture
    })
    .clone()
}

#[tokio::test]
async fn no_secret_shows_in_debug_errors_or_logs_of_a_fleet_with_a_wrong_redis_password() {
    let server = RedisServer::with_password("right-sentinel-pass");
    let capture = logs();

    let url = server.url_with(":wrong-sentinel-pass@");
    let store = RedisStore::builder(&url)
        .seal(SealKey::new([0x5e; 32]))
        .build()
        .unwrap();
    let err = store.read(&login()).await.unwrap_err();
    assert!(err.is_auth_failed(), "{err:?}");
    let mut shown = format!("{err} {err:?} {store:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        shown.push_str(&format!(" {cause} {cause:?}"));
        source = cause.source();
    }

    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.prefix.lock().unwrap() = "tok-sentinel-".into();
    let layer = layer_with(&endpoint, |b| {
        b.store(store.clone()).credentials(Credentials::new(
            "client",
            "secret-sentinel",
            "user@example.com",
            "password-sentinel",
        ))
    });
    let svc = layer.layer(api_service(&api));
    assert!(ok(&bounded(&svc, Duration::from_secs(5)).await.unwrap()));
    layer.cache().refresh_now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ok(&bounded(&svc, Duration::from_secs(5)).await.unwrap()));
    assert!(layer.stats().store_errors > 0);
    shown.push_str(&format!(" {layer:?} {svc:?} {:?}", layer.stats()));
    let builder = daxium_auth::AuthLayer::builder()
        .store(store.clone())
        .credentials(Credentials::new(
            "c",
            "secret-sentinel",
            "u",
            "password-sentinel",
        ));
    shown.push_str(&format!(" {builder:?}"));

    let logged = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("token store unavailable"), "{logged}");
    for (place, text) in [("Debug or error", &shown), ("log", &logged)] {
        assert!(
            !text.contains("sentinel"),
            "a secret in the {place}: {text}"
        );
        // The seal key's bytes, as Debug of an array would print them.
        assert!(!text.contains("94, 94, 94"), "the seal key in the {place}");
    }
}
