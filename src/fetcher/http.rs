//! The Daxium token client: [`HttpFetcher`] posts grants to the token endpoint
//! over any tower HTTP service, hyper-util's client over rustls by default. It
//! never follows a redirect, reads every body through a 1 MiB cap, and sorts
//! each failure into the kinds the token cache acts on.

use std::{
    error::Error as StdError,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri,
    header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER, USER_AGENT},
};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::{GrantRequest, TokenFetcher};
use crate::{
    answer::parse_token_response,
    error::{BoxError, BuildError, ErrorBody, Kind, TokenError},
    origin::{ShownUrl, check_url},
    token::TokenPair,
};

/// The most of a response body that is ever read: 1 MiB.
const BODY_CAP: usize = 1024 * 1024;

/// The default time for a whole exchange, request and body.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest `Retry-After` honoured: a larger one is cut to this.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// The longest content type quoted in an error's detail.
const CONTENT_TYPE_CAP: usize = 64;

const FORM_URLENCODED: &str = "application/x-www-form-urlencoded";
const APPLICATION_JSON: &str = "application/json";
const USER_AGENT_VALUE: &str = concat!("daxium-auth/", env!("CARGO_PKG_VERSION"));

/// hyper-util's legacy client over rustls (webpki roots), HTTP/1 and HTTP/2,
/// `https` or `http` (the https rule is checked on the token URL, the only URL
/// the fetcher ever requests).
#[cfg(feature = "rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
pub type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

// The struct is written once and declared twice: with the `rustls` feature its
// client type defaults to `HttpsClient`, without it there is no default.
macro_rules! http_fetcher {
    ($($default:tt)*) => {
        /// The Daxium token client over a tower HTTP service.
        ///
        /// Each grant is one `POST` to the token URL with the grant's form body
        /// (secrets travel in the body only), `Accept: application/json` and a
        /// `daxium-auth/<version>` user agent. The service is cloned for every
        /// grant and driven ready first. Redirects are never followed, bodies
        /// are read through a 1 MiB cap, and the whole exchange, body included,
        /// is bounded by a [timeout](HttpFetcher::timeout) (30 s by default).
        ///
        /// It is a [`TokenFetcher`], and a `Service<GrantRequest>`, so tower
        /// layers can wrap it before it goes to
        /// [`fetcher::from_service`](crate::fetcher::from_service).
        ///
        /// `Debug` shows the token URL (without any query) and the timeout.
        ///
        /// How an answer is classified:
        ///
        /// | answer | error |
        /// | --- | --- |
        /// | 2xx, usable token | none |
        /// | 2xx, unusable (malformed JSON, bad token, not bearer) | [invalid response](TokenError::is_invalid_response) |
        /// | 2xx with an RFC 6749 refusal (`{"error":"invalid_grant"}`) | [rejected](TokenError::is_grant_rejected) |
        /// | 2xx, body over 1 MiB | [body too large](TokenError::is_body_too_large) |
        /// | 3xx | [redirect](TokenError::is_redirect) (never followed) |
        /// | 401, 403; 400 with a refusal body (`DAERR-…`, `invalid_grant`, …) | [rejected](TokenError::is_grant_rejected) |
        /// | 5xx, 429, 408 | unavailable ([transient](TokenError::is_transient)) |
        /// | any other status | unexpected status (neither transient nor rejected) |
        /// | refused connection, DNS failure, TLS handshake failure | [connect](TokenError::is_connect) (never sent) |
        /// | reset, broken stream, any other service error | transport (may have been sent) |
        /// | no complete answer within the timeout | [timeout](TokenError::is_timeout) |
        ///
        /// A non-2xx answer is classified by its status: its body, parsed as
        /// Daxium's or RFC 6749's error form, only adds the
        /// [code](TokenError::error_code), or a description by content type
        /// and length when it is neither form (or over the cap, or broken).
        /// Every error names the [grant](TokenError::grant_type), and carries
        /// the answer's `Retry-After` (seconds or HTTP-date, at most an hour).
        ///
        /// ```
        /// use daxium_auth::{Credentials, GrantRequest, HttpFetcher, TokenFetcher};
        /// use std::{sync::Arc, time::Duration};
        ///
        /// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        /// let fetcher = HttpFetcher::new("https://api.daxium-air.com/oauth/v2/token")?
        ///     .timeout(Duration::from_secs(10));
        /// let credentials = Arc::new(Credentials::new("id", "secret", "me@example.com", "pw"));
        /// let pair = fetcher.fetch(GrantRequest::password(credentials)).await?;
        /// println!("{:?}", pair.lifetime());
        /// # Ok(())
        /// # }
        /// ```
        #[derive(Clone)]
        pub struct HttpFetcher<S $($default)*> {
            client: S,
            token_uri: Uri,
            timeout: Duration,
        }
    };
}

