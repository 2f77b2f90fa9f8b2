//! No secret ever shows: with sentinel values for the client secret, the
//! password, the refresh tokens and the access tokens, grants succeed and fail
//! in every way the crate knows, every `tracing` event and span is captured at
//! TRACE level, and every public type and error is formatted with `{:?}`,
//! `{:#?}` and `{}`: no sentinel appears anywhere. The `Authorization` header
//! the inner service receives is marked sensitive, so `http`'s own `Debug`
//! hides it too. The same holds for a fleet whose Redis refuses its
//! password, and for the seal key of its records.
#![cfg(all(feature = "mock", feature = "rustls"))]

use std::{
    error::Error as StdError,
    fmt::Write as _,
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{
    AuthLayer, BoxError, Credentials, ErrorBody, GrantRequest, HttpFetcher, RefreshToken,
    ReplayBody, TokenError, TokenPair, fetcher,
    mock::{Fault, MockServer},
};
use http::{Request, Response, StatusCode, header::AUTHORIZATION};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

mod support;

use support::{
    scripted::{Api, Endpoint, Step, api_service},
    secrets::{assert_no_secret, capture_logs, log_text},
};

const CLIENT_SECRET: &str = "SENTINEL-client-secret-4f1e";
const PASSWORD: &str = "SENTINEL-password-93ab";
const WRONG_PASSWORD: &str = "SENTINEL-wrong-password-77cd";
/// Every sentinel holds this, so one search finds them all.
const MARK: &str = "SENTINEL";

fn credentials(password: &str) -> Credentials {
    Credentials::new("client-id", CLIENT_SECRET, "user@example.com", password)
}

/// Everything formatted during a test, to be searched at the end.
#[derive(Default)]
struct Seen(String);

impl Seen {
    /// `{:?}` and `{:#?}`.
    fn debug(&mut self, value: &dyn std::fmt::Debug) {
        let _ = writeln!(self.0, "{value:?}\n{value:#?}");
    }

    /// `{}`, `{:?}`, `{:#?}`, and the same for every source in the chain.
    fn error(&mut self, err: &(dyn StdError + 'static)) {
        let _ = writeln!(self.0, "{err}\n{err:?}\n{err:#?}");
        let mut next = err.source();
        while let Some(source) = next {
            let _ = writeln!(self.0, "{source}\n{source:?}");
            next = source.source();
        }
    }
}

// === the cache level: the scripted endpoint, issuing sentinel tokens ===

#[tokio::test(start_paused = true)]
async fn the_cache_and_the_layer_never_show_a_secret() {
    capture_logs();
    let mut seen = Seen::default();
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.prefix.lock().unwrap() = format!("{MARK}-");
    *endpoint.latency.lock().unwrap() = Duration::from_millis(5);

    let builder = AuthLayer::builder()
        .credentials(credentials(PASSWORD))
        .api_origin("https://api.example.com")
        .backoff(Duration::from_millis(100), Duration::from_millis(200))
        // Longer than a grant (5 ms), shorter than the first backoff (50 ms at
        // least): callers see each failure at once.
        .wait_budget(Duration::from_millis(20))
        .rejected_cooldown(Duration::from_millis(100))
        .fetcher(endpoint.fetcher());
    seen.debug(&builder);
    let layer = builder.build().unwrap();

    // What a logging middleware under the layer would print.
    let printed = Arc::new(Mutex::new(Vec::new()));
    let inner = ServiceBuilder::new()
        .map_request({
            let printed = Arc::clone(&printed);
            move |req: Request<ReplayBody<Full<Bytes>>>| {
                printed.lock().unwrap().push(format!("{req:?}"));
                req
            }
        })
        .service(api_service::<Full<Bytes>>(&api));
    let svc = layer.layer(inner);
    seen.debug(&svc);
    seen.debug(&layer);

    // Every state of the login, as a subscriber would log it.
    let states = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tokio::spawn({
        let (states, mut login) = (Arc::clone(&states), layer.subscribe());
        async move {
            while login.changed().await.is_ok() {
                let state = *login.borrow_and_update();
                states
                    .lock()
                    .unwrap()
                    .push(format!("{state:?} {state:#?} {state}"));
            }
        }
    });

    let revoke_latest = || {
        let issued = endpoint.issued_tokens();
        api.revoke(&issued[issued.len() - 2]);
    };
    let get = || {
        Request::post("https://api.example.com/api/items")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap()
    };

    // A password grant; then the API refuses the token: a refresh grant and a replay.
    let token = layer.cache().access_token().await.unwrap();
    seen.debug(&token);
    seen.debug(token.header_value());
    let mut call = svc.clone();
    let fut = call.ready().await.unwrap().call(get());
    seen.debug(&fut);
    assert_eq!(fut.await.unwrap().status(), StatusCode::OK);
    revoke_latest();
    let replayed = svc.clone().oneshot(get()).await;
    assert_eq!(replayed.unwrap().status(), StatusCode::OK);
    assert_eq!(
        *endpoint.refresh_seen.lock().unwrap(),
        [format!("{MARK}-refresh-1")]
    );

    // Failures a fetcher reports, each reaching a caller: the API refuses the
    // token, and the grant that follows fails.
    let daerr = ErrorBody::parse(
        br#"{"code":"DAERR-0401","message":"Invalid credentials","url":"https://x/e","server_time":"1"}"#,
    );
    let failures = [
        vec![Step::Error(TokenError::transport(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "reset",
        )))],
        vec![Step::Error(TokenError::timeout())],
        vec![Step::Error(TokenError::connect(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "refused",
        )))],
        // The refresh token is refused, then the password.
        vec![
            Step::Error(TokenError::rejected(
                StatusCode::BAD_REQUEST,
                ErrorBody::parse(br#"{"error":"invalid_grant","error_description":"spent"}"#),
            )),
            Step::Error(TokenError::rejected(
                StatusCode::UNAUTHORIZED,
                daerr.clone(),
            )),
        ],
    ];
    for steps in failures {
        // Past the backoff of the round before.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        endpoint.script.lock().unwrap().extend(steps);
        revoke_latest();
        let err = svc.clone().oneshot(get()).await.unwrap_err();
        let token = err.token_error().expect("a token error").clone();
        seen.error(&err);
        seen.error(&token);
        seen.debug(&token.body());
        if let Some(body) = token.body() {
            let _ = writeln!(seen.0, "{body}");
        }
        // Through the cache directly, too.
        if let Err(direct) = layer.cache().access_token().await {
            seen.error(&direct);
        }
        // Recover: past the backoff and the cool-down, a new grant, whose token
        // the API accepts (so that its refusal next round is a revocation).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let _ = layer.cache().access_token().await.unwrap();
        let ok = svc.clone().oneshot(get()).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }
    seen.debug(&layer.stats());
    seen.debug(&layer.cache());
    seen.debug(&layer);
    subscriber.abort();
    let states = states.lock().unwrap().clone();
    assert!(states.len() >= 10, "{states:?}");
    for state in states {
        let _ = writeln!(seen.0, "{state}");
    }
    seen.debug(&GrantRequest::refresh(
        Arc::new(credentials(PASSWORD)),
        RefreshToken::new(&format!("{MARK}-refresh-x")).unwrap(),
    ));
    seen.debug(&credentials(PASSWORD));
    seen.debug(&ReplayBody::new(Full::new(Bytes::from_static(b"x"))));
    seen.debug(&ReplayBody::<Full<Bytes>>::empty());
    let pair = daxium_auth::parse_token_response(
        format!(
            r#"{{"access_token":"{MARK}-access-parsed","refresh_token":"{MARK}-refresh-parsed","expires_in":60,"token_type":"bearer","scope":"api"}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    seen.debug(&pair);
    seen.debug(pair.access_token());
    seen.debug(&pair.refresh_token());
    seen.debug(&fetcher::from_fn(|_grant: GrantRequest| async {
        Err::<TokenPair, _>(TokenError::timeout())
    }));
    seen.debug(&daxium_auth::NoReplay);

    // The inner service only ever saw a sensitive header.
    let headers: Vec<bool> = api
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|auth| auth.as_ref().is_some_and(|v| v.is_sensitive()))
        .collect();
    assert!(headers.len() >= 7, "{headers:?}");
    assert!(headers.iter().all(|&sensitive| sensitive), "{headers:?}");
    for req in printed.lock().unwrap().iter() {
        let _ = writeln!(seen.0, "{req}");
    }

    let mut secrets = vec![
        MARK.to_owned(),
        CLIENT_SECRET.to_owned(),
        PASSWORD.to_owned(),
    ];
    let issued = endpoint.issued_tokens();
    assert!(issued.len() >= 10);
    secrets.extend(issued);
    assert_no_secret(&seen.0, &secrets, "formatted values");
    let logs = log_text();
    assert!(
        logs.contains("daxium_auth.grant") && logs.contains("grant failed"),
        "the grant spans and events were captured"
    );
    assert_no_secret(&logs, &secrets, "logs");
}

// === over HTTP: the mock server, and a tap that reads every token it issues ===

/// A client for the token endpoint that reads every response body, keeps the
/// tokens it finds, and hands the body on.
fn tapped_client(
    tokens: Arc<Mutex<Vec<String>>>,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    tower::service_fn(move |req: Request<Full<Bytes>>| {
        let client = client.clone();
        let tokens = Arc::clone(&tokens);
        async move {
            let res = client.request(req).await?;
            let (parts, body) = res.into_parts();
            let bytes = body.collect().await?.to_bytes();
            if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(&bytes) {
                for key in ["access_token", "refresh_token"] {
                    if let Some(serde_json::Value::String(token)) = map.get(key) {
                        tokens.lock().unwrap().push(token.clone());
                    }
                }
            }
            Ok::<_, BoxError>(Response::from_parts(parts, Full::new(bytes)))
        }
    })
}

#[tokio::test]
async fn http_grants_and_failures_never_show_a_secret() {
    capture_logs();
    let mut seen = Seen::default();
    let server = MockServer::builder()
        .credentials(credentials(PASSWORD))
        .token_lifetime(Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    seen.debug(&server);
    seen.debug(&MockServer::builder().credentials(credentials(PASSWORD)));

    let tokens = Arc::new(Mutex::new(Vec::new()));
    let fetcher = HttpFetcher::with_client(&server.token_url(), tapped_client(Arc::clone(&tokens)))
        .unwrap()
        .timeout(Duration::from_millis(500));
    seen.debug(&fetcher);
    let layer = AuthLayer::builder()
        .token_url(server.token_url())
        .credentials(credentials(PASSWORD))
        .fetcher(fetcher)
        .backoff(Duration::from_millis(400), Duration::from_millis(800))
        // Longer than a grant on loopback, shorter than the first backoff
        // (200 ms at least): callers see each failure at once.
        .wait_budget(Duration::from_millis(100))
        .rejected_cooldown(Duration::from_millis(50))
        .build()
        .unwrap();

    // The API client, under a tap that checks and prints each request.
    let api_seen = Arc::new(Mutex::new((0usize, 0usize, String::new())));
    let tap = {
        let api_seen = Arc::clone(&api_seen);
        move |req: Request<ReplayBody<Full<Bytes>>>| {
            let mut seen = api_seen.lock().unwrap();
            seen.0 += 1;
            if req
                .headers()
                .get(AUTHORIZATION)
                .is_some_and(|v| v.is_sensitive())
            {
                seen.1 += 1;
            }
            let _ = writeln!(seen.2, "{req:?}");
            req
        }
    };
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .map_request(tap)
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());
    let get = || {
        Request::get(server.api_url("items"))
            .body(Full::<Bytes>::default())
            .unwrap()
    };

    // A password grant, then a refresh grant after an API 401.
    assert_eq!(
        svc.clone().oneshot(get()).await.unwrap().status(),
        StatusCode::OK
    );
    server.fail_next_api(1, StatusCode::UNAUTHORIZED);
    assert_eq!(
        svc.clone().oneshot(get()).await.unwrap().status(),
        StatusCode::OK
    );

    let in_body = |status: StatusCode, content_type: &str, body: String| Fault::Respond {
        status,
        content_type: content_type.to_owned(),
        body: Bytes::from(body),
        retry_after: None,
    };
    let daerr_401 = in_body(
        StatusCode::UNAUTHORIZED,
        "application/json",
        r#"{"code":"DAERR-0401","message":"Invalid credentials","url":"https://docs/e","api_version":"v1.3","infos":[],"server_time":"1700000000"}"#.to_owned(),
    );
    // Each case: the faults the next grants meet, after the API refused the token.
    let cases: Vec<(&str, Vec<Fault>)> = vec![
        (
            "a 200 whose malformed body holds the token",
            vec![in_body(
                StatusCode::OK,
                "application/json",
                format!(r#"{{"access_token":"{MARK}-in-malformed-body"#),
            )],
        ),
        (
            "a 200 with an invalid token",
            vec![in_body(
                StatusCode::OK,
                "application/json",
                format!(r#"{{"access_token":"{MARK} with\r\nspace","token_type":"bearer"}}"#),
            )],
        ),
        (
            "a 200 with an error field and a token, for the refresh and the password",
            vec![
                in_body(
                    StatusCode::OK,
                    "application/json",
                    format!(r#"{{"error":"invalid_grant","access_token":"{MARK}-in-error"}}"#),
                );
                2
            ],
        ),
        (
            "a 200 in text/plain echoing the password",
            vec![in_body(
                StatusCode::OK,
                "text/plain",
                format!("password={PASSWORD}"),
            )],
        ),
        (
            "a 401 DAERR for the refresh, then for the password",
            vec![daerr_401.clone(), daerr_401],
        ),
        (
            "a 400 invalid_grant, then a 401 DAERR",
            vec![
                in_body(
                    StatusCode::BAD_REQUEST,
                    "application/json",
                    r#"{"error":"invalid_grant","error_description":"refresh token spent"}"#
                        .to_owned(),
                ),
                Fault::ServerError,
            ],
        ),
        ("a 500", vec![Fault::ServerError]),
        (
            "a 500 echoing the secrets",
            vec![in_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("client_secret={CLIENT_SECRET}&password={PASSWORD}"),
            )],
        ),
        (
            "a 503 with a JSON body echoing a token",
            vec![in_body(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                format!(r#"{{"access_token":"{MARK}-in-503","details":"{PASSWORD}"}}"#),
            )],
        ),
        ("a 429", vec![Fault::TooManyRequests { retry_after: 0 }]),
        ("a reset", vec![Fault::Reset]),
        (
            "a redirect with secrets in the Location",
            vec![Fault::Redirect(format!(
                "http://127.0.0.1:1/steal?password={PASSWORD}&token={MARK}-in-location"
            ))],
        ),
        ("an HTML page", vec![Fault::Html]),
        ("malformed JSON", vec![Fault::MalformedJson]),
        ("an oversized body", vec![Fault::Oversized]),
        ("too slow", vec![Fault::Delay(Duration::from_secs(1))]),
    ];
    for (what, faults) in cases {
        // The token in use has worked: the API's 401 is a revocation, and the
        // grant it starts at once is the one that meets the fault.
        for fault in faults {
            server.fail_next_grants(1, fault);
        }
        server.fail_next_api(1, StatusCode::UNAUTHORIZED);
        let res = tokio::time::timeout(Duration::from_secs(10), svc.clone().oneshot(get()))
            .await
            .expect("no request hangs");
        match &res {
            Err(err) => {
                assert!(err.is_token(), "{what}: {err:?}");
                seen.error(err);
                let token = err.token_error().unwrap();
                seen.error(token);
                seen.debug(&token.body());
                if let Some(body) = token.body() {
                    let _ = writeln!(seen.0, "{body}");
                }
            }
            Ok(res) => seen.debug(res),
        }
        assert!(res.is_err(), "{what}: the caller sees the failure");
        // Recover: bounded retries past the backoff or the cool-down.
        let mut recovered = false;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            match svc.clone().oneshot(get()).await {
                Ok(res) if res.status() == StatusCode::OK => {
                    recovered = true;
                    break;
                }
                Ok(res) => seen.debug(&res),
                Err(err) => seen.error(&err),
            }
        }
        assert!(recovered, "{what}: no recovery");
    }

    // A wrong password, from the first grant.
    let wrong = AuthLayer::builder()
        .token_url(server.token_url())
        .credentials(credentials(WRONG_PASSWORD))
        .build()
        .unwrap();
    seen.debug(&wrong);
    let wrong_svc =
        wrong.layer(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());
    let err = wrong_svc.oneshot(get()).await.unwrap_err();
    assert!(err.token_error().unwrap().is_grant_rejected());
    seen.error(&err);
    seen.error(err.token_error().unwrap());

    seen.debug(&layer);
    seen.debug(&layer.stats());
    seen.debug(&server.counters());
    let log = server.grant_log();
    seen.debug(&log);
    for grant in &log {
        let _ = writeln!(seen.0, "{}", grant.uri);
        assert!(
            !grant.uri.contains('?'),
            "no grant puts anything in the URL"
        );
    }
    let (requests, sensitive, printed) = api_seen.lock().unwrap().clone();
    assert!(requests >= 2 * 16 + 2, "{requests}");
    assert_eq!(
        requests, sensitive,
        "every API request had a sensitive header"
    );
    seen.0.push_str(&printed);

    let mut secrets = vec![
        MARK.to_owned(),
        CLIENT_SECRET.to_owned(),
        PASSWORD.to_owned(),
        WRONG_PASSWORD.to_owned(),
    ];
    let issued = tokens.lock().unwrap().clone();
    assert!(issued.len() >= 2 * 16, "tokens captured: {}", issued.len());
    secrets.extend(issued);
    // The grant log holds the refresh tokens sent: they are secrets as well.
    assert!(
        log.iter()
            .any(|g| g.grant_type.as_deref() == Some("refresh_token"))
    );
    assert_no_secret(&seen.0, &secrets, "formatted values");
    let logs = log_text();
    assert!(
        logs.contains("token endpoint answered"),
        "the fetcher's events were captured"
    );
    assert_no_secret(&logs, &secrets, "logs");
    server.shutdown().await;
}

#[test]
fn the_builder_debug_hides_user_info_and_query_of_urls() {
    let builder = AuthLayer::builder()
        .credentials(credentials(PASSWORD))
        .token_url(format!(
            "https://user:{MARK}-userinfo@auth.example.com/oauth/v2/token?client_secret={CLIENT_SECRET}"
        ))
        .api_origin(format!("https://user:{MARK}-origin@api.example.com/?key={MARK}-query"));
    let text = format!("{builder:?} {builder:#?}");
    // The URLs still show where they point.
    assert!(
        text.contains("auth.example.com") && text.contains("api.example.com"),
        "{text}"
    );
    assert_no_secret(
        &text,
        &[MARK.to_owned(), CLIENT_SECRET.to_owned()],
        "the builder's Debug",
    );
}

// === a fleet on a Redis that refuses its password ===

#[cfg(all(feature = "redis", feature = "sealed"))]
#[tokio::test]
async fn no_secret_shows_in_debug_errors_or_logs_of_a_fleet_with_a_wrong_redis_password() {
    use daxium_auth::store::{RedisStore, SealKey, TokenStore};
    use support::{
        redis::RedisServer,
        stores::{bounded, login, ok},
    };

    let server = RedisServer::with_password("right-sentinel-pass");
    capture_logs();

    let url = server.url_with(":wrong-sentinel-pass@");
    let store = RedisStore::builder(&url)
        .seal(SealKey::new([0x5e; 32]))
        .build()
        .unwrap();
    let err = store.read(&login()).await.unwrap_err();
    assert!(err.is_auth_failed(), "{err:?}");
    let mut seen = Seen::default();
    seen.error(&err);
    seen.debug(&store);

    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.prefix.lock().unwrap() = "tok-sentinel-".into();
    let layer = support::scripted::layer_with(&endpoint, |b| {
        b.store(store.clone()).credentials(Credentials::new(
            "client",
            "secret-sentinel",
            "user@example.com",
            "password-sentinel",
        ))
    });
    let svc = layer.layer(api_service(&api));
    assert!(ok(&bounded(&svc, Duration::from_secs(5)).await.unwrap()));
    layer.cache().refresh_now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ok(&bounded(&svc, Duration::from_secs(5)).await.unwrap()));
    assert!(layer.stats().store_errors > 0);
    seen.debug(&layer);
    seen.debug(&svc);
    seen.debug(&layer.stats());
    let builder = AuthLayer::builder()
        .store(store.clone())
        .credentials(Credentials::new(
            "c",
            "secret-sentinel",
            "u",
            "password-sentinel",
        ));
    seen.debug(&builder);

    let logs = log_text();
    assert!(logs.contains("token store unavailable"), "{logs}");
    let mut secrets = vec![
        "right-sentinel-pass".to_owned(),
        "wrong-sentinel-pass".to_owned(),
        "secret-sentinel".to_owned(),
        "password-sentinel".to_owned(),
        // The seal key's bytes, as Debug of an array would print them.
        "94, 94, 94".to_owned(),
    ];
    secrets.extend(endpoint.issued_tokens());
    assert_no_secret(&seen.0, &secrets, "formatted values");
    assert_no_secret(&logs, &secrets, "logs");
}
