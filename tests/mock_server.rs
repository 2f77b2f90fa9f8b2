//! The mock Daxium server, driven over real HTTP on 127.0.0.1 with hyper-util's
//! client: the token endpoint per the contract, the protected resource, every
//! fault, and the controls that tests of the layer rely on.
#![cfg(feature = "mock")]

use std::time::{Duration, Instant};

use bytes::Bytes;
use daxium_auth::{
    Credentials,
    mock::{ApiDenial, Fault, MockCounters, MockServer, codes},
};
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use secrecy::ExposeSecret as _;
use serde_json::Value;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("text header"))
    }

    /// Checks the Daxium error shape and returns its code.
    fn daerr(&self) -> String {
        assert_eq!(self.header(header::CONTENT_TYPE), Some("application/json"));
        let body = self.json();
        let code = body["code"].as_str().expect("code").to_owned();
        assert!(code.starts_with("DAERR-"), "{code}");
        assert!(!body["message"].as_str().expect("message").is_empty());
        assert_eq!(
            body["url"].as_str(),
            Some(format!("https://docs.daxium-air.com/errors/{code}").as_str())
        );
        assert_eq!(body["api_version"], "v1.3");
        assert_eq!(body["infos"], Value::Array(vec![]));
        let server_time: u64 = body["server_time"]
            .as_str()
            .expect("server_time is a string")
            .parse()
            .expect("unix seconds");
        assert!(server_time > 1_600_000_000);
        code
    }
}

async fn try_send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> Result<Reply, hyper_util::client::legacy::Error> {
    let response = client.request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

async fn send(client: &HttpClient, request: Request<Full<Bytes>>) -> Reply {
    try_send(client, request).await.expect("a response")
}

fn form_request(url: &str, form: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form.to_owned())))
        .expect("request")
}

fn password_form(creds: &Credentials) -> String {
    serde_urlencoded::to_string([
        ("grant_type", "password"),
        ("client_id", creds.client_id()),
        ("client_secret", creds.client_secret().expose_secret()),
        ("username", creds.username()),
        ("password", creds.password().expose_secret()),
    ])
    .expect("form")
}

fn refresh_form(creds: &Credentials, refresh_token: &str) -> String {
    serde_urlencoded::to_string([
        ("grant_type", "refresh_token"),
        ("client_id", creds.client_id()),
        ("client_secret", creds.client_secret().expose_secret()),
        ("refresh_token", refresh_token),
    ])
    .expect("form")
}

