//! [`AuthService`]: attaches the current token to each request. The common
//! path is one pointer comparison against the cache, a reference-count
//! increment for the header, and no lock and no allocation; waiting for a grant
//! and replaying after a 401 live in the [`ResponseFuture`].

use std::{
    fmt,
    ops::Deref,
    sync::Arc,
    task::{Context, Poll},
};

use arc_swap::{ArcSwap, cache::Cache};
use http::{HeaderValue, Request, Response, header::AUTHORIZATION};
use http_body::Body;
use tower_service::Service;

use crate::{
    body::{NoReplay, Replay, ReplayBody},
    cache::{Answer, Live, Phase, Shared, View},
    error::{Error, TokenError},
    future::{ResponseFuture, Retry},
    layer::{AuthLayer, LayerConfig},
};

/// Adds `Authorization: Bearer …` (marked sensitive) to each request for the
/// configured API origins, keeps the token fresh, and replays a request once
/// when the API answers 401. Made by [`AuthLayer`].
///
/// `poll_ready` is the inner service's; `call` uses the service that was made
/// ready. Services made by `AuthLayer::layer` each keep their own copy of the
/// header, so threads with their own service never contend on a reference count;
/// clones share their parent's.
pub struct AuthService<S> {
    inner: S,
    local: Arc<Local>,
    view: Cache<Published, Arc<View<Live>>>,
    header: Option<(u64, HeaderValue)>,
    /// The token id this instance has sent once with the shared header value.
    seen_once: u64,
}

/// What the futures of one service (and its clones) need after the call.
pub(crate) struct Local {
    pub(crate) layer: AuthLayer,
}

impl Local {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        self.layer.cache().shared()
    }

    pub(crate) fn config(&self) -> &LayerConfig {
        self.layer.config()
    }
}

/// The cache's `ArcSwap`, as `arc_swap::cache::Cache` wants it.
#[derive(Clone)]
pub(crate) struct Published(Arc<Shared>);

impl Deref for Published {
    type Target = ArcSwap<View<Live>>;

    fn deref(&self) -> &Self::Target {
        self.0.view()
    }
}

impl<S> AuthService<S> {
    /// Wraps `inner` with the token cache of `layer`.
    pub fn new(inner: S, layer: AuthLayer) -> Self {
        let view = Cache::new(Published(Arc::clone(layer.cache().shared())));
        Self {
            inner,
            local: Arc::new(Local { layer }),
            view,
            header: None,
            seen_once: 0,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The layer whose token cache this service uses.
    pub fn layer(&self) -> &AuthLayer {
        &self.local.layer
    }
}

impl<S: Clone> Clone for AuthService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            local: Arc::clone(&self.local),
            view: self.view.clone(),
            header: self.header.clone(),
            seen_once: self.seen_once,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthService")
            .field("inner", &self.inner)
            .field("layer", &self.local.layer)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body,
{
    type Response = Response<ResBody>;
    type Error = Error<S::Error>;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::Inner)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        let config = self.local.config();
        if let Some(origins) = &config.origins {
            let uri = req.uri();
            if uri.authority().is_some() && !origins.iter().any(|o| o.matches(uri)) {
                return ResponseFuture::passthrough(self.inner.call(req.map(ReplayBody::new)));
            }
        }
        let replay = config.replay && req.extensions().get::<NoReplay>().is_none();

        let view = self.view.load();
        let slot = match &**view {
            View::Token(slot, Phase::Fresh | Phase::Refreshing) => slot,
            View::Token(slot, Phase::Stale) => {
                // The token is still valid; the core starts one refresh.
                self.local.shared().kick();
                slot
            }
            View::Failed(err) => return ResponseFuture::failed(err.clone()),
            View::Token(_, Phase::Unchecked) | View::Empty => {
                return without_token(&mut self.inner, req, &self.local, replay);
            }
        };
        let id = slot.id;
        let header = match &self.header {
            Some((seen, header)) if *seen == id => header.clone(),
            // A service cloned per request calls once: sharing the cache's value
            // costs no allocation. A service that calls again makes its own copy,
            // so threads with their own service never contend on one count.
            _ if self.seen_once != id => {
                self.seen_once = id;
                slot.access.clone()
            }
            _ => {
                let header = own_copy(&slot.access);
                self.header = Some((id, header.clone()));
                header
            }
        };
        dispatch(&mut self.inner, req, id, header, &self.local, replay)
    }
}

/// No token to attach without asking the cache: ask, and either send now or
/// take the service that was made ready into a future that waits for a grant.
#[cold]
#[inline(never)]
fn without_token<S, B, ResBody>(
    inner: &mut S,
    req: Request<B>,
    local: &Arc<Local>,
    replay: bool,
) -> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body,
{
    match local.shared().ask(None) {
        Ok(Answer::Token(slot)) => dispatch(inner, req, slot.id, slot.access, local, replay),
        Ok(answer) => ResponseFuture::failed(failure(answer)),
        Err(ticket) => {
            let clone = inner.clone();
            let inner = std::mem::replace(inner, clone);
            ResponseFuture::acquire(inner, req, Arc::clone(local), replay, ticket)
        }
    }
}

/// The request's `Content-Length`, if it has one that parses.
#[cold]
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The error of an answer that holds no token.
pub(crate) fn failure(answer: Answer<Live>) -> TokenError {
    match answer {
        Answer::Failed(err) => err,
        Answer::Token(_) | Answer::NoReplay | Answer::Retry => TokenError::closed(),
    }
}

/// A copy of the header that shares no reference count with other services.
fn own_copy(header: &HeaderValue) -> HeaderValue {
    let mut own = HeaderValue::from_bytes(header.as_bytes()).unwrap_or_else(|_| header.clone());
    own.set_sensitive(true);
    own
}

/// Sends `req` with the token `id`, keeping what a replay needs.
#[inline]
pub(crate) fn dispatch<S, B, ResBody>(
    inner: &mut S,
    req: Request<B>,
    id: u64,
    header: HeaderValue,
    local: &Arc<Local>,
    replay: bool,
) -> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body,
{
    if !replay {
        // One move of the request, as any layer that changes the body type makes.
        let mut req = req.map(ReplayBody::new);
        req.headers_mut().insert(AUTHORIZATION, header);
        return ResponseFuture::sent(inner.call(req), id, Arc::clone(local), None);
    }
    // The request stays whole here too: taking it apart into `Parts` and back
    // moves more bytes than the rest of this function touches.
    let limit = local.config().replay_limit;
    // A streamed body of unknown size may still have a declared length: the
    // recording is complete once that much has gone out. A body whose size is
    // known (the usual case) costs no header lookup.
    let declared = if req.body().size_hint().exact().is_none() {
        declared_length(req.headers())
    } else {
        None
    };
    let mut kind = Replay::Never;
    let mut req = req.map(|body| {
        let (body, how) = ReplayBody::first(body, limit, declared);
        kind = how;
        body
    });
    // The copy for a replay is taken before the header goes in.
    let retry = match kind {
        Replay::Never => None,
        kind => Some(Box::new(Retry::new(&req, kind, inner.clone()))),
    };
    req.headers_mut().insert(AUTHORIZATION, header);
    let fut = inner.call(req);
    ResponseFuture::sent(fut, id, Arc::clone(local), retry)
}
