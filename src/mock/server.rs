//! The HTTP side of the mock server: the accept loop, one task per
//! connection (HTTP/1 or HTTP/2, by hyper-util's auto builder), and the
//! handlers of the token endpoint and the protected resource. Every task it
//! starts is owned here, so that dropping the server ends them all.

use std::{
    error::Error as StdError,
    fmt,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{rt::TokioIo, server::conn::auto};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Notify, watch},
    task::JoinSet,
    time::Instant,
};

use super::{
    Fault,
    books::{ApiDenial, Presented},
    codes,
    counters::RecordedGrant,
    fault::FaultAction,
    grant::{GRANT_BODY_LIMIT, GrantInput, GrantReply, parse_form},
    response::{
        GRPC_UNAUTHENTICATED, MockBody, error_response, grpc_status_response, json_response,
    },
    state::Shared,
};

/// Path of the token endpoint.
pub(super) const TOKEN_PATH: &str = "/oauth/v2/token";

/// Cap on a protected resource request body (it is echoed back).
const API_BODY_LIMIT: usize = 1024 * 1024;

/// The `scope` of every token response.
const SCOPE: &str = "api";

/// The service's error: makes hyper drop the connection without a response.
#[derive(Debug)]
pub(super) struct ResetConnection;

/// What the server makes of a request: a response, or a dropped connection.
type Answer = Result<Response<MockBody>, ResetConnection>;

impl fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection reset by the mock server")
    }
}

impl StdError for ResetConnection {}

// === Responses ===

fn grant_response(reply: GrantReply) -> Response<MockBody> {
    match reply {
        GrantReply::Issued {
            access_token,
            refresh_token,
            expires_in,
            refresh_expires_in,
        } => {
            let mut body = serde_json::json!({
                "access_token": access_token,
                "refresh_token": refresh_token,
                "expires_in": expires_in,
                "token_type": "bearer",
                "scope": SCOPE,
            });
            if let Some(seconds) = refresh_expires_in {
                body["refresh_expires_in"] = seconds.into();
            }
            let mut response = json_response(StatusCode::OK, &body);
            // RFC 6749 §5.1: tokens must not be cached by intermediaries.
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        GrantReply::Refused(refusal) => {
            error_response(refusal.status, refusal.code, refusal.message)
        }
    }
}

/// A refusal of the protected resource: a Daxium 401, or as a gRPC server
/// refuses a call when the server is set to.
fn denial_response(denial: ApiDenial, grpc: bool) -> Response<MockBody> {
    if grpc {
        // The code goes in the message, so that a test can still tell why.
        let message = format!("{}: {}", denial.code(), denial.message());
        return grpc_status_response(GRPC_UNAUTHENTICATED, &message);
    }
    let mut response = error_response(StatusCode::UNAUTHORIZED, denial.code(), denial.message());
    // RFC 6750 §3.1: no error code when the request carried no token at all.
    let challenge = match denial {
        ApiDenial::NoToken => HeaderValue::from_static(r#"Bearer realm="daxium""#),
        _ => HeaderValue::from_static(r#"Bearer realm="daxium", error="invalid_token""#),
    };
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge);
    response
}

// === Handlers ===

/// How much of a body over its cap is still read (and dropped) before the 413.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

enum ReadFailure {
    TooLarge,
    /// The client went away, or sent a broken body.
    Broken,
}

async fn read_capped(mut body: Incoming, cap: usize) -> Result<Bytes, ReadFailure> {
    if body.size_hint().lower() > DRAIN_LIMIT as u64 {
        return Err(ReadFailure::TooLarge);
    }
    let mut kept = BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| ReadFailure::Broken)?.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total <= cap {
            kept.extend_from_slice(&data);
        } else if total > DRAIN_LIMIT {
            return Err(ReadFailure::TooLarge);
        }
        // Over the cap, the rest is read and dropped: answering 413 at once
        // and closing on unread data would reset the connection under a
        // client still sending, and it would see an error instead of the 413.
    }
    if total > cap {
        Err(ReadFailure::TooLarge)
    } else {
        Ok(kept.freeze())
    }
}

async fn handle(shared: Arc<Shared>, kill: Arc<Notify>, request: Request<Incoming>) -> Answer {
    let path = request.uri().path();
    let response = if path == TOKEN_PATH {
        token_endpoint(&shared, request).await
    } else if path == "/api" || path.starts_with("/api/") {
        protected_resource(&shared, request).await
    } else {
        shared.lock().count_not_found();
        Ok(error_response(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            "not found",
        ))
    };
    if response.is_err() {
        // On HTTP/2 the service error would only reset the stream; the
        // connection task drops the whole connection when told to.
        kill.notify_one();
    }
    response
}