#[cfg(feature = "rustls")]
http_fetcher!(= HttpsClient);
#[cfg(not(feature = "rustls"))]
http_fetcher!();

// === impl HttpFetcher ===

#[cfg(feature = "rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
impl HttpFetcher<HttpsClient> {
    /// A fetcher for `token_url` over [`HttpsClient`]: rustls with the webpki
    /// roots, HTTP/1 and HTTP/2.
    ///
    /// The URL must be `https://`, or `http://` to a loopback host, and must
    /// not carry user info.
    ///
    /// ```
    /// use daxium_auth::{BuildError, HttpFetcher};
    ///
    /// assert!(HttpFetcher::new("https://api.daxium-air.com/oauth/v2/token").is_ok());
    /// assert!(HttpFetcher::new("http://127.0.0.1:8080/oauth/v2/token").is_ok());
    /// assert!(matches!(
    ///     HttpFetcher::new("http://example.com/oauth/v2/token"),
    ///     Err(BuildError::InsecureUrl { .. })
    /// ));
    /// ```
    pub fn new(token_url: &str) -> Result<Self, BuildError> {
        use hyper_util::{
            client::legacy::Client,
            rt::{TokioExecutor, TokioTimer},
        };

        let token_uri = check_url(token_url, "token")?;
        // An explicit provider: rustls cannot pick one by itself when the
        // application's dependency tree enables more than one.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|_| BuildError::InvalidSetting {
                name: "tls",
                reason: "the ring crypto provider supports no TLS version",
            })?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Self::from_parts(token_uri, client))
    }
}

impl<S> HttpFetcher<S> {
    /// A fetcher for `token_url` over any tower HTTP service, such as a
    /// hyper-util client with a connector of your own, or a stack with tower
    /// layers. The service sees absolute request URIs.
    ///
    /// The URL must be `https://`, or `http://` to a loopback host, and must
    /// not carry user info.
    pub fn with_client(token_url: &str, client: S) -> Result<Self, BuildError> {
        Ok(Self::from_parts(check_url(token_url, "token")?, client))
    }

    fn from_parts(token_uri: Uri, client: S) -> Self {
        Self {
            client,
            token_uri,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// How long a whole exchange may take, sending the request and reading the
    /// body included (default 30 s). Past it, the grant fails with a
    /// [timeout](TokenError::is_timeout).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The token endpoint's URI.
    pub fn token_uri(&self) -> &Uri {
        &self.token_uri
    }

    /// The HTTP service.
    pub fn get_ref(&self) -> &S {
        &self.client
    }
}

impl<S> fmt::Debug for HttpFetcher<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpFetcher")
            .field("token_url", &ShownUrl(&self.token_uri.to_string()))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<S, B> TokenFetcher for HttpFetcher<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn fetch(
        &self,
        grant: GrantRequest,
    ) -> impl Future<Output = Result<TokenPair, TokenError>> + Send {
        exchange(
            self.client.clone(),
            self.token_uri.clone(),
            self.timeout,
            grant,
        )
    }
}

impl<S, B> Service<GrantRequest> for HttpFetcher<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = TokenPair;
    type Error = TokenError;
    // Grants are rare: one allocation per grant costs nothing worth a named future.
    type Future = Pin<Box<dyn Future<Output = Result<TokenPair, TokenError>> + Send + 'static>>;

    /// Always ready: each call drives a clone of the HTTP service ready itself.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TokenError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, grant: GrantRequest) -> Self::Future {
        Box::pin(exchange(
            self.client.clone(),
            self.token_uri.clone(),
            self.timeout,
            grant,
        ))
    }
}

// === the exchange ===

