//! What every token store owes its callers, written once and run against each
//! store: compare-and-set, leases, logins kept apart, and waiting for a change.
//! Time goes through tokio, so the memory store runs it under paused time and
//! the real stores on the real clock.

use std::time::{Duration, SystemTime};

use daxium_auth::{
    AccessToken, RefreshToken,
    store::{Conflict, Lease, LeaseOwner, LoginKey, Record, TokenStore, WriteOutcome},
};
use tokio::time::Instant;

/// A key of its own for each test, so that tests sharing a store stay apart.
pub(crate) fn key(test: &str) -> LoginKey {
    LoginKey::new("contract-client", format!("{test}@example.com"))
}

/// A record whose tokens say `tag`.
pub(crate) fn record(tag: &str) -> Record {
    Record::new(
        AccessToken::new(&format!("access-{tag}")).expect("a b64token"),
        Some(RefreshToken::new(&format!("refresh-{tag}")).expect("a refresh token")),
        SystemTime::now() + Duration::from_secs(3600),
    )
    .with_scope(Some("all".into()))
}

/// Whether `owner` takes the lease of `key`.
pub(crate) async fn takes(
    store: &impl TokenStore,
    key: &LoginKey,
    owner: &LeaseOwner,
    ttl: Duration,
) -> bool {
    store
        .acquire_lease(key, owner, ttl)
        .await
        .expect("the store answers")
        .is_acquired()
}

/// Writes the record of `tag` over `expected`, which must be the stored
/// version; the new version.
pub(crate) async fn put(
    store: &impl TokenStore,
    key: &LoginKey,
    expected: Option<u64>,
    tag: &str,
) -> u64 {
    written(
        store
            .write(key, expected, &record(tag))
            .await
            .expect("the store answers"),
    )
}

/// Writes over `expected`, which must not be the stored version; what the
/// store holds instead.
pub(crate) async fn conflict(
    store: &impl TokenStore,
    key: &LoginKey,
    expected: Option<u64>,
) -> Conflict {
    match store
        .write(key, expected, &record("refused"))
        .await
        .expect("the store answers")
    {
        WriteOutcome::Conflict(conflict) => conflict,
        other => panic!("expected a conflict over {expected:?}, got {other:?}"),
    }
}

fn written(outcome: WriteOutcome) -> u64 {
    match outcome {
        WriteOutcome::Written { version } => version,
        other => panic!("expected a write, got {other:?}"),
    }
}

/// Absent → 1 → 2; a stale or absent expectation conflicts and shows what is
/// stored; the record read back is the one written.
pub(crate) async fn compare_and_set(store: &impl TokenStore) {
    let key = key("compare-and-set");
    assert!(store.read(&key).await.unwrap().is_none());

    // Expecting a version when nothing is stored conflicts with "nothing".
    let nothing = conflict(store, &key, Some(1)).await;
    assert_eq!(nothing.version(), None);
    assert!(nothing.record().is_none());

    assert_eq!(put(store, &key, None, "one").await, 1);
    let two = record("two");
    assert_eq!(written(store.write(&key, Some(1), &two).await.unwrap()), 2);

    for stale in [None, Some(1), Some(3)] {
        let found = conflict(store, &key, stale).await;
        assert_eq!(found.version(), Some(2), "expecting {stale:?}");
        let current = found.into_record().expect("the stored record");
        assert_eq!(current.version(), 2);
        assert_eq!(
            current.record().access_token().expose_secret(),
            "access-two"
        );
    }

    let stored = store.read(&key).await.unwrap().expect("a record");
    assert_eq!(stored.version(), 2);
    assert_eq!(stored.login(), &key);
    let rec = stored.record();
    assert_eq!(rec.access_token().expose_secret(), "access-two");
    assert_eq!(rec.refresh_token().unwrap().expose_secret(), "refresh-two");
    assert_eq!(rec.scope(), Some("all"));
    assert_eq!(rec.expires_at_unix_ms(), two.expires_at_unix_ms());

    // A spent refresh token comes back spent, and without its token.
    let spent = rec.clone().with_refresh_spent();
    assert_eq!(
        written(store.write(&key, Some(2), &spent).await.unwrap()),
        3
    );
    let stored = store.read(&key).await.unwrap().expect("a record");
    assert!(stored.record().is_refresh_spent());
    assert!(stored.record().refresh_token().is_none());
    assert_eq!(stored.record().access_token().expose_secret(), "access-two");
}

