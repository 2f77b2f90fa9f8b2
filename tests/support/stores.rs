//! What the token store tests share: a store that puts each call of another
//! through a hook first (to count calls, fail them as an outage would, let a
//! write land and still report a failure, as a timed-out write may, slow them
//! down, or never answer, as a store behind a dead connection may), the
//! scripted login's key, and requests bounded in time.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use daxium_auth::{
    AuthService, StoreError, TokenStore,
    store::{Lease, LeaseOwner, LoginKey, Record, StoredRecord, WriteOutcome},
};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::scripted::{Inner, TOKEN_URL, credentials, get, send};

pub(crate) type Svc = AuthService<Inner<Full<Bytes>>>;
pub(crate) type Answered = Result<Response<Full<Bytes>>, daxium_auth::Error<Infallible>>;

/// The store key of the scripted credentials at the scripted endpoint.
pub(crate) fn login() -> LoginKey {
    let endpoint = TOKEN_URL.parse().expect("a valid URL");
    LoginKey::from_credentials(&credentials()).with_endpoint(&endpoint)
}

pub(crate) fn ok(res: &Answered) -> bool {
    matches!(res, Ok(r) if r.status() == StatusCode::OK)
}

/// A request bounded by `within`; `None` when it did not answer in time.
pub(crate) async fn bounded(svc: &Svc, within: Duration) -> Option<Answered> {
    tokio::time::timeout(within, send(svc, get())).await.ok()
}

/// A store call, as a [`Faulty`] store's hook sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    Read,
    Write,
    Lease,
    Release,
}

/// What a hook makes of a call.
pub(crate) enum Fault {
    /// The call goes to the inner store.
    Pass,
    /// The call fails without reaching the inner store.
    Fail(StoreError),
    /// The call reaches the inner store, and its caller is told it failed.
    LandThenFail(StoreError),
    /// The call reaches the inner store after this long.
    Delay(Duration),
    /// The call never answers, and does not reach the inner store.
    Hang,
}

type Hook = Arc<dyn Fn(Call) -> Fault + Send + Sync>;

/// `inner`, each of whose calls goes through `hook` first. Waits for a change
/// poll through [`read`](TokenStore::read), so that the hook sees them too.
#[derive(Clone)]
pub(crate) struct Faulty<S> {
    inner: S,
    hook: Hook,
}

impl<S> Faulty<S> {
    pub(crate) fn new(inner: S, hook: impl Fn(Call) -> Fault + Send + Sync + 'static) -> Self {
        Self {
            inner,
            hook: Arc::new(hook),
        }
    }

    /// Runs `call`, a call of the inner store, as the hook says.
    async fn through<T>(
        &self,
        kind: Call,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        match (self.hook)(kind) {
            Fault::Pass => call.await,
            Fault::Fail(err) => Err(err),
            Fault::LandThenFail(err) => {
                call.await?;
                Err(err)
            }
            Fault::Delay(delay) => {
                tokio::time::sleep(delay).await;
                call.await
            }
            Fault::Hang => std::future::pending().await,
        }
    }
}

impl<S: TokenStore + Clone> TokenStore for Faulty<S> {
    async fn read(&self, key: &LoginKey) -> Result<Option<StoredRecord>, StoreError> {
        self.through(Call::Read, self.inner.read(key)).await
    }

    async fn write(
        &self,
        key: &LoginKey,
        expected: Option<u64>,
        record: &Record,
    ) -> Result<WriteOutcome, StoreError> {
        let call = self.inner.write(key, expected, record);
        self.through(Call::Write, call).await
    }

    async fn acquire_lease(
        &self,
        key: &LoginKey,
        owner: &LeaseOwner,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let call = self.inner.acquire_lease(key, owner, ttl);
        self.through(Call::Lease, call).await
    }

    async fn release_lease(&self, key: &LoginKey, owner: &LeaseOwner) -> Result<bool, StoreError> {
        let call = self.inner.release_lease(key, owner);
        self.through(Call::Release, call).await
    }
}
