//! What an answer of the token endpoint means: a token pair, or a
//! [`TokenError`] of the kind the token cache acts on, from the status, the
//! body, `Retry-After`, and whether a failed request may have been sent. Pure
//! functions of what came back, so that one table covers every case.

use std::{
    error::Error as StdError,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, StatusCode,
    header::{CONTENT_TYPE, RETRY_AFTER},
};

use crate::{
    answer::parse_token_response,
    error::{BoxError, ErrorBody, Kind, TokenError},
    token::TokenPair,
};

/// The longest `Retry-After` honoured: a larger one is cut to this.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// The longest content type quoted in an error's detail.
const CONTENT_TYPE_CAP: usize = 64;

/// Why a body could not be had.
#[derive(Debug)]
pub(super) enum BodyFailure {
    /// Over the cap, announced or read.
    TooLarge,
    /// The stream broke off.
    Broken(BoxError),
}

/// The outcome of an answer: `body` is what reading it gave (a redirect's is
/// not read, and not looked at). `now` dates a `Retry-After` given as a date.
pub(super) fn answer(
    status: StatusCode,
    headers: &HeaderMap,
    body: Result<Bytes, BodyFailure>,
    now: SystemTime,
) -> Result<TokenPair, TokenError> {
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|value| parse_retry_after(value, now));
    let err = if status.is_redirection() {
        // Neither followed nor quoted: `Location` is not copied.
        TokenError::new(Kind::Redirect)
    } else if status.is_success() {
        match body.map_err(BodyFailure::into_error) {
            Ok(bytes) => match parse_success(&bytes, headers) {
                Ok(pair) => return Ok(pair),
                Err(err) => err,
            },
            Err(err) => err,
        }
    } else {
        failure(status, headers, body)
    };
    Err(err.with_status(status).with_retry_after(retry_after))
}

/// A non-2xx, non-3xx answer: its status and, for a 400, 401 or 403, whether
/// its body refuses the grant; the body also adds the parsed error, or a
/// description of what it was. A body that could not be read refuses nothing.
fn failure(
    status: StatusCode,
    headers: &HeaderMap,
    body: Result<Bytes, BodyFailure>,
) -> TokenError {
    match body {
        Ok(bytes) => match ErrorBody::parse(&bytes) {
            Some(parsed) => TokenError::new(classify(status, Some(&parsed))).with_body(parsed),
            None => TokenError::new(classify(status, None))
                .with_detail(describe_body(headers.get(CONTENT_TYPE), bytes.len())),
        },
        Err(BodyFailure::TooLarge) => {
            TokenError::new(classify(status, None)).with_detail("body over the 1 MiB cap, not read")
        }
        Err(BodyFailure::Broken(source)) => TokenError::new(classify(status, None))
            .with_detail("body broke off")
            .with_source(source),
    }
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

impl BodyFailure {
    fn into_error(self) -> TokenError {
        match self {
            Self::TooLarge => TokenError::new(Kind::BodyTooLarge),
            Self::Broken(source) => TokenError::new(Kind::Transport).with_source(source),
        }
    }
}

/// The kind of a non-2xx, non-3xx answer. A refusal takes both a refusing
/// status and a body that says so (a Daxium `DAERR-` code or an RFC 6749
/// refusal): a gateway's or a CDN's page, or its own JSON, refuses nothing,
/// whatever its status. A 401 or 403 without such a body is an unexpected
/// status, not a transient one: an access rule in front of the endpoint does
/// not lift with time, though the cache still tries again after its backoff.
fn classify(status: StatusCode, body: Option<&ErrorBody>) -> Kind {
    let refusal = body.is_some_and(ErrorBody::is_refusal);
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if refusal => {
            Kind::Rejected
        }
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => Kind::Unavailable,
        s if s.is_server_error() => Kind::Unavailable,
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
pub(super) fn service_error(err: BoxError) -> TokenError {
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

#[cfg(test)]
mod tests;
