//! `HttpFetcher` over its default hyper-util + rustls client against the
//! Daxium-compatible mock server on 127.0.0.1: both grants, rotation, every
//! refusal and fault the classification knows, the exact request on the wire,
//! and no secret in any `Debug` or `Display`.
#![cfg(all(feature = "mock", feature = "rustls"))]

use std::{
    error::Error as _,
    fmt::Debug,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use daxium_auth::{
    BuildError, Credentials, GrantRequest, GrantType, HttpFetcher, TokenError, TokenFetcher,
    TokenPair, fetcher,
    mock::{Fault, MockServer, codes},
};
use http::{Method, StatusCode};

use crate::support;

use support::secrets::assert_no_secret;

/// Sentinels: none of these may ever be printed.
const CLIENT_SECRET: &str = "client-secret-SENTINEL";
const PASSWORD: &str = "p&ss=w+rd%é-SENTINEL";
/// `PASSWORD` as `application/x-www-form-urlencoded` encodes it.
const PASSWORD_ENCODED: &str = "p%26ss%3Dw%2Brd%25%C3%A9-SENTINEL";

/// Every fetch in these tests ends within this, whatever the server does.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

fn credentials() -> Credentials {
    with_password(PASSWORD)
}

fn with_password(password: &str) -> Credentials {
    Credentials::new("daxium-client", CLIENT_SECRET, "user@example.com", password)
}

async fn server() -> MockServer {
    MockServer::builder()
        .credentials(credentials())
        .start()
        .await
        .expect("the mock server starts")
}

fn fetcher_for(server: &MockServer) -> HttpFetcher {
    HttpFetcher::new(&server.token_url())
        .expect("http to 127.0.0.1 is allowed")
        .timeout(TEST_TIMEOUT)
}

fn password_grant() -> GrantRequest {
    GrantRequest::password(Arc::new(credentials()))
}

/// A password grant that must succeed.
async fn log_in(fetcher: &impl TokenFetcher) -> TokenPair {
    fetcher
        .fetch(password_grant())
        .await
        .expect("password grant")
}

fn refresh_grant(pair: &TokenPair) -> GrantRequest {
    let refresh = pair
        .refresh_token()
        .expect("the mock rotates refresh tokens");
    GrantRequest::refresh(Arc::new(credentials()), refresh.clone())
}

/// Fails if the `Debug` (and `Display`, for errors) of `value` shows a secret:
/// the sentinels, or any of `tokens`.
fn assert_debug_clean(value: &impl Debug, tokens: &[&str]) {
    let text = format!("{value:?} {value:#?}");
    assert_clean(&text, tokens);
}

/// Fails if `text` shows a sentinel, the password even in part, or any of
/// `tokens`.
fn assert_clean(text: &str, tokens: &[&str]) {
    let mut secrets = vec!["SENTINEL", "p&ss", "p%26ss"];
    secrets.extend_from_slice(tokens);
    assert_no_secret(text, &secrets, "the text");
}

/// A password grant on a new server that meets `fault` and fails, as
/// [`fetch_err`] checks it.
async fn password_grant_meeting(fault: Fault) -> (MockServer, TokenError) {
    let server = server().await;
    server.fail_next_grants(1, fault);
    let err = fetch_err(&fetcher_for(&server), password_grant()).await;
    (server, err)
}

/// A grant that must fail; the error's `Debug`, `Display` and source chain
/// are checked for secrets on the way.
async fn fetch_err(fetcher: &HttpFetcher, grant: GrantRequest) -> TokenError {
    let grant_type = grant.grant_type();
    let err = fetcher.fetch(grant).await.expect_err("the grant fails");
    assert_eq!(err.grant_type(), Some(grant_type));
    assert_debug_clean(&err, &[]);
    assert_clean(&err.to_string(), &[]);
    let mut source = err.source();
    while let Some(cause) = source {
        assert_clean(&format!("{cause} {cause:?}"), &[]);
        source = cause.source();
    }
    err
}

fn secrets_of(pair: &TokenPair) -> Vec<String> {
    let mut secrets = vec![pair.access_token().expose_secret().to_owned()];
    if let Some(refresh) = pair.refresh_token() {
        secrets.push(refresh.expose_secret().to_owned());
    }
    secrets
}

// === grants ===

#[tokio::test]
async fn password_grant_gets_a_token_pair() {
    let server = server().await;
    let fetcher = fetcher_for(&server);
    let pair = log_in(&fetcher).await;

    assert!(!pair.access_token().expose_secret().is_empty());
    assert!(pair.refresh_token().is_some());
    assert_eq!(pair.lifetime(), Duration::from_secs(3600));
    let counters = server.counters();
    assert_eq!((counters.password_ok, counters.password_rejected), (1, 0));
    assert_eq!(counters.bad_requests, 0);

    let secrets = secrets_of(&pair);
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_debug_clean(&pair, &secrets);
    assert_debug_clean(&fetcher, &secrets);
    assert_debug_clean(&password_grant(), &secrets);
}

#[tokio::test]
async fn refresh_grant_rotates_the_pair() {
    let server = server().await;
    let fetcher = fetcher_for(&server);
    let first = log_in(&fetcher).await;
    let second = fetcher
        .fetch(refresh_grant(&first))
        .await
        .expect("refresh grant");

    assert_ne!(
        second.access_token().expose_secret(),
        first.access_token().expose_secret()
    );
    let (old, new) = (
        first.refresh_token().unwrap(),
        second.refresh_token().unwrap(),
    );
    assert_ne!(old.expose_secret(), new.expose_secret());
    assert_eq!(second.lifetime(), Duration::from_secs(3600));
    let counters = server.counters();
    assert_eq!((counters.password_ok, counters.refresh_ok), (1, 1));

    let grant = refresh_grant(&first);
    let secrets = [secrets_of(&first), secrets_of(&second)].concat();
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_debug_clean(&grant, &secrets);
    assert_debug_clean(&second, &secrets);
}

#[tokio::test]
async fn spent_refresh_token_is_refused() {
    let server = server().await;
    let fetcher = fetcher_for(&server);
    let first = log_in(&fetcher).await;
    fetcher
        .fetch(refresh_grant(&first))
        .await
        .expect("first refresh");

    let err = fetch_err(&fetcher, refresh_grant(&first)).await;
    assert!(err.is_grant_rejected() && !err.is_transient(), "{err:?}");
    assert!(err.may_have_been_sent());
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    let code = err.error_code().expect("a DAERR- code");
    assert!(code.starts_with("DAERR-"), "{code}");
    assert_eq!(code, codes::REFRESH_TOKEN_REUSED);
    assert_eq!(server.counters().refresh_reuse, 1);
    assert_clean(
        &format!("{err}"),
        &secrets_of(&first)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
}

#[tokio::test]
async fn wrong_password_is_refused_with_its_code() {
    let server = server().await;
    server.set_credentials(with_password("another password"));
    let err = fetch_err(&fetcher_for(&server), password_grant()).await;

    assert!(err.is_grant_rejected() && !err.is_transient(), "{err:?}");
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(err.error_code(), Some(codes::INVALID_CREDENTIALS));
    assert!(
        err.to_string().contains(codes::INVALID_CREDENTIALS),
        "{err}"
    );
    assert_eq!(server.counters().password_rejected, 1);
}

#[tokio::test]
async fn service_impl_composes_with_tower_layers() {
    let server = server().await;
    let stack = tower::ServiceBuilder::new()
        .concurrency_limit(1)
        .service(fetcher_for(&server));
    let fetcher = fetcher::from_service(stack);
    let pair = log_in(&fetcher).await;
    assert!(pair.refresh_token().is_some());

    server.fail_next_grants(1, Fault::ServerError);
    let err = fetcher.fetch(password_grant()).await.unwrap_err();
    assert!(err.is_transient() && !err.is_grant_rejected(), "{err:?}");
    assert_eq!(err.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
}

// === faults ===

#[tokio::test]
async fn server_error_is_transient() {
    let (_server, err) = password_grant_meeting(Fault::ServerError).await;

    assert!(err.is_transient() && !err.is_grant_rejected(), "{err:?}");
    assert!(err.may_have_been_sent() && !err.is_connect());
    assert_eq!(err.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(err.error_code(), Some(codes::SERVER_ERROR));
    assert_eq!(err.retry_after(), None);
}

#[tokio::test]
async fn too_many_requests_carries_retry_after() {
    let (_server, err) = password_grant_meeting(Fault::TooManyRequests { retry_after: 7 }).await;

    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(err.error_code(), Some(codes::TOO_MANY_REQUESTS));
}

#[tokio::test]
async fn retry_after_as_a_date_and_rfc6749_refusal() {
    let server = server().await;
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
    server.fail_next_grants(
        1,
        Fault::Respond {
            status: StatusCode::SERVICE_UNAVAILABLE,
            content_type: String::new(),
            body: Bytes::new(),
            retry_after: Some(date),
        },
    );
    server.fail_next_grants(
        1,
        Fault::Respond {
            status: StatusCode::BAD_REQUEST,
            content_type: "application/json".into(),
            body: Bytes::from_static(br#"{"error":"invalid_grant","error_description":"expired"}"#),
            retry_after: None,
        },
    );
    let fetcher = fetcher_for(&server);

    let err = fetch_err(&fetcher, password_grant()).await;
    assert!(err.is_transient(), "{err:?}");
    let after = err.retry_after().expect("a Retry-After date");
    assert!(
        after > Duration::from_secs(100) && after <= Duration::from_secs(120),
        "{after:?}"
    );

    let err = fetch_err(&fetcher, password_grant()).await;
    assert!(err.is_grant_rejected(), "{err:?}");
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(err.error_code(), Some("invalid_grant"));
}

#[tokio::test]
async fn a_gateway_in_front_of_the_endpoint_refuses_nothing() {
    let server = server().await;
    let respond = |status, content_type: &str, body: &'static [u8]| Fault::Respond {
        status,
        content_type: content_type.into(),
        body: Bytes::from_static(body),
        retry_after: None,
    };
    let html = b"<html><body><h1>403 Forbidden</h1><p>cdn-sentinel</p></body></html>";
    server.fail_next_grants(1, respond(StatusCode::FORBIDDEN, "text/html", html));
    let gateway = br#"{"code":400,"message":"Bad Request"}"#;
    server.fail_next_grants(
        1,
        respond(StatusCode::BAD_REQUEST, "application/json", gateway),
    );
    server.fail_next_grants(1, respond(StatusCode::UNAUTHORIZED, "", b""));
    let fetcher = fetcher_for(&server);

    for status in [
        StatusCode::FORBIDDEN,
        StatusCode::BAD_REQUEST,
        StatusCode::UNAUTHORIZED,
    ] {
        let err = fetch_err(&fetcher, password_grant()).await;
        assert!(!err.is_grant_rejected() && !err.is_transient(), "{err:?}");
        assert_eq!(err.status(), Some(status));
        assert_eq!(err.error_code(), None, "{err:?}");
        assert!(!err.to_string().contains("cdn-sentinel"), "{err}");
    }
    // The endpoint itself, behind the gateway, still refuses with its code.
    server.set_credentials(with_password("another password"));
    let err = fetch_err(&fetcher, password_grant()).await;
    assert!(err.is_grant_rejected(), "{err:?}");
    assert_eq!(server.counters().faults_injected, 3);
}

#[tokio::test]
async fn reset_may_have_been_sent() {
    let (server, err) = password_grant_meeting(Fault::Reset).await;

    assert!(err.is_transient() && err.may_have_been_sent(), "{err:?}");
    assert!(!err.is_connect() && !err.is_timeout());
    assert_eq!(err.status(), None);
    assert!(
        err.source().is_some(),
        "the transport error is kept as the source"
    );
    assert_eq!(server.counters().faults_injected, 1);
}

#[tokio::test]
async fn connection_refused_was_never_sent() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let fetcher = HttpFetcher::new(&format!("http://127.0.0.1:{port}/oauth/v2/token"))
        .expect("loopback http")
        .timeout(TEST_TIMEOUT);
    let err = fetch_err(&fetcher, password_grant()).await;

    assert!(err.is_connect() && err.is_transient(), "{err:?}");
    assert!(!err.may_have_been_sent());
    assert_eq!(err.status(), None);
    assert!(err.source().is_some());
    assert_eq!(
        err.to_string(),
        "password grant: could not connect to the token endpoint"
    );
}

#[tokio::test]
async fn malformed_json_is_an_invalid_response() {
    let (_server, err) = password_grant_meeting(Fault::MalformedJson).await;

    assert!(err.is_invalid_response() && err.is_transient(), "{err:?}");
    assert_eq!(err.status(), Some(StatusCode::OK));
    // The 2xx body (`{"access_token": "ab`) is never copied.
    assert!(!format!("{err} {err:?}").contains("\"ab"), "{err:?}");
}

#[tokio::test]
async fn html_page_is_described_by_its_content_type() {
    let (_server, err) = password_grant_meeting(Fault::Html).await;

    assert!(err.is_transient() && err.is_invalid_response(), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("text/html"), "{text}");
    assert!(
        !text.contains("sign in") && !text.contains("<html"),
        "{text}"
    );
}

#[tokio::test]
async fn oversized_body_is_refused() {
    let (_server, err) = password_grant_meeting(Fault::Oversized).await;

    assert!(err.is_body_too_large() && err.is_transient(), "{err:?}");
    assert_eq!(err.status(), Some(StatusCode::OK));
}

#[tokio::test]
async fn redirect_is_not_followed() {
    let server = server().await;
    let elsewhere = format!("{}/elsewhere/token", server.base_url());
    server.fail_next_grants(1, Fault::Redirect(elsewhere));
    let err = fetch_err(&fetcher_for(&server), password_grant()).await;

    assert!(err.is_redirect() && !err.is_transient(), "{err:?}");
    assert_eq!(err.status(), Some(StatusCode::TEMPORARY_REDIRECT));
    assert!(!format!("{err} {err:?}").contains("elsewhere"));
    assert_eq!(
        server.grant_log().len(),
        1,
        "exactly one request, not followed"
    );
    let counters = server.counters();
    assert_eq!(counters.not_found, 0, "nothing went to the Location");
    assert_eq!(counters.password_ok, 0);
}

#[tokio::test]
async fn slow_endpoint_times_out() {
    let server = server().await;
    server.fail_next_grants(1, Fault::Delay(Duration::from_secs(2)));
    let fetcher = fetcher_for(&server).timeout(Duration::from_millis(200));
    let started = Instant::now();
    let err = fetch_err(&fetcher, password_grant()).await;

    assert!(err.is_timeout() && err.is_transient(), "{err:?}");
    assert!(err.may_have_been_sent());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

// === the request on the wire ===

#[tokio::test]
async fn request_is_exactly_the_contract() {
    let server = server().await;
    let fetcher = fetcher_for(&server);
    let pair = log_in(&fetcher).await;
    fetcher
        .fetch(refresh_grant(&pair))
        .await
        .expect("refresh grant");

    let log = server.grant_log();
    assert_eq!(log.len(), 2);
    for grant in &log {
        assert_eq!(grant.method, Method::POST);
        assert_eq!(grant.uri, "/oauth/v2/token");
        assert_eq!(
            grant.content_type.as_deref(),
            Some("application/x-www-form-urlencoded")
        );
    }

    assert_eq!(log[0].grant_type.as_deref(), Some("password"));
    let expected = format!(
        "grant_type=password&client_id=daxium-client&client_secret=client-secret-SENTINEL\
         &username=user%40example.com&password={PASSWORD_ENCODED}"
    );
    assert_eq!(log[0].body, Bytes::from(expected));

    assert_eq!(log[1].grant_type.as_deref(), Some("refresh_token"));
    let refresh = pair.refresh_token().unwrap().expose_secret();
    let encoded: String = url_encode(refresh);
    let expected = format!(
        "grant_type=refresh_token&client_id=daxium-client&client_secret=client-secret-SENTINEL\
         &refresh_token={encoded}"
    );
    assert_eq!(log[1].body, Bytes::from(expected));
    assert!(!log[1].uri.contains(refresh));
}

/// Form encoding by hand, for the comparison.
fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                char::from(b).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn form_encoding_helper_matches_the_expected_password() {
    assert_eq!(url_encode(PASSWORD), PASSWORD_ENCODED);
}

// === construction ===

#[test]
fn token_url_rules() {
    let uri = |url: &str| HttpFetcher::with_client(url, ()).map(|f| f.token_uri().clone());
    assert!(uri("https://auth.example.com/oauth/v2/token").is_ok());
    assert_eq!(
        uri("http://127.0.0.1:1/oauth/v2/token").unwrap(),
        "http://127.0.0.1:1/oauth/v2/token"
    );
    for insecure in ["http://example.com/x", "http://10.0.0.1/oauth/v2/token"] {
        assert_eq!(
            uri(insecure).unwrap_err(),
            BuildError::InsecureUrl { what: "token" }
        );
        assert_eq!(
            HttpFetcher::new(insecure).unwrap_err(),
            BuildError::InsecureUrl { what: "token" }
        );
    }
    assert!(matches!(
        uri("https://user:pw@auth.example.com/token"),
        Err(BuildError::InvalidUrl { what: "token", .. })
    ));
    assert!(matches!(
        uri("/oauth/v2/token"),
        Err(BuildError::InvalidUrl { .. })
    ));
    let fetcher = HttpFetcher::with_client("https://auth.example.com/t", 7u8).unwrap();
    assert_eq!(fetcher.get_ref(), &7);
}

#[test]
fn debug_shows_url_and_timeout_only() {
    let fetcher = HttpFetcher::new("http://127.0.0.1:1/oauth/v2/token").expect("loopback");
    assert_eq!(
        format!("{fetcher:?}"),
        r#"HttpFetcher { token_url: "http://127.0.0.1:1/oauth/v2/token", timeout: 30s, .. }"#
    );
    let fetcher = HttpFetcher::with_client(
        "https://auth.example.com/oauth/v2/token?tenant=t-sentinel",
        (),
    )
    .unwrap()
    .timeout(Duration::from_secs(9));
    assert_eq!(
        format!("{fetcher:?}"),
        r#"HttpFetcher { token_url: "https://auth.example.com/oauth/v2/token", timeout: 9s, .. }"#
    );
    assert_eq!(fetcher.token_uri().query(), Some("tenant=t-sentinel"));
}

#[test]
fn grant_request_debug_has_no_secret() {
    let grant = password_grant();
    assert_eq!(grant.grant_type(), GrantType::Password);
    assert_debug_clean(&grant, &[]);
    assert!(format!("{grant:?}").contains("daxium-client"));
}
