//! The layer's logic through its public API: a scripted token fetcher, an API
//! written as a tower service, `tower_test::mock` where a test must hold a
//! request, and paused tokio time throughout.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{
    Credentials, GrantRequest, GrantType, NoReplay, ReplayBody, TokenError, fetcher,
};
use futures_util::future::join_all;
use http::{Request, Response, StatusCode, header::AUTHORIZATION};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{Layer, Service, ServiceExt};

use crate::support;

use support::scripted::*;

#[tokio::test(start_paused = true)]
async fn ten_thousand_calls_on_an_empty_cache_make_one_grant() {
    let s = setup();
    let svc = s.service();
    let calls = (0..10_000).map(|_| {
        let svc = svc.clone();
        tokio::spawn(async move { svc.oneshot(get()).await })
    });
    let results = join_all(calls).await;
    assert_eq!(results.len(), 10_000);
    for result in results {
        assert_eq!(result.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(s.endpoint.grants(), 1);
    assert_eq!(s.endpoint.password.load(SeqCst), 1);
    assert_eq!(s.layer.stats().password_ok, 1);
    assert_eq!(s.layer.stats().waited, 10_000);
}

#[tokio::test(start_paused = true)]
async fn a_stale_token_is_used_while_one_background_refresh_runs() {
    let s = setup();
    *s.endpoint.lifetime.lock().unwrap() = Duration::from_secs(100);
    let svc = s.service();
    assert_eq!(send(&svc, get()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(s.endpoint.grants(), 1);

    // Past the refresh point (at most half the lifetime), before expiry.
    tokio::time::sleep(Duration::from_secs(55)).await;
    *s.endpoint.latency.lock().unwrap() = Duration::from_secs(10);
    for _ in 0..50 {
        // Under paused time, a caller that waited for the 10 s grant would let the
        // 1 ms timeout fire first.
        let res = tokio::time::timeout(Duration::from_millis(1), send(&svc, get())).await;
        assert_eq!(
            res.expect("a stale token never makes the caller wait")
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    // Let the background task start its (10 s) grant.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(s.endpoint.refresh.load(SeqCst), 1, "one background refresh");
    assert!(
        s.api
            .seen
            .lock()
            .unwrap()
            .iter()
            .all(|h| h.as_ref().unwrap() == "Bearer access-1")
    );

    tokio::time::sleep(Duration::from_secs(11)).await;
    send(&svc, get()).await.unwrap();
    assert_eq!(
        s.api.seen.lock().unwrap().last().unwrap().as_ref().unwrap(),
        "Bearer access-2"
    );
    assert_eq!(s.endpoint.grants(), 2);
    assert_eq!(
        s.endpoint.refresh_seen.lock().unwrap().as_slice(),
        ["refresh-1"]
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_never_sent() {
    let s = setup();
    *s.endpoint.lifetime.lock().unwrap() = Duration::from_secs(30);
    let svc = s.service();
    send(&svc, get()).await.unwrap();
    // Well past expiry, with no call in between to refresh it.
    tokio::time::sleep(Duration::from_secs(31)).await;
    s.api.revoke_all();
    let res = send(&svc, get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        s.api.attempts.load(SeqCst),
        2,
        "no attempt with the expired token"
    );
    assert_eq!(s.layer.stats().replays, 0);
    assert_eq!(s.endpoint.refresh.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn five_hundred_401s_for_one_token_make_one_refresh() {
    let s = setup();
    let svc = s.service();
    send(&svc, get()).await.unwrap();
    s.api.revoke_all();
    // All 500 are in flight with the refused token before the first 401 lands.
    *s.api.latency.lock().unwrap() = Duration::from_millis(10);
    let calls = (0..500).map(|_| {
        let svc = svc.clone();
        tokio::spawn(async move { svc.oneshot(get()).await })
    });
    for result in join_all(calls).await {
        assert_eq!(result.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(s.endpoint.password.load(SeqCst), 1);
    assert_eq!(
        s.endpoint.refresh.load(SeqCst),
        1,
        "one refresh for 500 refusals"
    );
    // The token had worked: each is sent again once as a resend, not as its
    // replay.
    let stats = s.layer.stats();
    assert_eq!((stats.replays, stats.resends), (0, 500));
    assert_eq!(s.api.attempts.load(SeqCst), 1 + 500 * 2);
}

#[tokio::test(start_paused = true)]
async fn a_401_for_a_replaced_token_replays_without_a_refresh() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let layer = layer_with(&endpoint, |b| b);
    let (mock, mut handle) =
        tower_test::mock::pair::<Request<ReplayBody<Full<Bytes>>>, Response<Full<Bytes>>>();
    let mut svc = layer.layer(mock);

    let token = layer.cache().access_token().await.unwrap();
    assert_eq!(token.expose_secret(), "access-1");
    handle.allow(1);
    svc.ready().await.unwrap();
    let first = tokio::spawn(svc.call(get()));
    let (req, respond) = handle.next_request().await.unwrap();
    assert_eq!(req.headers()[AUTHORIZATION], "Bearer access-1");

    // Meanwhile the token is replaced.
    layer.cache().token_rejected(&token);
    assert_eq!(
        layer.cache().access_token().await.unwrap().expose_secret(),
        "access-2"
    );
    assert_eq!(endpoint.grants(), 2);

    handle.allow(1);
    respond.send_response(
        Response::builder()
            .status(401)
            .body(Full::default())
            .unwrap(),
    );
    let (replayed, respond) = handle.next_request().await.unwrap();
    assert_eq!(replayed.headers()[AUTHORIZATION], "Bearer access-2");
    respond.send_response(Response::new(Full::default()));
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(
        endpoint.grants(),
        2,
        "no refresh for a token already replaced"
    );
}

#[tokio::test(start_paused = true)]
async fn a_401_after_the_replay_is_returned_unchanged() {
    let s = setup();
    let svc = s.service();
    send(&svc, get()).await.unwrap();
    // The API now refuses every token, including new ones.
    let api = Arc::clone(&s.api);
    let inner = tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |_req: Request<ReplayBody<Full<Bytes>>>| {
            api.attempts.fetch_add(1, SeqCst);
            std::future::ready(Ok::<_, Infallible>(
                Response::builder()
                    .status(401)
                    .header("x-attempt", api.attempts.load(SeqCst).to_string())
                    .body(Full::new(Bytes::from_static(b"denied")))
                    .unwrap(),
            ))
        },
    ));
    let refusing = s.layer.layer(inner);
    let before = s.api.attempts.load(SeqCst);
    let res = refusing.oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()["x-attempt"],
        (before + 3).to_string().as_str()
    );
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "denied"
    );
    // The token had worked: its refusal is a revocation, resent with a new
    // one; that one is refused before it ever worked, which is the replay;
    // the refusal of the replay goes back. Three attempts, no loop.
    assert_eq!(
        s.api.attempts.load(SeqCst) - before,
        3,
        "three attempts, no loop"
    );
    let stats = s.layer.stats();
    assert_eq!((stats.resends, stats.replays), (1, 1));
    assert_eq!(s.endpoint.refresh.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_refused_refresh_token_falls_back_to_the_password_grant() {
    let s = setup();
    *s.endpoint.lifetime.lock().unwrap() = Duration::from_secs(60);
    let svc = s.service();
    send(&svc, get()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    s.endpoint.push(Step::Reject);
    let res = send(&svc, get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(s.endpoint.refresh.load(SeqCst), 1);
    assert_eq!(s.endpoint.password.load(SeqCst), 2);
    let stats = s.layer.stats();
    assert_eq!((stats.refresh_rejected, stats.password_ok), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn a_wrong_password_makes_one_grant_for_a_thousand_callers() {
    let s = setup_with(|b| b.rejected_cooldown(Duration::from_secs(120)));
    s.endpoint.push_n(3, Step::Reject);
    let svc = s.service();
    let calls = (0..1_000).map(|_| {
        let svc = svc.clone();
        tokio::spawn(async move { svc.oneshot(get()).await })
    });
    for result in join_all(calls).await {
        let err = result.unwrap().unwrap_err();
        let token = err
            .token_error()
            .expect("a token error, not the inner service's");
        assert!(token.is_grant_rejected());
        assert_eq!(token.error_code(), Some("DAERR-0401"));
        assert_eq!(token.grant_type(), Some(GrantType::Password));
    }
    assert_eq!(s.endpoint.grants(), 1);

    // Terminal: later calls fail fast without a new attempt.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_rejected(&svc).await;
    assert_eq!(s.endpoint.grants(), 1);
    assert_eq!(s.api.attempts.load(SeqCst), 0, "nothing reached the API");

    // New credentials lift it at once.
    s.layer.set_credentials(Credentials::new(
        "client",
        "client-secret",
        "user@example.com",
        "new",
    ));
    assert_rejected(&svc).await;
    assert_eq!(s.endpoint.grants(), 2);

    // So does the end of the cool-down.
    tokio::time::sleep(Duration::from_secs(121)).await;
    assert_rejected(&svc).await;
    assert_eq!(s.endpoint.grants(), 3);
    tokio::time::sleep(Duration::from_secs(121)).await;
    assert_eq!(send(&svc, get()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(s.endpoint.grants(), 4);
}

#[tokio::test(start_paused = true)]
async fn an_outage_is_invisible_while_the_token_is_valid() {
    let s = setup_with(|b| b.backoff(Duration::from_secs(1), Duration::from_secs(4)));
    *s.endpoint.lifetime.lock().unwrap() = Duration::from_secs(100);
    let svc = s.service();
    send(&svc, get()).await.unwrap();
    s.endpoint.push_n(5, Step::Fail);
    tokio::time::sleep(Duration::from_secs(51)).await;
    // Requests keep flowing, one every second, while the refresh backs off.
    for _ in 0..30 {
        assert_eq!(send(&svc, get()).await.unwrap().status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let stats = s.layer.stats();
    assert_eq!(
        stats.refresh_failed, 1,
        "a failed refresh spends the token: then password grants"
    );
    assert_eq!(stats.password_failed, 4);
    assert_eq!(stats.password_ok, 2, "recovered");
    assert!(s.api.seen.lock().unwrap().last().unwrap().as_ref().unwrap() == "Bearer access-2");
    // Bounded: 5 failures over ~15 s of backoff, not one per request.
    assert_eq!(s.endpoint.grants(), 1 + 5 + 1);
}

#[tokio::test(start_paused = true)]
async fn an_outage_with_no_valid_token_fails_fast_with_one_shared_error() {
    // A budget shorter than the backoff: the next attempt lies beyond it.
    let s = setup_with(|b| {
        b.backoff(Duration::from_secs(2), Duration::from_secs(8))
            .wait_budget(Duration::from_millis(500))
    });
    s.endpoint.push_n(3, Step::Fail);
    let svc = s.service();
    let calls = (0..100).map(|_| {
        let svc = svc.clone();
        tokio::spawn(async move { svc.oneshot(get()).await })
    });
    for result in join_all(calls).await {
        let err = result.unwrap().unwrap_err();
        assert!(err.token_error().unwrap().is_transient());
    }
    assert_eq!(s.endpoint.grants(), 1);
    // During the backoff: fail fast, no new attempt.
    for _ in 0..100 {
        assert!(send(&svc, get()).await.unwrap_err().is_token());
    }
    assert_eq!(s.endpoint.grants(), 1);
    // After it: one attempt per backoff, whatever the number of calls.
    let mut failures = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match send(&svc, get()).await {
            Ok(res) => {
                assert_eq!(res.status(), StatusCode::OK);
                break;
            }
            Err(_) => failures += 1,
        }
    }
    assert!(failures > 0);
    assert_eq!(s.endpoint.grants(), 4, "three failures, then the recovery");
    assert_eq!(s.layer.stats().password_ok, 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_caller_does_not_cancel_the_refresh() {
    let s = setup();
    *s.endpoint.latency.lock().unwrap() = Duration::from_secs(1);
    let svc = s.service();
    let call = send(&svc, get());
    // Started, then dropped before the grant lands.
    assert!(
        tokio::time::timeout(Duration::from_millis(10), call)
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.layer.stats().password_ok, 1);
    let res = tokio::time::timeout(Duration::from_millis(1), send(&svc, get())).await;
    assert_eq!(res.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(s.endpoint.grants(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_post_under_the_cap_is_replayed_byte_for_byte() {
    let s = setup();
    let svc = s.service();
    send(&svc, get()).await.unwrap();
    s.api.revoke_all();
    let body: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let req = Request::post(API)
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let res = send(&svc, req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), body);
    // Sent again as a resend: the token had worked.
    let stats = s.layer.stats();
    assert_eq!((stats.replays, stats.resends), (0, 1));
}

type Chunks =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn chunked(chunks: usize, size: usize) -> Chunks {
    let frames: Vec<_> = (0..chunks)
        .map(|i| Ok(Frame::data(Bytes::from(vec![i as u8; size]))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames))
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_over_the_cap_is_not_replayed() {
    let s = setup_with(|b| b.replay_limit(4 * 1024));
    let svc = s.layer.layer(api_service::<Chunks>(&s.api));
    let warm = Request::post(API).body(chunked(1, 10)).unwrap();
    assert_eq!(
        svc.clone().oneshot(warm).await.unwrap().status(),
        StatusCode::OK
    );
    s.api.revoke_all();
    let before = s.api.attempts.load(SeqCst);
    let req = Request::post(API).body(chunked(16, 1024)).unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "the original 401 comes back"
    );
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes().len(),
        16 * 1024
    );
    assert_eq!(s.api.attempts.load(SeqCst) - before, 1);
    let stats = s.layer.stats();
    assert_eq!((stats.replays, stats.replays_skipped), (0, 1));
    // The refusal still refreshed the token for the next request.
    let next = Request::post(API).body(chunked(2, 10)).unwrap();
    assert_eq!(svc.oneshot(next).await.unwrap().status(), StatusCode::OK);
    assert_eq!(s.endpoint.refresh.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_401_before_the_body_was_read_is_not_replayed() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let layer = layer_with(&endpoint, |b| b);
    let (mock, mut handle) =
        tower_test::mock::pair::<Request<ReplayBody<Chunks>>, Response<Full<Bytes>>>();
    let svc = layer.layer(mock);
    handle.allow(2);
    let call = tokio::spawn(svc.oneshot(Request::post(API).body(chunked(4, 8)).unwrap()));
    let (req, respond) = handle.next_request().await.unwrap();
    assert!(req.headers().contains_key(AUTHORIZATION));
    // Answer without reading the body.
    respond.send_response(
        Response::builder()
            .status(401)
            .body(Full::default())
            .unwrap(),
    );
    let res = call.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    drop(req);
    let next = tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await;
    assert!(!matches!(next, Ok(Some(_))), "no second request");
    assert_eq!(layer.stats().replays_skipped, 1);
}

#[tokio::test(start_paused = true)]
async fn replay_can_be_switched_off_for_the_layer_and_for_one_request() {
    for per_request in [false, true] {
        let s = setup_with(|b| b.replay(per_request));
        let svc = s.service();
        send(&svc, get()).await.unwrap();
        s.api.revoke_all();
        let mut req = Request::post(API)
            .body(Full::new(Bytes::from_static(b"once")))
            .unwrap();
        if per_request {
            req.extensions_mut().insert(NoReplay);
        }
        let res = send(&svc, req).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(s.api.attempts.load(SeqCst), 2, "sent once");
        // The refused token is still dropped: the next request gets a new one.
        assert_eq!(send(&svc, get()).await.unwrap().status(), StatusCode::OK);
        assert_eq!(s.endpoint.refresh.load(SeqCst), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn the_header_is_sensitive_and_stays_on_its_origin() {
    let s = setup();
    let svc = s.service();
    send(&svc, get()).await.unwrap();
    let relative = Request::get("/api/items").body(Full::default()).unwrap();
    send(&svc, relative).await.unwrap();
    for uri in [
        "http://127.0.0.1:10/api",
        "https://127.0.0.1:9/api",
        "http://example.com:9/api",
    ] {
        let res = send(&svc, Request::get(uri).body(Full::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{uri}");
    }
    let seen = s.api.seen.lock().unwrap();
    assert_eq!(seen.len(), 5);
    for header in &seen[..2] {
        let header = header
            .as_ref()
            .expect("the API origin and relative URIs get the token");
        assert!(header.is_sensitive());
        assert_eq!(header, "Bearer access-1");
    }
    assert!(
        seen[2..].iter().all(Option::is_none),
        "other origins get no token"
    );
    assert_eq!(
        s.layer.stats().replays,
        0,
        "a 401 from another origin is not replayed"
    );
}

#[tokio::test(start_paused = true)]
async fn services_and_clones_share_one_cache() {
    let s = setup();
    let a = s.service();
    let b = s.service();
    let c = a.clone();
    let layer_clone = s.layer.clone();
    let d = layer_clone.layer(api_service(&s.api));
    for svc in [&a, &b, &c, &d] {
        assert_eq!(send(svc, get()).await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(s.endpoint.grants(), 1);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_are_kept_apart_and_do_not_touch_the_token() {
    let s = setup();
    let svc = s.service();
    send(&svc, get()).await.unwrap();
    let failing = s.layer.layer(tower::service_fn(
        |_req: Request<ReplayBody<Full<Bytes>>>| async {
            Err::<Response<Full<Bytes>>, _>(std::io::Error::other("connection reset"))
        },
    ));
    let err = failing.oneshot(get()).await.unwrap_err();
    assert!(err.is_inner());
    assert_eq!(err.into_inner().unwrap().to_string(), "connection reset");
    let forbidden = s.layer.layer(tower::service_fn(
        |_req: Request<ReplayBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(
                Response::builder()
                    .status(403)
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
        },
    ));
    assert_eq!(
        forbidden.oneshot(get()).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.endpoint.grants(),
        1,
        "neither an inner error nor a 403 refreshes"
    );
    assert_eq!(s.layer.stats().replays, 0);
}

#[tokio::test(start_paused = true)]
async fn a_connect_failure_keeps_the_refresh_token() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.lifetime.lock().unwrap() = Duration::from_secs(60);
    // A fetcher that cannot connect for the first refresh: that token never left.
    let sent = Arc::new(Mutex::new(Vec::<String>::new()));
    let (endpoint2, sent2) = (Arc::clone(&endpoint), Arc::clone(&sent));
    let layer = builder()
        .backoff(Duration::from_millis(100), Duration::from_millis(100))
        .fetcher(fetcher::from_fn(move |grant: GrantRequest| {
            let (endpoint, sent) = (Arc::clone(&endpoint2), Arc::clone(&sent2));
            async move {
                if let Some(refresh) = grant.refresh_token() {
                    let mut sent = sent.lock().unwrap();
                    sent.push(refresh.expose_secret().to_owned());
                    if sent.len() == 1 {
                        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                        return Err(TokenError::connect(refused));
                    }
                }
                endpoint.grant(grant).await
            }
        }))
        .build()
        .unwrap();
    let svc = layer.layer(api_service(&api));
    send(&svc, get()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    // The caller waits through the failed attempt (within its budget), and the
    // next attempt sends the same refresh token.
    assert_eq!(send(&svc, get()).await.unwrap().status(), StatusCode::OK);
    let stats = layer.stats();
    assert_eq!(
        (stats.refresh_failed, stats.refresh_ok, stats.password_ok),
        (1, 1, 1)
    );
    assert_eq!(sent.lock().unwrap().as_slice(), ["refresh-1", "refresh-1"]);
}

#[test]
fn a_grant_lost_with_its_runtime_does_not_block_the_next_caller() {
    let paused_runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let first = paused_runtime();
    let s = first.block_on(async { setup() });
    *s.endpoint.latency.lock().unwrap() = Duration::from_secs(5);
    let svc = s.service();
    // The first runtime starts a grant, then shuts down in the middle of it.
    first.block_on(async {
        let call = send(&svc, get());
        assert!(
            tokio::time::timeout(Duration::from_secs(1), call)
                .await
                .is_err()
        );
    });
    drop(first);
    assert_eq!(s.endpoint.grants(), 1);
    assert_eq!(s.layer.stats().grants(), 0, "the grant never finished");

    *s.endpoint.latency.lock().unwrap() = Duration::from_millis(10);
    let second = paused_runtime();
    let res = second
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), send(&svc, get())).await });
    assert_eq!(res.expect("no hang").unwrap().status(), StatusCode::OK);
    assert_eq!(s.endpoint.grants(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_401_that_names_another_error_is_not_about_the_token() {
    let s = setup();
    let svc = s.service();
    send(&svc, get()).await.unwrap();
    let challenges = [
        (
            Some(r#"Bearer error="insufficient_scope", scope="admin""#),
            false,
        ),
        (
            Some(r#"Bearer realm="daxium", error="invalid_token""#),
            true,
        ),
        (Some(r#"Bearer realm="daxium""#), true),
        (None, true),
    ];
    for (challenge, refreshes) in challenges {
        let refresh_before = s.endpoint.refresh.load(SeqCst);
        let attempts = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&attempts);
        let inner = tower::service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
            let first = seen.fetch_add(1, SeqCst) == 0;
            let mut res = Response::builder().status(if first { 401 } else { 200 });
            if let Some(challenge) = challenge.filter(|_| first) {
                res = res.header(http::header::WWW_AUTHENTICATE, challenge);
            }
            std::future::ready(Ok::<_, Infallible>(
                res.body(Full::<Bytes>::default()).unwrap(),
            ))
        });
        let status = s.layer.layer(inner).oneshot(get()).await.unwrap().status();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refreshed = s.endpoint.refresh.load(SeqCst) - refresh_before;
        if refreshes {
            assert_eq!(
                (status, attempts.load(SeqCst), refreshed),
                (StatusCode::OK, 2, 1),
                "{challenge:?}"
            );
        } else {
            assert_eq!(
                (status, attempts.load(SeqCst), refreshed),
                (StatusCode::UNAUTHORIZED, 1, 0),
                "{challenge:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn errors_box_for_tower_stacks_and_keep_the_token_error() {
    let s = setup();
    s.endpoint.push(Step::Reject);
    let svc = s.service();
    let err = send(&svc, get()).await.unwrap_err();
    let boxed: daxium_auth::BoxError = err.into_box_error();
    let token = boxed
        .downcast_ref::<TokenError>()
        .expect("the token error, boxed as itself");
    assert!(token.is_grant_rejected());

    // With a BoxError inner stack, `MapErrLayer` makes the whole stack box.
    let inner = tower::service_fn(|_req: Request<ReplayBody<Full<Bytes>>>| async {
        Err::<Response<Full<Bytes>>, daxium_auth::BoxError>("inner failure".into())
    });
    let stack = tower::ServiceBuilder::new()
        .map_err(daxium_auth::Error::into_box_error)
        .layer(s.layer.clone())
        .service(inner);
    tokio::time::sleep(Duration::from_secs(301)).await;
    let err = stack.oneshot(get()).await.unwrap_err();
    assert_eq!(err.to_string(), "inner failure");
}
