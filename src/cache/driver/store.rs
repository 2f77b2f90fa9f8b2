//! The driver's side of a token store: each store call the core asks for runs
//! in a task of its own, bounded by the store timeout, and comes back as an
//! event; records are turned from the store's wall-clock expiry into the
//! core's monotonic time and back.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use http::{HeaderValue, Uri};
use tokio::{sync::Notify, task::JoinHandle, time::Instant};

use super::{Live, Shared, tasks::Lost};
use crate::{
    cache::core::{CacheConfig, Event, FlightId, Record, StoreCall, StoreReply, Time},
    credentials::Credentials,
    store::{
        self, AnyStore, Lease, LeaseOwner, LoginKey, StoreError, StoredRecord, TokenStore,
        WriteOutcome,
    },
    token::{AccessToken, MAX_LIFETIME, MAX_REFRESH_LIFETIME},
};

/// The store a cache shares, the login's key in it, and this replica's name
/// as a lease holder.
#[derive(Clone)]
pub(crate) struct Fleet {
    pub(crate) store: AnyStore,
    /// The token endpoint the login is filed under: two endpoints' tokens
    /// never mix, whatever the store.
    endpoint: Uri,
    pub(crate) key: LoginKey,
    pub(crate) owner: LeaseOwner,
    pub(crate) lease_ttl: Duration,
    /// How long one call may take, past its own wait for a change.
    pub(crate) timeout: Duration,
    /// This replica's releases of the lease on their way, shared by the
    /// clones: a flight asks for the lease once they are done.
    releases: Arc<Releases>,
    /// On the clone a release runs with: counts it until the clone goes.
    releasing: Option<Arc<Releasing>>,
}

/// How many releases of the lease a replica has on their way.
#[derive(Default)]
struct Releases {
    count: AtomicUsize,
    done: Notify,
}

/// One release on its way, counted until it is dropped.
struct Releasing(Arc<Releases>);

impl Drop for Releasing {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

impl Fleet {
    pub(crate) fn new(
        store: AnyStore,
        endpoint: Uri,
        credentials: &Credentials,
        config: &CacheConfig,
    ) -> Self {
        Self {
            key: Self::key_of(&endpoint, credentials),
            store,
            endpoint,
            owner: LeaseOwner::random(),
            lease_ttl: config.lease_ttl,
            timeout: config.store_timeout,
            releases: Arc::default(),
            releasing: None,
        }
    }

    /// The fleet a store call runs with. Each taking of the lease has an
    /// owner of its own, and waits for the releases on their way: a release
    /// of an earlier flight that lands late frees that flight's lease only,
    /// and does not make this one wait for its own earlier lease to lapse.
    pub(crate) fn for_call(&mut self, call: &StoreCall<Live>) -> Self {
        match call {
            StoreCall::Lease => self.owner = LeaseOwner::random(),
            StoreCall::Release => {
                self.releases.count.fetch_add(1, Ordering::AcqRel);
                let releasing = Releasing(Arc::clone(&self.releases));
                return Self {
                    releasing: Some(Arc::new(releasing)),
                    ..self.clone()
                };
            }
            _ => {}
        }
        self.clone()
    }

    /// The fleet of a release that a clean close makes itself, after the
    /// calls it waits for: a lease being asked for does not wait for it.
    pub(crate) fn uncounted(mut self) -> Self {
        self.releasing = None;
        self
    }

    /// Until no release of this replica is on its way, or `timeout`.
    async fn released(&self, timeout: Duration) {
        let releases = &self.releases;
        let settled = async {
            loop {
                let done = releases.done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if releases.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                done.await;
            }
        };
        let _ = tokio::time::timeout(timeout, settled).await;
    }

    /// Files the store's calls under the login of `credentials` from now on.
    pub(crate) fn rekey(&mut self, credentials: &Credentials) {
        self.key = Self::key_of(&self.endpoint, credentials);
    }

    fn key_of(endpoint: &Uri, credentials: &Credentials) -> LoginKey {
        LoginKey::from_credentials(credentials).with_endpoint(endpoint)
    }
}

/// What a clean close does with a store call still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ends {
    /// Lets it finish: it changes the store (a lease it may be granted, a
    /// record it writes, a lease it releases).
    Finish,
    /// Stops it: it only reads.
    Stop,
}

impl Ends {
    pub(crate) fn of(call: &StoreCall<Live>) -> Self {
        match call {
            StoreCall::Lease
            | StoreCall::Spend { .. }
            | StoreCall::Write { .. }
            | StoreCall::Release => Self::Finish,
            StoreCall::Read | StoreCall::Watch { .. } => Self::Stop,
        }
    }
}

/// A store call running in a task of its own.
pub(crate) struct StoreTask {
    pub(crate) ends: Ends,
    pub(crate) task: JoinHandle<()>,
}

/// Stops the calls that only read, and waits for the others: each is bounded
/// by the store timeout.
pub(crate) async fn settle(tasks: Vec<StoreTask>) {
    for StoreTask { ends, task } in tasks {
        match ends {
            Ends::Stop => task.abort(),
            // A task that panicked or was lost with its runtime is over too.
            Ends::Finish => drop(task.await),
        }
    }
}

impl Shared {
    /// Releases this replica's lease, if it still holds it, within the store
    /// timeout.
    pub(super) async fn release(&self, fleet: Fleet) {
        let released = fleet.store.release_lease(&fleet.key, &fleet.owner);
        if answer(fleet.timeout, released).await.is_none() {
            self.counters.store_error();
        }
    }

