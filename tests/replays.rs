//! A token that the API refuses. A 401 for the token in use makes one
//! refresh for every request that met it, and each is replayed with the new
//! token: also when the 401 comes late, for a token that a refresh in flight
//! has revoked already, or when the request's future holds the last handle on
//! the layer; the replay drives a ready clone of the inner service. Answers
//! that are not about the token cost no grant; an API that refuses every token
//! gets grants at a growing pause, and its callers are told at once. Under
//! paused tokio time.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{ReplayBody, fetcher};
use futures_util::future::join_all;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};

use crate::support;

use support::scripted::{
    Inner, Setup, answer, api_fn, api_service, api_with, bearer, builder, credentials_for, get,
    in_time, pair, send, setup,
};

// === one refresh, one replay ===

#[tokio::test(start_paused = true)]
async fn an_empty_401_for_every_token_in_use_makes_one_refresh_for_all_requests() {
    let s = setup();
    let svc = s.service();
    send(&svc, get()).await.unwrap();
    s.api.revoke_all();
    let calls = (0..500).map(|_| svc.clone().oneshot(get()));
    for res in in_time("calls", join_all(calls)).await {
        assert_eq!(res.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(s.endpoint.grants(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_waiting_call_uses_the_ready_service_and_the_replay_drives_a_clone_ready() {
    let s = setup();
    let (mock, mut handle) =
        tower_test::mock::pair::<Request<ReplayBody<Full<Bytes>>>, Response<Full<Bytes>>>();
    handle.allow(1);
    let mut svc = s.layer.layer(mock);
    svc.ready().await.unwrap();
    // No token yet: the call waits for the grant, holding the ready service.
    let call = tokio::spawn(svc.call(get()));
    let (req, respond) = in_time("first attempt", handle.next_request())
        .await
        .unwrap();
    assert_eq!(bearer(&req).as_deref(), Some("access-1"));
    respond.send_response(
        Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .body(Full::default())
            .unwrap(),
    );
    // The replay's clone is not ready until the mock allows it.
    let early = tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await;
    assert!(early.is_err(), "the replay waited for poll_ready");
    handle.allow(1);
    let (req, respond) = in_time("replay", handle.next_request()).await.unwrap();
    assert_eq!(bearer(&req).as_deref(), Some("access-2"));
    respond.send_response(Response::new(Full::from("ok")));
    let res = in_time("call", call).await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(s.endpoint.grants(), 2);
}

/// A replay whose response future holds the last handle on the layer (the
/// service went into `oneshot`, the layer was dropped) still gets the refresh
/// it started.
#[tokio::test(start_paused = true)]
async fn replay_does_not_hang_when_the_future_holds_the_last_handle() {
    let Setup { api, layer, .. } = setup();
    layer.cache().access_token().await.unwrap();
    api.revoke_all(); // the API revokes the token
    let svc = layer.layer(api_service(&api));
    drop(layer); // common: `let svc = AuthLayer::new(..)?.layer(client);`
    let res = tokio::time::timeout(Duration::from_secs(600), svc.oneshot(get())).await;
    let res = res.expect("the request hung: a waiter that nobody will wake");
    assert_eq!(res.unwrap().status(), StatusCode::OK);
}

/// A request carrying the previous token gets its 401 while the refresh of
/// the current token is in flight (and has revoked it already): the replay
/// waits for that refresh instead of carrying the current token.
#[tokio::test(start_paused = true)]
async fn a_late_401_for_an_old_token_replays_with_the_refresh_in_flight() {
    let valid = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let issued = Arc::new(AtomicUsize::new(0));
    let (v, n) = (Arc::clone(&valid), Arc::clone(&issued));
    let layer = builder()
        .refresh_margin(Duration::from_secs(1))
        .fetcher(fetcher::from_fn(move |_grant| {
            let (valid, issued) = (Arc::clone(&v), Arc::clone(&n));
            async move {
                valid.lock().unwrap().clear();
                tokio::time::sleep(Duration::from_millis(100)).await;
                let token = format!("tok-{}", issued.fetch_add(1, SeqCst) + 1);
                valid.lock().unwrap().insert(token.clone());
                pair(&token, &format!("ref-{token}"), Duration::from_secs(10))
            }
        }))
        .build()
        .unwrap();
    let hold = Arc::new(tokio::sync::Notify::new());
    let released = Arc::new(AtomicBool::new(false));
    let (v, h, r) = (Arc::clone(&valid), Arc::clone(&hold), Arc::clone(&released));
    let api = api_fn(move |req| {
        let (valid, hold, released) = (Arc::clone(&v), Arc::clone(&h), Arc::clone(&r));
        async move {
            // Only the first attempt is held: the replay keeps the header.
            if req.headers().contains_key("x-hold") && !released.load(SeqCst) {
                hold.notified().await;
            }
            let ok = bearer(&req).is_some_and(|t| valid.lock().unwrap().contains(&t));
            Ok(answer(ok, Bytes::new()))
        }
    });
    let svc = layer.layer(api);
    let start = tokio::time::Instant::now();
    assert_eq!(
        svc.clone().oneshot(get()).await.unwrap().status(),
        StatusCode::OK
    );
    // A slow request carrying tok-1.
    let mut slow = get();
    slow.headers_mut().insert("x-hold", "1".parse().unwrap());
    let slow = tokio::spawn(svc.clone().oneshot(slow));
    // Requests inside the refresh margin start the refreshes: tok-1 -> tok-2
    // (sent at 9.5 s, so valid until 19.5 s), then tok-2 -> tok-3, whose answer
    // comes 100 ms after it revoked tok-2.
    for at in [9_500, 19_000] {
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        assert_eq!(
            svc.clone().oneshot(get()).await.unwrap().status(),
            StatusCode::OK
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(issued.load(SeqCst), 2, "the second refresh is in flight");
    // The slow request's 401 (tok-1 was revoked long ago) arrives now.
    released.store(true, SeqCst);
    hold.notify_one();
    let res = in_time("slow request", slow).await.unwrap().unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the replay carried a revoked token"
    );
    assert_eq!(issued.load(SeqCst), 3);
}

/// A token endpoint like some third-party servers: processing a refresh
/// revokes every earlier access token at once, and the answer comes 70 ms
/// later. The API answers one request in ten slowly (1 s) the first time it
/// sees it, and 401 with an empty body to a revoked token. (A replay that is
/// itself slower than the time to the next refresh can meet a revocation no
/// client can foresee; the replays here are fast, as most are.)
struct Revoking {
    valid: Mutex<HashSet<String>>,
    issued: AtomicUsize,
    seen: Mutex<HashSet<u64>>,
}

/// The load under which a replay meets, by chance, the race that
/// `a_late_401_for_an_old_token_replays_with_the_refresh_in_flight` makes
/// happen every time.
#[tokio::test(start_paused = true)]
async fn a_replay_waits_for_the_refresh_in_flight_of_a_server_that_revokes_on_refresh() {
    let server = Arc::new(Revoking {
        valid: Mutex::new(HashSet::new()),
        issued: AtomicUsize::new(0),
        seen: Mutex::new(HashSet::new()),
    });
    let grants = Arc::clone(&server);
    let layer = builder()
        .credentials(credentials_for("alice", "pw"))
        .fetcher(fetcher::from_fn(move |_grant| {
            let server = Arc::clone(&grants);
            async move {
                server.valid.lock().unwrap().clear();
                tokio::time::sleep(Duration::from_millis(70)).await;
                let n = server.issued.fetch_add(1, SeqCst);
                let access = format!("tok-{n}");
                server.valid.lock().unwrap().insert(access.clone());
                pair(&access, &format!("ref-{n}"), Duration::from_secs(2))
            }
        }))
        .build()
        .unwrap();
    let api = api_with(&server, |server, req| async move {
        let id: u64 = req.headers()["x-id"].to_str().unwrap().parse().unwrap();
        let first = server.seen.lock().unwrap().insert(id);
        let latency = if first && id.is_multiple_of(10) {
            1000
        } else {
            5
        };
        tokio::time::sleep(Duration::from_millis(latency)).await;
        let ok = bearer(&req).is_some_and(|t| server.valid.lock().unwrap().contains(&t));
        Ok(answer(ok, Bytes::new()))
    });
    let svc = layer.layer(api);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ids = Arc::new(AtomicUsize::new(0));
    let workers = (0..16).map(|_| {
        let (svc, ids) = (svc.clone(), Arc::clone(&ids));
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while tokio::time::Instant::now() < deadline && statuses.len() < 10_000 {
                let mut req = get();
                let id = ids.fetch_add(1, SeqCst).to_string();
                req.headers_mut().insert("x-id", id.parse().unwrap());
                statuses.push(svc.clone().oneshot(req).await.unwrap().status());
            }
            statuses
        })
    });
    let statuses: Vec<StatusCode> = join_all(workers)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    let refused = statuses.iter().filter(|s| **s != StatusCode::OK).count();
    assert!(statuses.len() > 1000, "{} requests", statuses.len());
    assert_eq!(
        refused,
        0,
        "{refused} of {} requests came back refused",
        statuses.len()
    );
    // Sent again as replays (a token refused before it worked) or resends
    // (one revoked after it worked, or replaced while the request was in
    // flight).
    let stats = layer.stats();
    assert!(
        stats.replays + stats.resends > 0,
        "the server did revoke tokens under the requests"
    );
}

// === APIs that refuse too much ===

fn api_answering(
    status: StatusCode,
    headers: &[(&'static str, &'static str)],
    body: &'static str,
) -> Inner {
    let headers = headers.to_vec();
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |_req: Request<ReplayBody<Full<Bytes>>>| {
            let mut res = Response::builder().status(status);
            for (name, value) in &headers {
                res = res.header(*name, *value);
            }
            let res = res.body(Full::from(body)).unwrap();
            async move { Ok(res) }
        },
    ))
}

#[tokio::test(start_paused = true)]
async fn answers_that_are_not_about_the_token_cost_no_grant() {
    let s = setup();
    let gateway = api_answering(
        StatusCode::FORBIDDEN,
        &[("content-type", "text/html")],
        "<html><body><h1>403 Forbidden</h1></body></html>",
    );
    let scope = api_answering(
        StatusCode::UNAUTHORIZED,
        &[(
            "www-authenticate",
            r#"Bearer realm="daxium", error="insufficient_scope""#,
        )],
        "",
    );
    for (api, status) in [
        (gateway, StatusCode::FORBIDDEN),
        (scope, StatusCode::UNAUTHORIZED),
    ] {
        let svc = s.layer.layer(api);
        let calls = (0..200).map(|_| svc.clone().oneshot(get()));
        for res in in_time("calls", join_all(calls)).await {
            assert_eq!(res.unwrap().status(), status);
        }
    }
    assert_eq!(s.endpoint.grants(), 1);
    assert_eq!(s.layer.stats().replays, 0);
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_against_an_api_that_refuses_everything_get_few_grants_and_prompt_answers()
 {
    let s = setup();
    let svc = s
        .layer
        .layer(api_answering(StatusCode::UNAUTHORIZED, &[], ""));
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(20);
    let (sent, told) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let workers = (0..50).map(|_| {
        let svc = svc.clone();
        let (sent, told) = (Arc::clone(&sent), Arc::clone(&told));
        tokio::spawn(async move {
            while tokio::time::Instant::now() < deadline {
                let asked = tokio::time::Instant::now();
                sent.fetch_add(1, SeqCst);
                match in_time("request", svc.clone().oneshot(get())).await {
                    Ok(res) => assert_eq!(res.status(), StatusCode::UNAUTHORIZED),
                    Err(err) => {
                        assert!(err.token_error().is_some_and(|e| e.is_refused()));
                        assert_eq!(asked.elapsed(), Duration::ZERO, "told at once");
                        told.fetch_add(1, SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    });
    for worker in join_all(workers).await {
        worker.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    let grants = s.endpoint.grants();
    // Three at once, then one after each pause of 1, 2, 4, 8 s...
    let bound = 3 + (seconds + 1.0).log2().floor() as usize;
    assert!(grants <= bound, "{grants} grants in {seconds} s");
    // Between the grants, requests are told that the API refuses every token.
    let (sent, told) = (sent.load(SeqCst), told.load(SeqCst));
    assert!(
        told * 10 > sent * 9,
        "{told} of {sent} requests told at once"
    );
}

#[tokio::test(start_paused = true)]
async fn the_token_cache_api_never_hands_out_a_refused_token_and_slows_down_for_an_api_refusing_all()
 {
    let s = setup();
    let cache = s.layer.cache().clone();
    let first = cache.access_token().await.unwrap();
    // The reqwest adapter's sequence: a refusal, the replacement, and so on.
    let second = cache.replacement_for(&first).await.unwrap().unwrap();
    assert_eq!(second.expose_secret(), "access-2");
    let third = cache.replacement_for(&second).await.unwrap().unwrap();
    assert_eq!(third.expose_secret(), "access-3");
    // The third new token in a row refused before it ever worked: the API
    // refuses every token, and callers hear it at once.
    cache.token_rejected(&third);
    for _ in 0..100 {
        assert!(cache.access_token().await.unwrap_err().is_refused());
        assert!(cache.replacement_for(&third).await.unwrap().is_none());
    }
    assert_eq!(s.endpoint.grants(), 3, "a pause before the next grant");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fourth = cache.access_token().await.unwrap();
    assert_eq!(fourth.expose_secret(), "access-4");
    // It works: its refusal later is a revocation, replaced at once.
    cache.token_accepted(&fourth);
    cache.token_rejected(&fourth);
    let fifth = cache.access_token().await.unwrap();
    assert_eq!(fifth.expose_secret(), "access-5");
    assert_eq!(s.endpoint.grants(), 5);
}
