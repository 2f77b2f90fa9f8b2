//! The driver's side of a token store: each store call the core asks for runs
//! in a task of its own and comes back as an event; records are turned from
//! the store's wall-clock expiry into the core's monotonic time and back.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use http::{HeaderValue, Uri};
use tokio::time::Instant;

use super::{Live, Shared, tasks::Lost};
use crate::{
    cache::core::{Event, FlightId, Record, StoreCall, StoreReply, Time},
    credentials::Credentials,
    store::{self, AnyStore, Lease, LeaseOwner, LoginKey, StoredRecord, TokenStore, WriteOutcome},
    token::{AccessToken, MAX_LIFETIME},
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
}

impl Fleet {
    pub(crate) fn new(
        store: AnyStore,
        endpoint: Uri,
        credentials: &Credentials,
        lease_ttl: Duration,
    ) -> Self {
        Self {
            key: Self::key_of(&endpoint, credentials),
            store,
            endpoint,
            owner: LeaseOwner::random(),
            lease_ttl,
        }
    }

    /// Files the store's calls under the login of `credentials` from now on.
    pub(crate) fn rekey(&mut self, credentials: &Credentials) {
        self.key = Self::key_of(&self.endpoint, credentials);
    }

    fn key_of(endpoint: &Uri, credentials: &Credentials) -> LoginKey {
        LoginKey::from_credentials(credentials).with_endpoint(endpoint)
    }
}

impl Shared {
    /// Runs one store call of `flight` and feeds its answer to the core.
    pub(super) async fn store_call(
        self: Arc<Self>,
        flight: FlightId,
        call: StoreCall<Live>,
        fleet: Fleet,
        mut lost: Lost,
    ) {
        let Fleet {
            store,
            key,
            owner,
            lease_ttl: ttl,
            ..
        } = fleet;
        if let StoreCall::Release = call {
            // Nothing waits for it; a failure leaves the lease to its time to live.
            lost.event = None;
            let _ = store.release_lease(&key, &owner).await;
            return;
        }
        let reply = match call {
            StoreCall::Lease => match store.acquire_lease(&key, &owner, ttl).await {
                Ok(Lease::Acquired) => StoreReply::Leased,
                Ok(Lease::Held { remaining }) => StoreReply::Held(remaining),
                Err(_) => StoreReply::Down,
            },
            StoreCall::Read => match store.read(&key).await {
                Ok(record) => StoreReply::Record(record.map(|r| self.adopted(r))),
                Err(_) => StoreReply::Down,
            },
            StoreCall::Watch { since, until } => {
                let wait = until.saturating_sub(self.time(Instant::now()));
                match store.wait_for_change(&key, since, wait).await {
                    Ok(record) => StoreReply::Record(record.map(|r| self.adopted(r))),
                    Err(_) => StoreReply::Down,
                }
            }
            StoreCall::Spend { record } => {
                let expected = Some(record.version);
                let record = self.stored(record).with_refresh_spent();
                self.write(&store, &key, expected, record).await
            }
            StoreCall::Write { expected, record } => {
                let record = self.stored(record);
                self.write(&store, &key, expected, record).await
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
    ) -> StoreReply<Live> {
        match store.write(key, expected, &record).await {
            Ok(WriteOutcome::Written { version }) => StoreReply::Written(version),
            Ok(WriteOutcome::Conflict(conflict)) => match (conflict.version(), conflict.record()) {
                (Some(version), None) => StoreReply::Unreadable(version),
                _ => StoreReply::Conflict(conflict.into_record().map(|r| self.adopted(r))),
            },
            Err(_) => StoreReply::Down,
        }
    }

    /// A stored record in the core's terms: its expiry on the core's clock.
    fn adopted(&self, stored: StoredRecord) -> Record<Live> {
        let version = stored.version();
        let record = stored.into_record();
        // A stored expiry beyond what any grant is given (expires_in is
        // clamped to MAX_LIFETIME) is absurd, and never means "never expires".
        let remaining = record.remaining_at(SystemTime::now()).min(MAX_LIFETIME);
        let mut access = HeaderValue::clone(record.access_token().header_value());
        access.set_sensitive(true);
        Record {
            version,
            access,
            refresh: record.refresh_token().cloned(),
            expires_at: self.now().saturating_add(remaining),
            spent: record.is_refresh_spent(),
        }
    }

    /// A record of the core in the store's terms: its expiry on the wall clock.
    fn stored(&self, record: Record<Live>) -> store::Record {
        let remaining = record.expires_at.saturating_sub(self.now());
        let expires_at = SystemTime::now() + remaining;
        let access = AccessToken::from_header_value(record.access);
        store::Record::new(access, record.refresh, expires_at)
    }

    fn now(&self) -> Time {
        self.time(Instant::now())
    }
}