/// One grant, start to end: the span, the timeout, and the grant type on
/// every error.
async fn exchange<S, B>(
    client: S,
    token_uri: Uri,
    timeout: Duration,
    grant: GrantRequest,
) -> Result<TokenPair, TokenError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    let grant_type = grant.grant_type();
    let span = tracing::debug_span!("daxium_grant", grant_type = grant_type.as_str());
    async move {
        let started = Instant::now();
        let result =
            match tokio::time::timeout(timeout, round_trip(client, token_uri, &grant, started))
                .await
            {
                Ok(result) => result,
                Err(_elapsed) => Err(TokenError::new(Kind::Timeout)),
            };
        result.map_err(|err| {
            if err.status().is_none() {
                // Answers with a status were logged as they came in.
                tracing::debug!(
                    error = %err,
                    latency_ms = millis(started.elapsed()),
                    "no answer from the token endpoint"
                );
            }
            err.with_grant(grant_type)
        })
    }
    .instrument(span)
    .await
}

async fn round_trip<S, B>(
    client: S,
    token_uri: Uri,
    grant: &GrantRequest,
    started: Instant,
) -> Result<TokenPair, TokenError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    let response = client
        .oneshot(grant_request(token_uri, grant))
        .await
        .map_err(|err| service_error(err.into()))?;
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let retry_after = parts
        .headers
        .get(RETRY_AFTER)
        .and_then(|value| parse_retry_after(value, SystemTime::now()));
    let log = || {
        tracing::debug!(
            status = status.as_u16(),
            latency_ms = millis(started.elapsed()),
            "token endpoint answered"
        );
    };

    if status.is_redirection() {
        // Neither followed nor quoted: the body is not read and `Location`
        // is not copied.
        log();
        return Err(TokenError::new(Kind::Redirect)
            .with_status(status)
            .with_retry_after(retry_after));
    }

    let body = read_capped(body).await;
    log();

    if status.is_success() {
        return body
            .map_err(BodyFailure::into_error)
            .and_then(|bytes| parse_success(&bytes, &parts.headers))
            .map_err(|err| err.with_status(status).with_retry_after(retry_after));
    }

    // A non-2xx answer is classified by its status; the body only adds the
    // parsed error (or a description of what it was). A 401 whose body broke
    // is still a refusal: calling it transient would retry a bad password.
    let err = match body {
        Ok(bytes) => match ErrorBody::parse(&bytes) {
            Some(parsed) => TokenError::new(classify(status, Some(&parsed))).with_body(parsed),
            None => TokenError::new(classify(status, None))
                .with_detail(describe_body(parts.headers.get(CONTENT_TYPE), bytes.len())),
        },
        Err(BodyFailure::TooLarge) => {
            TokenError::new(classify(status, None)).with_detail("body over the 1 MiB cap, not read")
        }
        Err(BodyFailure::Broken(source)) => TokenError::new(classify(status, None))
            .with_detail("body broke off")
            .with_source(source),
    };
    Err(err.with_status(status).with_retry_after(retry_after))
}

/// The grant as an HTTP request: secrets in the body, never in the URI.
fn grant_request(token_uri: Uri, grant: &GrantRequest) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::from(grant.form_body())));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = token_uri;
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(FORM_URLENCODED));
    headers.insert(ACCEPT, HeaderValue::from_static(APPLICATION_JSON));
    headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    request
}

/// A 2xx body. One that is not JSON at all (a captive portal's HTML page) is
/// described by its content type and length, never quoted.
fn parse_success(bytes: &[u8], headers: &HeaderMap) -> Result<TokenPair, TokenError> {
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        return Err(TokenError::new(Kind::InvalidResponse).with_detail(format!(
            "malformed JSON ({:?} error at line {} column {}); {}",
            e.classify(),
            e.line(),
            e.column(),
            describe_body(headers.get(CONTENT_TYPE), bytes.len())
        )));
    }
    parse_token_response(bytes)
}

/// Why a body could not be had.
enum BodyFailure {
    TooLarge,
    Broken(BoxError),
}

impl BodyFailure {
    fn into_error(self) -> TokenError {
        match self {
            Self::TooLarge => TokenError::new(Kind::BodyTooLarge),
            Self::Broken(source) => TokenError::new(Kind::Transport).with_source(source),
        }
    }
}

/// Reads a body through the cap; a body announced larger is not read at all.
async fn read_capped<B>(body: B) -> Result<Bytes, BodyFailure>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > BODY_CAP as u64 {
        return Err(BodyFailure::TooLarge);
    }
    match Limited::new(body, BODY_CAP).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(BodyFailure::TooLarge),
        Err(err) => Err(BodyFailure::Broken(err)),
    }
}