async fn token_endpoint(shared: &Shared, request: Request<Incoming>) -> Answer {
    let (parts, body) = request.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let read = read_capped(body, GRANT_BODY_LIMIT).await;
    let recorded = RecordedGrant {
        method: parts.method.clone(),
        uri: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        content_type: content_type.clone(),
        body: read.as_ref().map_or_else(|_| Bytes::new(), Bytes::clone),
        grant_type: read
            .as_ref()
            .ok()
            .and_then(|body| parse_form(body))
            .and_then(|mut form| form.remove("grant_type")),
    };

    let config = &shared.config;
    let input = GrantInput {
        method: &parts.method,
        content_type: content_type.as_deref(),
        body: read.as_ref().ok().map(|body| &body[..]),
    };
    let (answer, delay) = {
        let mut state = shared.lock();
        state.record_grant(recorded);
        if matches!(read, Err(ReadFailure::Broken)) {
            return Err(ResetConnection);
        }
        // The grant takes effect now, before the answer is held back: a
        // client that gives up waiting has still spent its refresh token.
        match state.take_grant_fault().map(Fault::into_action) {
            Some(FaultAction::Respond(response)) => (Ok(response), Duration::ZERO),
            Some(FaultAction::Reset) => (Err(ResetConnection), Duration::ZERO),
            Some(FaultAction::Delay(delay)) => (
                Ok(grant_response(state.grant(config, &input, Instant::now()))),
                delay,
            ),
            None => (
                Ok(grant_response(state.grant(config, &input, Instant::now()))),
                Duration::ZERO,
            ),
        }
    };

    let wait = config.grant_latency.saturating_add(delay);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    answer
}

async fn protected_resource(shared: &Shared, request: Request<Incoming>) -> Answer {
    let (parts, body) = request.into_parts();
    // The body is read before anything is decided, so that a test never
    // depends on whether the client finished sending before the answer.
    let body = match read_capped(body, API_BODY_LIMIT).await {
        Ok(body) => body,
        Err(ReadFailure::TooLarge) => {
            shared.lock().count_api_too_large();
            return Ok(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::API_REQUEST_TOO_LARGE,
                "the request body is too large",
            ));
        }
        Err(ReadFailure::Broken) => return Err(ResetConnection),
    };

    let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
    let presented = match (values.next(), values.next()) {
        (None, _) => Presented::Nothing,
        (Some(value), None) => value.to_str().map_or(Presented::Garbage, |value| {
            Presented::from_header(Some(value))
        }),
        // Two tokens: a client that appends instead of replacing on a retry.
        (Some(_), Some(_)) => Presented::Garbage,
    };

    let (outcome, hold) = {
        let mut state = shared.lock();
        match state.begin_api() {
            Some(status) => (Err(Err(status)), Duration::ZERO),
            None => {
                let answer = state.check(&shared.api, presented, Instant::now());
                (answer.map_err(Ok), state.hold_back(&shared.api))
            }
        }
    };
    // The decision (a revocation too) took effect on arrival; only the
    // answer waits, as behind a slow backend: a refusal held back can reach
    // the client after its token was replaced.
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }

    match outcome {
        Ok(()) => {
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
            let mut response = Response::new(MockBody::full(body));
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, content_type);
            headers.insert(
                "x-echo-method",
                HeaderValue::from_str(parts.method.as_str())
                    .unwrap_or_else(|_| HeaderValue::from_static("?")),
            );
            if let Some(uri) = parts
                .uri
                .path_and_query()
                .and_then(|pq| HeaderValue::from_str(pq.as_str()).ok())
            {
                headers.insert("x-echo-uri", uri);
            }
            Ok(response)
        }
        Err(Ok(denial)) => Ok(denial_response(denial, shared.api.grpc_refusals)),
        Err(Err(StatusCode::UNAUTHORIZED)) => Ok(denial_response(
            ApiDenial::Unknown,
            shared.api.grpc_refusals,
        )),
        Err(Err(status)) => Ok(error_response(status, codes::INJECTED, "injected failure")),
    }
}

// === Tasks ===

/// Spawns HTTP/2 stream tasks into a set that the server owns, so that a
/// stream still waiting (a grant latency, a delay) cannot outlive it.
#[derive(Debug, Clone)]
struct StreamExecutor {
    tasks: Arc<Mutex<JoinSet<()>>>,
    shutdown: watch::Receiver<()>,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let mut shutdown = self.shutdown.clone();
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        // Reaping here keeps the set as small as the streams in flight.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            tokio::select! {
                _ = future => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

/// Accepts connections until the server's `watch::Sender` is dropped, then
/// ends every connection and stream task before returning.
pub(super) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<()>,
) {
    let streams = Arc::new(Mutex::new(JoinSet::new()));
    let builder = Arc::new(auto::Builder::new(StreamExecutor {
        tasks: Arc::clone(&streams),
        shutdown: shutdown.clone(),
    }));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // Resolves (with an error) once the sender is dropped; nothing is ever sent.
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Small request/response exchanges: Nagle would only add latency.
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(
                        Arc::clone(&builder),
                        stream,
                        Arc::clone(&shared),
                    ));
                }
                Err(error) => {
                    // Out of file descriptors, say: retrying at once would spin.
                    tracing::debug!(%error, "mock server: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
    // No connection is left to spawn a stream, so the set is final.
    let mut streams = std::mem::take(&mut *streams.lock().unwrap_or_else(PoisonError::into_inner));
    streams.shutdown().await;
}

async fn serve_connection(
    builder: Arc<auto::Builder<StreamExecutor>>,
    stream: TcpStream,
    shared: Arc<Shared>,
) {
    let kill = Arc::new(Notify::new());
    let service = {
        let kill = Arc::clone(&kill);
        service_fn(move |request| handle(Arc::clone(&shared), Arc::clone(&kill), request))
    };
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => {
            if let Err(error) = result {
                tracing::trace!(%error, "mock server: connection ended with an error");
            }
        }
        () = kill.notified() => {}
    }
}