/// One owner at a time; the holder renews by taking it again; a non-owner's
/// release does nothing; the owner's release frees it for the next.
pub(crate) async fn one_lease_holder_at_a_time(store: &impl TokenStore) {
    let key = key("one-holder");
    let (a, b) = (LeaseOwner::random(), LeaseOwner::random());
    let ttl = Duration::from_secs(30);

    assert!(takes(store, &key, &a, ttl).await);
    match store.acquire_lease(&key, &b, ttl).await.unwrap() {
        Lease::Held { remaining } => {
            let remaining = remaining.expect("the holder's time to live");
            assert!(remaining <= ttl, "{remaining:?}");
            assert!(remaining > ttl - Duration::from_secs(5), "{remaining:?}");
        }
        other => panic!("b took a held lease: {other:?}"),
    }
    assert!(takes(store, &key, &a, ttl).await);

    assert!(!store.release_lease(&key, &b).await.unwrap());
    assert!(!takes(store, &key, &b, ttl).await);

    assert!(store.release_lease(&key, &a).await.unwrap());
    assert!(!store.release_lease(&key, &a).await.unwrap());
    assert!(takes(store, &key, &b, ttl).await);
    assert!(!takes(store, &key, &a, ttl).await);

    // Leases of other logins are apart.
    let other = LoginKey::new("contract-client", "someone-else@example.com");
    assert!(takes(store, &other, &a, ttl).await);
    assert!(store.release_lease(&other, &a).await.unwrap());
    assert!(store.release_lease(&key, &b).await.unwrap());
}

/// A lease lapses after its time to live: another owner takes it, and the
/// first owner's late release leaves the new holder's lease alone.
pub(crate) async fn a_lease_lapses_after_its_ttl(store: &impl TokenStore, ttl: Duration) {
    let key = key("lapse");
    let (a, b) = (LeaseOwner::random(), LeaseOwner::random());

    assert!(takes(store, &key, &a, ttl).await);
    assert!(!takes(store, &key, &b, ttl).await);
    tokio::time::sleep(ttl + ttl / 2).await;

    assert!(takes(store, &key, &b, Duration::from_secs(30)).await);
    assert!(!store.release_lease(&key, &a).await.unwrap());
    assert!(!takes(store, &key, &a, ttl).await);
    assert!(store.release_lease(&key, &b).await.unwrap());
}

/// A record written for one login is never read under another's key: another
/// username, client id or token endpoint.
pub(crate) async fn another_login_is_never_read(store: &impl TokenStore) {
    let alice = LoginKey::new("contract-client", "alice@example.com");
    let bob = LoginKey::new("contract-client", "bob@example.com");
    let other_client = LoginKey::new("other-client", "alice@example.com");
    let at = |url: &str| alice.clone().with_endpoint(&url.parse().unwrap());
    let production = at("https://api.example.com/oauth/v2/token");
    let staging = at("https://staging.example.com/oauth/v2/token");

    assert_eq!(put(store, &alice, None, "alice").await, 1);
    assert!(store.read(&bob).await.unwrap().is_none());
    assert!(store.read(&other_client).await.unwrap().is_none());
    assert!(store.read(&production).await.unwrap().is_none());

    assert_eq!(put(store, &production, None, "production").await, 1);
    assert!(store.read(&staging).await.unwrap().is_none());
    let read = store.read(&production).await.unwrap().expect("the record");
    assert_eq!(read.login(), &production);
    assert_eq!(
        read.record().access_token().expose_secret(),
        "access-production"
    );

    assert_eq!(put(store, &bob, None, "bob").await, 1);
    let read_alice = store.read(&alice).await.unwrap().expect("alice's record");
    let read_bob = store.read(&bob).await.unwrap().expect("bob's record");
    assert_eq!(read_alice.login(), &alice);
    assert_eq!(read_bob.login(), &bob);
    assert_eq!(
        read_alice.record().access_token().expose_secret(),
        "access-alice"
    );
    assert_eq!(
        read_bob.record().access_token().expose_secret(),
        "access-bob"
    );
}

