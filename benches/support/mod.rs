//! What the benches share: the inner service that answers at once, the
//! reference layer that does the job the plain way, the request every bench
//! sends and the way the per-request benches drive it.
#![allow(dead_code)]

use std::{
    convert::Infallible,
    fmt,
    future::{Future, Ready, ready},
    hint::black_box,
    pin::{Pin, pin},
    sync::{Arc, RwLock},
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{
    AccessToken, AuthLayer, AuthLayerBuilder, Credentials, NoReplay, TokenError, TokenPair, fetcher,
};
use http::{
    Extensions, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header::AUTHORIZATION,
};
use http_body_util::Empty;
use pin_project_lite::pin_project;
use tower::{
    Layer, Service, ServiceExt,
    util::{MapRequest, Oneshot},
};

/// A real `redis-server` on 127.0.0.1, for the variants with a `RedisStore`.
#[cfg(feature = "redis")]
#[path = "../../tests/support/redis.rs"]
pub(crate) mod redis;

pub(crate) const URI: &str = "http://127.0.0.1:8080/api/v1/items";
pub(crate) const ORIGIN: &str = "http://127.0.0.1:8080";

/// Where the fetcher's grants stand for: a store files the login under it.
const TOKEN_URL: &str = "http://127.0.0.1:8080/oauth/v2/token";
/// The length and alphabet of a Daxium access token.
pub(crate) const TOKEN: &str =
    "NjQ2ZDJjOTRmM2Q4YzE1ZTA0NzFhYjU3ZjAxYjNkNGI5ZDQ0MjE3NjNmMmNlNmQ5MGUwYjEwYmQ3OGI4ZjU2Mg";

// === the inner service ===

/// Answers 200 at once, whatever the body type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inner;

impl<B> Service<Request<B>> for Inner {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        drop(black_box(req));
        ready(Ok(Response::new(Empty::new())))
    }
}

/// What [`authorized`] makes.
pub(crate) type Authorized<B> = MapRequest<Inner, fn(Request<B>) -> Request<B>>;

/// [`Inner`], checking that each request carries an `Authorization` header:
/// for comparisons between layers that must both attach it.
pub(crate) fn authorized<B>() -> Authorized<B> {
    Inner.map_request(|req: Request<B>| {
        assert!(req.headers().contains_key(AUTHORIZATION));
        req
    })
}

// === the reference layer ===

/// The plain way: the token under an `RwLock`; a copy of the request and a
/// clone of the inner service kept for one retry after a 401.
#[derive(Clone)]
pub(crate) struct Reference {
    pub(crate) token: Arc<RwLock<HeaderValue>>,
}

impl Reference {
    pub(crate) fn new(token: &str) -> Self {
        let mut header = HeaderValue::try_from(format!("Bearer {token}")).expect("valid header");
        header.set_sensitive(true);
        Self {
            token: Arc::new(RwLock::new(header)),
        }
    }
}

impl<S> Layer<S> for Reference {
    type Service = ReferenceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReferenceService {
            inner,
            token: Arc::clone(&self.token),
        }
    }
}

#[derive(Clone)]
pub(crate) struct ReferenceService<S> {
    inner: S,
    token: Arc<RwLock<HeaderValue>>,
}

pub(crate) struct Saved<S> {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    service: S,
    token: Arc<RwLock<HeaderValue>>,
}

pin_project! {
    pub(crate) struct ReferenceFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        fut: S::Future,
        saved: Option<Saved<S>>,
        retry: Option<Pin<Box<Oneshot<S, Request<B>>>>>,
    }
}

impl<S, B, R> Service<Request<B>> for ReferenceService<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone,
    B: Default,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ReferenceFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let header = self.token.read().unwrap_or_else(|e| e.into_inner()).clone();
        let saved = Saved {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            extensions: req.extensions().clone(),
            service: self.inner.clone(),
            token: Arc::clone(&self.token),
        };
        req.headers_mut().insert(AUTHORIZATION, header);
        ReferenceFuture {
            fut: self.inner.call(req),
            saved: Some(saved),
            retry: None,
        }
    }
}

impl<S, B, R> Future for ReferenceFuture<S, B>
where
    S: Service<Request<B>, Response = Response<R>> + Clone,
    B: Default,
{
    type Output = Result<Response<R>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(retry) = this.retry {
            return retry.as_mut().poll(cx);
        }
        let res = std::task::ready!(this.fut.poll(cx))?;
        let Some(saved) = this
            .saved
            .take()
            .filter(|_| res.status() == StatusCode::UNAUTHORIZED)
        else {
            return Poll::Ready(Ok(res));
        };
        // Bodiless requests only: the reference keeps no body.
        let mut req = Request::new(B::default());
        *req.method_mut() = saved.method;
        *req.uri_mut() = saved.uri;
        *req.version_mut() = saved.version;
        *req.headers_mut() = saved.headers;
        *req.extensions_mut() = saved.extensions;
        let header = saved
            .token
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        req.headers_mut().insert(AUTHORIZATION, header);
        let retry = this
            .retry
            .insert(Box::pin(Oneshot::new(saved.service, req)));
        retry.as_mut().poll(cx)
    }
}