/// The kind of a non-2xx, non-3xx answer.
fn classify(status: StatusCode, body: Option<&ErrorBody>) -> Kind {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Kind::Rejected,
        StatusCode::BAD_REQUEST if body.is_some_and(ErrorBody::is_refusal) => Kind::Rejected,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => Kind::Unavailable,
        s if s.is_server_error() => Kind::Unavailable,
        s if s.is_redirection() => Kind::Redirect,
        _ => Kind::Status,
    }
}

/// "body: text/html, 1234 bytes": what an unparseable body was, without a byte
/// of it. The content type is cut to 64 characters and anything but printable
/// ASCII shows as `?`.
fn describe_body(content_type: Option<&HeaderValue>, len: usize) -> String {
    let content_type = match content_type {
        Some(value) => value
            .as_bytes()
            .iter()
            .take(CONTENT_TYPE_CAP)
            .map(|&b| {
                if b == b' ' || b.is_ascii_graphic() {
                    char::from(b)
                } else {
                    '?'
                }
            })
            .collect::<String>(),
        None => "no content type".to_owned(),
    };
    format!("body: {}, {len} bytes", content_type.trim())
}

/// `Retry-After` as delta seconds or an HTTP-date (RFC 9110 §10.2.3), from
/// `now`; a date in the past is zero, anything over an hour is an hour, and
/// anything else is ignored.
fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    let after = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: a value too large for u64 is simply very long.
        text.parse::<u64>()
            .map_or(RETRY_AFTER_CAP, Duration::from_secs)
    } else {
        let date = httpdate::parse_http_date(text).ok()?;
        date.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(after.min(RETRY_AFTER_CAP))
}

/// A service error: [connect](Kind::Connect) only when the request was
/// certainly never sent, else [transport](Kind::Transport).
fn service_error(err: BoxError) -> TokenError {
    let kind = if never_sent(&*err) {
        Kind::Connect
    } else {
        Kind::Transport
    };
    TokenError::new(kind).with_source(err)
}

