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

/// A non-2xx, non-3xx answer is classified by its status; the body only adds
/// the parsed error, or a description of what it was. A 401 whose body broke
/// is still a refusal: calling it transient would retry a bad password.
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
mod tests {
    use super::*;

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

    fn answered(status: u16, headers: &[(&str, &str)], body: &str) -> TokenError {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let status = StatusCode::from_u16(status).unwrap();
        let body = Ok(Bytes::copy_from_slice(body.as_bytes()));
        answer(status, &map, body, SystemTime::now()).unwrap_err()
    }

    #[test]
    fn unparseable_error_body_is_described_not_quoted() {
        let err = answered(
            502,
            &[("content-type", "text/html")],
            "<html>proxy-sentinel-page</html>",
        );
        let text = format!("{err} {err:?}");
        assert!(text.contains("body: text/html, 32 bytes"), "{text}");
        assert!(!text.contains("proxy-sentinel-page"));
    }

    #[test]
    fn success_body_is_never_copied_into_an_error() {
        let err = answered(
            200,
            &[("content-type", "application/json")],
            r#"{"access_token":"acc sentinel","refresh_token":"ref-1"}"#,
        );
        assert!(err.is_invalid_response());
        assert_eq!(err.status(), Some(StatusCode::OK));
        let text = format!("{err} {err:?}");
        assert!(
            !text.contains("sentinel") && !text.contains("ref-1"),
            "{text}"
        );

        let err = answered(
            200,
            &[("content-type", "text/html")],
            "<html>sentinel</html>",
        );
        assert!(err.is_invalid_response() && err.is_transient());
        let text = format!("{err} {err:?}");
        assert!(
            text.contains("malformed JSON") && text.contains("body: text/html, 21 bytes"),
            "{text}"
        );
        assert!(!text.contains("sentinel"), "{text}");
    }

    #[test]
    fn success_with_refusal_is_rejected() {
        let err = answered(200, &[("retry-after", "5")], r#"{"error":"invalid_grant"}"#);
        assert!(err.is_grant_rejected());
        assert_eq!(err.status(), Some(StatusCode::OK));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn bodies_that_could_not_be_had() {
        let ok = StatusCode::OK;
        let unauthorized = StatusCode::UNAUTHORIZED;
        let none = HeaderMap::new();
        let now = SystemTime::now();
        let too_large = |status| answer(status, &none, Err(BodyFailure::TooLarge), now);
        let err = too_large(ok).unwrap_err();
        assert!(err.is_body_too_large() && err.is_transient());
        let err = too_large(unauthorized).unwrap_err();
        assert!(err.is_grant_rejected(), "the status decides: {err:?}");
        assert!(err.to_string().contains("1 MiB cap"));

        let broken = || BodyFailure::Broken("cut-cause".into());
        let err = answer(ok, &none, Err(broken()), now).unwrap_err();
        assert!(err.is_transient() && err.may_have_been_sent() && !err.is_connect());
        assert!(!err.is_invalid_response());
        assert_eq!(err.status(), Some(ok));
        let err = answer(unauthorized, &none, Err(broken()), now).unwrap_err();
        assert!(err.to_string().contains("body broke off"), "{err}");
        assert!(err.source().unwrap().to_string().contains("cut-cause"));
    }

    // --- was it sent ---

    #[test]
    fn service_errors_are_transport_errors() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset-cause");
        let err = service_error(reset.into());
        assert!(err.is_transient() && err.may_have_been_sent() && !err.is_connect());
        assert_eq!(
            err.to_string(),
            "the exchange with the token endpoint broke"
        );
        assert!(err.source().unwrap().to_string().contains("reset-cause"));
    }

    #[test]
    fn refused_without_a_connector_saying_so_counts_as_sent() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let err = service_error(refused.into());
        assert!(!err.is_connect() && err.may_have_been_sent());
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
}
