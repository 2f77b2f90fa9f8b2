//! Error types. [`TokenError`] says why no access token could be had; it is cheap
//! to clone, so one failed grant reaches every waiting request as the same value.
//! [`Error`] is what [`AuthService`](crate::AuthService) returns: the inner
//! service's own error, or a token error, kept apart. [`BuildError`] is a bad
//! configuration, found when the layer is built; those two are in `layer`.

use std::{error::Error as StdError, fmt, sync::Arc, time::Duration};

use http::StatusCode;

pub use self::layer::{BuildError, Error};
use crate::{grant::GrantType, token::RefreshToken};

mod layer;

/// A boxed error, as tower uses.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why a grant failed, or why no token is available.
///
/// The type is opaque: ask with the `is_*` predicates and accessors. Its
/// `Display` is one line that never holds a secret nor the body of a 2xx
/// response; the underlying cause, if any, is only reachable through
/// [`source`](StdError::source).
#[derive(Clone)]
pub struct TokenError {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    kind: Kind,
    grant: Option<GrantType>,
    status: Option<StatusCode>,
    body: Option<ErrorBody>,
    detail: Option<String>,
    retry_after: Option<Duration>,
    /// Shared, so that a copy-on-write of a shared error keeps its cause.
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
    /// A rotated refresh token from a 2xx answer that was otherwise unusable;
    /// the cache splits it off before the error is shared. Never shown.
    refresh: Option<RefreshToken>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The endpoint refused the grant (bad credentials, spent refresh token).
    Rejected,
    /// An error status that is worth retrying later (5xx, 429, 408).
    Unavailable,
    /// Any other non-2xx status that is not a refusal of the grant.
    Status,
    /// A 3xx: the token client never follows redirects.
    Redirect,
    /// The request could not be sent (connection refused, DNS).
    Connect,
    /// The request may have been sent, then the exchange broke.
    Transport,
    /// No answer in time.
    Timeout,
    /// A 2xx the crate cannot use (malformed JSON, a bad token, not bearer).
    InvalidResponse,
    /// A response body over the size cap.
    BodyTooLarge,
    /// The layer gave up waiting: the cache was shut down.
    Closed,
    /// The API refused several new tokens in a row before accepting any.
    Refused,
}

