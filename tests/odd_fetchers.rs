//! Fetchers and token endpoints that misbehave: a fetcher that panics,
//! returns clones of one error, or never answers (given up after the grant
//! timeout); a refresh answered with a new refresh token and an unusable access
//! token; a strict endpoint that fails, revokes every access token on a refresh
//! and remembers every refresh token; and, over loopback against the crate's
//! server, a refresh answered by a page that is not the endpoint's, and a grant
//! slower than the wait budget.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{
    AccessToken, AuthLayer, ErrorBody, GrantType, HttpFetcher, ReplayBody, TokenError, TokenPair,
    fetcher,
};
use futures_util::future::join_all;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};

use crate::support;

use support::scripted::{answer, api_with, bearer, builder, credentials_for, get, in_time, pair};

// === fetchers that fail oddly ===

#[tokio::test(start_paused = true)]
async fn a_panicking_fetcher_is_a_failure_retried_after_the_backoff() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let layer = builder()
        .fetcher(fetcher::from_fn(move |_grant| {
            let nth = counter.fetch_add(1, SeqCst);
            assert_ne!(nth, 0, "a panic before the future exists");
            async move {
                assert_ne!(nth, 1, "a panic inside the future");
                Ok(TokenPair::new(
                    AccessToken::new("access")?,
                    None,
                    Duration::from_secs(3600),
                ))
            }
        }))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let token = in_time("access_token", layer.cache().access_token()).await;
    assert_eq!(token.unwrap().expose_secret(), "access");
    assert_eq!(calls.load(SeqCst), 3);
    // Each panic is a failure like any other, retried after the backoff (500
    // ms, doubling, jittered down to half), not in a tight loop.
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(750), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_fetcher_may_return_clones_of_one_error() {
    let refused = TokenError::rejected(
        StatusCode::UNAUTHORIZED,
        ErrorBody::parse(br#"{"code":"DAERR-0401","message":"Invalid credentials"}"#),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let layer = builder()
        .credentials(credentials_for("alice", "wrong"))
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
        .credentials(credentials_for("alice", "wrong"))
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
                pair(&format!("a{n}"), &format!("r{n}"), Duration::from_secs(120))
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

/// A rotated refresh token is never lost, also when the rest of the answer
/// is unusable: a refresh answered 200 with a new refresh token and an
/// unusable access token leaves the new refresh token for the next grant.
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
        .credentials(credentials_for("alice", "password"))
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

// === a strict endpoint with faults ===

/// A strict token endpoint with faults: it remembers every refresh token that
/// reached it, revokes every access token when it processes a refresh, and
/// fails one request in three (before sending, after sending, or refusing).
struct Strict {
    rng: Mutex<u64>,
    issued: AtomicUsize,
    refresh_valid: Mutex<std::collections::HashSet<String>>,
    refresh_reached: Mutex<std::collections::HashSet<String>>,
    reuse: AtomicUsize,
    access_valid: Mutex<std::collections::HashSet<String>>,
}

impl Strict {
    fn roll(&self) -> u64 {
        let mut x = self.rng.lock().unwrap();
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x % 12
    }

    async fn grant(&self, grant: daxium_auth::GrantRequest) -> Result<TokenPair, TokenError> {
        let roll = self.roll();
        tokio::time::sleep(Duration::from_millis(5 + roll * 20)).await;
        if roll == 0 {
            return Err(TokenError::connect(std::io::Error::other("refused")));
        }
        if let Some(refresh) = grant.refresh_token() {
            let refresh = refresh.expose_secret().to_owned();
            if !self.refresh_reached.lock().unwrap().insert(refresh.clone()) {
                self.reuse.fetch_add(1, SeqCst);
            }
            self.access_valid.lock().unwrap().clear();
            if !self.refresh_valid.lock().unwrap().remove(&refresh) {
                return Err(TokenError::rejected(StatusCode::BAD_REQUEST, None));
            }
        }
        match roll {
            1 => return Err(TokenError::transport(std::io::Error::other("reset"))),
            2 => return Err(TokenError::timeout()),
            3 if grant.grant_type() == GrantType::RefreshToken => {
                return Err(TokenError::rejected(StatusCode::UNAUTHORIZED, None));
            }
            _ => {}
        }
        let n = self.issued.fetch_add(1, SeqCst);
        let (access, refresh) = (format!("access-{n}"), format!("refresh-{n}"));
        self.access_valid.lock().unwrap().insert(access.clone());
        self.refresh_valid.lock().unwrap().insert(refresh.clone());
        pair(&access, &refresh, Duration::from_secs(4))
    }
}

#[tokio::test(start_paused = true)]
async fn no_refresh_token_reaches_the_endpoint_twice_through_faults_and_revocations() {
    let server = Arc::new(Strict {
        rng: Mutex::new(0x9e37_79b9_7f4a_7c15),
        issued: AtomicUsize::new(0),
        refresh_valid: Mutex::default(),
        refresh_reached: Mutex::default(),
        reuse: AtomicUsize::new(0),
        access_valid: Mutex::default(),
    });
    let grants = Arc::clone(&server);
    let layer = builder()
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .fetcher(fetcher::from_fn(move |grant| {
            let server = Arc::clone(&grants);
            async move { server.grant(grant).await }
        }))
        .build()
        .unwrap();
    let api = api_with(&server, |server, req| async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let ok = bearer(&req).is_some_and(|t| server.access_valid.lock().unwrap().contains(&t));
        Ok(answer(ok, Bytes::new()))
    });
    let svc = layer.layer(api);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let workers = (0..8).map(|_| {
        let svc = svc.clone();
        tokio::spawn(async move {
            let mut ok = 0;
            while tokio::time::Instant::now() < deadline {
                let res = in_time("request", svc.clone().oneshot(get())).await;
                ok += usize::from(res.is_ok_and(|r| r.status() == StatusCode::OK));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ok
        })
    });
    let ok: usize = join_all(workers)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    let stats = layer.stats();
    assert!(ok > 1000 && stats.refresh_ok > 10, "{ok} ok, {stats:?}");
    assert_eq!(
        server.reuse.load(SeqCst),
        0,
        "a refresh token was sent twice"
    );
}

// === the crate's server over loopback ===

#[cfg(feature = "rustls")]
mod loopback {
    use super::*;
    use daxium_auth::{
        AuthService,
        mock::{Fault, MockServer},
    };
    use hyper::body::Incoming;
    use hyper_util::{
        client::legacy::{Client, connect::HttpConnector},
        rt::TokioExecutor,
    };

    type Http = Client<HttpConnector, ReplayBody<Full<Bytes>>>;

    fn service(layer: &AuthLayer) -> AuthService<Http> {
        layer.layer(Client::builder(TokioExecutor::new()).build_http())
    }

    async fn get(
        svc: &AuthService<Http>,
        server: &MockServer,
    ) -> Result<Response<Incoming>, daxium_auth::Error<hyper_util::client::legacy::Error>> {
        let req = Request::get(server.api_url("items"))
            .body(Full::default())
            .unwrap();
        in_time("request", svc.clone().oneshot(req)).await
    }

    fn grant_types(server: &MockServer) -> Vec<String> {
        (server.grant_log().into_iter())
            .filter_map(|g| g.grant_type)
            .collect()
    }

    /// The refresh meets an answer that is not the endpoint's own: the
    /// refresh token is treated as spent, and the password grant follows at
    /// once, within the same request.
    async fn refresh_meets(fault: Fault) {
        let server = MockServer::builder()
            .reuse_protection(true)
            .start()
            .await
            .unwrap();
        let layer = AuthLayer::builder()
            .token_url(server.token_url())
            .credentials(server.credentials())
            .build()
            .unwrap();
        let svc = service(&layer);
        assert_eq!(get(&svc, &server).await.unwrap().status(), StatusCode::OK);
        server.revoke_all();
        server.fail_next_grants(1, fault);
        assert_eq!(get(&svc, &server).await.unwrap().status(), StatusCode::OK);
        assert_eq!(
            grant_types(&server),
            ["password", "refresh_token", "password"]
        );
        assert_eq!(server.counters().refresh_reuse, 0);
    }

    #[tokio::test]
    async fn a_gateway_403_page_on_the_refresh_falls_back_to_the_password_grant() {
        refresh_meets(Fault::Respond {
            status: StatusCode::FORBIDDEN,
            content_type: "text/html".into(),
            body: Bytes::from_static(b"<html><body><h1>403 Forbidden</h1>nginx</body></html>"),
            retry_after: None,
        })
        .await;
    }

    #[tokio::test]
    async fn an_empty_401_on_the_refresh_falls_back_to_the_password_grant() {
        refresh_meets(Fault::Respond {
            status: StatusCode::UNAUTHORIZED,
            content_type: String::new(),
            body: Bytes::new(),
            retry_after: None,
        })
        .await;
    }

    #[tokio::test]
    async fn a_grant_slower_than_the_wait_budget_is_still_used_when_it_lands() {
        let server = MockServer::start().await.unwrap();
        let layer = AuthLayer::builder()
            .token_url(server.token_url())
            .credentials(server.credentials())
            .wait_budget(Duration::from_millis(200))
            .build()
            .unwrap();
        let svc = service(&layer);
        server.fail_next_grants(1, Fault::Delay(Duration::from_millis(600)));
        let started = std::time::Instant::now();
        let err = get(&svc, &server).await.unwrap_err();
        assert!(err.token_error().unwrap().is_timeout(), "{err:?}");
        assert!(started.elapsed() < Duration::from_millis(550));
        // The grant is not abandoned with its callers: the next ones wait for the
        // same one, each within its own budget, until it lands.
        let mut failed = 0;
        while get(&svc, &server).await.is_err() {
            failed += 1;
        }
        assert!(failed <= 2, "{failed} more callers ran out of budget");
        assert_eq!(server.counters().password_ok, 1);
        assert_eq!(grant_types(&server), ["password"]);
    }
}
