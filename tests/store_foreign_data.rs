//! What the stores and a fleet make of a record that they did not write, or
//! cannot use: one sealed under another key, unreadable at a new version on
//! every write, or made readable again meanwhile; one whose expiry is past or
//! absurd; one at the last version there is; in Redis, garbage, huge or
//! mismatched envelopes, versions of 20 digits or with leading zeros, and keys
//! of another type; in a directory, huge or damaged files, symlinks,
//! directories and FIFOs at the record's name. Such a record reads as absent
//! and is written over at its version; what it points to is never followed,
//! emptied or used. A record of another endpoint's login, handed over by a
//! store that files logins under less than their whole key, is never
//! adopted.
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
    AccessToken, MemoryStore, RefreshToken, StoreError, TokenSource, TokenStore,
    store::{
        Conflict, FileStore, Lease, LeaseOwner, LoginKey, Record, RedisStore, SealKey,
        StoredRecord, WriteOutcome,
    },
};
use tower::Layer;

use crate::support;

use support::{
    redis::{RedisServer, raw, record_key, redis_store},
    scripted::{Api, Endpoint, api_service, get, last_token, layer_with, send},
    store_contract as contract,
    stores::{bounded, file_store, login, ok, record_file, three_replicas_log_in_once},
};

// === records a fleet cannot read (memory store, paused time) ===

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

// === records of another endpoint's login (paused time) ===

// A token store that files logins under less than their whole key (a
// custom store keyed by client id and username, one that ignores the key)
// can hand a layer the record of another endpoint's login. Such a record
// names its login: the layer takes none of its tokens, and logs in at its
// own endpoint. Under paused time, with two scripted endpoints.

/// The other endpoint, on the API's host: another key for the same login.
const OTHER_TOKEN_URL: &str = "http://127.0.0.1:9/staging/oauth/v2/token";

/// A store with one record for every login: the key is ignored, and the
/// record keeps the login of whoever wrote it. Leases always succeed.
#[derive(Clone, Default)]
struct OneRecord {
    record: Arc<Mutex<Option<StoredRecord>>>,
}

impl TokenStore for OneRecord {
    async fn read(&self, _key: &LoginKey) -> Result<Option<StoredRecord>, StoreError> {
        Ok(self.record.lock().unwrap().clone())
    }

    async fn write(
        &self,
        key: &LoginKey,
        expected: Option<u64>,
        record: &Record,
    ) -> Result<WriteOutcome, StoreError> {
        let mut slot = self.record.lock().unwrap();
        let current = slot.as_ref().map(StoredRecord::version);
        if current != expected {
            return Ok(WriteOutcome::Conflict(Conflict::new(current, slot.clone())));
        }
        let version = current.unwrap_or(0) + 1;
        *slot = Some(StoredRecord::new(key.clone(), version, record.clone()));
        Ok(WriteOutcome::Written { version })
    }

    async fn acquire_lease(
        &self,
        _key: &LoginKey,
        _owner: &LeaseOwner,
        _ttl: Duration,
    ) -> Result<Lease, StoreError> {
        Ok(Lease::Acquired)
    }

    async fn release_lease(
        &self,
        _key: &LoginKey,
        _owner: &LeaseOwner,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }
}

#[tokio::test(start_paused = true)]
async fn a_record_of_another_endpoint_is_never_adopted() {
    let api = Arc::new(Api::default());
    let (production, staging) = (Endpoint::new(&api), Endpoint::new(&api));
    *staging.prefix.lock().unwrap() = "staging-".to_owned();
    let store = OneRecord::default();
    let on_staging = layer_with(&staging, |b| {
        b.token_url(OTHER_TOKEN_URL).store(store.clone())
    });
    let on_production = layer_with(&production, |b| b.store(store.clone()));

    on_staging.login().await.unwrap();
    let written = store
        .record
        .lock()
        .unwrap()
        .clone()
        .expect("staging's pair");
    assert_eq!(
        written.login().endpoint().unwrap(),
        "http://127.0.0.1:9/staging/oauth/v2/token"
    );

    on_production.login().await.unwrap();
    let state = *on_production.subscribe().borrow();
    assert_eq!(
        state.source(),
        Some(TokenSource::PasswordGrant),
        "production took staging's token: {state:?}"
    );
    assert_eq!(production.log(), ["password:user@example.com"]);
    let token = on_production.cache().access_token().await.unwrap();
    let header = token.header_value().to_str().unwrap().to_owned();
    assert_eq!(header, "Bearer access-1");

    // A refresh of each goes to its own endpoint with its own refresh token.
    tokio::time::sleep(Duration::from_secs(6)).await;
    on_production.refresh().await.unwrap();
    on_staging.refresh().await.unwrap();
    assert_eq!(
        production.log(),
        ["password:user@example.com", "refresh:refresh-1"]
    );
    // Staging's own pair was written over by production's: it logs in again
    // rather than take production's refresh token.
    assert_eq!(staging.log(), ["password:user@example.com"; 2]);
    let svc = on_production.layer(api_service(&api));
    assert!(ok(&bounded(&svc, Duration::from_secs(1)).await.unwrap()));
    let seen = api.seen.lock().unwrap().clone();
    let last = seen.last().cloned().flatten().unwrap();
    assert!(!last.to_str().unwrap().contains("staging-"), "{last:?}");
}

// === expiries and versions at the edge (memory store, paused time) ===

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

// === in Redis ===

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
    let cases: [&[&str]; 4] = [
        &["version", "", "envelope", "{}"],
        &["envelope", "{}"],
        &["version", "-1", "other", "x"],
        &[
            "version",
            "\u{fffd}not a number",
            "envelope",
            "\u{0}\u{ff} garbage",
        ],
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

// === in a directory ===

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

#[tokio::test]
async fn a_directory_in_place_of_the_record_file_does_not_split_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(record_file(&dir, &login())).unwrap();
    three_replicas_log_in_once(|| file_store(&dir)).await;
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