/// The token pair of a 200 token response.
fn tokens(reply: &Reply) -> (String, String) {
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let body = reply.json();
    (
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned(),
        body["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_owned(),
    )
}

async fn password_grant(server: &MockServer, client: &HttpClient) -> (String, String) {
    let form = password_form(&server.credentials());
    tokens(&send(client, form_request(&server.token_url(), &form)).await)
}

async fn refresh_grant(server: &MockServer, client: &HttpClient, refresh_token: &str) -> Reply {
    let form = refresh_form(&server.credentials(), refresh_token);
    send(client, form_request(&server.token_url(), &form)).await
}

async fn api_get(server: &MockServer, client: &HttpClient, token: Option<&str>) -> Reply {
    let mut request = Request::get(server.api_url("v1/structures"));
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    send(client, request.body(Full::default()).expect("request")).await
}

/// RFC 6750 §2.1 `b64token`.
fn is_b64token(token: &str) -> bool {
    let trimmed = token.trim_end_matches('=');
    !trimmed.is_empty()
        && trimmed
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._~+/".contains(&c))
}

// === Token endpoint ===

#[tokio::test]
async fn password_grant_issues_a_token_pair() {
    let server = MockServer::start().await.expect("start");
    let client = client();
    let reply = send(
        &client,
        form_request(&server.token_url(), &password_form(&server.credentials())),
    )
    .await;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header(header::CONTENT_TYPE), Some("application/json"));
    assert_eq!(reply.header(header::CACHE_CONTROL), Some("no-store"));
    let body = reply.json();
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["token_type"], "bearer");
    assert!(body["scope"].is_string());
    let (access, refresh) = tokens(&reply);
    assert!(is_b64token(&access) && is_b64token(&refresh));
    assert_ne!(access, refresh);
    assert!(access.len() >= 32, "long enough to be unguessable");

    assert_eq!(server.check_access_token(&access), Ok(()));
    let counters = server.counters();
    assert_eq!(
        (
            counters.grant_requests,
            counters.password_ok,
            counters.api_ok
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn default_credentials_are_documented_ones() {
    let server = MockServer::start().await.expect("start");
    let creds = server.credentials();
    assert_eq!(creds.client_id(), "daxium-client");
    assert_eq!(
        creds.client_secret().expose_secret(),
        "daxium-client-secret"
    );
    assert_eq!(creds.username(), "user@example.com");
    assert_eq!(
        creds.password().expose_secret(),
        "correct horse battery staple"
    );
    assert!(server.token_url().starts_with("http://127.0.0.1:"));
    assert_eq!(
        server.token_url(),
        format!("{}/oauth/v2/token", server.base_url())
    );
    assert_eq!(
        server.api_url("/a/b"),
        format!("{}/api/a/b", server.base_url())
    );
    assert!(server.addr().ip().is_loopback());
}

#[tokio::test]
async fn wrong_login_is_401_with_a_daerr_body() {
    let server = MockServer::start().await.expect("start");
    let client = client();
    let good = server.credentials();
    let wrong_password = Credentials::new(
        good.client_id(),
        good.client_secret().expose_secret(),
        good.username(),
        "Tr0ub4dor&3",
    );
    let reply = send(
        &client,
        form_request(&server.token_url(), &password_form(&wrong_password)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.daerr(), codes::INVALID_CREDENTIALS);

    let wrong_client = Credentials::new(
        good.client_id(),
        "not-the-secret",
        good.username(),
        good.password().expose_secret(),
    );
    let reply = send(
        &client,
        form_request(&server.token_url(), &password_form(&wrong_client)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.daerr(), codes::INVALID_CLIENT);

    let counters = server.counters();
    assert_eq!((counters.password_rejected, counters.password_ok), (2, 0));
}

#[tokio::test]
async fn refresh_rotates_and_the_spent_token_is_refused() {
    let server = MockServer::start().await.expect("start");
    let client = client();
    let (access1, refresh1) = password_grant(&server, &client).await;

    let (access2, refresh2) = tokens(&refresh_grant(&server, &client, &refresh1).await);
    assert_ne!(access1, access2);
    assert_ne!(refresh1, refresh2);

    let reused = refresh_grant(&server, &client, &refresh1).await;
    assert_eq!(reused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reused.daerr(), codes::REFRESH_TOKEN_REUSED);

    let unknown = refresh_grant(&server, &client, "never-issued").await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.daerr(), codes::INVALID_REFRESH_TOKEN);

    // Without reuse protection the chain goes on, and old access tokens live
    // until they expire.
    let (_, refresh3) = tokens(&refresh_grant(&server, &client, &refresh2).await);
    assert_ne!(refresh3, refresh2);
    assert_eq!(server.check_access_token(&access1), Ok(()));

    let counters = server.counters();
    assert_eq!(counters.refresh_ok, 2);
    assert_eq!(counters.refresh_rejected, 2);
    assert_eq!(counters.refresh_reuse, 1);
}

#[tokio::test]
async fn without_rotation_the_refresh_token_stays() {
    let server = MockServer::builder()
        .rotation(false)
        .start()
        .await
        .expect("start");
    let client = client();
    let (_, refresh) = password_grant(&server, &client).await;
    for _ in 0..2 {
        let (_, again) = tokens(&refresh_grant(&server, &client, &refresh).await);
        assert_eq!(again, refresh);
    }
    assert_eq!(server.counters().refresh_ok, 2);
    assert_eq!(server.counters().refresh_reuse, 0);
}

#[tokio::test]
async fn reuse_protection_revokes_the_whole_family() {
    let server = MockServer::builder()
        .reuse_protection(true)
        .start()
        .await
        .expect("start");
    let client = client();
    let (access1, refresh1) = password_grant(&server, &client).await;
    let (access2, refresh2) = tokens(&refresh_grant(&server, &client, &refresh1).await);
    assert_eq!(
        api_get(&server, &client, Some(&access1)).await.status,
        StatusCode::OK
    );

    let reused = refresh_grant(&server, &client, &refresh1).await;
    assert_eq!(reused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reused.daerr(), codes::REFRESH_TOKEN_REUSED);

    let before = api_get(&server, &client, Some(&access1)).await;
    assert_eq!(before.status, StatusCode::UNAUTHORIZED);
    assert_eq!(before.daerr(), codes::REVOKED_TOKEN);
    assert_eq!(server.check_access_token(&access2), Err(ApiDenial::Revoked));
    let newest = refresh_grant(&server, &client, &refresh2).await;
    assert_eq!(newest.status, StatusCode::UNAUTHORIZED);
    assert_eq!(newest.daerr(), codes::INVALID_REFRESH_TOKEN);

    let counters = server.counters();
    assert_eq!(counters.refresh_reuse, 1);
    assert_eq!(counters.api_revoked, 2);
    // A new login starts a new family.
    let (fresh, _) = password_grant(&server, &client).await;
    assert_eq!(
        api_get(&server, &client, Some(&fresh)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn malformed_token_requests_are_400() {
    let server = MockServer::start().await.expect("start");
    let client = client();
    let form = password_form(&server.credentials());

    let json = Request::post(server.token_url())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(r#"{"grant_type":"password"}"#)))
        .expect("request");
    let get = Request::get(server.token_url())
        .body(Full::default())
        .expect("request");
    let untyped = Request::post(server.token_url())
        .body(Full::new(Bytes::from(form.clone())))
        .expect("request");
    let cases = [
        (json, codes::BAD_REQUEST),
        (get, codes::BAD_REQUEST),
        (untyped, codes::BAD_REQUEST),
        (
            form_request(&server.token_url(), "grant_type=password&client_id=x"),
            codes::BAD_REQUEST,
        ),
        (
            form_request(&server.token_url(), &format!("{form}&password=again")),
            codes::BAD_REQUEST,
        ),
        (
            form_request(&server.token_url(), "grant_type=client_credentials"),
            codes::UNSUPPORTED_GRANT_TYPE,
        ),
    ];
    let n = cases.len() as u64;
    for (request, code) in cases {
        let reply = send(&client, request).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.daerr(), code);
    }

    let huge = format!("{form}&padding={}", "x".repeat(70 * 1024));
    let reply = send(&client, form_request(&server.token_url(), &huge)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.daerr(), codes::TOKEN_REQUEST_TOO_LARGE);

    // A charset parameter is fine, and so are unknown parameters.
    let request = Request::post(server.token_url())
        .header(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .body(Full::new(Bytes::from(format!("{form}&extra=1"))))
        .expect("request");
    tokens(&send(&client, request).await);

    let counters = server.counters();
    assert_eq!(counters.bad_requests, n + 1);
    assert_eq!(counters.password_ok, 1);
    assert_eq!(counters.password_rejected, 0);
}

// === Faults ===

async fn faulted(
    fault: Fault,
) -> (
    MockServer,
    HttpClient,
    Result<Reply, hyper_util::client::legacy::Error>,
) {
    let server = MockServer::start().await.expect("start");
    let client = client();
    server.fail_next_grants(1, fault);
    let form = password_form(&server.credentials());
    let reply = try_send(&client, form_request(&server.token_url(), &form)).await;
    (server, client, reply)
}

/// After the one queued fault, the endpoint answers normally again.
async fn recovers(server: &MockServer, client: &HttpClient) {
    password_grant(server, client).await;
    let counters = server.counters();
    assert_eq!(counters.faults_injected, 1);
    assert_eq!(counters.password_ok, 1);
}

#[tokio::test]
async fn fault_server_error() {
    let (server, client, reply) = faulted(Fault::ServerError).await;
    let reply = reply.expect("a response");
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.daerr(), codes::SERVER_ERROR);
    recovers(&server, &client).await;
}

#[tokio::test]
async fn fault_too_many_requests() {
    let (server, client, reply) = faulted(Fault::TooManyRequests { retry_after: 7 }).await;
    let reply = reply.expect("a response");
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header(header::RETRY_AFTER), Some("7"));
    assert_eq!(reply.daerr(), codes::TOO_MANY_REQUESTS);
    recovers(&server, &client).await;
}

#[tokio::test]
async fn fault_delay_then_a_normal_answer() {
    let started = Instant::now();
    let (server, client, reply) = faulted(Fault::Delay(Duration::from_millis(300))).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    tokens(&reply.expect("a response"));
    assert_eq!(server.counters().password_ok, 1);
    assert_eq!(server.counters().faults_injected, 1);
    password_grant(&server, &client).await;
}

#[tokio::test]
async fn fault_reset_closes_the_connection() {
    let (server, client, reply) = faulted(Fault::Reset).await;
    let error = reply.err().expect("no response on a reset connection");
    assert!(
        !error.is_connect(),
        "the connection was made, then closed: {error:?}"
    );
    recovers(&server, &client).await;
}

#[tokio::test]
async fn fault_malformed_json() {
    let (server, client, reply) = faulted(Fault::MalformedJson).await;
    let reply = reply.expect("a response");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header(header::CONTENT_TYPE), Some("application/json"));
    assert!(serde_json::from_slice::<Value>(&reply.body).is_err());
    recovers(&server, &client).await;
}

#[tokio::test]
async fn fault_html() {
    let (server, client, reply) = faulted(Fault::Html).await;
    let reply = reply.expect("a response");
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header(header::CONTENT_TYPE)
            .expect("content-type")
            .starts_with("text/html")
    );
    assert!(reply.body.starts_with(b"<!DOCTYPE html>"));
    recovers(&server, &client).await;
}

#[tokio::test]
async fn fault_oversized() {
    let (server, client, reply) = faulted(Fault::Oversized).await;
    let reply = reply.expect("a response");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header(header::CONTENT_TYPE), Some("application/json"));
    assert_eq!(
        reply.header(header::CONTENT_LENGTH),
        None,
        "streamed, length unannounced"
    );
    assert_eq!(reply.body.len(), 4 * 1024 * 1024);
    assert!(reply.body.starts_with(br#"{"access_token":""#));
    assert!(serde_json::from_slice::<Value>(&reply.body).is_err());
    recovers(&server, &client).await;
}

#[tokio::test]
async fn fault_redirect() {
    let target = "https://elsewhere.example/oauth/v2/token";
    let (server, client, reply) = faulted(Fault::Redirect(target.into())).await;
    let reply = reply.expect("a response");
    assert_eq!(reply.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(reply.header(header::LOCATION), Some(target));
    recovers(&server, &client).await;
}

#[tokio::test]
async fn fault_respond_anything() {
    let fault = Fault::Respond {
        status: StatusCode::BAD_REQUEST,
        content_type: "application/json".into(),
        body: Bytes::from_static(br#"{"error":"invalid_grant"}"#),
        retry_after: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
    };
    let (server, client, reply) = faulted(fault).await;
    let reply = reply.expect("a response");
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"], "invalid_grant");
    assert_eq!(
        reply.header(header::RETRY_AFTER),
        Some("Wed, 21 Oct 2015 07:28:00 GMT")
    );
    recovers(&server, &client).await;
}

#[tokio::test]
async fn a_fault_does_not_spend_the_refresh_token() {
    let server = MockServer::start().await.expect("start");
    let client = client();
    let (_, refresh) = password_grant(&server, &client).await;
    server.fail_next_grants(2, Fault::ServerError);
    for _ in 0..2 {
        assert_eq!(
            refresh_grant(&server, &client, &refresh).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    tokens(&refresh_grant(&server, &client, &refresh).await);
    let counters = server.counters();
    assert_eq!(
        (
            counters.faults_injected,
            counters.refresh_ok,
            counters.refresh_reuse
        ),
        (2, 1, 0)
    );
}

#[tokio::test]
async fn grant_latency_holds_every_answer() {
    let server = MockServer::builder()
        .grant_latency(Duration::from_millis(200))
        .start()
        .await
        .expect("start");
    let client = client();
    let started = Instant::now();
    password_grant(&server, &client).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    let (access, _) = password_grant(&server, &client).await;
    // The API is not slowed down.
    assert_eq!(
        api_get(&server, &client, Some(&access)).await.status,
        StatusCode::OK
    );
}

// === Protected resource ===

#[tokio::test]
async fn api_without_a_token() {
    let server = MockServer::start().await.expect("start");
    let reply = api_get(&server, &client(), None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header(header::WWW_AUTHENTICATE),
        Some(r#"Bearer realm="daxium""#)
    );
    assert_eq!(reply.daerr(), codes::MISSING_TOKEN);
    assert_eq!(server.counters().api_no_token, 1);
}

fn assert_invalid_token(reply: &Reply, code: &str) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(
        reply
            .header(header::WWW_AUTHENTICATE)
            .expect("a challenge")
            .contains(r#"error="invalid_token""#)
    );
    assert_eq!(reply.daerr(), code);
}

#[tokio::test]
async fn api_with_an_unknown_token() {
    let server = MockServer::start().await.expect("start");
    let client = client();
    assert_invalid_token(
        &api_get(&server, &client, Some("0123abcd")).await,
        codes::INVALID_TOKEN,
    );

    // A client that appends a second Authorization header on a retry is caught.
    let (access, _) = password_grant(&server, &client).await;
    let request = Request::get(server.api_url("x"))
        .header(header::AUTHORIZATION, format!("Bearer {access}"))
        .header(header::AUTHORIZATION, format!("Bearer {access}"))
        .body(Full::default())
        .expect("request");
    assert_invalid_token(&send(&client, request).await, codes::INVALID_TOKEN);
    assert_eq!(server.counters().api_unknown, 2);
}

#[tokio::test]
async fn api_with_a_revoked_token() {
    let server = MockServer::start().await.expect("start");
    let client = client();
    let (access, _) = password_grant(&server, &client).await;
    let (other, _) = password_grant(&server, &client).await;
    assert!(server.revoke(&access));
    assert!(!server.revoke(&access), "already revoked");
    assert!(!server.revoke("never-issued"));

    assert_invalid_token(
        &api_get(&server, &client, Some(&access)).await,
        codes::REVOKED_TOKEN,
    );
    assert_eq!(
        api_get(&server, &client, Some(&other)).await.status,
        StatusCode::OK
    );

    server.revoke_all();
    assert_eq!(server.check_access_token(&other), Err(ApiDenial::Revoked));
    let counters = server.counters();
    assert_eq!((counters.api_revoked, counters.api_ok), (2, 1));
}

#[tokio::test]
async fn revoke_all_kills_refresh_tokens_too() {
    let server = MockServer::start().await.expect("start");
    let client = client();
    let (_, refresh) = password_grant(&server, &client).await;
    server.revoke_all();
    let reply = refresh_grant(&server, &client, &refresh).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.daerr(), codes::INVALID_REFRESH_TOKEN);
    assert_eq!(server.counters().refresh_reuse, 0, "revoked is not reuse");
}

#[tokio::test]
async fn api_with_an_expired_token() {
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(1))
        .start()
        .await
        .expect("start");
    let client = client();
    let reply = send(
        &client,
        form_request(&server.token_url(), &password_form(&server.credentials())),
    )
    .await;
    assert_eq!(reply.json()["expires_in"], 1);
    let (access, refresh) = tokens(&reply);
    assert_eq!(
        api_get(&server, &client, Some(&access)).await.status,
        StatusCode::OK
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_invalid_token(
        &api_get(&server, &client, Some(&access)).await,
        codes::EXPIRED_TOKEN,
    );
    // The refresh token outlives the access token.
    let (fresh, _) = tokens(&refresh_grant(&server, &client, &refresh).await);
    assert_eq!(
        api_get(&server, &client, Some(&fresh)).await.status,
        StatusCode::OK
    );
    assert_eq!(server.counters().api_expired, 1);
}

#[tokio::test]
async fn expire_all_expires_without_waiting() {
    let server = MockServer::start().await.expect("start");
    let client = client();
    let (access, _) = password_grant(&server, &client).await;
    server.expire_all();
    assert_eq!(server.check_access_token(&access), Err(ApiDenial::Expired));
    assert_eq!(server.counters().api_expired, 1);
}

#[tokio::test]
async fn api_echoes_the_body_byte_for_byte() {
    let server = MockServer::start().await.expect("start");
    let client = client();
    let (access, _) = password_grant(&server, &client).await;
    let payload: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let request = Request::put(server.api_url("v1/items/42?dry_run=1"))
        .header(header::AUTHORIZATION, format!("bearer {access}"))
        .header(header::CONTENT_TYPE, "application/vnd.test")
        .body(Full::new(Bytes::from(payload.clone())))
        .expect("request");
    let reply = send(&client, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, payload);
    assert_eq!(reply.header("x-echo-method"), Some("PUT"));
    assert_eq!(
        reply.header("x-echo-uri"),
        Some("/api/v1/items/42?dry_run=1")
    );
    assert_eq!(
        reply.header(header::CONTENT_TYPE),
        Some("application/vnd.test")
    );

    let too_big = Request::post(server.api_url("upload"))
        .header(header::AUTHORIZATION, format!("Bearer {access}"))
        .body(Full::new(Bytes::from(vec![0u8; 1024 * 1024 + 1])))
        .expect("request");
    let reply = send(&client, too_big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.daerr(), codes::API_REQUEST_TOO_LARGE);
    let counters = server.counters();
    assert_eq!((counters.api_ok, counters.api_too_large), (1, 1));
}

#[tokio::test]
async fn fail_next_api_answers_queued_statuses() {
    let server = MockServer::start().await.expect("start");
    let client = client();
    let (access, _) = password_grant(&server, &client).await;
    server.fail_next_api(2, StatusCode::UNAUTHORIZED);
    server.fail_next_api(1, StatusCode::SERVICE_UNAVAILABLE);

    for _ in 0..2 {
        assert_invalid_token(
            &api_get(&server, &client, Some(&access)).await,
            codes::INVALID_TOKEN,
        );
    }
    let unavailable = api_get(&server, &client, Some(&access)).await;
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(unavailable.daerr(), codes::INJECTED);
    // Injection applies whatever the token, then the queue is empty.
    assert_eq!(
        api_get(&server, &client, Some(&access)).await.status,
        StatusCode::OK
    );
    let counters = server.counters();
    assert_eq!(
        (counters.api_injected, counters.api_ok, counters.api_unknown),
        (3, 1, 0)
    );
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let server = MockServer::start().await.expect("start");
    let request = Request::get(format!("{}/oauth/v2/tokens", server.base_url()))
        .body(Full::default())
        .expect("request");
    let reply = send(&client(), request).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.daerr(), codes::NOT_FOUND);
    assert_eq!(server.counters().not_found, 1);
    assert_eq!(server.counters().grant_requests, 0);
}

#[tokio::test]
async fn check_authorization_reads_header_values() {
    let server = MockServer::start().await.expect("start");
    let (access, _) = password_grant(&server, &client()).await;
    assert_eq!(
        server.check_authorization(Some(&format!("Bearer {access}"))),
        Ok(())
    );
    assert_eq!(
        server.check_authorization(Some("Basic dXNlcjpwYXNz")),
        Err(ApiDenial::NoToken)
    );
    assert_eq!(server.check_authorization(None), Err(ApiDenial::NoToken));
    assert_eq!(server.check_access_token(""), Err(ApiDenial::NoToken));
    assert_eq!(ApiDenial::Expired.code(), codes::EXPIRED_TOKEN);
    assert!(!ApiDenial::Revoked.to_string().is_empty());
    assert_eq!(server.counters().api_requests, 4);
}

// === What real servers do ===

#[tokio::test]
async fn revoke_presented_revokes_a_valid_token_on_the_spot_and_for_good() {
    let server = MockServer::builder()
        .revoke_presented(1.0)
        .start()
        .await
        .expect("start");
    let client = client();
    let (access, refresh) = password_grant(&server, &client).await;

    // Answered exactly as a revoked token is.
    let reply = api_get(&server, &client, Some(&access)).await;
    assert_eq!(
        reply.header(header::WWW_AUTHENTICATE),
        Some(r#"Bearer realm="daxium", error="invalid_token""#)
    );
    assert_invalid_token(&reply, codes::REVOKED_TOKEN);
    assert_eq!(server.check_access_token(&access), Err(ApiDenial::Revoked));
    // Tokens that are not valid are refused as they always were.
    assert_invalid_token(
        &api_get(&server, &client, Some("made-up")).await,
        codes::INVALID_TOKEN,
    );
    // The refresh token is untouched.
    tokens(&refresh_grant(&server, &client, &refresh).await);

    let c = server.counters();
    assert_eq!((c.api_revoked_in_use, c.api_revoked), (1, 2), "{c:?}");
    assert_eq!((c.api_requests, c.api_unknown, c.api_ok), (3, 1, 0));
}

/// Which of `n` requests, each with a token not yet revoked, met a
/// revocation at `rate` on a server seeded with `seed`; and its counters.
async fn revocations(seed: u64, rate: f64, n: usize) -> (Vec<bool>, MockCounters) {
    let server = MockServer::builder()
        .revoke_presented(rate)
        .seed(seed)
        .start()
        .await
        .expect("start");
    let client = client();
    let (mut access, _) = password_grant(&server, &client).await;
    let mut revoked = Vec::with_capacity(n);
    for _ in 0..n {
        let reply = api_get(&server, &client, Some(&access)).await;
        revoked.push(reply.status == StatusCode::UNAUTHORIZED);
        if reply.status == StatusCode::UNAUTHORIZED {
            assert_invalid_token(&reply, codes::REVOKED_TOKEN);
            (access, _) = password_grant(&server, &client).await;
        }
    }
    (revoked, server.counters())
}

#[tokio::test]
async fn revocations_at_a_rate_come_at_that_rate_and_a_seed_replays_them() {
    let (first, counters) = revocations(7, 0.25, 200).await;
    let hits = first.iter().filter(|&&r| r).count() as u64;
    // 50 expected; five standard deviations (about 31) either side.
    assert!((19..=81).contains(&hits), "{hits} of 200");
    assert_eq!(counters.api_revoked_in_use, hits);
    assert_eq!(counters.api_revoked, hits);
    assert_eq!(counters.api_ok, 200 - hits);
    assert_eq!(counters.password_ok, hits + 1);

    let (again, _) = revocations(7, 0.25, 200).await;
    assert_eq!(again, first, "the same seed, the same revocations");
    let (other, _) = revocations(8, 0.25, 200).await;
    assert_ne!(other, first, "another seed, other revocations");
}

#[tokio::test]
async fn revoke_on_refresh_revokes_the_access_token_of_the_pair_replaced() {
    for rotation in [true, false] {
        let server = MockServer::builder()
            .revoke_on_refresh(true)
            .rotation(rotation)
            .start()
            .await
            .expect("start");
        let client = client();
        let (access1, refresh1) = password_grant(&server, &client).await;
        let (other, _) = password_grant(&server, &client).await;
        assert_eq!(
            api_get(&server, &client, Some(&access1)).await.status,
            StatusCode::OK
        );

        let (access2, refresh2) = tokens(&refresh_grant(&server, &client, &refresh1).await);
        assert_invalid_token(
            &api_get(&server, &client, Some(&access1)).await,
            codes::REVOKED_TOKEN,
        );
        for token in [&access2, &other] {
            assert_eq!(
                api_get(&server, &client, Some(token)).await.status,
                StatusCode::OK
            );
        }
        // The chain's next refresh revokes the token of the one before.
        tokens(&refresh_grant(&server, &client, &refresh2).await);
        assert_eq!(server.check_access_token(&access2), Err(ApiDenial::Revoked));

        let c = server.counters();
        assert_eq!(c.refresh_revoked_access, 2, "rotation {rotation}: {c:?}");
        assert_eq!((c.refresh_ok, c.api_revoked), (2, 2), "{c:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn slow_api_holds_back_answers_and_refusals_alike() {
    let latency = Duration::from_secs(5);
    let server = MockServer::builder()
        .slow_api(1.0, latency)
        .start()
        .await
        .expect("start");
    let client = client();
    let (access, _) = password_grant(&server, &client).await;
    // Paused time: the server's sleep is skipped ahead, measured on the
    // tokio clock, and the test takes no real time.
    let started = tokio::time::Instant::now();
    assert_eq!(
        api_get(&server, &client, Some(&access)).await.status,
        StatusCode::OK
    );
    assert!(started.elapsed() >= latency);
    let started = tokio::time::Instant::now();
    assert_invalid_token(
        &api_get(&server, &client, Some("made-up")).await,
        codes::INVALID_TOKEN,
    );
    assert!(started.elapsed() >= latency);
    // The token endpoint is not slowed down.
    let started = tokio::time::Instant::now();
    password_grant(&server, &client).await;
    assert!(started.elapsed() < latency);
    let c = server.counters();
    assert_eq!((c.api_slowed, c.api_ok, c.api_unknown), (2, 1, 1), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn slow_api_holds_back_its_fraction_of_the_answers() {
    let latency = Duration::from_millis(800);
    let server = MockServer::builder()
        .slow_api(0.3, latency)
        .seed(11)
        .start()
        .await
        .expect("start");
    let client = client();
    let (access, _) = password_grant(&server, &client).await;
    let mut held = 0;
    for _ in 0..100 {
        let started = tokio::time::Instant::now();
        assert_eq!(
            api_get(&server, &client, Some(&access)).await.status,
            StatusCode::OK
        );
        held += u64::from(started.elapsed() >= latency);
    }
    // 30 expected; five standard deviations (about 23) either side.
    assert!((7..=53).contains(&held), "{held} of 100");
    assert_eq!(server.counters().api_slowed, held);
}

#[test]
fn probabilities_outside_zero_to_one_are_refused_by_the_builder() {
    let refusal = |setter: &str, make: fn(f64) -> daxium_auth::mock::MockServerBuilder| {
        for p in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
            let panic = std::panic::catch_unwind(|| make(p)).expect_err("refused");
            let message = panic.downcast_ref::<String>().expect("a formatted message");
            assert!(
                message.contains(setter) && message.contains("not a probability"),
                "{message}"
            );
        }
    };
    refusal("revoke_presented", |p| {
        MockServer::builder().revoke_presented(p)
    });
    refusal("slow_api", |p| {
        MockServer::builder().slow_api(p, Duration::from_secs(1))
    });
}

#[tokio::test]
async fn refuse_every_token_refuses_until_switched_off_and_revokes_nothing() {
    let server = MockServer::start().await.expect("start");
    let client = client();
    let (access, _) = password_grant(&server, &client).await;
    server.refuse_every_token(true);
    // A token issued while it is on is refused too, and so is none at all.
    let (fresh, _) = password_grant(&server, &client).await;
    for token in [Some(access.as_str()), Some(fresh.as_str()), None] {
        let reply = api_get(&server, &client, token).await;
        assert_eq!(
            reply.header(header::WWW_AUTHENTICATE),
            Some(r#"Bearer realm="daxium", error="invalid_token""#)
        );
        assert_invalid_token(&reply, codes::INVALID_TOKEN);
    }
    assert_eq!(server.check_access_token(&access), Err(ApiDenial::Unknown));

    server.refuse_every_token(false);
    for token in [&access, &fresh] {
        assert_eq!(
            api_get(&server, &client, Some(token)).await.status,
            StatusCode::OK
        );
    }
    let c = server.counters();
    assert_eq!((c.api_refused_all, c.api_ok), (4, 2), "{c:?}");
    assert_eq!((c.api_revoked, c.api_unknown, c.api_no_token), (0, 0, 0));
}

/// Checks a gRPC trailers-only refusal and returns its `grpc-message`.
fn grpc_refusal(reply: &Reply) -> String {
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header(header::CONTENT_TYPE), Some("application/grpc"));
    assert_eq!(reply.header("grpc-status"), Some("16"), "UNAUTHENTICATED");
    assert!(reply.body.is_empty());
    assert!(reply.header(header::WWW_AUTHENTICATE).is_none());
    reply.header("grpc-message").expect("a message").to_owned()
}

#[tokio::test]
async fn grpc_refusals_answer_every_refusal_the_grpc_way() {
    let server = MockServer::builder()
        .grpc_refusals(true)
        .start()
        .await
        .expect("start");
    let client = client();
    let (access, _) = password_grant(&server, &client).await;
    let (revoked, _) = password_grant(&server, &client).await;
    let (expired, _) = password_grant(&server, &client).await;
    assert!(server.revoke(&revoked));

    // A successful answer stays as it is.
    let ok = api_get(&server, &client, Some(&access)).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(ok.header("grpc-status").is_none());
    assert_eq!(ok.header("x-echo-method"), Some("GET"));

    for (token, code) in [
        (None, codes::MISSING_TOKEN),
        (Some("made-up"), codes::INVALID_TOKEN),
        (Some(revoked.as_str()), codes::REVOKED_TOKEN),
    ] {
        let message = grpc_refusal(&api_get(&server, &client, token).await);
        assert!(message.starts_with(&format!("{code}: ")), "{message}");
    }
    server.fail_next_api(1, StatusCode::UNAUTHORIZED);
    server.fail_next_api(1, StatusCode::SERVICE_UNAVAILABLE);
    grpc_refusal(&api_get(&server, &client, Some(&access)).await);
    // Other queued statuses are not refusals of the token.
    let unavailable = api_get(&server, &client, Some(&access)).await;
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(unavailable.daerr(), codes::INJECTED);

    server.refuse_every_token(true);
    let message = grpc_refusal(&api_get(&server, &client, Some(&access)).await);
    assert!(message.starts_with(codes::INVALID_TOKEN), "{message}");
    server.refuse_every_token(false);

    server.expire_all();
    let message = grpc_refusal(&api_get(&server, &client, Some(&expired)).await);
    assert!(message.starts_with(codes::EXPIRED_TOKEN), "{message}");
    let c = server.counters();
    assert_eq!(
        (
            c.api_ok,
            c.api_no_token,
            c.api_unknown,
            c.api_revoked,
            c.api_expired
        ),
        (1, 1, 1, 1, 1),
        "{c:?}"
    );
    assert_eq!((c.api_injected, c.api_refused_all), (2, 1));
}

#[tokio::test]
async fn a_grpc_refusal_is_trailers_only_over_http2_and_rate_revocations_are_refused_so() {
    let server = MockServer::builder()
        .grpc_refusals(true)
        .revoke_presented(1.0)
        .start()
        .await
        .expect("start");
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let (access, _) = password_grant(&server, &client).await;
    let request = Request::post(server.api_url("grpc.health.v1.Health/Check"))
        .header(header::AUTHORIZATION, format!("Bearer {access}"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("request");
    let response = client.request(request).await.expect("a response");
    // One HEADERS frame that ends the stream: nothing follows the headers.
    assert!(http_body::Body::is_end_stream(response.body()));
    assert_eq!(response.headers()["grpc-status"], "16");
    let message = response.headers()["grpc-message"].to_str().expect("text");
    assert!(message.starts_with(codes::REVOKED_TOKEN), "{message}");
    let c = server.counters();
    assert_eq!((c.api_revoked_in_use, c.api_revoked), (1, 1));
}

// === Controls ===

#[tokio::test]
async fn set_credentials_changes_the_accepted_login() {
    let server = MockServer::start().await.expect("start");
    let client = client();
    let old = server.credentials();
    let (access, _) = password_grant(&server, &client).await;

    let new = Credentials::new(
        "daxium-client",
        "daxium-client-secret",
        "other@example.com",
        "n3w",
    );
    server.set_credentials(new.clone());
    assert_eq!(server.credentials().username(), "other@example.com");

    let reply = send(
        &client,
        form_request(&server.token_url(), &password_form(&old)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.daerr(), codes::INVALID_CREDENTIALS);
    tokens(
        &send(
            &client,
            form_request(&server.token_url(), &password_form(&new)),
        )
        .await,
    );
    assert_eq!(
        server.check_access_token(&access),
        Ok(()),
        "issued tokens stay valid"
    );
}

#[tokio::test]
async fn grant_log_records_each_request_as_received() {
    let server = MockServer::start().await.expect("start");
    let client = client();
    let form = password_form(&server.credentials());
    send(
        &client,
        form_request(&format!("{}?trace=1", server.token_url()), &form),
    )
    .await;
    send(
        &client,
        Request::get(server.token_url())
            .body(Full::default())
            .expect("request"),
    )
    .await;

    let log = server.grant_log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].method, Method::POST);
    assert_eq!(log[0].uri, "/oauth/v2/token?trace=1");
    assert_eq!(
        log[0].content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(log[0].body, form.as_bytes());
    assert_eq!(log[0].grant_type.as_deref(), Some("password"));
    assert_eq!(log[1].method, Method::GET);
    assert_eq!(
        (log[1].content_type.as_deref(), log[1].grant_type.as_deref()),
        (None, None)
    );
    assert!(log[1].body.is_empty());

    let printed = format!("{:?}", log[0]);
    assert!(printed.contains("body_len"));
    assert!(!printed.contains("correct horse"), "{printed}");
    assert!(!printed.contains("daxium-client-secret"), "{printed}");
}

#[test]
fn handles_are_shareable() {
    fn shareable<T: Send + Sync + std::fmt::Debug + 'static>() {}
    shareable::<MockServer>();
    shareable::<daxium_auth::mock::MockServerBuilder>();
    shareable::<Fault>();
    shareable::<ApiDenial>();
}

#[tokio::test]
async fn debug_shows_no_secret() {
    let builder =
        MockServer::builder().credentials(Credentials::new("cid", "s3cret", "me", "p4ss"));
    let printed = format!("{builder:?}");
    assert!(printed.contains("cid") && !printed.contains("s3cret") && !printed.contains("p4ss"));
    let server = builder.start().await.expect("start");
    let printed = format!("{server:?}");
    assert!(printed.contains(&server.addr().to_string()));
    assert!(!printed.contains("s3cret") && !printed.contains("p4ss"));
}

#[tokio::test]
async fn counters_add_up() {
    let server = MockServer::start().await.expect("start");
    let client = client();
    let (access, refresh) = password_grant(&server, &client).await;
    tokens(&refresh_grant(&server, &client, &refresh).await);
    refresh_grant(&server, &client, &refresh).await; // reuse
    refresh_grant(&server, &client, "unknown").await;
    send(
        &client,
        form_request(&server.token_url(), "grant_type=password"),
    )
    .await;
    let wrong = Credentials::new(
        "daxium-client",
        "daxium-client-secret",
        "user@example.com",
        "x",
    );
    send(
        &client,
        form_request(&server.token_url(), &password_form(&wrong)),
    )
    .await;
    server.fail_next_grants(1, Fault::ServerError);
    password_grant_status(&server, &client).await;
    server.fail_next_api(1, StatusCode::BAD_GATEWAY);
    for token in [
        Some(access.as_str()),
        Some(access.as_str()),
        None,
        Some("nope"),
    ] {
        api_get(&server, &client, token).await;
    }

    let c = server.counters();
    let outcomes =
        c.password_ok + c.password_rejected + c.refresh_ok + c.refresh_rejected + c.bad_requests;
    assert_eq!(c.grant_requests, outcomes + c.faults_injected);
    assert_eq!(c.grant_requests, server.grant_log().len() as u64);
    let api = c.api_ok
        + c.api_no_token
        + c.api_unknown
        + c.api_expired
        + c.api_revoked
        + c.api_injected
        + c.api_too_large;
    assert_eq!(c.api_requests, api);

    let mut expected = MockCounters::default();
    expected.grant_requests = 7;
    expected.password_ok = 1;
    expected.password_rejected = 1;
    expected.refresh_ok = 1;
    expected.refresh_rejected = 2;
    expected.refresh_reuse = 1;
    expected.bad_requests = 1;
    expected.faults_injected = 1;
    expected.api_requests = 4;
    expected.api_ok = 1;
    expected.api_no_token = 1;
    expected.api_unknown = 1;
    expected.api_injected = 1;
    assert_eq!(c, expected);
}

async fn password_grant_status(server: &MockServer, client: &HttpClient) -> StatusCode {
    let form = password_form(&server.credentials());
    send(client, form_request(&server.token_url(), &form))
        .await
        .status
}

#[tokio::test]
async fn serves_http2_too() {
    let server = MockServer::start().await.expect("start");
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let (access, _) = password_grant(&server, &client).await;
    let request = Request::post(server.api_url("h2"))
        .header(header::AUTHORIZATION, format!("Bearer {access}"))
        .body(Full::new(Bytes::from_static(b"over h2")))
        .expect("request");
    let reply = send(&client, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, Bytes::from_static(b"over h2"));

    server.fail_next_grants(1, Fault::Reset);
    let form = password_form(&server.credentials());
    assert!(
        try_send(&client, form_request(&server.token_url(), &form))
            .await
            .is_err()
    );
}

// === Lifecycle ===

#[tokio::test]
async fn after_shutdown_connections_are_refused() {
    let server = MockServer::start().await.expect("start");
    let url = server.token_url();
    password_grant_status(&server, &client()).await;
    server.shutdown().await;

    let form = password_form(&Credentials::new("a", "b", "c", "d"));
    let error = try_send(&client(), form_request(&url, &form))
        .await
        .err()
        .expect("refused");
    assert!(error.is_connect(), "{error:?}");
}

#[tokio::test]
async fn shutdown_ends_requests_in_flight() {
    let server = MockServer::start().await.expect("start");
    server.fail_next_grants(1, Fault::Delay(Duration::from_secs(30)));
    let request = form_request(&server.token_url(), &password_form(&server.credentials()));
    let client = client();
    let in_flight = tokio::spawn(async move { try_send(&client, request).await.map(|r| r.status) });
    // The grant is performed on arrival, before the delay.
    tokio::time::timeout(Duration::from_secs(2), async {
        while server.counters().password_ok == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the request arrives");
    let started = Instant::now();
    server.shutdown().await;
    let result = tokio::time::timeout(Duration::from_secs(2), in_flight)
        .await
        .expect("the request ends with the server")
        .expect("task");
    assert!(result.is_err(), "no answer after shutdown: {result:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn drop_shuts_down() {
    let server = MockServer::start().await.expect("start");
    let addr = server.addr();
    drop(server);
    // The abort takes effect when the runtime next polls the accept task.
    let mut refused = false;
    for _ in 0..1000 {
        tokio::task::yield_now().await;
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "still listening after drop");
}
