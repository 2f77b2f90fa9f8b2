//! The process-wide registry of token caches: each cache gets a
//! [`CacheNumber`] when its layer is built, and a request's future finds the
//! cache by that number when an answer refuses its token. Keeping a number
//! rather than a handle spares every request a reference count on memory
//! that every service of the cache writes to.

use std::{
    collections::BTreeMap,
    num::NonZeroU64,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use super::Shared;

/// The number of a token cache in the registry where a future finds it at
/// 401 time. A request's future keeps this number rather than a handle, which
/// would cost every request a reference count on memory that every service of
/// the cache writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CacheNumber(NonZeroU64);

/// The caches by number; the entries of dropped caches go at the next
/// registration.
static CACHES: Mutex<BTreeMap<CacheNumber, Weak<Shared>>> = Mutex::new(BTreeMap::new());
static NEXT_CACHE: AtomicU64 = AtomicU64::new(1);

impl CacheNumber {
    /// A number no cache has.
    pub(crate) const NONE: Self = Self(NonZeroU64::MAX);

    /// Registers `shared` under a new number.
    pub(crate) fn register(shared: &Arc<Shared>) -> Self {
        let n = NEXT_CACHE.fetch_add(1, Ordering::Relaxed);
        let number = Self(NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN));
        let mut caches = CACHES.lock().unwrap_or_else(|e| e.into_inner());
        caches.retain(|_, cache| cache.strong_count() > 0);
        caches.insert(number, Arc::downgrade(shared));
        number
    }

    /// The cache, if it is still there.
    #[cold]
    pub(crate) fn find(self) -> Option<Arc<Shared>> {
        let caches = CACHES.lock().unwrap_or_else(|e| e.into_inner());
        caches.get(&self)?.upgrade()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccessToken, AuthLayer, Credentials, TokenPair, fetcher};

    fn layer() -> AuthLayer {
        AuthLayer::builder()
            .credentials(Credentials::new("id", "secret", "user", "password"))
            .api_origin("https://api.example.com")
            .fetcher(fetcher::from_fn(|_grant| async {
                let token = AccessToken::new("tok")?;
                Ok(TokenPair::new(
                    token,
                    None,
                    std::time::Duration::from_secs(60),
                ))
            }))
            .build()
            .expect("valid layer")
    }

    #[test]
    fn a_future_finds_its_cache_by_number_while_the_cache_lives() {
        let (a, b) = (layer(), layer());
        let (na, nb) = (a.config().cache, b.config().cache);
        assert_ne!(na, nb);
        assert!(Arc::ptr_eq(&na.find().expect("a"), a.cache().shared()));
        assert!(Arc::ptr_eq(&nb.find().expect("b"), b.cache().shared()));
        drop(a);
        assert!(na.find().is_none());
        assert!(nb.find().is_some());
        assert!(CacheNumber::NONE.find().is_none());
    }
}