/// Whether the error chain proves the request never left: hyper-util's client
/// says so with a connect error (refused connection, DNS failure, TLS
/// handshake; the `io::Error` kinds `ConnectionRefused`, `AddrNotAvailable`
/// and `NotFound` are what such errors hold). Any other error, even a
/// connection refused that no connector vouches for, counts as maybe sent:
/// a refresh token is then treated as spent, the safe side.
fn never_sent(err: &(dyn StdError + 'static)) -> bool {
    #[cfg(feature = "rustls")]
    {
        let mut next = Some(err);
        while let Some(err) = next {
            if err
                .downcast_ref::<hyper_util::client::legacy::Error>()
                .is_some_and(hyper_util::client::legacy::Error::is_connect)
            {
                return true;
            }
            next = err.source();
        }
    }
    #[cfg(not(feature = "rustls"))]
    let _ = err;
    false
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::{Arc, Mutex},
    };

    use super::*;
    use crate::{credentials::Credentials, fetcher::GrantType, token::RefreshToken};

    const TOKEN_URL: &str = "https://auth.example.com/oauth/v2/token";
    const OK_BODY: &str = r#"{"access_token":"acc-1","refresh_token":"ref-1","expires_in":3600,"token_type":"bearer"}"#;

    fn creds() -> Arc<Credentials> {
        Arc::new(Credentials::new(
            "cid",
            "secret-sentinel",
            "me@example.com",
            "pass-sentinel&=+%é",
        ))
    }

    fn password() -> GrantRequest {
        GrantRequest::password(creds())
    }

    fn response(
        status: u16,
        headers: &[(&str, &str)],
        body: &'static str,
    ) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            response.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        response
    }

    /// A fetcher over a service that always gives `answer`.
    fn answering(
        status: u16,
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
    ) -> HttpFetcher<
        impl Service<
            Request<Full<Bytes>>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
            Future: Send,
        > + Clone
        + Send
        + Sync
        + 'static,
    > {
        let service = tower::service_fn(move |_req: Request<Full<Bytes>>| async move {
            Ok::<_, Infallible>(response(status, headers, body))
        });
        HttpFetcher::with_client(TOKEN_URL, service).unwrap()
    }

    async fn fails_with(
        status: u16,
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
    ) -> TokenError {
        answering(status, headers, body)
            .fetch(password())
            .await
            .unwrap_err()
    }

    fn no_secret(text: &str) {
        assert!(!text.contains("sentinel"), "secret in {text}");
        assert!(
            !text.contains("acc-1") && !text.contains("ref-1"),
            "token in {text}"
        );
    }

    // --- the request ---

    #[tokio::test]
    async fn sends_the_exact_request() {
        let seen = Arc::new(Mutex::new(None));
        let record = seen.clone();
        let service = tower::service_fn(move |req: Request<Full<Bytes>>| {
            let record = record.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect().await.unwrap().to_bytes();
                *record.lock().unwrap() = Some((parts, bytes));
                Ok::<_, Infallible>(response(200, &[], OK_BODY))
            }
        });
        let fetcher = HttpFetcher::with_client(TOKEN_URL, service).unwrap();
        let pair = fetcher.fetch(password()).await.unwrap();
        assert_eq!(pair.access_token().expose_secret(), "acc-1");

        let (parts, body) = seen.lock().unwrap().take().unwrap();
        assert_eq!(parts.method, Method::POST);
        assert_eq!(parts.uri.to_string(), TOKEN_URL);
        assert_eq!(parts.uri.query(), None);
        assert_eq!(
            parts.headers[CONTENT_TYPE],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(parts.headers[ACCEPT], "application/json");
        assert_eq!(
            parts.headers[USER_AGENT],
            format!("daxium-auth/{}", env!("CARGO_PKG_VERSION")).as_str()
        );
        assert_eq!(parts.headers.len(), 3);
        assert_eq!(
            body,
            "grant_type=password&client_id=cid&client_secret=secret-sentinel\
             &username=me%40example.com&password=pass-sentinel%26%3D%2B%25%C3%A9"
        );
    }

    #[tokio::test]
    async fn refresh_grant_sends_the_refresh_token_in_the_body() {
        let seen = Arc::new(Mutex::new(Bytes::new()));
        let record = seen.clone();
        let service = tower::service_fn(move |req: Request<Full<Bytes>>| {
            let record = record.clone();
            async move {
                assert!(!req.uri().to_string().contains("ref"));
                *record.lock().unwrap() = req.into_body().collect().await.unwrap().to_bytes();
                Ok::<_, Infallible>(response(200, &[], OK_BODY))
            }
        });
        let fetcher = HttpFetcher::with_client(TOKEN_URL, service).unwrap();
        let grant = GrantRequest::refresh(creds(), RefreshToken::new("old/ref+1").unwrap());
        fetcher.fetch(grant).await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            "grant_type=refresh_token&client_id=cid&client_secret=secret-sentinel&refresh_token=old%2Fref%2B1"
        );
    }

    #[tokio::test]
    async fn service_impl_composes_with_tower_layers() {
        let fetcher = answering(200, &[], OK_BODY);
        let stack = tower::ServiceBuilder::new()
            .timeout(Duration::from_secs(5))
            .service(fetcher);
        let pair = crate::fetcher::from_service(stack)
            .fetch(password())
            .await
            .unwrap();
        assert_eq!(pair.lifetime(), Duration::from_secs(3600));

        let rejected = tower::ServiceBuilder::new()
            .timeout(Duration::from_secs(5))
            .service(answering(401, &[], r#"{"code":"DAERR-1","message":"no"}"#));
        let err = crate::fetcher::from_service(rejected)
            .fetch(password())
            .await
            .unwrap_err();
        assert!(err.is_grant_rejected());
        assert_eq!(err.error_code(), Some("DAERR-1"));
    }

    // --- classification ---

    #[test]
    fn classification_table() {
        let refusal = ErrorBody::parse(br#"{"error":"invalid_grant"}"#).unwrap();
        let daxium = ErrorBody::parse(br#"{"code":"DAERR-0401"}"#).unwrap();
        let other = ErrorBody::parse(br#"{"error":"slow_down"}"#).unwrap();
        let cases = [
            (401, None, Kind::Rejected),
            (403, None, Kind::Rejected),
            (401, Some(&other), Kind::Rejected),
            (400, Some(&refusal), Kind::Rejected),
            (400, Some(&daxium), Kind::Rejected),
            (400, Some(&other), Kind::Status),
            (400, None, Kind::Status),
            (500, None, Kind::Unavailable),
            (502, Some(&refusal), Kind::Unavailable),
            (503, None, Kind::Unavailable),
            (429, None, Kind::Unavailable),
            (408, None, Kind::Unavailable),
            (404, None, Kind::Status),
            (405, None, Kind::Status),
            (422, Some(&refusal), Kind::Status),
            (307, None, Kind::Redirect),
        ];
        for (status, body, kind) in cases {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(classify(status, body), kind, "{status}");
        }
    }

    #[tokio::test]
    async fn rejected_daxium_body_keeps_the_code() {
        let err = fails_with(
            401,
            &[("content-type", "application/json")],
            r#"{"code":"DAERR-0401","message":"Invalid credentials","url":"u","api_version":"v1.3","infos":[],"server_time":"1700000000"}"#,
        )
        .await;
        assert!(err.is_grant_rejected() && !err.is_transient());
        assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(err.error_code(), Some("DAERR-0401"));
        assert_eq!(err.grant_type(), Some(GrantType::Password));
        assert_eq!(
            err.to_string(),
            "password grant: rejected by the token endpoint (401 Unauthorized): DAERR-0401: Invalid credentials"
        );
    }

    #[tokio::test]
    async fn rfc6749_refusal_on_400_is_rejected() {
        let err = fails_with(
            400,
            &[],
            r#"{"error":"invalid_grant","error_description":"spent"}"#,
        )
        .await;
        assert!(err.is_grant_rejected());
        assert_eq!(err.error_code(), Some("invalid_grant"));
        let err = fails_with(400, &[], "bad").await;
        assert!(!err.is_grant_rejected() && !err.is_transient());
    }

    #[tokio::test]
    async fn server_errors_are_transient_with_retry_after() {
        let err = fails_with(503, &[("retry-after", "7")], "").await;
        assert!(err.is_transient() && err.may_have_been_sent());
        assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        let err = fails_with(429, &[("retry-after", "120")], "").await;
        assert!(err.is_transient());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    }

    #[tokio::test]
    async fn unparseable_error_body_is_described_not_quoted() {
        let err = fails_with(
            502,
            &[("content-type", "text/html")],
            "<html>proxy-sentinel-page</html>",
        )
        .await;
        let text = format!("{err} {err:?}");
        assert!(text.contains("body: text/html, 32 bytes"), "{text}");
        assert!(!text.contains("proxy-sentinel-page"));
    }

    #[tokio::test]
    async fn redirect_is_neither_followed_nor_quoted() {
        let calls = Arc::new(Mutex::new(0));
        let count = calls.clone();
        let service = tower::service_fn(move |_req: Request<Full<Bytes>>| {
            *count.lock().unwrap() += 1;
            async move {
                Ok::<_, Infallible>(response(
                    302,
                    &[("location", "https://evil.example.com/steal")],
                    "moved",
                ))
            }
        });
        let fetcher = HttpFetcher::with_client(TOKEN_URL, service).unwrap();
        let err = fetcher.fetch(password()).await.unwrap_err();
        assert!(err.is_redirect() && !err.is_transient());
        assert_eq!(err.status(), Some(StatusCode::FOUND));
        assert_eq!(*calls.lock().unwrap(), 1);
        assert!(!format!("{err} {err:?}").contains("evil"));
    }

    #[tokio::test]
    async fn success_body_is_never_copied_into_an_error() {
        let err = fails_with(
            200,
            &[("content-type", "application/json")],
            r#"{"access_token":"acc sentinel","refresh_token":"ref-1"}"#,
        )
        .await;
        assert!(err.is_invalid_response());
        assert_eq!(err.status(), Some(StatusCode::OK));
        assert_eq!(err.grant_type(), Some(GrantType::Password));
        no_secret(&format!("{err} {err:?}"));

        let err = fails_with(
            200,
            &[("content-type", "text/html")],
            "<html>sentinel</html>",
        )
        .await;
        assert!(err.is_invalid_response() && err.is_transient());
        let text = format!("{err} {err:?}");
        assert!(
            text.contains("malformed JSON") && text.contains("body: text/html, 21 bytes"),
            "{text}"
        );
        no_secret(&text);
    }

    #[tokio::test]
    async fn success_with_refusal_is_rejected() {
        let err = fails_with(200, &[("retry-after", "5")], r#"{"error":"invalid_grant"}"#).await;
        assert!(err.is_grant_rejected());
        assert_eq!(err.status(), Some(StatusCode::OK));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));
    }

    /// A body of frames handed out one by one, maybe ending in an error; its
    /// size is unknown up front, as with a chunked answer.
    struct Frames(std::collections::VecDeque<Result<Bytes, std::io::Error>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front().map(|r| r.map(http_body::Frame::data)))
        }
    }

    fn frames(count: usize, size: usize) -> Frames {
        Frames(
            (0..count)
                .map(|_| Ok(Bytes::from(vec![b'a'; size])))
                .collect(),
        )
    }

    #[tokio::test]
    async fn oversized_body_is_refused_within_the_cap() {
        let service = |count| {
            tower::service_fn(move |_req: Request<Full<Bytes>>| async move {
                Ok::<_, Infallible>(Response::new(frames(count, 64 * 1024)))
            })
        };
        // 4 MiB in 64 KiB chunks, no length announced.
        let fetcher = HttpFetcher::with_client(TOKEN_URL, service(64)).unwrap();
        let err = fetcher.fetch(password()).await.unwrap_err();
        assert!(err.is_body_too_large() && err.is_transient(), "{err:?}");
        assert_eq!(err.status(), Some(StatusCode::OK));

        // Exactly the cap is read (and is no token).
        let fetcher = HttpFetcher::with_client(TOKEN_URL, service(16)).unwrap();
        let err = fetcher.fetch(password()).await.unwrap_err();
        assert!(err.is_invalid_response(), "{err:?}");
    }

    #[tokio::test]
    async fn announced_oversized_body_is_not_read() {
        let big: &'static str = Box::leak("a".repeat(BODY_CAP + 1).into_boxed_str());
        let err = fails_with(200, &[], big).await;
        assert!(err.is_body_too_large());
        let err = fails_with(401, &[], big).await;
        assert!(err.is_grant_rejected(), "the status decides: {err:?}");
        assert!(err.to_string().contains("1 MiB cap"));
    }

    // --- transport ---

    #[tokio::test]
    async fn service_errors_are_transport_errors() {
        let service = tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, _>(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset-cause",
            ))
        });
        let err = HttpFetcher::with_client(TOKEN_URL, service)
            .unwrap()
            .fetch(password())
            .await
            .unwrap_err();
        assert!(err.is_transient() && err.may_have_been_sent() && !err.is_connect());
        assert_eq!(err.grant_type(), Some(GrantType::Password));
        assert_eq!(
            err.to_string(),
            "password grant: the exchange with the token endpoint broke"
        );
        assert!(err.source().unwrap().to_string().contains("reset-cause"));
    }

    #[tokio::test]
    async fn refused_without_a_connector_saying_so_counts_as_sent() {
        let service = tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, _>(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            ))
        });
        let err = HttpFetcher::with_client(TOKEN_URL, service)
            .unwrap()
            .fetch(password())
            .await
            .unwrap_err();
        assert!(!err.is_connect() && err.may_have_been_sent());
    }

    #[tokio::test]
    async fn broken_body_is_a_transport_error() {
        let service = tower::service_fn(|_req: Request<Full<Bytes>>| async {
            let body = Frames(
                [
                    Ok(Bytes::from_static(b"{\"access_")),
                    Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                ]
                .into(),
            );
            Ok::<_, Infallible>(Response::new(body))
        });
        let err = HttpFetcher::with_client(TOKEN_URL, service)
            .unwrap()
            .fetch(password())
            .await
            .unwrap_err();
        assert!(err.is_transient() && err.may_have_been_sent() && !err.is_connect());
        assert!(!err.is_invalid_response());
        assert_eq!(err.status(), Some(StatusCode::OK));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_answer_times_out() {
        let service = tower::service_fn(|_req: Request<Full<Bytes>>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Infallible>(response(200, &[], OK_BODY))
        });
        let fetcher = HttpFetcher::with_client(TOKEN_URL, service).unwrap();
        let started = Instant::now();
        let err = fetcher.fetch(password()).await.unwrap_err();
        assert!(err.is_timeout() && err.is_transient() && err.may_have_been_sent());
        assert_eq!(started.elapsed(), DEFAULT_TIMEOUT);

        let fetcher = fetcher.timeout(Duration::from_secs(2));
        let started = Instant::now();
        assert!(fetcher.fetch(password()).await.unwrap_err().is_timeout());
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_body_times_out() {
        let service = tower::service_fn(|_req: Request<Full<Bytes>>| async {
            let body = SlowBody(Box::pin(tokio::time::sleep(Duration::from_secs(60))));
            Ok::<_, Infallible>(Response::new(body))
        });
        let fetcher = HttpFetcher::with_client(TOKEN_URL, service)
            .unwrap()
            .timeout(Duration::from_secs(5));
        let err = fetcher.fetch(password()).await.unwrap_err();
        assert!(err.is_timeout());
        assert_eq!(err.status(), None);
    }

    /// A body that yields nothing until its sleep ends.
    struct SlowBody(Pin<Box<tokio::time::Sleep>>);

    impl Body for SlowBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            self.0.as_mut().poll(cx).map(|()| None)
        }
    }

    // --- Retry-After ---

    fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
        parse_retry_after(&HeaderValue::from_str(value).unwrap(), now)
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = SystemTime::now();
        assert_eq!(retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 30 ", now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("3600", now), Some(RETRY_AFTER_CAP));
        assert_eq!(retry_after("86400", now), Some(RETRY_AFTER_CAP));
        assert_eq!(
            retry_after("99999999999999999999999999", now),
            Some(RETRY_AFTER_CAP)
        );
    }

    #[test]
    fn retry_after_http_date() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        let date = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let value = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(
            retry_after(value, date - Duration::from_secs(90)),
            Some(Duration::from_secs(90))
        );
        assert_eq!(retry_after(value, date), Some(Duration::ZERO));
        assert_eq!(
            retry_after(value, date + Duration::from_secs(5)),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(value, date - Duration::from_secs(86_400)),
            Some(RETRY_AFTER_CAP)
        );
        // The obsolete forms httpdate accepts too.
        assert_eq!(
            retry_after(
                "Sunday, 06-Nov-94 08:49:37 GMT",
                date - Duration::from_secs(1)
            ),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn retry_after_garbage_is_ignored() {
        let now = SystemTime::now();
        for value in [
            "",
            "soon",
            "-5",
            "1.5",
            "+10",
            "12abc",
            "Sun, 99 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(retry_after(value, now), None, "{value:?}");
        }
        let opaque = HeaderValue::from_bytes(b"\xff12").unwrap();
        assert_eq!(parse_retry_after(&opaque, now), None);
    }

    // --- descriptions, Debug, construction ---

    #[test]
    fn content_type_description() {
        let html = HeaderValue::from_static("text/html; charset=utf-8");
        assert_eq!(
            describe_body(Some(&html), 1234),
            "body: text/html; charset=utf-8, 1234 bytes"
        );
        assert_eq!(describe_body(None, 0), "body: no content type, 0 bytes");
        let long = HeaderValue::from_str(&format!("application/{}", "x".repeat(100))).unwrap();
        let text = describe_body(Some(&long), 5);
        assert_eq!(
            text,
            format!("body: application/{}, 5 bytes", "x".repeat(64 - 12))
        );
        let odd = HeaderValue::from_bytes(b"text/\xe9\tplain").unwrap();
        assert_eq!(describe_body(Some(&odd), 1), "body: text/??plain, 1 bytes");
    }

    #[test]
    fn debug_shows_url_and_timeout_only() {
        let service = tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(response(200, &[], OK_BODY))
        });
        let fetcher = HttpFetcher::with_client(
            "https://auth.example.com/oauth/v2/token?tenant=t-sentinel",
            service,
        )
        .unwrap()
        .timeout(Duration::from_secs(9));
        let text = format!("{fetcher:?}");
        assert_eq!(
            text,
            r#"HttpFetcher { token_url: "https://auth.example.com/oauth/v2/token", timeout: 9s, .. }"#
        );
        assert_eq!(fetcher.token_uri().query(), Some("tenant=t-sentinel"));
    }

    #[test]
    fn token_url_rules() {
        let ok = |url: &str| HttpFetcher::with_client(url, ()).map(|f| f.token_uri().clone());
        assert!(ok(TOKEN_URL).is_ok());
        assert!(ok("http://127.0.0.1:9/oauth/v2/token").is_ok());
        assert_eq!(
            ok("http://example.com/x").unwrap_err(),
            BuildError::InsecureUrl { what: "token" }
        );
        assert!(matches!(
            ok("https://user:pw@auth.example.com/token"),
            Err(BuildError::InvalidUrl { what: "token", .. })
        ));
        assert!(matches!(
            ok("/oauth/v2/token"),
            Err(BuildError::InvalidUrl { .. })
        ));
        assert_eq!(
            HttpFetcher::with_client(TOKEN_URL, 7u8).unwrap().get_ref(),
            &7
        );
    }

    #[cfg(feature = "rustls")]
    #[test]
    fn default_client_builds() {
        let fetcher = HttpFetcher::new(TOKEN_URL).unwrap();
        assert_eq!(fetcher.token_uri(), TOKEN_URL);
        assert_eq!(
            HttpFetcher::new("http://example.com/x").unwrap_err(),
            BuildError::InsecureUrl { what: "token" }
        );
    }
}