impl TokenError {
    pub(crate) fn new(kind: Kind) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                grant: None,
                status: None,
                body: None,
                detail: None,
                retry_after: None,
                source: None,
                refresh: None,
            }),
        }
    }

    pub(crate) fn closed() -> Self {
        Self::new(Kind::Closed)
    }

    /// A field of the token endpoint's answer, or a token handed to a public
    /// constructor, that is unusable.
    pub(crate) fn invalid_field(field: &'static str, reason: &'static str) -> Self {
        Self::new(Kind::InvalidResponse).with_detail(format!("`{field}` {reason}"))
    }

    /// Copy-on-write: an error built by a fetcher may be a clone of one it
    /// handed out before, so its inner part is copied rather than assumed unique.
    fn inner_mut(&mut self) -> &mut Inner {
        Arc::make_mut(&mut self.inner)
    }

    pub(crate) fn with_grant(mut self, grant: GrantType) -> Self {
        self.inner_mut().grant = Some(grant);
        self
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.inner_mut().status = Some(status);
        self
    }

    pub(crate) fn with_body(mut self, body: ErrorBody) -> Self {
        self.inner_mut().body = Some(body);
        self
    }

    /// A short, secret-free description (e.g. the field that was invalid).
    pub(crate) fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.inner_mut().detail = Some(detail.into());
        self
    }

    pub(crate) fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.inner_mut().retry_after = retry_after;
        self
    }

    pub(crate) fn with_refresh_token(mut self, refresh: RefreshToken) -> Self {
        self.inner_mut().refresh = Some(refresh);
        self
    }

    /// Splits off the rotated refresh token of an unusable 2xx answer, so that
    /// it travels as a value of its own and the error can be shared without it.
    pub(crate) fn split_refresh_token(mut self) -> (Self, Option<RefreshToken>) {
        if self.inner.refresh.is_none() {
            return (self, None);
        }
        let refresh = self.inner_mut().refresh.take();
        (self, refresh)
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner_mut().source = Some(Arc::from(source.into()));
        self
    }

    /// An error from a custom [`TokenFetcher`](crate::TokenFetcher) that could
    /// not reach the token endpoint at all: the grant request was never sent, so
    /// a refresh token it carried is still good.
    pub fn connect(source: impl Into<BoxError>) -> Self {
        Self::new(Kind::Connect).with_source(source)
    }

    /// An error from a custom fetcher after the grant request may have been
    /// sent (reset, broken stream): retried later, and a refresh token it
    /// carried counts as spent.
    pub fn transport(source: impl Into<BoxError>) -> Self {
        Self::new(Kind::Transport).with_source(source)
    }

    /// A custom fetcher's timeout: retried later; a refresh token counts as spent.
    pub fn timeout() -> Self {
        Self::new(Kind::Timeout)
    }

    /// A custom fetcher's refusal of the grant, as the endpoint answered it.
    pub fn rejected(status: StatusCode, body: Option<ErrorBody>) -> Self {
        let err = Self::new(Kind::Rejected).with_status(status);
        match body {
            Some(body) => err.with_body(body),
            None => err,
        }
    }

    /// The token endpoint refused the grant: wrong credentials, an unknown,
    /// spent or revoked refresh token, a disabled client. Retrying the same
    /// grant will not help. The default token client says so only when the
    /// body refuses (a `DAERR-` code or an RFC 6749 refusal), never for a status alone.
    pub fn is_grant_rejected(&self) -> bool {
        self.inner.kind == Kind::Rejected
    }

    /// A failure that may pass: a 5xx, 429 or 408, a connection error, a reset,
    /// a timeout, or a 2xx the crate could not use. The layer retries these with
    /// backoff.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.inner.kind,
            Kind::Unavailable
                | Kind::Connect
                | Kind::Transport
                | Kind::Timeout
                | Kind::InvalidResponse
                | Kind::BodyTooLarge
        )
    }

    /// The grant request was never sent (connection refused, DNS failure).
    pub fn is_connect(&self) -> bool {
        self.inner.kind == Kind::Connect
    }

    /// The token endpoint did not answer in time.
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == Kind::Timeout
    }

    /// The token endpoint answered with a redirect, which is never followed.
    pub fn is_redirect(&self) -> bool {
        self.inner.kind == Kind::Redirect
    }

    /// A 2xx response that could not be used: malformed JSON, a missing or
    /// invalid access token, a token type other than bearer, or an `error`
    /// string that is not a refusal of the grant.
    pub fn is_invalid_response(&self) -> bool {
        self.inner.kind == Kind::InvalidResponse
    }

    /// A response body over the size cap (1 MiB).
    pub fn is_body_too_large(&self) -> bool {
        self.inner.kind == Kind::BodyTooLarge
    }

    /// The token cache was shut down while the request waited.
    pub fn is_closed(&self) -> bool {
        self.inner.kind == Kind::Closed
    }

    /// The API refused several new tokens in a row, each on its first use,
    /// and accepted none: it refuses every token of this login for now (a
    /// permissions problem behind a bare 401, a gateway in trouble). The
    /// layer makes its next grant after a pause that grows with the streak,
    /// and answers requests at once with this error until then, rather than
    /// send them with a token the API refused or make them wait for a grant
    /// that cannot help. A token that worked and then was refused (revoked)
    /// never leads here: it is replaced at once.
    pub fn is_refused(&self) -> bool {
        self.inner.kind == Kind::Refused
    }

    /// Whether the grant request may have reached the endpoint. A refresh
    /// token sent in such a request is treated as spent.
    pub fn may_have_been_sent(&self) -> bool {
        !matches!(
            self.inner.kind,
            Kind::Connect | Kind::Closed | Kind::Refused
        )
    }

    /// The grant that failed, if known.
    pub fn grant_type(&self) -> Option<GrantType> {
        self.inner.grant
    }

    /// The HTTP status of the token endpoint's answer, if there was one.
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.status
    }

    /// The parsed error body of a non-2xx answer (Daxium's `DAERR-` form or
    /// RFC 6749 §5.2's).
    pub fn body(&self) -> Option<&ErrorBody> {
        self.inner.body.as_ref()
    }

    /// The machine-readable error code: Daxium's `DAERR-…` code, or the RFC
    /// 6749 `error` (such as `invalid_grant`).
    pub fn error_code(&self) -> Option<&str> {
        self.inner.body.as_ref().and_then(ErrorBody::code)
    }

    /// How long the endpoint asked to wait (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(grant) = self.inner.grant {
            write!(f, "{} grant: ", grant.as_str())?;
        }
        f.write_str(match self.inner.kind {
            Kind::Rejected => "rejected by the token endpoint",
            Kind::Unavailable => "token endpoint unavailable",
            Kind::Status => "unexpected status from the token endpoint",
            Kind::Redirect => "token endpoint answered with a redirect, which is not followed",
            Kind::Connect => "could not connect to the token endpoint",
            Kind::Transport => "the exchange with the token endpoint broke",
            Kind::Timeout => "the token endpoint did not answer in time",
            Kind::InvalidResponse => "unusable token response",
            Kind::BodyTooLarge => "token endpoint response body over the size cap",
            Kind::Closed => "the token cache was shut down",
            Kind::Refused => "the API refuses every new access token for now",
        })?;
        if let Some(status) = self.inner.status {
            write!(f, " ({status})")?;
        }
        if let Some(body) = &self.inner.body {
            write!(f, ": {body}")?;
        }
        if let Some(detail) = &self.inner.detail {
            write!(f, ": {detail}")?;
        }
        if let Some(after) = self.inner.retry_after {
            write!(f, " (retry after {} s)", after.as_secs())?;
        }
        Ok(())
    }
}

