//! One regression test for each defect found in the token cache and the
//! service around it, through the public API only: a login switched or
//! refused mid-grant, a fetcher that returns clones of one error or panics,
//! transient failures on a cold start, timers and calls without their
//! runtime, an API that refuses every token, a server that revokes on
//! refresh, a replay whose future held the last handle, a rotated refresh
//! token in an unusable answer, and a fetcher that never answers. The scripted token endpoint and API of the
//! test support, or a fetcher and an API written here as tower services where
//! a defect needs its own, under paused tokio time (and, for the timers, two
//! runtimes).

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    future::Future,
    pin::pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{
    AccessToken, AuthService, Credentials, ErrorBody, GrantType, HttpFetcher, RefreshToken,
    ReplayBody, TokenError, TokenPair, fetcher,
};
use futures_util::future::join_all;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};

mod support;

use support::scripted::{
    Api, Endpoint, Setup, Step, answer, api_service, bearer, builder, get, layer_with,
    paused_runtime, send, setup, setup_with,
};

type Inner = support::scripted::Inner<Full<Bytes>>;

fn login(user: &str, password: &str) -> Credentials {
    Credentials::new("client", "client-secret", user, password)
}

// === 1. switching login kept the old user's session ===

/// Tokens name the user they were issued to: `tok-<user>-<n>`.
struct Users {
    issued: AtomicUsize,
    grants: Mutex<Vec<(GrantType, String)>>,
    refresh_owner: Mutex<HashMap<String, String>>,
}

#[tokio::test(start_paused = true)]
async fn a_grant_in_flight_for_the_previous_login_is_dropped_whole() {
    let users = Arc::new(Users {
        issued: AtomicUsize::new(0),
        grants: Mutex::new(Vec::new()),
        refresh_owner: Mutex::new(HashMap::new()),
    });
    let fetch_users = Arc::clone(&users);
    let layer = builder()
        .credentials(login("alice", "pw-a"))
        .fetcher(fetcher::from_fn(move |grant| {
            let users = Arc::clone(&fetch_users);
            async move {
                let user = match grant.refresh_token() {
                    Some(refresh) => {
                        let owners = users.refresh_owner.lock().unwrap();
                        owners[refresh.expose_secret()].clone()
                    }
                    None => grant.credentials().username().to_owned(),
                };
                users
                    .grants
                    .lock()
                    .unwrap()
                    .push((grant.grant_type(), user.clone()));
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = users.issued.fetch_add(1, SeqCst);
                let refresh = format!("ref-{user}-{n}");
                users
                    .refresh_owner
                    .lock()
                    .unwrap()
                    .insert(refresh.clone(), user.clone());
                Ok(TokenPair::new(
                    AccessToken::new(&format!("tok-{user}-{n}"))?,
                    Some(RefreshToken::new(&refresh)?),
                    Duration::from_secs(60),
                ))
            }
        }))
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let api_seen = Arc::clone(&seen);
    let api: Inner = tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |req: Request<ReplayBody<Full<Bytes>>>| {
            api_seen.lock().unwrap().push(bearer(&req));
            async { Ok(Response::new(Full::default())) }
        },
    ));
    let svc = layer.layer(api);
    // Alice's login is in flight when the application switches to Bob.
    let alice = tokio::spawn(svc.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    layer.set_credentials(login("bob", "pw-b"));
    seen.lock().unwrap().clear();
    let _ = alice.await.unwrap();
    for _ in 0..5 {
        send(&svc, get()).await.unwrap();
        // Past several refreshes of 60 s tokens.
        tokio::time::sleep(Duration::from_secs(40)).await;
    }
    for token in seen.lock().unwrap().iter() {
        let token = token.as_deref().expect("a token");
        assert!(
            token.starts_with("tok-bob-"),
            "a request after the switch carried {token}"
        );
    }
    let grants = users.grants.lock().unwrap();
    assert!(
        grants.iter().skip(1).all(|(_, user)| user == "bob"),
        "no grant for alice after the switch: {grants:?}"
    );
    assert!(
        grants.iter().any(|(g, _)| *g == GrantType::RefreshToken),
        "bob's session is refreshed"
    );
}

