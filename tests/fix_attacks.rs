//! Attacks on the replacement of unreadable records, the pace of lease
//! retries, the 5 s lease and the stores' handling of what they did not write
//! at a record's name, through the public API: two fleets under different
//! seal keys on one store, a record made readable between a conflict and the
//! write over it, a store that reports a new unreadable version on every
//! write, a lease that lapses within a short wait budget, a grant slower than
//! the lease, Redis versions at the edge of the range or not in canonical
//! form, a key of another type met by a write that expects a version, and
//! symlinks, directories and FIFOs at a file record's name.
#![cfg(all(
    feature = "redis",
    feature = "file",
    feature = "sealed",
    feature = "mock"
))]

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::SeqCst},
    },
    time::{Duration, SystemTime},
};

use daxium_auth::{
    AccessToken, MemoryStore, StoreError, TokenStore,
    store::{
        Conflict, FileStore, Lease, LeaseOwner, LoginKey, Record, RedisStore, StoredRecord,
        WriteOutcome,
    },
};
use tempfile::TempDir;
use tower::Layer;

mod support;

use support::{redis::RedisServer, store_contract as contract};
use support::{
    scripted::{Api, Endpoint, api_service, layer_with},
    stores::{Svc, bounded, login, ok},
};

fn record(token: &str) -> Record {
    Record::new(
        AccessToken::new(token).unwrap(),
        None,
        SystemTime::now() + Duration::from_secs(3600),
    )
}

fn token_of(stored: &StoredRecord) -> String {
    stored.record().access_token().expose_secret().to_owned()
}

// ---------------------------------------------------------------------------
// A fleet's view of a shared store: what another fleet wrote does not open,
// as under another seal key. Memory store, paused time.
// ---------------------------------------------------------------------------

/// A hook run on a write whose conflict this fleet cannot read, before the
/// conflict is returned.
type Hook = Arc<Mutex<Option<Box<dyn FnOnce(MemoryStore) + Send>>>>;

/// The records this fleet can read are those whose access token starts with
/// `prefix` (its endpoint's); the others read as absent and conflict without
/// a record, as a record sealed under another key does.
#[derive(Clone)]
struct Keyed {
    inner: MemoryStore,
    prefix: &'static str,
    writes: Arc<AtomicU64>,
    on_unreadable: Hook,
}

impl Keyed {
    fn new(inner: &MemoryStore, prefix: &'static str) -> Self {
        Self {
            inner: inner.clone(),
            prefix,
            writes: Arc::default(),
            on_unreadable: Arc::default(),
        }
    }

    fn ours(&self, stored: &StoredRecord) -> bool {
        token_of(stored).starts_with(self.prefix)
    }
}

impl TokenStore for Keyed {
    async fn read(&self, key: &LoginKey) -> Result<Option<StoredRecord>, StoreError> {
        Ok(self.inner.read(key).await?.filter(|r| self.ours(r)))
    }

    async fn write(
        &self,
        key: &LoginKey,
        expected: Option<u64>,
        record: &Record,
    ) -> Result<WriteOutcome, StoreError> {
        self.writes.fetch_add(1, SeqCst);
        match self.inner.write(key, expected, record).await? {
            WriteOutcome::Conflict(conflict) => {
                let readable = conflict.record().filter(|r| self.ours(r)).cloned();
                if readable.is_none() {
                    let hook = self.on_unreadable.lock().unwrap().take();
                    if let Some(hook) = hook {
                        hook(self.inner.clone());
                    }
                }
                Ok(WriteOutcome::Conflict(Conflict::new(
                    conflict.version(),
                    readable,
                )))
            }
            written => Ok(written),
        }
    }

    async fn acquire_lease(
        &self,
        key: &LoginKey,
        owner: &LeaseOwner,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.inner.acquire_lease(key, owner, ttl).await
    }