impl fmt::Debug for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TokenError");
        d.field("kind", &self.inner.kind);
        if let Some(grant) = self.inner.grant {
            d.field("grant", &grant);
        }
        if let Some(status) = self.inner.status {
            d.field("status", &status);
        }
        if let Some(body) = &self.inner.body {
            d.field("body", body);
        }
        if let Some(detail) = &self.inner.detail {
            d.field("detail", detail);
        }
        if let Some(after) = self.inner.retry_after {
            d.field("retry_after", &after);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl StdError for TokenError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// The parsed body of a token endpoint error: Daxium's
/// `{code: "DAERR-…", message, url, server_time}` or RFC 6749 §5.2's
/// `{error, error_description, error_uri}`, from [`ErrorBody::parse`]. Text
/// fields are cut to 256 bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorBody {
    /// Daxium's error code, `DAERR-…`.
    pub code: Option<String>,
    /// Daxium's human-readable message.
    pub message: Option<String>,
    /// Daxium's link to the error's documentation.
    pub url: Option<String>,
    /// Daxium's server time (Unix seconds), as sent.
    pub server_time: Option<String>,
    /// RFC 6749 §5.2 `error`, such as `invalid_grant`.
    pub error: Option<String>,
    /// RFC 6749 §5.2 `error_description`.
    pub error_description: Option<String>,
    /// RFC 6749 §5.2 `error_uri`.
    pub error_uri: Option<String>,
}

impl ErrorBody {
    /// The code to act on: Daxium's `DAERR-…`, else the RFC 6749 `error`.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref().or(self.error.as_deref())
    }

    /// The description: Daxium's `message`, else `error_description`.
    pub fn description(&self) -> Option<&str> {
        self.message
            .as_deref()
            .or(self.error_description.as_deref())
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code(), self.description()) {
            (Some(code), Some(desc)) => write!(f, "{code}: {desc}"),
            (Some(code), None) => f.write_str(code),
            (None, Some(desc)) => f.write_str(desc),
            (None, None) => f.write_str("no error code"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_without_the_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset-cause");
        let err = TokenError::transport(io).with_grant(GrantType::RefreshToken);
        let text = err.to_string();
        assert_eq!(
            text,
            "refresh_token grant: the exchange with the token endpoint broke"
        );
        assert!(err.source().unwrap().to_string().contains("reset-cause"));
        assert!(err.is_transient());
        assert!(err.may_have_been_sent());
    }

    #[test]
    fn rejected_shows_status_and_code() {
        let body = ErrorBody::parse(br#"{"code":"DAERR-0401","message":"Bad"}"#);
        let err =
            TokenError::rejected(StatusCode::UNAUTHORIZED, body).with_grant(GrantType::Password);
        assert!(err.is_grant_rejected() && !err.is_transient());
        assert_eq!(err.error_code(), Some("DAERR-0401"));
        assert_eq!(
            err.to_string(),
            "password grant: rejected by the token endpoint (401 Unauthorized): DAERR-0401: Bad"
        );
    }

    #[test]
    fn connect_errors_were_not_sent() {
        let err = TokenError::connect("refused");
        assert!(err.is_connect() && err.is_transient() && !err.may_have_been_sent());
    }

    #[test]
    fn service_error_keeps_kinds_apart() {
        let token: Error<std::io::Error> = Error::Token(TokenError::timeout());
        assert!(token.is_token() && !token.is_inner());
        assert!(token.token_error().unwrap().is_timeout());
        let inner: Error<std::io::Error> = Error::Inner(std::io::Error::other("inner-cause"));
        assert!(inner.is_inner());
        assert_eq!(inner.to_string(), "the inner service failed");
        assert_eq!(inner.into_inner().unwrap().to_string(), "inner-cause");
    }
}
