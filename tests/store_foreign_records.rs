//! A token store that files logins under less than their whole key (a
//! custom store keyed by client id and username, one that ignores the key)
//! can hand a layer the record of another endpoint's login. Such a record
//! names its login: the layer takes none of its tokens, and logs in at its
//! own endpoint. Under paused time, with two scripted endpoints.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use daxium_auth::{
    StoreError, TokenSource, TokenStore,
    store::{Conflict, Lease, LeaseOwner, LoginKey, Record, StoredRecord, WriteOutcome},
};
use tower::Layer;

mod support;

use support::{
    scripted::{Api, Endpoint, api_service, layer_with},
    stores::{bounded, ok},
};

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
