//! Requests and token calls dropped at every point: before their first poll,
//! while they wait for a grant, while their replay waits for the refresh, and
//! during the replay. The grant goes on for the others, the cache stays sound,
//! and nobody waits for a caller that is gone. Under paused tokio time.

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use futures_util::future::join_all;
use http::StatusCode;
use tower::{Service, ServiceExt};

use crate::support;

use support::scripted::{Step, get, in_time, seen_tokens, send, setup, setup_with};

#[tokio::test(start_paused = true)]
async fn a_request_dropped_before_its_first_poll_stops_waiting() {
    let s = setup_with(|b| b.wait_budget(Duration::from_secs(60)));
    s.endpoint.push_n(100, Step::Fail);
    let mut svc = s.service();
    // `select!` and `join` patterns create futures that are never polled.
    svc.ready().await.unwrap();
    drop(svc.call(get()));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        s.endpoint.grants(),
        1,
        "nobody waits after the first attempt failed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_while_it_waits_stops_waiting() {
    let s = setup_with(|b| b.wait_budget(Duration::from_secs(60)));
    s.endpoint.push_n(100, Step::Fail);
    let svc = s.service();
    let call = send(&svc, get());
    assert!(
        tokio::time::timeout(Duration::from_millis(1), call)
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(s.endpoint.grants(), 1);
}

#[tokio::test(start_paused = true)]
async fn callers_dropped_while_they_wait_leave_the_grant_and_the_others_alone() {
    let s = setup();
    *s.endpoint.latency.lock().unwrap() = Duration::from_secs(1);
    let svc = s.service();
    let calls: Vec<_> = (0..100)
        .map(|_| tokio::spawn(svc.clone().oneshot(get())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut kept = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        if i % 2 == 0 {
            call.abort();
        } else {
            kept.push(call);
        }
    }
    for res in in_time("the callers left", join_all(kept)).await {
        assert_eq!(res.unwrap().unwrap().status(), StatusCode::OK);
    }
    // Every caller gone before the answer: the grant still lands and is used.
    s.api.revoke_all();
    let calls: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(get())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    calls.iter().for_each(|call| call.abort());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grants = s.endpoint.grants();
    assert_eq!(send(&svc, get()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        s.endpoint.grants(),
        grants,
        "the next caller finds the token"
    );
    assert_eq!(grants, 2);
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_while_its_replay_waits_for_the_refresh_leaves_it_running() {
    let s = setup();
    *s.endpoint.latency.lock().unwrap() = Duration::from_secs(1);
    let svc = s.service();
    send(&svc, get()).await.unwrap();
    s.api.revoke_all();
    let first = tokio::spawn(svc.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.abort();
    let res = in_time("next caller", send(&svc, get())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        (
            s.endpoint.password.load(SeqCst),
            s.endpoint.refresh.load(SeqCst)
        ),
        (1, 1)
    );
    assert_eq!(seen_tokens(&s).last().unwrap(), "Bearer access-2");
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_during_its_replay_leaves_the_cache_sound() {
    let s = setup();
    let svc = s.service();
    send(&svc, get()).await.unwrap();
    s.api.revoke_all();
    *s.api.latency.lock().unwrap() = Duration::from_secs(1);
    // First attempt (1 s), refresh (20 ms), replay (1 s): dropped in the replay.
    let first = tokio::spawn(svc.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.abort();
    assert_eq!(s.api.attempts.load(SeqCst), 2, "the replay was under way");
    let res = in_time("next caller", send(&svc, get())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(s.endpoint.grants(), 2);
}

#[tokio::test(start_paused = true)]
async fn token_cache_calls_dropped_while_they_wait_do_not_cancel_anything() {
    let s = setup();
    *s.endpoint.latency.lock().unwrap() = Duration::from_secs(1);
    let cache = s.layer.cache().clone();
    let gone = tokio::time::timeout(Duration::from_millis(500), cache.access_token()).await;
    assert!(gone.is_err());
    let token = in_time("access_token", cache.access_token()).await.unwrap();
    assert_eq!(
        (token.expose_secret(), s.endpoint.grants()),
        ("access-1", 1)
    );
    let gone =
        tokio::time::timeout(Duration::from_millis(500), cache.replacement_for(&token)).await;
    assert!(gone.is_err(), "the replacement waits for the refresh");
    let next = in_time("access_token", cache.access_token()).await.unwrap();
    assert_eq!((next.expose_secret(), s.endpoint.grants()), ("access-2", 2));
    // A late replacement for the old token needs no grant.
    let replacement = cache.replacement_for(&token).await.unwrap();
    assert_eq!(replacement.unwrap().expose_secret(), "access-2");
    assert_eq!(s.endpoint.grants(), 2);
}
