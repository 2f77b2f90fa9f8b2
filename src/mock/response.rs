//! The responses of the mock server, as both the handlers and the faults build
//! them: [`MockBody`], a body of chunks already in memory with or without an
//! announced length, and the JSON, Daxium error, gRPC status and plain
//! responses. A leaf: it knows nothing of the server's state.

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};

// === impl MockBody ===

/// A response body: a few chunks already in memory, sent one frame each.
#[derive(Debug)]
pub(super) struct MockBody {
    chunks: VecDeque<Bytes>,
    /// Whether to announce the length (a `Content-Length` on HTTP/1).
    exact: bool,
}

impl MockBody {
    pub(super) fn empty() -> Self {
        Self {
            chunks: VecDeque::new(),
            exact: true,
        }
    }

    pub(super) fn full(bytes: Bytes) -> Self {
        Self {
            chunks: VecDeque::from([bytes]),
            exact: true,
        }
    }

    /// A body of unannounced length, so that the client must cap it while
    /// reading rather than refuse it from its header.
    pub(super) fn streamed(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        Self {
            chunks: chunks.into_iter().collect(),
            exact: false,
        }
    }

    pub(super) fn remaining_len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(
            self.get_mut()
                .chunks
                .pop_front()
                .map(|chunk| Ok(Frame::data(chunk))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        let len = self.remaining_len() as u64;
        if self.exact {
            SizeHint::with_exact(len)
        } else {
            let mut hint = SizeHint::new();
            hint.set_lower(len);
            hint
        }
    }
}

// === Responses ===

/// A response with a JSON body.
pub(super) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<MockBody> {
    // Serializing a `Value` cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    respond(
        status,
        "application/json",
        MockBody::full(Bytes::from(body)),
    )
}

/// A response with a Daxium error body.
pub(super) fn error_response(status: StatusCode, code: &str, message: &str) -> Response<MockBody> {
    let server_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    json_response(
        status,
        &serde_json::json!({
            "code": code,
            "message": message,
            "url": format!("https://docs.daxium-air.com/errors/{code}"),
            "api_version": "v1.3",
            "infos": [],
            "server_time": server_time.to_string(),
        }),
    )
}

/// gRPC's UNAUTHENTICATED status code.
pub(super) const GRPC_UNAUTHENTICATED: u32 = 16;

/// A gRPC trailers-only response, as a gRPC server refuses a call: HTTP 200,
/// `Content-Type: application/grpc`, `grpc-status` and `grpc-message` in the
/// headers, and no body, so that on HTTP/2 it is one HEADERS frame that ends
/// the stream. `message` goes as it is when it is printable ASCII without
/// `%`, which needs no percent-encoding in `grpc-message`; otherwise it is
/// left out.
pub(super) fn grpc_status_response(code: u32, message: &str) -> Response<MockBody> {
    let mut response = respond(StatusCode::OK, "application/grpc", MockBody::empty());
    let headers = response.headers_mut();
    headers.insert("grpc-status", HeaderValue::from(code));
    if message
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'%')
        && let Ok(value) = HeaderValue::from_str(message)
    {
        headers.insert("grpc-message", value);
    }
    response
}

/// A response with `status`, a `Content-Type` (none when empty or not a valid
/// header value) and `body`.
pub(super) fn respond(
    status: StatusCode,
    content_type: &str,
    body: MockBody,
) -> Response<MockBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if !content_type.is_empty()
        && let Ok(value) = HeaderValue::from_str(content_type)
    {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_status_is_trailers_only() {
        let response = grpc_status_response(GRPC_UNAUTHENTICATED, "DAERR-0203: revoked");
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(headers["grpc-status"], "16");
        assert_eq!(headers["grpc-message"], "DAERR-0203: revoked");
        assert!(response.body().is_end_stream());
        assert_eq!(response.body().size_hint().exact(), Some(0));
    }

    #[test]
    fn a_grpc_message_that_would_need_encoding_is_left_out() {
        for message in ["100% sure", "caf\u{e9}", "two\nlines"] {
            let response = grpc_status_response(GRPC_UNAUTHENTICATED, message);
            assert!(
                response.headers().get("grpc-message").is_none(),
                "{message}"
            );
            assert_eq!(response.headers()["grpc-status"], "16");
        }
    }
}
