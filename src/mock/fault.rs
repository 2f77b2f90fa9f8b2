//! The misbehaviours that a test can queue on the mock token endpoint, and the
//! responses they become. Each one is something a real token endpoint, or a
//! proxy in front of it, does on a bad day.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::{
    codes,
    response::{MockBody, error_response, respond},
};

/// What the next grant request meets instead of (or before) a normal answer,
/// queued with [`MockServer::fail_next_grants`](super::MockServer::fail_next_grants).
///
/// Every request to the token endpoint takes the next queued fault, whatever
/// it asks for (a malformed request too). Except for [`Fault::Delay`], the
/// fault replaces the answer: the grant is not performed and no token is spent.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum Fault {
    /// 500 with a `DAERR-` JSON body ([`codes::SERVER_ERROR`]).
    ServerError,
    /// 429 with `Retry-After: <retry_after>` (seconds) and a `DAERR-` JSON
    /// body ([`codes::TOO_MANY_REQUESTS`]).
    TooManyRequests {
        /// The `Retry-After` value, in seconds.
        retry_after: u64,
    },
    /// Waits this long, then performs the grant and answers normally. The grant
    /// takes effect when the request arrives, so a client that gives up while
    /// waiting has still spent its refresh token.
    Delay(Duration),
    /// Closes the connection without any response. On HTTP/2 this drops the
    /// whole connection, other streams on it included, like a TCP reset.
    Reset,
    /// 200, `Content-Type: application/json`, and a body that is not JSON
    /// (`{"access_token": "ab`).
    MalformedJson,
    /// 200 with `Content-Type: text/html` and an HTML page, as a captive
    /// portal or a misconfigured proxy sends.
    Html,
    /// 200 `application/json` whose body is 4 MiB, streamed in 64 KiB chunks
    /// without a `Content-Length`; it never completes into a valid token.
    Oversized,
    /// 307 with `Location: <url>` and an empty body.
    Redirect(String),
    /// Any response: status, `Content-Type` (omitted when empty), body and an
    /// optional `Retry-After` value sent verbatim. A header value that is not
    /// valid is left out.
    Respond {
        /// The status.
        status: StatusCode,
        /// The `Content-Type`; empty for none.
        content_type: String,
        /// The body.
        body: Bytes,
        /// The `Retry-After` header, verbatim.
        retry_after: Option<String>,
    },
}

/// Size of the [`Fault::Oversized`] body.
pub(super) const OVERSIZED_LEN: usize = 4 * 1024 * 1024;
const OVERSIZED_CHUNK: usize = 64 * 1024;

/// What the handler does with a fault.
#[derive(Debug)]
pub(super) enum FaultAction {
    Respond(Response<MockBody>),
    Reset,
    Delay(Duration),
}

impl Fault {
    pub(super) fn into_action(self) -> FaultAction {
        let response = match self {
            Self::Delay(delay) => return FaultAction::Delay(delay),
            Self::Reset => return FaultAction::Reset,
            Self::ServerError => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::SERVER_ERROR,
                "internal server error",
            ),
            Self::TooManyRequests { retry_after } => {
                let mut response = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    codes::TOO_MANY_REQUESTS,
                    "too many requests",
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                response
            }
            Self::MalformedJson => respond(
                StatusCode::OK,
                "application/json",
                MockBody::full(Bytes::from_static(br#"{"access_token": "ab"#)),
            ),
            Self::Html => respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                MockBody::full(Bytes::from_static(
                    b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\
                      <body><h1>Please sign in to continue</h1></body></html>\n",
                )),
            ),
            Self::Oversized => respond(StatusCode::OK, "application/json", oversized_body()),
            Self::Redirect(location) => {
                let mut response = respond(StatusCode::TEMPORARY_REDIRECT, "", MockBody::empty());
                if let Ok(value) = HeaderValue::try_from(location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                response
            }
            Self::Respond {
                status,
                content_type,
                body,
                retry_after,
            } => {
                let mut response = respond(status, &content_type, MockBody::full(body));
                if let Some(value) = retry_after.and_then(|v| HeaderValue::try_from(v).ok()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
        };
        FaultAction::Respond(response)
    }
}

/// The start of a token response whose string never ends: a client that
/// reads it all without a cap, and then parses, still gets no token.
fn oversized_body() -> MockBody {
    let prefix = br#"{"access_token":""#;
    let mut first = Vec::with_capacity(OVERSIZED_CHUNK);
    first.extend_from_slice(prefix);
    first.resize(OVERSIZED_CHUNK, b'a');
    let filler = Bytes::from(vec![b'a'; OVERSIZED_CHUNK]);
    let rest = (1..OVERSIZED_LEN / OVERSIZED_CHUNK).map(|_| filler.clone());
    MockBody::streamed(std::iter::once(Bytes::from(first)).chain(rest))
}

#[cfg(test)]
mod tests {
    use http_body::Body as _;

    use super::*;

    #[test]
    fn oversized_is_4_mib_in_chunks_without_a_length() {
        let FaultAction::Respond(response) = Fault::Oversized.into_action() else {
            panic!("not a response");
        };
        let body = response.into_body();
        assert_eq!(body.size_hint().exact(), None);
        assert_eq!(body.remaining_len(), OVERSIZED_LEN);
    }

    #[test]
    fn respond_leaves_out_invalid_headers() {
        let fault = Fault::Respond {
            status: StatusCode::BAD_GATEWAY,
            content_type: "text/plain\n".into(),
            body: Bytes::from_static(b"x"),
            retry_after: Some("7".into()),
        };
        let FaultAction::Respond(response) = fault.into_action() else {
            panic!("not a response");
        };
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert!(response.headers().get(header::CONTENT_TYPE).is_none());
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    }
}
