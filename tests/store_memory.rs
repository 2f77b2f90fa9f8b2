//! The in-process token store against the store contract, under paused tokio
//! time: leases lapse and waits end on the virtual clock, with no real sleep.

use std::time::Duration;

use daxium_auth::store::{AnyStore, Lease, LeaseOwner, MemoryStore, TokenStore};
use tokio::time::Instant;

use crate::support;

use support::store_contract as contract;

#[tokio::test(start_paused = true)]
async fn compare_and_set_writes_only_over_the_expected_version() {
    contract::compare_and_set(&MemoryStore::new()).await;
}

#[tokio::test(start_paused = true)]
async fn one_owner_holds_the_lease_at_a_time() {
    contract::one_lease_holder_at_a_time(&MemoryStore::new()).await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_lapses_after_its_ttl_and_another_owner_takes_it() {
    contract::a_lease_lapses_after_its_ttl(&MemoryStore::new(), Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_record_of_another_login_is_never_read() {
    contract::another_login_is_never_read(&MemoryStore::new()).await;
}

#[tokio::test(start_paused = true)]
async fn a_waiter_wakes_when_a_clone_writes() {
    let store = MemoryStore::new();
    contract::a_waiter_sees_another_handles_write(&store, &store.clone()).await;
}

#[tokio::test(start_paused = true)]
async fn a_wait_without_a_write_ends_at_its_deadline() {
    contract::a_wait_without_a_write_times_out(&MemoryStore::new()).await;
}

#[tokio::test(start_paused = true)]
async fn the_remaining_ttl_is_exact_on_the_paused_clock() {
    let store = MemoryStore::new();
    let key = contract::key("exact-ttl");
    let (a, b) = (LeaseOwner::random(), LeaseOwner::random());
    assert!(contract::takes(&store, &key, &a, Duration::from_secs(10)).await);
    tokio::time::advance(Duration::from_secs(4)).await;
    assert_eq!(
        store
            .acquire_lease(&key, &b, Duration::from_secs(10))
            .await
            .unwrap(),
        Lease::Held {
            remaining: Some(Duration::from_secs(6))
        }
    );
    // Renewal by the holder starts its time to live over.
    assert!(contract::takes(&store, &key, &a, Duration::from_secs(10)).await);
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(!contract::takes(&store, &key, &b, Duration::from_secs(10)).await);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(contract::takes(&store, &key, &b, Duration::from_secs(10)).await);
}

#[tokio::test(start_paused = true)]
async fn a_zero_ttl_still_makes_a_lease_of_one_millisecond() {
    let store = MemoryStore::new();
    let key = contract::key("zero-ttl");
    let (a, b) = (LeaseOwner::random(), LeaseOwner::random());
    assert!(contract::takes(&store, &key, &a, Duration::ZERO).await);
    assert!(!contract::takes(&store, &key, &b, Duration::ZERO).await);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(contract::takes(&store, &key, &b, Duration::ZERO).await);
}

#[tokio::test(start_paused = true)]
async fn a_wait_ends_exactly_at_its_deadline() {
    let store = MemoryStore::new();
    let key = contract::key("deadline");
    let started = Instant::now();
    let seen = store
        .wait_for_change(&key, None, Duration::from_millis(1500))
        .await
        .unwrap();
    assert!(seen.is_none());
    assert_eq!(started.elapsed(), Duration::from_millis(1500));
}

#[tokio::test(start_paused = true)]
async fn writes_to_other_logins_do_not_end_a_wait() {
    let store = MemoryStore::new();
    let watched = contract::key("watched");
    let other = contract::key("other");
    let started = Instant::now();
    let (seen, ()) = tokio::join!(
        store.wait_for_change(&watched, None, Duration::from_secs(2)),
        async {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let current = store.read(&other).await.unwrap().map(|r| r.version());
                let outcome = store
                    .write(&other, current, &contract::record("other"))
                    .await
                    .unwrap();
                assert!(outcome.is_written());
            }
        }
    );
    assert!(seen.unwrap().is_none());
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(store.read(&other).await.unwrap().unwrap().version(), 5);
}

#[tokio::test(start_paused = true)]
async fn any_store_passes_every_call_through() {
    let store = AnyStore::from_url("memory:").unwrap();
    contract::compare_and_set(&store).await;
    contract::one_lease_holder_at_a_time(&store).await;
    contract::a_waiter_sees_another_handles_write(&store, &store.clone()).await;
    assert!(format!("{store:?}").starts_with("AnyStore"));
}

#[tokio::test(start_paused = true)]
async fn absurd_durations_are_clamped_to_a_day() {
    let store = MemoryStore::new();
    let key = contract::key("absurd");
    let (a, b) = (LeaseOwner::random(), LeaseOwner::random());
    assert!(contract::takes(&store, &key, &a, Duration::MAX).await);
    let day = Duration::from_secs(24 * 3600);
    assert_eq!(
        store.acquire_lease(&key, &b, Duration::MAX).await.unwrap(),
        Lease::Held {
            remaining: Some(day)
        }
    );
    let started = Instant::now();
    let seen = store
        .wait_for_change(&key, None, Duration::MAX)
        .await
        .unwrap();
    assert!(seen.is_none());
    assert_eq!(started.elapsed(), day);
    assert!(contract::takes(&store, &key, &b, Duration::from_secs(1)).await);
}