pub(crate) fn bearer(token: &str) -> HeaderValue {
    let mut header = HeaderValue::try_from(format!("Bearer {token}")).expect("valid header");
    header.set_sensitive(true);
    header
}

/// A bodiless GET to the benches' absolute URI.
pub(crate) fn request() -> Request<Empty<Bytes>> {
    Request::get(URI).body(Empty::new()).expect("valid request")
}

/// The same request carrying the `NoReplay` extension (the per-request opt-out).
pub(crate) fn request_no_replay() -> Request<Empty<Bytes>> {
    let mut req = request();
    req.extensions_mut().insert(NoReplay);
    req
}

/// [`request_no_replay`] if `no_replay`, else [`request`].
#[inline]
pub(crate) fn request_with(no_replay: bool) -> Request<Empty<Bytes>> {
    if no_replay {
        request_no_replay()
    } else {
        request()
    }
}

/// `poll_ready`, `call`, and one poll of the future with a no-op waker: the
/// response must be there.
#[inline]
pub(crate) fn drive<S, B>(svc: &mut S, req: Request<B>) -> S::Response
where
    S: Service<Request<B>>,
    S::Error: fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("the service is not ready"),
    }
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(res)) => res,
        Poll::Ready(Err(err)) => panic!("the service failed: {err:?}"),
        Poll::Pending => panic!("the response is not ready after one poll"),
    }
}

/// A layer for [`ORIGIN`] whose cache already holds a fresh one-hour token.
pub(crate) fn auth_layer(rt: &tokio::runtime::Runtime, replay: bool) -> AuthLayer {
    auth_layer_with(rt, |builder| builder.replay(replay))
}

/// A layer builder with the benches' login; each bench gives it a fetcher
/// that grants without a server.
pub(crate) fn builder() -> AuthLayerBuilder {
    AuthLayer::builder().credentials(Credentials::new(
        "client-id",
        "client-secret",
        "user",
        "password",
    ))
}

/// A token pair of `token` for an hour, with no refresh token.
pub(crate) fn hour_pair(token: &str) -> Result<TokenPair, TokenError> {
    Ok(TokenPair::new(
        AccessToken::new(token)?,
        None,
        Duration::from_secs(3600),
    ))
}

/// A layer for [`ORIGIN`] with a fetcher that grants a fresh one-hour token,
/// set up further by `configure`, whose cache already holds its token.
pub(crate) fn auth_layer_with(
    rt: &tokio::runtime::Runtime,
    configure: impl FnOnce(AuthLayerBuilder) -> AuthLayerBuilder,
) -> AuthLayer {
    let builder = builder()
        .fetcher(fetcher::from_fn(|_grant| async { hour_pair(TOKEN) }))
        .token_url(TOKEN_URL)
        .api_origin(ORIGIN);
    let layer = configure(builder).build().expect("valid layer");
    rt.block_on(layer.cache().access_token()).expect("a token");
    layer
}

/// A layer as [`auth_layer`] makes it, sharing its login through a
/// `RedisStore` on `url`: its token is the record it wrote there. The record
/// is written, and the lease released, by tasks of `rt` after the token is
/// served: `rt` runs until both are done, so that the next layer (or process)
/// on this Redis adopts the record.
#[cfg(feature = "redis")]
pub(crate) fn auth_layer_redis(rt: &tokio::runtime::Runtime, replay: bool, url: &str) -> AuthLayer {
    use daxium_auth::{
        TokenStore,
        store::{LeaseOwner, LoginKey, RedisStore},
    };
    let store = RedisStore::new(url).expect("a Redis URL");
    let layer = auth_layer_with(rt, |builder| builder.replay(replay).store(store.clone()));
    let endpoint = TOKEN_URL.parse().expect("a valid URL");
    let key = LoginKey::new("client-id", "user").with_endpoint(&endpoint);
    let probe = LeaseOwner::random();
    // Under callgrind a cluster's first connections take seconds: bounded in
    // time (a minute) and in tries.
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let settled = rt.block_on(async {
        for _ in 0..60_000 {
            if std::time::Instant::now() > until {
                break;
            }
            let written = store.read(&key).await.is_ok_and(|r| r.is_some());
            if written
                && let Ok(lease) = store
                    .acquire_lease(&key, &probe, Duration::from_secs(1))
                    .await
                && lease.is_acquired()
            {
                return store.release_lease(&key, &probe).await.is_ok();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        false
    });
    assert!(settled, "the record written and the lease released");
    assert_eq!(
        layer.stats().store_errors,
        0,
        "the login went through the store"
    );
    layer
}
