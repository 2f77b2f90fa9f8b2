//! The application's handle on its login, through the public API under paused
//! time, against a scripted endpoint: what a subscriber sees of grants and
//! adoptions (and never a secret), a forced refresh and what it may cost the
//! token endpoint, and logging in ahead of the first request with readiness
//! for probes.

use std::{
    sync::{Arc, atomic::Ordering::SeqCst},
    time::Duration,
};

use daxium_auth::{AuthLayer, LoginState, LoginStatus, MemoryStore, TokenSource};
use futures_util::future::join_all;
use http::StatusCode;
use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{Instant, sleep},
};

use crate::support;

use support::scripted::*;

/// Every state `layer` publishes from now on, as a subscriber that looks
/// after each change sees them.
fn record(layer: &AuthLayer) -> JoinHandle<Vec<LoginState>> {
    let mut states = layer.subscribe();
    tokio::spawn(async move {
        let mut seen = vec![*states.borrow_and_update()];
        while states.changed().await.is_ok() {
            seen.push(*states.borrow_and_update());
            if seen.last().map(LoginState::status) == Some(LoginStatus::Closed) {
                break;
            }
        }
        seen
    })
}

/// Lets the subscribers run: under paused time, nothing else wakes them
/// between two steps of a test.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// The tokens a subscriber saw come in, in order: version and source.
fn tokens(states: &[LoginState]) -> Vec<(u64, TokenSource)> {
    let mut seen: Vec<(u64, TokenSource)> = Vec::new();
    for state in states {
        if let Some(source) = state.source()
            && seen.last().is_none_or(|(v, _)| *v != state.version())
        {
            seen.push((state.version(), source));
        }
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_sees_every_grant_and_adoption_in_order_and_never_a_secret() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let store = MemoryStore::new();
    let first = layer_with(&endpoint, |b| b.store(store.clone()));
    let second = layer_with(&endpoint, |b| b.store(store.clone()));
    let (seen_first, seen_second) = (record(&first), record(&second));

    // The first replica logs in, the second adopts its pair.
    first.login().await.unwrap();
    settle().await;
    second.login().await.unwrap();
    settle().await;
    // The first replaces its token twice; the second's forced refresh adopts
    // the newer pair rather than make a grant.
    sleep(Duration::from_secs(6)).await;
    first.refresh().await.unwrap();
    settle().await;
    sleep(Duration::from_secs(6)).await;
    first.refresh().await.unwrap();
    settle().await;
    second.refresh().await.unwrap();
    settle().await;
    assert_eq!(endpoint.log().len(), 3, "{:?}", endpoint.log());

    first.close().await;
    second.close().await;
    let (first_states, second_states) = (seen_first.await.unwrap(), seen_second.await.unwrap());
    assert_eq!(
        tokens(&first_states),
        [
            (1, TokenSource::PasswordGrant),
            (2, TokenSource::RefreshGrant),
            (3, TokenSource::RefreshGrant),
        ]
    );
    assert_eq!(
        tokens(&second_states),
        [(1, TokenSource::Store), (2, TokenSource::Store)]
    );
    for states in [&first_states, &second_states] {
        let versions: Vec<u64> = states.iter().map(LoginState::version).collect();
        assert!(versions.is_sorted(), "versions go back: {versions:?}");
        assert_eq!(states[0].status(), LoginStatus::LoggedOut);
        assert_eq!(states.last().unwrap().status(), LoginStatus::Closed);
        let expiries: Vec<Instant> = states.iter().filter_map(LoginState::expires_at).collect();
        assert!(expiries.is_sorted(), "each new token expires later");
    }

    // No secret in what a subscriber can print.
    let mut printed = String::new();
    for state in first_states.iter().chain(&second_states) {
        printed.push_str(&format!("{state:?} {state:#?} {state}\n"));
    }
    // (`tests/secrets.rs` checks the same with sentinel credentials.)
    let mut secrets = endpoint.issued_tokens();
    secrets.push("client-secret".to_owned());
    for secret in &secrets {
        assert!(!printed.contains(secret.as_str()), "{secret} in {printed}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_state_says_when_the_login_backs_off_is_rejected_and_recovers() {
    let s = setup_with(|b| b.wait_budget(Duration::from_millis(100)));
    let states = s.layer.subscribe();
    s.endpoint.push(Step::Fail);
    assert!(s.layer.login().await.unwrap_err().is_transient());
    assert_eq!(states.borrow().status(), LoginStatus::BackingOff);
    assert!(!states.borrow().has_token());

    sleep(Duration::from_secs(1)).await;
    s.layer.login().await.unwrap();
    let state = *states.borrow();
    assert_eq!(state.status(), LoginStatus::LoggedIn);
    assert_eq!(state.source(), Some(TokenSource::PasswordGrant));
    assert_eq!(
        state.expires_in(),
        Some(Duration::from_secs(3600) - Duration::from_millis(20)),
        "an hour from when the grant was sent, 20 ms ago"
    );

    s.endpoint
        .refused_passwords
        .lock()
        .unwrap()
        .push("other".to_owned());
    s.layer.set_credentials(daxium_auth::Credentials::new(
        "client",
        "client-secret",
        "someone-else@example.com",
        "other",
    ));
    assert!(s.layer.login().await.unwrap_err().is_grant_rejected());
    assert_eq!(states.borrow().status(), LoginStatus::Rejected);
    s.layer.close().await;
    assert_eq!(states.borrow().status(), LoginStatus::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_forced_refreshes_make_one_grant() {
    let s = setup();
    s.layer.login().await.unwrap();
    sleep(Duration::from_secs(5)).await;
    let calls = (0..1_000).map(|_| {
        let layer = s.layer.clone();
        tokio::spawn(async move { layer.refresh().await })
    });
    for result in join_all(calls).await {
        result.unwrap().unwrap();
    }
    assert_eq!(s.endpoint.password.load(SeqCst), 1);
    assert_eq!(s.endpoint.refresh.load(SeqCst), 1);
    assert_eq!(s.layer.subscribe().borrow().version(), 2);
    assert_eq!(
        send(&s.service(), get()).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(s.api.seen.lock().unwrap().len(), 1);
    let sent = s.api.seen.lock().unwrap()[0].clone().unwrap();
    assert_eq!(sent, "Bearer access-2", "requests carry the new token");
}

#[tokio::test(start_paused = true)]
async fn a_forced_refresh_of_a_token_younger_than_five_seconds_makes_no_grant() {
    let s = setup();
    s.layer.login().await.unwrap();
    sleep(Duration::from_millis(4_900)).await;
    s.layer.refresh().await.unwrap();
    assert_eq!(s.endpoint.grants(), 1);
    sleep(Duration::from_millis(100)).await;
    s.layer.refresh().await.unwrap();
    assert_eq!(s.endpoint.grants(), 2);
}

#[tokio::test(start_paused = true)]
async fn forced_refreshes_in_a_loop_make_one_grant_per_five_seconds() {
    let s = setup();
    let end = Instant::now() + Duration::from_secs(60);
    let mut calls = 0;
    while Instant::now() < end {
        s.layer.refresh().await.unwrap();
        calls += 1;
        sleep(Duration::from_millis(10)).await;
    }
    assert!(calls > 5_000, "{calls} calls");
    let grants = s.endpoint.grants();
    // The login, then one refresh per 5 s (plus the 20 ms each grant takes).
    assert!((11..=13).contains(&grants), "{grants} grants in a minute");
}

#[tokio::test(start_paused = true)]
async fn forced_refreshes_in_a_loop_against_a_failing_endpoint_follow_the_backoff() {
    // A short budget: each call that cannot have a new token fails at once.
    let s = setup_with(|b| {
        b.backoff(Duration::from_millis(500), Duration::from_secs(8))
            .wait_budget(Duration::from_millis(100))
    });
    s.layer.login().await.unwrap();
    sleep(Duration::from_secs(5)).await;
    s.endpoint.push_n(1_000, Step::Fail);
    let end = Instant::now() + Duration::from_secs(60);
    let (mut calls, mut failed) = (0, 0);
    while Instant::now() < end {
        if s.layer.refresh().await.is_err() {
            failed += 1;
        }
        calls += 1;
        sleep(Duration::from_millis(10)).await;
    }
    assert!(failed > 1_000, "{failed} of {calls} calls failed");
    // At most one attempt per backoff step: at least 250 ms, 500 ms, 1 s, 2 s,
    // then 4 s (half the cap) each, over a minute: 19 attempts.
    let attempts = s.endpoint.grants() - 1;
    assert!(
        (10..=19).contains(&attempts),
        "{attempts} attempts in a minute"
    );
    // Requests kept the valid token throughout.
    assert_eq!(
        send(&s.service(), get()).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn login_against_a_failing_endpoint_returns_the_error_within_the_budget() {
    let budget = Duration::from_secs(3);
    let s = setup_with(|b| b.wait_budget(budget));
    s.endpoint.push_n(100, Step::Fail);
    assert!(!s.layer.is_ready());
    let start = Instant::now();
    let err = s.layer.login().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(start.elapsed() <= budget, "{:?}", start.elapsed());
    assert!(
        s.endpoint.grants() > 1,
        "it waited through the retries within its budget"
    );
    assert!(!s.layer.is_ready());

    s.endpoint.script.lock().unwrap().clear();
    sleep(Duration::from_secs(30)).await;
    s.layer.login().await.unwrap();
    assert!(s.layer.is_ready());
    // Logged in, a request waits for nothing.
    assert_eq!(
        send(&s.service(), get()).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(s.layer.stats().waited, 0);
}

#[tokio::test(start_paused = true)]
async fn is_ready_follows_the_token() {
    let s = setup_with(|b| b.refresh_margin(Duration::from_secs(60)));
    *s.endpoint.lifetime.lock().unwrap() = Duration::from_secs(600);
    assert!(!s.layer.is_ready());
    s.layer.login().await.unwrap();
    assert!(s.layer.is_ready());
    // Idle past its expiry: no request refreshed it.
    sleep(Duration::from_secs(601)).await;
    assert!(!s.layer.is_ready());
    assert_eq!(s.endpoint.grants(), 1, "readiness starts no grant");
    s.layer.login().await.unwrap();
    assert!(s.layer.is_ready());
    s.layer.close().await;
    assert!(!s.layer.is_ready());
    assert!(s.layer.login().await.unwrap_err().is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_receiver_outlives_the_layer_and_ends_with_it() {
    let s = setup();
    let mut states: watch::Receiver<LoginState> = s.layer.subscribe();
    s.layer.login().await.unwrap();
    assert!(states.has_changed().unwrap());
    drop(s);
    // The last handle went: the cache closed, and the channel ends.
    assert_eq!(states.borrow_and_update().status(), LoginStatus::Closed);
    let ended = tokio::time::timeout(Duration::from_secs(1), states.changed()).await;
    assert!(
        matches!(ended, Ok(Err(_))),
        "the channel ends with the cache"
    );
}