// === 2. a fetcher returning clones of one error panicked the grant task ===

#[tokio::test(start_paused = true)]
async fn a_fetcher_may_return_clones_of_one_error() {
    let refused = TokenError::rejected(
        StatusCode::UNAUTHORIZED,
        ErrorBody::parse(br#"{"code":"DAERR-0401","message":"Invalid credentials"}"#),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let layer = builder()
        .credentials(login("alice", "wrong"))
        .fetcher(fetcher::from_fn(move |_grant| {
            counter.fetch_add(1, SeqCst);
            let err = refused.clone();
            async move { Err::<TokenPair, _>(err) }
        }))
        .build()
        .unwrap();
    for _ in 0..1000 {
        // Bounded: a grant task that panics and restarts at once would spin.
        let answer = tokio::time::timeout(Duration::from_secs(60), layer.cache().access_token());
        let err = answer.await.expect("an answer in time").unwrap_err();
        assert!(err.is_grant_rejected(), "{err:?}");
        assert_eq!(err.grant_type(), Some(GrantType::Password));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(calls.load(SeqCst), 1, "a refused password is not retried");
}

#[tokio::test(start_paused = true)]
async fn a_tower_service_fetcher_may_return_clones_of_one_error_too() {
    let refused = TokenError::rejected(StatusCode::BAD_REQUEST, None);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let service = tower::service_fn(move |_grant: daxium_auth::GrantRequest| {
        counter.fetch_add(1, SeqCst);
        let err = refused.clone();
        async move { Err::<TokenPair, _>(err) }
    });
    let layer = builder()
        .credentials(login("alice", "wrong"))
        .fetcher(fetcher::from_service(service))
        .build()
        .unwrap();
    for _ in 0..100 {
        let err = layer.cache().access_token().await.unwrap_err();
        assert!(
            err.is_grant_rejected(),
            "a refusal stays a refusal: {err:?}"
        );
    }
    assert_eq!(calls.load(SeqCst), 1);
}

// === 3. a cold start that met one transient failure failed ===

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

// === 4. timers died with their runtime ===

#[test]
fn a_token_is_never_served_past_its_expiry_after_its_runtime_is_gone() {
    let s = setup();
    *s.endpoint.lifetime.lock().unwrap() = Duration::from_secs(60);
    let first = paused_runtime().block_on(async { s.layer.cache().access_token().await.unwrap() });
    // That runtime is gone, with the timer it armed. Two hours later, on another:
    let later = paused_runtime().block_on(async {
        tokio::time::advance(Duration::from_secs(2 * 3600)).await;
        s.layer.cache().access_token().await.unwrap()
    });
    assert_ne!(
        first.expose_secret(),
        later.expose_secret(),
        "a 60 s token two hours on"
    );
    assert_eq!(s.endpoint.grants(), 2);
}

#[test]
fn a_rejection_cooldown_lifts_after_its_runtime_is_gone() {
    let s = setup_with(|b| b.rejected_cooldown(Duration::from_secs(300)));
    s.endpoint.push(Step::Reject);
    paused_runtime().block_on(async {
        assert!(
            s.layer
                .cache()
                .access_token()
                .await
                .unwrap_err()
                .is_grant_rejected()
        );
    });
    let token = paused_runtime().block_on(async {
        assert!(
            s.layer
                .cache()
                .access_token()
                .await
                .unwrap_err()
                .is_grant_rejected()
        );
        tokio::time::advance(Duration::from_secs(301)).await;
        s.layer.cache().access_token().await
    });
    assert!(token.is_ok(), "{token:?}");
    assert_eq!(s.endpoint.grants(), 2);
}

// === 5. an API that refuses every token cost one grant per request ===

#[tokio::test(start_paused = true)]
async fn an_api_that_refuses_every_token_gets_grants_at_a_growing_pause_and_prompt_answers() {
    let s = setup();
    let api: Inner = tower::util::BoxCloneSyncService::new(tower::service_fn(
        |_req: Request<ReplayBody<Full<Bytes>>>| async {
            Ok(Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .body(Full::default())
                .unwrap())
        },
    ));
    let svc: AuthService<Inner> = s.layer.layer(api);
    let started = tokio::time::Instant::now();
    let mut told = 0;
    for _ in 0..1000 {
        let asked = tokio::time::Instant::now();
        match send(&svc, get()).await {
            Ok(res) => assert_eq!(res.status(), StatusCode::UNAUTHORIZED),
            Err(err) => {
                assert!(err.token_error().is_some_and(|e| e.is_refused()), "{err:?}");
                assert_eq!(asked.elapsed(), Duration::ZERO, "told at once");
                told += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let grants = s.endpoint.grants();
    // Three at once, then one after each pause of 1, 2, 4, 8 s...
    let bound = 3 + (seconds + 1.0).log2().floor() as usize;
    assert!(grants <= bound, "{grants} grants in {seconds} s");
    assert!(
        told > 900,
        "{told} requests told at once that the API refuses every token"
    );
}

// === 6. a second 401 after the replay, against a server that revokes on refresh ===
// (`cache_attacks::a_late_401_for_an_old_token_replays_with_the_refresh_in_flight`
// makes the race happen every time; this one runs the load that met it.)

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

#[tokio::test(start_paused = true)]
async fn a_replay_waits_for_the_refresh_in_flight_of_a_server_that_revokes_on_refresh() {
    let server = Arc::new(Revoking {
        valid: Mutex::new(HashSet::new()),
        issued: AtomicUsize::new(0),
        seen: Mutex::new(HashSet::new()),
    });
    let grants = Arc::clone(&server);
    let layer = builder()
        .credentials(login("alice", "pw"))
        .fetcher(fetcher::from_fn(move |_grant| {
            let server = Arc::clone(&grants);
            async move {
                server.valid.lock().unwrap().clear();
                tokio::time::sleep(Duration::from_millis(70)).await;
                let n = server.issued.fetch_add(1, SeqCst);
                let access = format!("tok-{n}");
                server.valid.lock().unwrap().insert(access.clone());
                Ok(TokenPair::new(
                    AccessToken::new(&access)?,
                    Some(RefreshToken::new(&format!("ref-{n}"))?),
                    Duration::from_secs(2),
                ))
            }
        }))
        .build()
        .unwrap();
    let api_server = Arc::clone(&server);
    let api: Inner = tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |req: Request<ReplayBody<Full<Bytes>>>| {
            let server = Arc::clone(&api_server);
            async move {
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
            }
        },
    ));
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

// === 7. switching to another user kept refreshing the old user's session ===

/// `set_credentials` with another username kept the old login's refresh
/// token: the previous user's session was refreshed for ever and the new user
/// never logged in (while the refresh token rotated).
#[tokio::test(start_paused = true)]
async fn set_credentials_for_another_user_ends_the_old_session() {
    let s = setup();
    *s.endpoint.lifetime.lock().unwrap() = Duration::from_secs(60);
    s.layer.cache().access_token().await.unwrap();
    s.layer.set_credentials(login("bob", "password"));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(61)).await;
        s.layer.cache().access_token().await.unwrap();
    }
    let log = s.endpoint.log();
    assert!(
        log.iter().any(|g| g == "password:bob"),
        "bob never logged in: {log:?}"
    );
}

// === 8. a replay hung when its future held the last handle ===

/// The 401 path moved the future to `Reacquire`, which kept only an
/// `Arc<Shared>`: when the future held the last handle on the layer (the
/// service went into `oneshot`, the layer was dropped), dropping `Sent`
/// dropped the `Handle`, which aborted the refresh it had just started and
/// published nothing. The waiter then waited on a `watch` that nobody would
/// ever send.
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

// === 9. a rejection of old credentials blocked the new ones ===

/// `set_credentials` while the password grant with the old (wrong) password
/// was in flight: the rejection landed after the change, was recorded as
/// terminal, and its cool-down task was bound to the *new* credentials, so
/// the corrected password was not tried for `rejected_cooldown` (5 min), and
/// calling `set_credentials` again with it was a no-op (`same_as`).
#[tokio::test(start_paused = true)]
async fn a_rejection_of_old_credentials_does_not_block_new_ones() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    endpoint
        .refused_passwords
        .lock()
        .unwrap()
        .push("wrong".into());
    *endpoint.latency.lock().unwrap() = Duration::from_secs(1);
    let layer = layer_with(&endpoint, |b| b.credentials(login("alice", "wrong")));
    let svc = layer.layer(api_service::<Full<Bytes>>(&api));
    let first = tokio::spawn(svc.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(100)).await; // the grant is in flight
    layer.set_credentials(login("alice", "right"));
    // Either outcome is fine for the call that raced the change.
    let _ = first.await.unwrap();

    layer.set_credentials(login("alice", "right")); // the user insists: no-op
    let res = svc.clone().oneshot(get()).await;
    assert_eq!(
        endpoint.log(),
        ["password:alice", "password:alice"],
        "the corrected password must be tried"
    );
    assert_eq!(res.unwrap().status(), StatusCode::OK);
}

// === 10. a panicking fetcher was retried in a tight loop ===

/// A fetcher that panics (a bug, or a parser panic on a strange body) killed
/// the grant task; `FlightGuard` reset the flight to `Idle` and published
/// `Empty`; every waiter woke and started the next grant at once: no
/// backoff, the token endpoint was hit in a loop for as long as anyone waited.
#[tokio::test(start_paused = true)]
async fn a_panicking_fetcher_is_not_retried_in_a_tight_loop() {
    let calls = Arc::new(AtomicUsize::new(0));
    let calls2 = Arc::clone(&calls);
    let layer = builder()
        .credentials(login("alice", "password"))
        .fetcher(fetcher::from_fn(move |_grant| {
            let n = calls2.fetch_add(1, SeqCst) + 1;
            async move {
                // Bounded so that the test ends even with the defect.
                if n <= 50 {
                    panic!("fetcher bug #{n}");
                }
                Ok(TokenPair::new(
                    AccessToken::new("tok")?,
                    None,
                    Duration::from_secs(3600),
                ))
            }
        }))
        .build()
        .unwrap();
    // The caller waits through the backoff (500 ms, doubling, jittered down to
    // half): at most three attempts start within one second.
    let res = tokio::time::timeout(Duration::from_secs(1), layer.cache().access_token()).await;
    assert!(
        calls.load(SeqCst) <= 3,
        "{} grant attempts in no time, with no backoff (result: {res:?})",
        calls.load(SeqCst)
    );
}

// === 11. one call outside a tokio runtime poisoned the cache for good ===

/// `start_locked` without a runtime published `Failed(Closed)` and set the
/// flight back to `Idle` *without publishing again*: the `ArcSwap` kept
/// `Failed` and nothing ever replaced it, so every later call, inside a
/// runtime too, failed fast with "closed".
#[test]
fn a_call_outside_a_runtime_does_not_poison_the_cache() {
    let s = setup();
    {
        // Polled by a non-tokio executor (futures::executor, smol, a sync test).
        let mut fut = pin!(s.layer.cache().access_token());
        let mut cx = Context::from_waker(Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Err(e)) => eprintln!("outside a runtime: {e}"),
            other => eprintln!("outside a runtime: pending={}", other.is_pending()),
        }
    }
    let token = paused_runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(10), s.layer.cache().access_token()).await
    });
    let token = token.expect("no hang");
    assert!(
        token.is_ok(),
        "inside a runtime, the cache must recover: {token:?}"
    );
}

