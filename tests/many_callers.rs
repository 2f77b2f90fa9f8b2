//! Many callers on one cache: ten thousand on an expired token through a
//! failed grant, or on four threads, make the fewest grants; registering a
//! waiter costs the same for each one; and under load, with a slow and failing
//! endpoint and short tokens, no request carries a token past its expiry.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use daxium_auth::{AccessToken, AuthLayer, TokenError, TokenPair, fetcher};
use futures_util::future::join_all;
use http::{Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, ServiceExt};

use crate::support;

use support::scripted::{
    self, Step, api_fn, bearer, builder, get, in_time, paused_runtime, seen_tokens, send, setup,
};

#[tokio::test(start_paused = true)]
async fn ten_thousand_callers_on_an_expired_token_through_one_failure_make_two_grants() {
    let s = setup();
    *s.endpoint.lifetime.lock().unwrap() = Duration::from_secs(60);
    let svc = s.service();
    send(&svc, get()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    s.endpoint.push(Step::Fail);
    let calls = (0..10_000).map(|_| tokio::spawn(svc.clone().oneshot(get())));
    let results = in_time("stampede", join_all(calls)).await;
    for res in results {
        assert_eq!(res.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        s.endpoint.grants(),
        3,
        "the first grant, one failure, one retry"
    );
    let seen = seen_tokens(&s);
    assert!(seen[1..].iter().all(|t| t == "Bearer access-2"));
}

#[test]
fn ten_thousand_callers_on_four_threads_make_one_grant() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let go = Arc::new(tokio::sync::Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let (g, c) = (Arc::clone(&go), Arc::clone(&calls));
    let layer = AuthLayer::builder()
        .credentials(scripted::credentials())
        .any_origin()
        .fetcher(fetcher::from_fn(move |_grant| {
            c.fetch_add(1, SeqCst);
            let go = Arc::clone(&g);
            async move {
                go.notified().await;
                Ok(TokenPair::new(
                    AccessToken::new("access-1")?,
                    None,
                    Duration::from_secs(3600),
                ))
            }
        }))
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..10_000)
            .map(|_| {
                let cache = layer.cache().clone();
                tokio::spawn(async move { cache.access_token().await })
            })
            .collect();
        in_time("registration", async {
            while layer.stats().waited < 10_000 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        go.notify_one();
        for task in in_time("fan-out", join_all(tasks)).await {
            assert_eq!(task.unwrap().unwrap().expose_secret(), "access-1");
        }
    });
    assert_eq!(calls.load(SeqCst), 1);
}

/// Real time to register `n` callers waiting for one grant.
fn registration_time(n: u64) -> Duration {
    let s = setup();
    let svc = s.service();
    paused_runtime().block_on(async {
        let started = std::time::Instant::now();
        let calls: Vec<_> = (0..n)
            .map(|_| tokio::spawn(svc.clone().oneshot(get())))
            .collect();
        while s.layer.stats().waited < n {
            tokio::task::yield_now().await;
        }
        let took = started.elapsed();
        for res in join_all(calls).await {
            res.unwrap().unwrap();
        }
        took
    })
}

#[test]
fn registering_waiters_costs_the_same_for_each_one() {
    // Timing, as a ratio within one run, each side the best of a few runs (a
    // busy machine only makes a run slower): eight times the callers should
    // take about eight times as long; quadratic work takes sixty-four.
    let best = |n, runs| (0..runs).map(|_| registration_time(n)).min().unwrap();
    let small = best(1_000, 5);
    let large = best(8_000, 2);
    let ratio = large.as_secs_f64() / small.as_secs_f64();
    assert!(
        ratio < 20.0,
        "8,000 callers took {ratio:.1}x as long as 1,000"
    );
}

/// Under load, with a slow and failing endpoint and short tokens, no request
/// carries a token past the expiry the endpoint gave it.
#[tokio::test(start_paused = true)]
async fn no_request_carries_an_expired_token_with_a_slow_flaky_endpoint() {
    let issued_at = Arc::new(Mutex::new(std::collections::HashMap::new()));
    let rng = Arc::new(AtomicUsize::new(7));
    let (issued, roll) = (Arc::clone(&issued_at), Arc::clone(&rng));
    let lifetime = Duration::from_secs(3);
    let layer = builder()
        .refresh_margin(Duration::from_millis(500))
        .backoff(Duration::from_millis(50), Duration::from_millis(400))
        .fetcher(fetcher::from_fn(move |_grant| {
            let (issued, roll) = (Arc::clone(&issued), Arc::clone(&roll));
            async move {
                let sent = tokio::time::Instant::now();
                let r = roll.fetch_add(5, SeqCst) % 17;
                tokio::time::sleep(Duration::from_millis(r as u64 * 70)).await;
                if r % 4 == 0 {
                    return Err(TokenError::transport(std::io::Error::other("502")));
                }
                let token = format!("access-{}", roll.load(SeqCst));
                issued.lock().unwrap().insert(token.clone(), sent);
                Ok(TokenPair::new(AccessToken::new(&token)?, None, lifetime))
            }
        }))
        .build()
        .unwrap();
    let late = Arc::new(AtomicUsize::new(0));
    let (issued, late_api) = (Arc::clone(&issued_at), Arc::clone(&late));
    let api = api_fn(move |req| {
        let token = bearer(&req).unwrap();
        let sent = issued.lock().unwrap()[&token];
        if tokio::time::Instant::now() >= sent + lifetime {
            late_api.fetch_add(1, SeqCst);
        }
        async { Ok(Response::new(Full::default())) }
    });
    let svc = layer.layer(api);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let workers = (0..16).map(|i| {
        let svc = svc.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 7)).await;
            while tokio::time::Instant::now() < deadline {
                let _ = in_time("request", svc.clone().oneshot(get())).await;
                tokio::time::sleep(Duration::from_millis(13)).await;
            }
        })
    });
    for worker in join_all(workers).await {
        worker.unwrap();
    }
    assert_eq!(late.load(SeqCst), 0, "requests carried an expired token");
    assert!(layer.stats().grants() > 20);
}
