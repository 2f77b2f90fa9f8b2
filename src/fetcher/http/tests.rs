//! What only the exchange itself can show: the exact request on the wire, the
//! body cap while reading, a body that breaks off, and the timeout under
//! paused time. The rest is shown over real HTTP in `tests/fetcher.rs`.

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use http::Response;

use super::*;
use crate::{credentials::Credentials, grant::GrantType};

const TOKEN_URL: &str = "https://auth.example.com/oauth/v2/token";
const OK_BODY: &str = r#"{"access_token":"acc-1","expires_in":3600,"token_type":"bearer"}"#;

fn password() -> GrantRequest {
    let credentials = Credentials::new("cid", "secret-sentinel", "me@example.com", "p&=+%é");
    GrantRequest::password(Arc::new(credentials))
}

/// A fetcher whose service answers each request with `body`, maybe late.
fn answering<B, F>(
    body: impl Fn() -> B + Clone + Send + Sync + 'static,
    wait: Duration,
) -> HttpFetcher<impl HttpService<ResponseBody = B>>
where
    B: Body<Data = Bytes, Error = F> + Send + 'static,
    F: Into<BoxError>,
{
    let service = tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let body = body.clone();
        async move {
            tokio::time::sleep(wait).await;
            Ok::<_, Infallible>(Response::new(body()))
        }
    });
    HttpFetcher::with_client(TOKEN_URL, service).unwrap()
}

fn ok_body() -> Full<Bytes> {
    Full::new(Bytes::from_static(OK_BODY.as_bytes()))
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
            Ok::<_, Infallible>(Response::new(ok_body()))
        }
    });
    let fetcher = HttpFetcher::with_client(TOKEN_URL, service).unwrap();
    let pair = fetcher.fetch(password()).await.unwrap();
    assert_eq!(pair.access_token().expose_secret(), "acc-1");

    let (parts, body) = seen.lock().unwrap().take().unwrap();
    assert_eq!(parts.method, Method::POST);
    assert_eq!(parts.uri.to_string(), TOKEN_URL);
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
         &username=me%40example.com&password=p%26%3D%2B%25%C3%A9"
    );
}

// --- reading the body ---

/// A body of frames handed out one by one, maybe ending in an error; its
/// size is unknown up front, as with a chunked answer.
struct Frames(VecDeque<Result<Bytes, std::io::Error>>);

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

fn chunks(count: usize) -> Frames {
    let chunk = Bytes::from(vec![b'a'; 64 * 1024]);
    Frames((0..count).map(|_| Ok(chunk.clone())).collect())
}

#[tokio::test]
async fn the_cap_is_enforced_while_reading() {
    // 4 MiB in 64 KiB chunks, no length announced.
    assert!(matches!(
        read_capped(chunks(64)).await,
        Err(BodyFailure::TooLarge)
    ));
    // Exactly the cap is read.
    assert_eq!(read_capped(chunks(16)).await.unwrap().len(), BODY_CAP);
}

#[tokio::test]
async fn announced_oversized_body_is_not_read() {
    let announced = Full::new(Bytes::from(vec![b'a'; BODY_CAP + 1]));
    assert!(matches!(
        read_capped(announced).await,
        Err(BodyFailure::TooLarge)
    ));
}

#[tokio::test]
async fn broken_body_is_a_transport_error() {
    let broken = || {
        Frames(VecDeque::from([
            Ok(Bytes::from_static(b"{\"access_")),
            Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
        ]))
    };
    let err = answering(broken, Duration::ZERO)
        .fetch(password())
        .await
        .unwrap_err();
    assert!(err.is_transient() && err.may_have_been_sent() && !err.is_connect());
    assert!(!err.is_invalid_response());
    assert_eq!(err.status(), Some(http::StatusCode::OK));
    assert_eq!(err.grant_type(), Some(GrantType::Password));
}

// --- the timeout ---

#[tokio::test(start_paused = true)]
async fn slow_answer_times_out() {
    let fetcher = answering(ok_body, Duration::from_secs(60));
    let started = Instant::now();
    let err = fetcher.fetch(password()).await.unwrap_err();
    assert!(err.is_timeout() && err.is_transient() && err.may_have_been_sent());
    assert_eq!(err.grant_type(), Some(GrantType::Password));
    assert_eq!(started.elapsed(), DEFAULT_TIMEOUT);

    let fetcher = fetcher.timeout(Duration::from_secs(2));
    let started = Instant::now();
    assert!(fetcher.fetch(password()).await.unwrap_err().is_timeout());
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn slow_body_times_out() {
    let slow = || SlowBody(Box::pin(tokio::time::sleep(Duration::from_secs(60))));
    let fetcher = answering(slow, Duration::ZERO).timeout(Duration::from_secs(5));
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