// === 12. the rotated refresh token was lost when the rest of the answer was unusable ===

/// DESIGN §2: "a rotated refresh token is never lost, also when the rest of
/// the response fails to parse". A refresh answered 200 with a new refresh
/// token but an unusable access token dropped the new refresh token: the next
/// grant was a password grant.
#[tokio::test(start_paused = true)]
async fn a_rotated_refresh_token_survives_an_unusable_answer() {
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let log2 = Arc::clone(&log);
    let client = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let log = Arc::clone(&log2);
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap();
            let n = {
                let mut log = log.lock().unwrap();
                log.push(format!(
                    "{}:{}",
                    form["grant_type"],
                    form.get("refresh_token").map_or("", String::as_str)
                ));
                log.len()
            };
            let json = match n {
                1 => {
                    r#"{"access_token":"a1","refresh_token":"r1","expires_in":60,"token_type":"bearer"}"#
                }
                // The refresh is honoured (r1 is spent, r2 issued) but the access
                // token is unusable.
                2 => {
                    r#"{"access_token":"not a b64token","refresh_token":"r2","expires_in":60,"token_type":"bearer"}"#
                }
                _ => {
                    r#"{"access_token":"a3","refresh_token":"r3","expires_in":60,"token_type":"bearer"}"#
                }
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(json.as_bytes())))
                    .unwrap(),
            )
        }
    });
    let fetcher = HttpFetcher::with_client("http://127.0.0.1:9/oauth/v2/token", client).unwrap();
    let layer = builder()
        .credentials(login("alice", "password"))
        .backoff(Duration::from_millis(100), Duration::from_millis(100))
        .fetcher(fetcher)
        .build()
        .unwrap();
    layer.cache().access_token().await.unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    // The caller waits through the unusable answer; the next attempt sends r2.
    let token = layer.cache().access_token().await.unwrap();
    assert_eq!(token.expose_secret(), "a3");
    assert_eq!(
        log.lock().unwrap().as_slice(),
        ["password:", "refresh_token:r1", "refresh_token:r2"]
    );
}

