//! The Daxium token client: [`HttpFetcher`] posts grants to the token endpoint
//! over any tower HTTP service, hyper-util's client over rustls by default. It
//! never follows a redirect, reads every body through a 1 MiB cap, and sorts
//! each failure into the kinds the token cache acts on.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{
    HeaderValue, Method, Request, Uri,
    header::{ACCEPT, CONTENT_TYPE, USER_AGENT},
};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tracing::Instrument;

#[cfg(feature = "rustls")]
use super::HttpsClient;
use super::{
    GrantRequest, HttpService, TokenFetcher,
    classify::{self, BodyFailure},
    client::DefaultClient,
};
use crate::{
    error::{BoxError, BuildError, Kind, TokenError},
    layer::origin::{ShownUrl, check_url},
    token::TokenPair,
};

type FetchResult = Result<TokenPair, TokenError>;

/// The most of a response body that is ever read: 1 MiB.
const BODY_CAP: usize = 1024 * 1024;

/// The default time for a whole exchange, request and body.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

const FORM_URLENCODED: &str = "application/x-www-form-urlencoded";
const APPLICATION_JSON: &str = "application/json";
const USER_AGENT_VALUE: &str = concat!("daxium-auth/", env!("CARGO_PKG_VERSION"));

/// The Daxium token client over a tower HTTP service, any [`HttpService`].
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
/// | 2xx, unusable (malformed JSON, bad token, not bearer, an `error` string that is no refusal) | [invalid response](TokenError::is_invalid_response) |
/// | 2xx with an RFC 6749 refusal (`{"error":"invalid_grant"}`) | [rejected](TokenError::is_grant_rejected) |
/// | 2xx, body over 1 MiB | [body too large](TokenError::is_body_too_large) |
/// | 3xx | [redirect](TokenError::is_redirect) (never followed) |
/// | 400, 401, 403 with a refusal body: a Daxium `DAERR-…` code, or an RFC 6749 refusal (`invalid_grant`, `invalid_client`, …) | [rejected](TokenError::is_grant_rejected) |
/// | 5xx, 429, 408, whatever the body | unavailable ([transient](TokenError::is_transient)) |
/// | any other status; a 400, 401 or 403 without a refusal body | unexpected status (neither transient nor rejected) |
/// | refused connection, DNS failure, TLS handshake failure | [connect](TokenError::is_connect) (never sent) |
/// | reset, broken stream, any other service error | transport (may have been sent) |
/// | no complete answer within the timeout | [timeout](TokenError::is_timeout) |
///
/// Only a body refuses: a 401 or 403 from a gateway or a CDN in front of
/// the endpoint (an HTML page, its own `{"code": 400, …}`, nothing) is an
/// unexpected status, so that a proxy's rule never holds the password
/// grant in the rejected-password cool-down. It is not transient either,
/// since such a rule does not lift with time; the cache tries again after
/// its backoff, as for any failure that is not a refusal. The body, parsed
/// as Daxium's or RFC 6749's error form, adds the
/// [code](TokenError::error_code), or a description by content type and
/// length when it is neither form (or over the cap, or broken).
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
pub struct HttpFetcher<S = DefaultClient> {
    client: S,
    token_uri: Uri,
    timeout: Duration,
}

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

impl<S: HttpService> HttpFetcher<S> {
    /// One grant, on a clone of the service: the future owns what it needs.
    fn start(&self, grant: GrantRequest) -> impl Future<Output = FetchResult> + Send + use<S> {
        exchange(
            self.client.clone(),
            self.token_uri.clone(),
            self.timeout,
            grant,
        )
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

impl<S: HttpService> TokenFetcher for HttpFetcher<S> {
    fn fetch(&self, grant: GrantRequest) -> impl Future<Output = FetchResult> + Send {
        self.start(grant)
    }

    /// The token URL that every grant is posted to.
    fn endpoint(&self) -> Option<&Uri> {
        Some(&self.token_uri)
    }
}

impl<S: HttpService> Service<GrantRequest> for HttpFetcher<S> {
    type Response = TokenPair;
    type Error = TokenError;
    // Grants are rare: one allocation per grant costs nothing worth a named future.
    type Future = Pin<Box<dyn Future<Output = FetchResult> + Send + 'static>>;

    /// Always ready: each call drives a clone of the HTTP service ready itself.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TokenError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, grant: GrantRequest) -> Self::Future {
        Box::pin(self.start(grant))
    }
}

// === the exchange ===

/// One grant, start to end: the span, the timeout, and the grant type on
/// every error.
async fn exchange<S: HttpService>(
    client: S,
    token_uri: Uri,
    timeout: Duration,
    grant: GrantRequest,
) -> FetchResult {
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

async fn round_trip<S: HttpService>(
    client: S,
    token_uri: Uri,
    grant: &GrantRequest,
    started: Instant,
) -> FetchResult {
    let response = client
        .oneshot(grant_request(token_uri, grant))
        .await
        .map_err(|err| classify::service_error(err.into()))?;
    let (parts, body) = response.into_parts();
    let body = if parts.status.is_redirection() {
        // A redirect is neither followed nor quoted: its body is not read.
        Ok(Bytes::new())
    } else {
        read_capped(body).await
    };
    tracing::debug!(
        status = parts.status.as_u16(),
        latency_ms = millis(started.elapsed()),
        "token endpoint answered"
    );
    classify::answer(parts.status, &parts.headers, body, SystemTime::now())
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
