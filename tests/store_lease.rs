//! The store's lease across a replica's flights: the release of a flight
//! that ended goes out in a task of its own, and may land after the next
//! flight of the same replica took the lease again. It must not free that
//! one: another replica would take the lease while the grant runs, and make
//! a grant of its own instead of adopting the pair. Under paused time, with
//! a store that is slow to release.

use std::{sync::Arc, time::Duration};

use daxium_auth::{MemoryStore, TokenSource};
use tower::Layer;

mod support;

use support::{
    scripted::{Api, Endpoint, api_service, layer_with},
    stores::{Call, Fault, Faulty, bounded, ok},
};

/// How long the store takes to release a lease.
const SLOW_RELEASE: Duration = Duration::from_millis(500);

/// How long a grant takes: it outlasts the slow release.
const SLOW_GRANT: Duration = Duration::from_secs(2);

#[tokio::test(start_paused = true)]
async fn a_late_release_of_a_finished_flight_leaves_the_next_flights_lease_held() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let memory = MemoryStore::new();
    let store = Faulty::new(memory.clone(), |call| match call {
        Call::Release => Fault::Delay(SLOW_RELEASE),
        _ => Fault::Pass,
    });
    let lease = Duration::from_secs(5);
    let first = layer_with(&endpoint, |b| b.store(store.clone()).lease_ttl(lease));
    let second = layer_with(&endpoint, |b| b.store(store.clone()).lease_ttl(lease));

    // The first replica logs in; its flight writes the pair and lets the
    // lease go, slowly.
    first.login().await.unwrap();
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    // The API revokes the token at once: the next flight starts, takes the
    // lease again, and refreshes, slowly, while the first's release lands.
    *endpoint.latency.lock().unwrap() = SLOW_GRANT;
    api.revoke_all();
    let svc = first.layer(api_service(&api));
    let request = tokio::spawn(async move { bounded(&svc, Duration::from_secs(10)).await });
    tokio::time::sleep(SLOW_RELEASE + Duration::from_millis(100)).await;
    assert_eq!(endpoint.log().len(), 2, "{:?}", endpoint.log());

    // The second replica finds the lease held and adopts the new pair.
    second.login().await.unwrap();
    assert!(ok(&request.await.unwrap().expect("an answer")));
    assert_eq!(
        endpoint.log(),
        ["password:user@example.com", "refresh:refresh-1"],
        "the second replica made a grant while the first held the lease"
    );
    let state = *second.subscribe().borrow();
    assert_eq!(state.source(), Some(TokenSource::Store), "{state:?}");
    endpoint.assert_no_refresh_token_sent_twice();
}