/// A waiter on one handle wakes when another handle writes, well before its
/// deadline, and sees the new version.
pub(crate) async fn a_waiter_sees_another_handles_write(
    waiter: &impl TokenStore,
    writer: &impl TokenStore,
) {
    let key = key("wake");
    assert_eq!(put(writer, &key, None, "one").await, 1);
    let max_wait = Duration::from_secs(10);
    let delay = Duration::from_millis(100);

    let started = Instant::now();
    let (seen, write) = tokio::join!(waiter.wait_for_change(&key, Some(1), max_wait), async {
        tokio::time::sleep(delay).await;
        writer.write(&key, Some(1), &record("two")).await
    });
    let elapsed = started.elapsed();
    assert_eq!(written(write.unwrap()), 2);
    let seen = seen.unwrap().expect("the new record before the deadline");
    assert_eq!(seen.version(), 2);
    assert_eq!(seen.record().access_token().expose_secret(), "access-two");
    assert!(elapsed >= delay, "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");

    // A version other than `since` that is already there returns at once.
    let started = Instant::now();
    let seen = waiter
        .wait_for_change(&key, Some(1), max_wait)
        .await
        .unwrap();
    assert_eq!(seen.expect("version 2").version(), 2);
    assert!(started.elapsed() < Duration::from_secs(1));

    // Waiting for any record on an empty key wakes on the first write.
    let fresh = self::key("wake-fresh");
    let (seen, write) = tokio::join!(waiter.wait_for_change(&fresh, None, max_wait), async {
        tokio::time::sleep(delay).await;
        writer.write(&fresh, None, &record("first")).await
    });
    assert_eq!(written(write.unwrap()), 1);
    assert_eq!(seen.unwrap().expect("the first record").version(), 1);
}

/// Without a write, a wait ends at its deadline with nothing.
pub(crate) async fn a_wait_without_a_write_times_out(store: &impl TokenStore) {
    let key = key("timeout");
    assert_eq!(put(store, &key, None, "one").await, 1);
    let max_wait = Duration::from_millis(300);
    let started = Instant::now();
    let seen = store
        .wait_for_change(&key, Some(1), max_wait)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(seen.is_none(), "{seen:?}");
    assert!(elapsed >= max_wait, "{elapsed:?}");
    assert!(elapsed < max_wait + Duration::from_secs(2), "{elapsed:?}");

    let empty = self::key("timeout-empty");
    let seen = store
        .wait_for_change(&empty, None, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(seen.is_none());
}

/// What `key` holds cannot be read (another login's, another seal key's, a
/// damaged value) but has `version`: it reads as absent, a write expecting
/// nothing meets that version, and a write over it replaces it.
pub(crate) async fn an_unreadable_record_is_replaced_over_its_version(
    store: &impl TokenStore,
    key: &LoginKey,
    version: u64,
) {
    assert!(store.read(key).await.unwrap().is_none());
    let unreadable = conflict(store, key, None).await;
    assert_eq!(unreadable.version(), Some(version));
    assert!(unreadable.record().is_none());
    assert_eq!(
        put(store, key, Some(version), "replacing").await,
        version + 1
    );
    let read = store.read(key).await.unwrap().expect("the new record");
    assert_eq!(
        read.record().access_token().expose_secret(),
        "access-replacing"
    );
}

/// For a store that is told of writes: a wait on `key` that `subscribers`
/// (the subscriptions to the login's channel) shows subscribed, and that
/// has gone quiet for longer than a poll would, wakes within 100 ms of
/// `writer`'s first write.
pub(crate) async fn a_subscribed_wait_wakes_at_the_commit<S, F>(
    waiter: S,
    writer: &impl TokenStore,
    key: &LoginKey,
    mut subscribers: impl FnMut() -> F,
) where
    S: TokenStore,
    F: std::future::Future<Output = i64>,
{
    let wait = {
        let key = key.clone();
        tokio::spawn(async move {
            let seen = waiter
                .wait_for_change(&key, None, Duration::from_secs(10))
                .await;
            (seen, Instant::now())
        })
    };
    assert!(
        subscribers_reach(1, &mut subscribers).await,
        "the waiter never subscribed"
    );

    // Past the poll interval the fallback would take, the commit is what wakes it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(put(writer, key, None, "pushed").await, 1);
    let committed = Instant::now();
    let (seen, woke) = wait.await.unwrap();
    assert_eq!(seen.unwrap().expect("the commit").version(), 1);
    let latency = woke.duration_since(committed);
    eprintln!("woke {} µs after the commit", latency.as_micros());
    assert!(latency < Duration::from_millis(100), "{latency:?}");
}

/// Whether `subscribers` comes to say `n`, asked every 10 ms for at most 2 s.
pub(crate) async fn subscribers_reach<F: std::future::Future<Output = i64>>(
    n: i64,
    mut subscribers: impl FnMut() -> F,
) -> bool {
    for _ in 0..200 {
        if subscribers().await == n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