    async fn release_lease(&self, key: &LoginKey, owner: &LeaseOwner) -> Result<bool, StoreError> {
        self.inner.release_lease(key, owner).await
    }
    // wait_for_change: the trait's polling, over this fleet's reads.
}

fn endpoint_with_prefix(api: &Arc<Api>, prefix: &str) -> Arc<Endpoint> {
    let endpoint = Endpoint::new(api);
    *endpoint.prefix.lock().unwrap() = prefix.to_owned();
    *endpoint.lifetime.lock().unwrap() = Duration::from_secs(20);
    endpoint
}

#[tokio::test(start_paused = true)]
async fn two_fleets_under_different_keys_on_one_store_neither_loop_nor_reuse_a_refresh_token() {
    let api = Arc::new(Api::default());
    let shared = MemoryStore::new();
    let (ea, eb) = (
        endpoint_with_prefix(&api, "a-"),
        endpoint_with_prefix(&api, "b-"),
    );
    let (ka, kb) = (Keyed::new(&shared, "a-"), Keyed::new(&shared, "b-"));
    let mut services = Vec::new();
    for _ in 0..2 {
        for (endpoint, view) in [(&ea, &ka), (&eb, &kb)] {
            let layer = layer_with(endpoint, |b| {
                b.store(view.clone()).refresh_margin(Duration::from_secs(5))
            });
            services.push(layer.layer(api_service(&api)));
        }
    }
    // Six token lifetimes of traffic, every second on every replica.
    for second in 0..120 {
        for (i, svc) in services.iter().enumerate() {
            let res = bounded(svc, Duration::from_secs(15)).await;
            assert!(
                res.as_ref().is_some_and(ok),
                "replica {i} at {second} s: {:?}",
                res.map(|r| r.err())
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ea.assert_no_refresh_token_sent_twice();
    eb.assert_no_refresh_token_sent_twice();
    let grants = ea.grants() + eb.grants();
    let writes = ka.writes.load(SeqCst) + kb.writes.load(SeqCst);
    // Each grant writes its pair (once more over an unreadable record), and
    // each refresh marks its token spent first.
    assert!(
        writes <= 3 * grants as u64 + 4,
        "{writes} writes for {grants} grants"
    );
    // Two replicas per fleet, a token every 15 s or so: no grant storm.
    assert!(
        grants <= 40,
        "{grants} grants: {:?} {:?}",
        ea.log(),
        eb.log()
    );
}

#[tokio::test(start_paused = true)]
async fn the_write_over_an_unreadable_record_never_clobbers_one_made_readable_meanwhile() {
    let api = Arc::new(Api::default());
    let shared = MemoryStore::new();
    let key = login();
    // Another fleet's record: unreadable here.
    let _ = shared
        .write(&key, None, &record("z-foreign"))
        .await
        .unwrap();
    let endpoint = endpoint_with_prefix(&api, "a-");
    let view = Keyed::new(&shared, "a-");
    // Between the conflict and the write over it, a replica of this fleet
    // commits a readable record over version 1.
    *view.on_unreadable.lock().unwrap() = Some(Box::new(move |inner: MemoryStore| {
        let key = login();
        let outcome = futures_util::FutureExt::now_or_never(inner.write(
            &key,
            Some(1),
            &record("a-meanwhile"),
        ));
        assert!(
            matches!(outcome, Some(Ok(WriteOutcome::Written { version: 2 }))),
            "{outcome:?}"
        );
    }));
    let layer = layer_with(&endpoint, |b| b.store(view.clone()));
    let svc = layer.layer(api_service(&api));
    assert!(ok(&bounded(&svc, Duration::from_secs(5)).await.unwrap()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = shared.read(&key).await.unwrap().unwrap();
    assert_eq!(
        (stored.version(), token_of(&stored).as_str()),
        (2, "a-meanwhile"),
        "the readable record was written over"
    );
}

/// A store whose every write meets a record it cannot read, at a new version
/// each time (another writer that never stops), up to a bound.
#[derive(Clone, Default)]
struct EverNewUnreadable {
    writes: Arc<AtomicU64>,
    leases: MemoryStore,
}

impl TokenStore for EverNewUnreadable {
    async fn read(&self, _key: &LoginKey) -> Result<Option<StoredRecord>, StoreError> {
        Ok(None)
    }

    async fn write(
        &self,
        _key: &LoginKey,
        _expected: Option<u64>,
        _record: &Record,
    ) -> Result<WriteOutcome, StoreError> {
        let n = self.writes.fetch_add(1, SeqCst);
        // The bound keeps a looping replica from spinning the test for ever.
        let version = 100 + n.min(1_000);
        Ok(WriteOutcome::Conflict(Conflict::new(Some(version), None)))
    }

    async fn acquire_lease(
        &self,
        key: &LoginKey,
        owner: &LeaseOwner,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.leases.acquire_lease(key, owner, ttl).await
    }

    async fn release_lease(&self, key: &LoginKey, owner: &LeaseOwner) -> Result<bool, StoreError> {
        self.leases.release_lease(key, owner).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_record_unreadable_at_a_new_version_each_time_is_written_over_a_bounded_number_of_times()
{
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let store = EverNewUnreadable::default();
    let layer = layer_with(&endpoint, |b| b.store(store.clone()));
    let svc = layer.layer(api_service(&api));
    assert!(ok(&bounded(&svc, Duration::from_secs(5)).await.unwrap()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = store.writes.load(SeqCst);
    assert!(writes <= 3, "{writes} writes for one grant");
    assert_eq!(endpoint.grants(), 1);
    // The lease was released: the flight ended.
    let someone = LeaseOwner::random();
    assert_eq!(
        store
            .acquire_lease(&login(), &someone, Duration::from_secs(1))
            .await
            .unwrap(),
        Lease::Acquired
    );
}

// ---------------------------------------------------------------------------
// The lease: its retry floor and its 5 s default.
// ---------------------------------------------------------------------------

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
    #[derive(Clone, Default)]
    struct Frozen {
        leases: Arc<AtomicU64>,
        inner: MemoryStore,
    }
    impl TokenStore for Frozen {
        async fn read(&self, key: &LoginKey) -> Result<Option<StoredRecord>, StoreError> {
            self.inner.read(key).await
        }
        async fn write(
            &self,
            key: &LoginKey,
            expected: Option<u64>,
            record: &Record,
        ) -> Result<WriteOutcome, StoreError> {
            self.inner.write(key, expected, record).await
        }
        async fn acquire_lease(
            &self,
            _key: &LoginKey,
            _owner: &LeaseOwner,
            _ttl: Duration,
        ) -> Result<Lease, StoreError> {
            self.leases.fetch_add(1, SeqCst);
            Ok(Lease::Held {
                remaining: Some(Duration::ZERO),
            })
        }
        async fn release_lease(&self, _: &LoginKey, _: &LeaseOwner) -> Result<bool, StoreError> {
            Ok(false)
        }
    }
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let store = Frozen::default();
    let layer = layer_with(&endpoint, |b| {
        b.store(store.clone()).wait_budget(Duration::from_secs(1))
    });
    let svc = layer.layer(api_service(&api));
    let _ = bounded(&svc, Duration::from_secs(5)).await;
    let asked = store.leases.load(SeqCst);
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

// ---------------------------------------------------------------------------
// Redis, on a real redis-server of 127.0.0.1.
// ---------------------------------------------------------------------------

fn record_key(key: &LoginKey) -> String {
    format!("daxium-auth:{{{}}}", key.id())
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("redis-server answers")
}

fn redis_store(server: &RedisServer) -> RedisStore {
    RedisStore::builder(&server.url())
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

/// The envelope a clear store writes for `key` at version 1, restated at
/// `version`.
async fn envelope_at(store: &RedisStore, server: &RedisServer, key: &LoginKey, version: &str) {
    let mut c = raw(&server.url()).await;
    let _: () = redis::cmd("DEL")
        .arg(record_key(key))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(contract::put(store, key, None, "edge").await, 1);
    let envelope: String = redis::cmd("HGET")
        .arg(record_key(key))
        .arg("envelope")
        .query_async(&mut c)
        .await
        .unwrap();
    let restated = envelope.replacen("\"version\":1,", &format!("\"version\":{version},"), 1);
    assert_ne!(restated, envelope, "the envelope names its version");
    let _: () = redis::cmd("HSET")
        .arg(record_key(key))
        .arg("version")
        .arg(version)
        .arg("envelope")
        .arg(restated)
        .query_async(&mut c)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_redis_record_at_a_20_digit_version_stays_readable_and_is_not_replaced() {
    let server = RedisServer::start();
    let store = redis_store(&server);
    let key = contract::key("twenty-digits");
    let last19 = 9_999_999_999_999_999_999_u64;
    envelope_at(&store, &server, &key, &last19.to_string()).await;
    assert_eq!(store.read(&key).await.unwrap().unwrap().version(), last19);
    // The store's own write takes it to 10^19: 20 digits.
    let outcome = store
        .write(&key, Some(last19), &record("next"))
        .await
        .unwrap();
    assert_eq!(outcome.version(), Some(last19 + 1));
    let read = store.read(&key).await.unwrap();
    assert_eq!(
        read.as_ref().map(StoredRecord::version),
        Some(last19 + 1),
        "the store's own record reads as absent"
    );
    let over = store.write(&key, None, &record("intruder")).await.unwrap();
    assert!(!over.is_written(), "a write expecting none deleted it");
}

#[tokio::test]
async fn a_write_expecting_a_version_over_a_redis_key_of_another_type_conflicts() {
    let server = RedisServer::start();
    let store = redis_store(&server);
    let key = contract::key("other-type");
    let mut c = raw(&server.url()).await;
    for kind in ["SET", "LPUSH"] {
        let _: () = redis::cmd("DEL")
            .arg(record_key(&key))
            .query_async(&mut c)
            .await
            .unwrap();
        let _: () = redis::cmd(kind)
            .arg(record_key(&key))
            .arg("left here by something else")
            .query_async(&mut c)
            .await
            .unwrap();
        let outcome = store.write(&key, Some(3), &record("x")).await;
        match outcome {
            Ok(WriteOutcome::Conflict(conflict)) => {
                assert_eq!(conflict.version(), None, "{kind}");
                assert!(conflict.record().is_none(), "{kind}");
            }
            other => panic!("{kind}: {other:?}"),
        }
        // And the write that expects none replaces it.
        assert_eq!(contract::put(&store, &key, None, "mine").await, 1);
    }
}

#[tokio::test]
async fn a_redis_version_with_leading_zeros_does_not_wedge_the_record() {
    let server = RedisServer::start();
    let store = redis_store(&server);
    let key = contract::key("leading-zeros");
    envelope_at(&store, &server, &key, "7").await;
    let mut c = raw(&server.url()).await;
    let _: () = redis::cmd("HSET")
        .arg(record_key(&key))
        .arg("version")
        .arg("007")
        .query_async(&mut c)
        .await
        .unwrap();
    // Whatever it reads as, a write that expects what it reads lands.
    let expected = store.read(&key).await.unwrap().map(|r| r.version());
    let outcome = store.write(&key, expected, &record("next")).await.unwrap();
    assert!(outcome.is_written(), "{expected:?}: {outcome:?}");
}

#[tokio::test]
async fn redis_hashes_without_a_usable_version_read_as_absent_and_are_replaced_once() {
    let server = RedisServer::start();
    let store = redis_store(&server);
    let key = contract::key("no-version");
    let mut c = raw(&server.url()).await;
    let cases: [&[&str]; 3] = [
        &["version", "", "envelope", "{}"],
        &["envelope", "{}"],
        &["version", "-1", "other", "x"],
    ];
    for fields in cases {
        let _: () = redis::cmd("DEL")
            .arg(record_key(&key))
            .query_async(&mut c)
            .await
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg(record_key(&key))
            .arg(fields)
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(store.read(&key).await.unwrap().is_none(), "{fields:?}");
        // A write that expects a version does not touch it.
        let outcome = store.write(&key, Some(1), &record("x")).await.unwrap();
        assert!(!outcome.is_written(), "{fields:?}");
        assert_eq!(contract::put(&store, &key, None, "mine").await, 1);
        // Only the store's fields are left.
        let mut left: Vec<String> = redis::cmd("HKEYS")
            .arg(record_key(&key))
            .query_async(&mut c)
            .await
            .unwrap();
        left.sort();
        assert_eq!(left, ["envelope", "epoch", "version"], "{fields:?}");
        // And once replaced, a second write expecting none conflicts.
        let again = store.write(&key, None, &record("y")).await.unwrap();
        assert!(!again.is_written(), "{fields:?}");
    }
}

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
                    let outcome = store.write(&key, expected, &record("w")).await.unwrap();
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

// ---------------------------------------------------------------------------
// File store, on a temporary directory.
// ---------------------------------------------------------------------------

fn record_file(dir: &TempDir, key: &LoginKey) -> PathBuf {
    dir.path().join(format!("{}.json", key.id()))
}

fn file_store(dir: &TempDir) -> FileStore {
    FileStore::builder(dir.path())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_symlink_to_a_directory_at_the_record_name_is_replaced_and_its_target_kept() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let store = file_store(&dir);
    let (full, empty) = (
        elsewhere.path().join("full"),
        elsewhere.path().join("empty"),
    );
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("precious"), b"precious").unwrap();
    std::fs::create_dir(&empty).unwrap();
    for (name, target) in [("to-full", &full), ("to-empty", &empty)] {
        let key = contract::key(name);
        std::os::unix::fs::symlink(target, record_file(&dir, &key)).unwrap();
        assert!(store.read(&key).await.unwrap().is_none(), "{name}");
        assert_eq!(contract::put(&store, &key, None, "new").await, 1, "{name}");
        let meta = std::fs::symlink_metadata(record_file(&dir, &key)).unwrap();
        assert!(
            meta.is_file(),
            "{name}: the link was replaced by the record"
        );
        assert!(target.is_dir(), "{name}: its target stays");
    }
    assert_eq!(std::fs::read(full.join("precious")).unwrap(), b"precious");
}

#[tokio::test]
async fn a_full_directory_at_the_record_name_is_never_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir);
    let key = contract::key("full-dir");
    let path = record_file(&dir, &key);
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("inside"), b"kept").unwrap();
    assert!(store.read(&key).await.unwrap().is_none());
    assert!(store.write(&key, None, &record("x")).await.is_err());
    assert_eq!(std::fs::read(path.join("inside")).unwrap(), b"kept");
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Opens the FIFO for writing when dropped, so that a reader blocked on it
/// (a thread of the blocking pool) returns and the runtime can stop.
struct Unblock(PathBuf);

impl Drop for Unblock {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        // Without a reader this fails at once (ENXIO); with one, it frees it.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.0);
    }
}

#[tokio::test]
async fn a_fifo_at_the_record_name_reads_as_absent_and_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir);
    let key = contract::key("fifo");
    let path = record_file(&dir, &key);
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    let _unblock = Unblock(path.clone());
    let read = store.read(&key).await;
    assert!(matches!(read, Ok(None)), "{read:?}");
    let written = store.write(&key, None, &record("x")).await;
    assert!(
        written.as_ref().is_ok_and(WriteOutcome::is_written),
        "{written:?}"
    );
    assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
}