// === a fetcher that never answers held the one flight for good ===

/// What a fetcher was asked, in order.
#[derive(Default)]
struct Hangs {
    asked: Mutex<Vec<String>>,
}

#[tokio::test(start_paused = true)]
async fn a_fetcher_that_never_answers_is_given_up_after_the_grant_timeout() {
    let hangs = Arc::new(Hangs::default());
    let seen = Arc::clone(&hangs);
    // The first login and the first refresh hang; the others answer at once.
    let layer = builder()
        .grant_timeout(Duration::from_secs(5))
        .wait_budget(Duration::from_secs(30))
        .backoff(Duration::from_millis(500), Duration::from_millis(500))
        .fetcher(fetcher::from_fn(move |grant| {
            let seen = Arc::clone(&seen);
            async move {
                let what = match grant.refresh_token() {
                    Some(refresh) => format!("refresh_token:{}", refresh.expose_secret()),
                    None => "password".to_owned(),
                };
                let n = {
                    let mut asked = seen.asked.lock().unwrap();
                    asked.push(what.clone());
                    asked.len()
                };
                if n == 1 || what == "refresh_token:r2" {
                    std::future::pending::<()>().await;
                }
                Ok(TokenPair::new(
                    AccessToken::new(&format!("a{n}"))?,
                    Some(RefreshToken::new(&format!("r{n}"))?),
                    Duration::from_secs(120),
                ))
            }
        }))
        .build()
        .unwrap();

    let started = tokio::time::Instant::now();
    let token = layer.cache().access_token().await.expect("a token");
    assert_eq!(token.expose_secret(), "a2");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(7),
        "{waited:?}"
    );
    let stats = layer.stats();
    assert_eq!((stats.password_failed, stats.password_ok), (1, 1));

    // The refresh that hangs may have spent r2: the next attempt logs in.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let token = layer.cache().access_token().await.expect("a token");
    assert_eq!(token.expose_secret(), "a4");
    assert_eq!(
        hangs.asked.lock().unwrap().as_slice(),
        ["password", "password", "refresh_token:r2", "password"]
    );
    assert_eq!(layer.stats().refresh_failed, 1);
}

#[test]
fn a_zero_grant_timeout_is_refused_at_build_time() {
    let err = builder()
        .grant_timeout(Duration::ZERO)
        .fetcher(fetcher::from_fn(|_grant| async {
            Err::<TokenPair, _>(TokenError::timeout())
        }))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("grant_timeout"), "{err}");
}
