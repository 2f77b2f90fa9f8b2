//! [`AnyStore`]: any [`TokenStore`] behind one type, through the store's
//! object-safe face, for the layer and for code that picks its store at run
//! time.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

#[cfg(feature = "file")]
use super::FileStore;
#[cfg(feature = "redis")]
use super::RedisStore;
use super::{
    Lease, LeaseOwner, LoginKey, MemoryStore, Record, StoreError, StoredRecord, TokenStore,
    WriteOutcome,
};

/// A boxed store future.
type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The object-safe face of [`TokenStore`].
trait DynStore: Send + Sync + 'static {
    fn read_boxed<'a>(&'a self, key: &'a LoginKey) -> StoreFuture<'a, Option<StoredRecord>>;
    fn write_boxed<'a>(
        &'a self,
        key: &'a LoginKey,
        expected: Option<u64>,
        record: &'a Record,
    ) -> StoreFuture<'a, WriteOutcome>;
    fn acquire_lease_boxed<'a>(
        &'a self,
        key: &'a LoginKey,
        owner: &'a LeaseOwner,
        ttl: Duration,
    ) -> StoreFuture<'a, Lease>;
    fn release_lease_boxed<'a>(
        &'a self,
        key: &'a LoginKey,
        owner: &'a LeaseOwner,
    ) -> StoreFuture<'a, bool>;
    fn wait_for_change_boxed<'a>(
        &'a self,
        key: &'a LoginKey,
        since: Option<u64>,
        max_wait: Duration,
    ) -> StoreFuture<'a, Option<StoredRecord>>;
}

impl<S: TokenStore> DynStore for S {
    fn read_boxed<'a>(&'a self, key: &'a LoginKey) -> StoreFuture<'a, Option<StoredRecord>> {
        Box::pin(self.read(key))
    }

    fn write_boxed<'a>(
        &'a self,
        key: &'a LoginKey,
        expected: Option<u64>,
        record: &'a Record,
    ) -> StoreFuture<'a, WriteOutcome> {
        Box::pin(self.write(key, expected, record))
    }

    fn acquire_lease_boxed<'a>(
        &'a self,
        key: &'a LoginKey,
        owner: &'a LeaseOwner,
        ttl: Duration,
    ) -> StoreFuture<'a, Lease> {
        Box::pin(self.acquire_lease(key, owner, ttl))
    }

    fn release_lease_boxed<'a>(
        &'a self,
        key: &'a LoginKey,
        owner: &'a LeaseOwner,
    ) -> StoreFuture<'a, bool> {
        Box::pin(self.release_lease(key, owner))
    }

    fn wait_for_change_boxed<'a>(
        &'a self,
        key: &'a LoginKey,
        since: Option<u64>,
        max_wait: Duration,
    ) -> StoreFuture<'a, Option<StoredRecord>> {
        Box::pin(self.wait_for_change(key, since, max_wait))
    }
}

/// Any [`TokenStore`] behind one cheaply cloned type, for code that picks its
/// store at run time (from a URL, with [`from_url`](Self::from_url)).
#[derive(Clone)]
pub struct AnyStore {
    inner: Arc<dyn DynStore>,
}

impl AnyStore {
    /// Wraps `store`.
    pub fn new(store: impl TokenStore) -> Self {
        Self {
            inner: Arc::new(store),
        }
    }

    /// The store a URL names, with each store's defaults:
    ///
    /// - `memory:` — a [`MemoryStore`] of its own;
    /// - `redis://[USER:PASSWORD@]HOST[:PORT][/DB]`, `rediss://…` (TLS) — a
    ///   `RedisStore` (feature `redis`); `redis+cluster://…` and
    ///   `redis+sentinel://…` (and their `rediss+` forms) — the same on a
    ///   Redis Cluster or a Sentinel-watched primary;
    /// - `file:///ABSOLUTE/PATH` — a `FileStore` in that directory (feature
    ///   `file`; the path is taken as written, without percent-decoding).
    ///
    /// An unknown scheme, or one whose feature is off, is a
    /// [config](StoreError::is_config) error; no error repeats the URL.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme.to_ascii_lowercase().as_str() {
            "memory" => Ok(Self::new(MemoryStore::new())),
            #[cfg(feature = "redis")]
            "redis" | "rediss" | "redis+cluster" | "rediss+cluster" | "redis+sentinel"
            | "rediss+sentinel" => Ok(Self::new(RedisStore::new(url)?)),
            #[cfg(feature = "file")]
            "file" => {
                let path = url
                    .get("file://".len()..)
                    .filter(|path| path.starts_with('/'))
                    .ok_or_else(|| {
                        StoreError::config("file", "a file store URL is file:///ABSOLUTE/PATH")
                    })?;
                Ok(Self::new(FileStore::new(path)?))
            }
            _ => Err(StoreError::config(
                "any",
                "unknown store URL scheme (or its feature is off)",
            )),
        }
    }
}

impl fmt::Debug for AnyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyStore").finish_non_exhaustive()
    }
}

impl TokenStore for AnyStore {
    async fn read(&self, key: &LoginKey) -> Result<Option<StoredRecord>, StoreError> {
        self.inner.read_boxed(key).await
    }

    async fn write(
        &self,
        key: &LoginKey,
        expected: Option<u64>,
        record: &Record,
    ) -> Result<WriteOutcome, StoreError> {
        self.inner.write_boxed(key, expected, record).await
    }

    async fn acquire_lease(
        &self,
        key: &LoginKey,
        owner: &LeaseOwner,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.inner.acquire_lease_boxed(key, owner, ttl).await
    }

    async fn release_lease(&self, key: &LoginKey, owner: &LeaseOwner) -> Result<bool, StoreError> {
        self.inner.release_lease_boxed(key, owner).await
    }

    async fn wait_for_change(
        &self,
        key: &LoginKey,
        since: Option<u64>,
        max_wait: Duration,
    ) -> Result<Option<StoredRecord>, StoreError> {
        self.inner.wait_for_change_boxed(key, since, max_wait).await
    }
}