    /// Runs one store call of `flight` and feeds its answer to the core.
    pub(super) async fn store_call(
        self: Arc<Self>,
        flight: FlightId,
        call: StoreCall<Live>,
        fleet: Fleet,
        mut lost: Lost,
    ) {
        if let StoreCall::Release = call {
            // Nothing waits for it; a failure leaves the lease to its time to live.
            lost.event = None;
            return self.release(fleet).await;
        }
        if let StoreCall::Lease = call {
            fleet.released(fleet.timeout).await;
        }
        let Fleet {
            store,
            key,
            owner,
            lease_ttl: ttl,
            timeout,
            ..
        } = fleet;
        let reply = match call {
            StoreCall::Lease => match answer(timeout, store.acquire_lease(&key, &owner, ttl)).await
            {
                Some(Lease::Acquired) => StoreReply::Leased,
                Some(Lease::Held { remaining }) => StoreReply::Held(remaining),
                None => StoreReply::Down,
            },
            StoreCall::Read => match answer(timeout, store.read(&key)).await {
                Some(record) => StoreReply::Record(record.map(|r| self.adopted(r, &key))),
                None => StoreReply::Down,
            },
            StoreCall::Watch { since, until } => {
                // The wait ends by itself at `until`; the timeout bounds the
                // store's answer after that.
                let wait = until.saturating_sub(self.time(Instant::now()));
                let within = wait.saturating_add(timeout);
                match answer(within, store.wait_for_change(&key, since, wait)).await {
                    Some(record) => StoreReply::Record(record.map(|r| self.adopted(r, &key))),
                    None => StoreReply::Down,
                }
            }
            StoreCall::Spend { record } => {
                let expected = Some(record.version);
                let record = self.stored(record).with_refresh_spent();
                self.write(&store, &key, expected, record, timeout).await
            }
            StoreCall::Write { expected, record } => {
                let record = self.stored(record);
                self.write(&store, &key, expected, record, timeout).await
            }
            StoreCall::Release => return,
        };
        lost.event = None;
        if let StoreReply::Down = reply {
            self.counters.store_error();
        }
        self.run(Event::Stored { flight, reply });
    }

    async fn write(
        &self,
        store: &AnyStore,
        key: &LoginKey,
        expected: Option<u64>,
        record: store::Record,
        timeout: Duration,
    ) -> StoreReply<Live> {
        match answer(timeout, store.write(key, expected, &record)).await {
            Some(WriteOutcome::Written { version }) => StoreReply::Written(version),
            Some(WriteOutcome::Conflict(conflict)) => match (conflict.version(), conflict.record())
            {
                (Some(version), None) => StoreReply::Unreadable(version),
                _ => StoreReply::Conflict(conflict.into_record().map(|r| self.adopted(r, key))),
            },
            None => StoreReply::Down,
        }
    }

    /// A stored record in the core's terms: its expiry on the core's clock.
    /// A record of another login than `key` (another endpoint's, from a
    /// store that files logins under less than the whole key) keeps only its
    /// version: its tokens were issued elsewhere, and are never taken nor
    /// sent here.
    fn adopted(&self, stored: StoredRecord, key: &LoginKey) -> Record<Live> {
        if stored.login() != key {
            tracing::warn!(
                target: "daxium_auth",
                "token store returned a record of another login; its tokens are ignored"
            );
            return Record {
                version: stored.version(),
                access: HeaderValue::from_static(""),
                refresh: None,
                expires_at: Time::ZERO,
                refresh_until: None,
                spent: true,
            };
        }
        let version = stored.version();
        let record = stored.into_record();
        // A stored expiry beyond what any grant is given (expires_in is
        // clamped to MAX_LIFETIME) is absurd, and never means "never expires".
        let now = SystemTime::now();
        let remaining = record.remaining_at(now).min(MAX_LIFETIME);
        let refresh_until = record.refresh_expires_at().map(|at| {
            let left = at.duration_since(now).unwrap_or(Duration::ZERO);
            self.now().saturating_add(left.min(MAX_REFRESH_LIFETIME))
        });
        let mut access = HeaderValue::clone(record.access_token().header_value());
        access.set_sensitive(true);
        Record {
            version,
            access,
            refresh: record.refresh_token().cloned(),
            expires_at: self.now().saturating_add(remaining),
            refresh_until,
            spent: record.is_refresh_spent(),
        }
    }

    /// A record of the core in the store's terms: its expiry on the wall clock.
    fn stored(&self, record: Record<Live>) -> store::Record {
        let (now, wall) = (self.now(), SystemTime::now());
        let expires_at = wall + record.expires_at.saturating_sub(now);
        let access = AccessToken::from_header_value(record.access);
        let stored = store::Record::new(access, record.refresh, expires_at);
        match record.refresh_until {
            Some(until) => stored.with_refresh_expires_at(wall + until.saturating_sub(now)),
            None => stored,
        }
    }

    fn now(&self) -> Time {
        self.time(Instant::now())
    }
}

/// What a store call answered within `timeout`; `None` when it failed or did
/// not answer in time. A store of the crate bounds its calls itself, but any
/// store may hang (a custom one, a connection that never answers): without
/// this bound, its call would hold the flight, and no grant would start again.
async fn answer<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Option<T> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(answer)) => Some(answer),
        Ok(Err(err)) => {
            tracing::debug!(target: "daxium_auth", error = %err, "token store call failed");
            None
        }
        Err(_) => {
            tracing::debug!(
                target: "daxium_auth",
                timeout_ms = timeout.as_millis() as u64,
                "token store call did not answer within the store timeout"
            );
            None
        }
    }
}
