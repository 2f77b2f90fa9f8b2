//! The in-process token store: a map behind a mutex, the default. It shares a
//! record between the token caches of one process (and is the reference the
//! other stores are tested against); leases run on tokio's clock, so that
//! tests can pause time.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use super::{
    Conflict, Lease, LeaseOwner, LoginKey, Record, StoreError, StoredRecord, TokenStore,
    WriteOutcome, lease_ttl, next_version, wait_deadline,
};

/// A [`TokenStore`] in the memory of the process.
///
/// Clones share one map. Nothing survives the process; for that, and for
/// several processes, see `FileStore` and `RedisStore`.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Woken on every write, for [`TokenStore::wait_for_change`].
    written: Notify,
}

#[derive(Default)]
struct State {
    records: HashMap<String, StoredRecord>,
    leases: HashMap<String, Held>,
}

struct Held {
    owner: LeaseOwner,
    until: Instant,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while the lock was held leaves a map that is still
        // whole: every change below is a single insert or remove.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn read_now(&self, key: &LoginKey) -> Option<StoredRecord> {
        self.state()
            .records
            .get(key.id())
            .filter(|stored| stored.login() == key)
            .cloned()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("MemoryStore")
            .field("records", &state.records.len())
            .field("leases", &state.leases.len())
            .finish()
    }
}

impl TokenStore for MemoryStore {
    async fn read(&self, key: &LoginKey) -> Result<Option<StoredRecord>, StoreError> {
        Ok(self.read_now(key))
    }

    async fn write(
        &self,
        key: &LoginKey,
        expected: Option<u64>,
        record: &Record,
    ) -> Result<WriteOutcome, StoreError> {
        let mut state = self.state();
        let current = state.records.get(key.id());
        let current_version = current.map(StoredRecord::version);
        if current_version != expected {
            let readable = current.filter(|stored| stored.login() == key).cloned();
            return Ok(WriteOutcome::Conflict(Conflict::new(
                current_version,
                readable,
            )));
        }
        let version = next_version(expected, "memory")?;
        state.records.insert(
            key.id().to_owned(),
            StoredRecord::new(key.clone(), version, record.clone()),
        );
        drop(state);
        self.inner.written.notify_waiters();
        Ok(WriteOutcome::Written { version })
    }

    async fn acquire_lease(
        &self,
        key: &LoginKey,
        owner: &LeaseOwner,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let now = Instant::now();
        let mut state = self.state();
        match state.leases.get(key.id()) {
            Some(held) if held.until > now && held.owner != *owner => Ok(Lease::Held {
                remaining: Some(held.until - now),
            }),
            _ => {
                state.leases.insert(
                    key.id().to_owned(),
                    Held {
                        owner: owner.clone(),
                        until: now + lease_ttl(ttl),
                    },
                );
                Ok(Lease::Acquired)
            }
        }
    }

    async fn release_lease(&self, key: &LoginKey, owner: &LeaseOwner) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut state = self.state();
        let ours = state
            .leases
            .get(key.id())
            .is_some_and(|held| held.owner == *owner && held.until > now);
        if ours {
            state.leases.remove(key.id());
        }
        Ok(ours)
    }

    async fn wait_for_change(
        &self,
        key: &LoginKey,
        since: Option<u64>,
        max_wait: Duration,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let deadline = wait_deadline(max_wait);
        // Each turn is one write to the store, and the deadline bounds them.
        loop {
            let written = self.inner.written.notified();
            tokio::pin!(written);
            // Registered before the read: a write in between still wakes us.
            written.as_mut().enable();
            if let Some(record) = self.read_now(key)
                && Some(record.version()) != since
            {
                return Ok(Some(record));
            }
            if tokio::time::timeout_at(deadline, written).await.is_err() {
                return Ok(None);
            }
        }
    }
}
