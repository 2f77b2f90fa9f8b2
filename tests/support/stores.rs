//! What the token store tests share: a store that puts each call of another
//! through a hook first (to count calls, fail them as an outage would, let a
//! write land and still report a failure, as a timed-out write may, slow them
//! down, never answer, as a store behind a dead connection may, or report a
//! lease held by a holder that never lets go), the scripted login's key,
//! requests bounded in time, replicas that log in through one store, and
//! file stores on a temporary directory.

use std::{
    convert::Infallible,
    sync::{Arc, atomic::Ordering::SeqCst},
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{
    AuthService, StoreError, TokenStore,
    store::{Lease, LeaseOwner, LoginKey, Record, StoredRecord, WriteOutcome},
};
use http::{Response, StatusCode};
use http_body_util::Full;

use tower::Layer;

use super::scripted::{
    Api, Endpoint, Inner, TOKEN_URL, api_service, credentials, get, layer_with, send,
};

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
    /// For a lease: held by another owner, with this much left, without
    /// reaching the inner store. Any other call passes.
    Held(Option<Duration>),
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
        Self::run((self.hook)(kind), call).await
    }

    /// Runs `call` as `fault` says.
    async fn run<T>(
        fault: Fault,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        match fault {
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
            Fault::Held(_) => call.await,
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
        match (self.hook)(Call::Lease) {
            Fault::Held(remaining) => Ok(Lease::Held { remaining }),
            fault => Self::run(fault, self.inner.acquire_lease(key, owner, ttl)).await,
        }
    }

    async fn release_lease(&self, key: &LoginKey, owner: &LeaseOwner) -> Result<bool, StoreError> {
        let call = self.inner.release_lease(key, owner);
        self.through(Call::Release, call).await
    }
}

/// Three replicas on the stores `store` makes each get a token, with one
/// login between them: they share the record.
pub(crate) async fn three_replicas_log_in_once<S: TokenStore + Clone>(store: impl Fn() -> S) {
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

/// A file store on `dir`, with the default timeout.
#[cfg(feature = "file")]
pub(crate) fn file_store(dir: &tempfile::TempDir) -> daxium_auth::store::FileStore {
    daxium_auth::store::FileStore::new(dir.path()).expect("a file store")
}

/// The file of `key`'s record in `dir`.
pub(crate) fn record_file(dir: &tempfile::TempDir, key: &LoginKey) -> std::path::PathBuf {
    dir.path().join(format!("{}.json", key.id()))
}
