//! The wait budget: how long a request waits for a token. A zero budget
//! still logs in in the background, a tiny one fails the first caller and
//! serves the next; a fetcher that never answers costs each caller the budget
//! and no more; a cold start rides out one transient failure within it, and a
//! dead endpoint fails within it. Under paused tokio time, against the scripted
//! token endpoint of the test support.

use std::time::Duration;

use daxium_auth::{TokenError, TokenPair, fetcher};
use futures_util::future::join_all;
use http::StatusCode;
use tower::ServiceExt;

use crate::support;

use support::scripted::{Step, builder, get, in_time, send, setup, setup_with};

#[tokio::test(start_paused = true)]
async fn a_zero_wait_budget_still_logs_in_in_the_background() {
    let s = setup_with(|b| b.wait_budget(Duration::ZERO));
    let svc = s.service();
    // The first caller may fail at once: it waits for nothing.
    let _ = send(&svc, get()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let res = send(&svc, get()).await;
    assert!(s.endpoint.grants() >= 1, "a grant was started");
    assert_eq!(res.map(|r| r.status()).ok(), Some(StatusCode::OK));
}

#[tokio::test(start_paused = true)]
async fn a_tiny_wait_budget_fails_the_first_caller_and_serves_the_next() {
    let s = setup_with(|b| b.wait_budget(Duration::from_nanos(1)));
    let svc = s.service();
    let err = send(&svc, get()).await.unwrap_err();
    assert!(err.token_error().unwrap().is_timeout(), "{err:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(send(&svc, get()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(s.endpoint.grants(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fetcher_that_never_answers_is_bounded_by_the_wait_budget() {
    let layer = builder()
        .wait_budget(Duration::from_secs(2))
        .fetcher(fetcher::from_fn(|_grant| async {
            std::future::pending::<Result<TokenPair, TokenError>>().await
        }))
        .build()
        .unwrap();
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        let err = in_time("access_token", layer.cache().access_token())
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}

#[tokio::test(start_paused = true)]
async fn a_cold_start_rides_out_one_transient_failure() {
    let s = setup();
    s.endpoint.push(Step::Fail);
    let svc = s.service();
    let calls = (0..100).map(|_| tokio::spawn(svc.clone().oneshot(get())));
    for result in join_all(calls).await {
        assert_eq!(result.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        s.endpoint.grants(),
        2,
        "one failure, one attempt after the backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_endpoint_still_fails_within_the_wait_budget() {
    let s = setup_with(|b| b.wait_budget(Duration::from_secs(3)));
    s.endpoint.push_n(100, Step::Fail);
    let svc = s.service();
    let started = tokio::time::Instant::now();
    let err = send(&svc, get()).await.unwrap_err();
    assert!(err.token_error().unwrap().is_transient(), "{err:?}");
    assert!(started.elapsed() <= Duration::from_secs(3));
    // Attempts at ~0, 0.5, 1.5: one per backoff step, never one per request.
    assert!(
        (2..=4).contains(&s.endpoint.grants()),
        "{}",
        s.endpoint.grants()
    );
}
