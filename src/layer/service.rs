//! [`AuthService`]: attaches the current token to each request. The common
//! path is one comparison of the authority with the last one seen, one pointer
//! comparison against the cache, one reference count of the service's own
//! (the header), and no lock and no allocation; waiting for a grant and
//! replaying after a 401 live in the [`ResponseFuture`], which finds the cache
//! by number when a 401 comes.

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

use super::{
    AuthLayer,
    body::{NoReplay, ReplayBody},
    future::{After, Check, Pending, ResponseFuture, dispatch, send},
    link::{Link, failure},
    origin::LastOrigin,
    refusal::Refusal,
};
use crate::{
    cache::{Answer, CacheNumber, Live, LiveSlot, Phase, Shared, View},
    error::Error,
};

/// Adds `Authorization: Bearer …` (marked sensitive) to each request for the
/// configured API origins, keeps the token fresh, and replays a request once
/// when the API answers 401. Made by [`AuthLayer`]. A request that carries
/// an `Authorization` of its own gets the token in its place, unless the
/// layer [keeps it](crate::AuthLayerBuilder::keep_authorization).
///
/// `poll_ready` is the inner service's; `call` uses the service that was made
/// ready. A request writes to nothing that another service shares: each
/// service, and each clone from its second request on, keeps its own copy of
/// the header and of the handle its futures report a 401 through, so that
/// threads with their own service (or clone) never contend on a reference
/// count.
pub struct AuthService<S> {
    inner: S,
    view: Cache<Published, Arc<View<Live>>>,
    /// This service's copy of the current token's header, and the token's id.
    header: Option<(u64, HeaderValue)>,
    /// The token id this service has sent once with the cache's own value.
    seen_once: u64,
    /// What the futures keep for a 401; shared with the parent until this
    /// service makes its own copy of the header.
    link: Arc<Link<S>>,
    own_link: bool,
    /// The layer's settings the hot path reads, copied here.
    cache: CacheNumber,
    replay: bool,
    gate: Gate,
    replay_limit: usize,
    refusal: Refusal,
    last_origin: LastOrigin,
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
        let config = layer.config();
        let (cache, replay, replay_limit, refusal) = (
            config.cache,
            config.replay,
            config.replay_limit,
            config.refusal,
        );
        let gate = match (config.keep_authorization, config.origins.is_some()) {
            (false, false) => Gate::Open,
            (false, true) => Gate::Origins,
            (true, false) => Gate::KeepAuthorization,
            (true, true) => Gate::KeepAuthorizationOrigins,
        };
        Self {
            inner,
            view,
            header: None,
            seen_once: 0,
            link: Arc::new(Link::new(layer)),
            own_link: true,
            cache,
            replay,
            gate,
            replay_limit,
            refusal,
            last_origin: LastOrigin::default(),
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
        &self.link.layer
    }
}

impl<S: Clone> Clone for AuthService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            view: self.view.clone(),
            // The clone makes its own copy from its second request on: sharing
            // the parent's would make both write to one count.
            header: None,
            seen_once: 0,
            link: Arc::clone(&self.link),
            own_link: false,
            cache: self.cache,
            replay: self.replay,
            gate: self.gate,
            replay_limit: self.replay_limit,
            refusal: self.refusal,
            last_origin: self.last_origin,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthService")
            .field("inner", &self.inner)
            .field("layer", &self.link.layer)
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
        // The default (origins checked, no `Authorization` kept) makes the
        // one test of the gate that the origin check alone made: the headers
        // are not looked at.
        if self.gate != Gate::Origins {
            if self.gate != Gate::Open && self.keeps(&req) {
                return passthrough(&mut self.inner, req, self.cache);
            }
        } else if !allows(&mut self.last_origin, &self.link, req.uri()) {
            return passthrough(&mut self.inner, req, self.cache);
        }
        let replay = self.replay && req.extensions().get::<NoReplay>().is_none();

        let view = self.view.load();
        let slot = match &**view {
            View::Token(slot, Phase::Fresh | Phase::Refreshing) => slot,
            View::Token(slot, Phase::Stale) => {
                // The token is still valid; the core starts one refresh.
                self.link.shared().kick();
                slot
            }
            View::Failed(err) => return ResponseFuture::failed(err.clone()),
            View::Token(_, Phase::Unchecked) | View::Empty => {
                if replay {
                    self.link.keep_spare(&self.inner);
                }
                return without_token(&mut self.inner, req, &self.link, replay, self.replay_limit);
            }
        };
        let id = slot.id;
        let check = Check {
            refusal: self.refusal,
            confirm: !slot.accepted,
        };
        let header = match &self.header {
            Some((seen, header)) if *seen == id => header.clone(),
            _ => {
                let mut own = Own {
                    header: &mut self.header,
                    seen_once: &mut self.seen_once,
                    link: &mut self.link,
                    own_link: &mut self.own_link,
                };
                own.header_for(slot)
            }
        };
        if !replay {
            // One move of the request, as any layer that changes the body type makes.
            let mut req = req.map(ReplayBody::new);
            req.headers_mut().insert(AUTHORIZATION, header);
            let cache = self.cache;
            return ResponseFuture::sent(self.inner.call(req), check, After::Report { id, cache });
        }
        self.link.keep_spare(&self.inner);
        let link = Arc::clone(&self.link);
        dispatch(
            &mut self.inner,
            req,
            (id, header, check),
            link,
            self.replay_limit,
        )
    }
}

impl<S> AuthService<S> {
    /// Whether `req` is sent as it is under a gate that keeps requests' own
    /// `Authorization`: it carries one, or it is for another origin.
    /// Off the default path, whose gate is [`Gate::Origins`].
    #[cold]
    #[inline(never)]
    fn keeps<B>(&mut self, req: &Request<B>) -> bool {
        req.headers().contains_key(AUTHORIZATION)
            || (self.gate == Gate::KeepAuthorizationOrigins
                && !allows(&mut self.last_origin, &self.link, req.uri()))
    }
}

/// Whether requests for `uri` get the token: the last origin seen answers
/// at once, another is looked up in the layer's.
#[inline(always)]
fn allows<S>(last_origin: &mut LastOrigin, link: &Link<S>, uri: &http::Uri) -> bool {
    last_origin.allows(uri, || {
        let origins = link.layer.config().origins.as_deref().unwrap_or_default();
        origins.iter().any(|o| o.matches(uri))
    })
}

/// Which requests `call` sends on without the token, decided once per
/// service from the layer's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Gate {
    /// Those for other origins (the default): zero, which the hot path tests
    /// as it tested a flag.
    Origins = 0,
    /// None: every request gets it (`any_origin`).
    Open,
    /// Those that carry an `Authorization` of their own.
    KeepAuthorization,
    /// Those that carry an `Authorization` of their own, and those for other
    /// origins.
    KeepAuthorizationOrigins,
}

/// Sends `req` as it is: for another origin, or with an `Authorization` of
/// its own that the layer keeps. Its answer says nothing about the token.
#[inline]
fn passthrough<S, B, ResBody>(
    inner: &mut S,
    req: Request<B>,
    cache: CacheNumber,
) -> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body,
{
    ResponseFuture::passthrough(inner.call(req.map(ReplayBody::new)), cache)
}

/// The parts of a service that change when a new token comes.
struct Own<'a, S> {
    header: &'a mut Option<(u64, HeaderValue)>,
    seen_once: &'a mut u64,
    link: &'a mut Arc<Link<S>>,
    own_link: &'a mut bool,
}

impl<S> Own<'_, S> {
    /// The header for a token this service has no copy of yet.
    #[cold]
    #[inline(never)]
    fn header_for(&mut self, slot: &LiveSlot) -> HeaderValue {
        if *self.seen_once != slot.id {
            // A service cloned per request calls once: sharing the cache's
            // value costs no allocation.
            *self.seen_once = slot.id;
            return slot.access.clone();
        }
        // A service that calls again makes its own copies, so that threads
        // with their own service never contend on one count.
        if !*self.own_link {
            *self.link = Arc::new(Link::new(self.link.layer.clone()));
            *self.own_link = true;
        }
        let header = own_copy(&slot.access);
        *self.header = Some((slot.id, header.clone()));
        header
    }
}

/// No token to attach without asking the cache: ask, and either send now or
/// take the service that was made ready into a future that waits for a grant.
#[cold]
#[inline(never)]
fn without_token<S, B, ResBody>(
    inner: &mut S,
    req: Request<B>,
    link: &Arc<Link<S>>,
    replay: bool,
    limit: usize,
) -> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body,
{
    match link.shared().ask(None) {
        Ok(Answer::Token(slot)) => {
            let link = Arc::clone(link);
            send(inner, req, &slot, link, replay, limit)
        }
        Ok(answer) => ResponseFuture::failed(failure(answer)),
        Err(ticket) => {
            let clone = inner.clone();
            let inner = std::mem::replace(inner, clone);
            let pending = Pending {
                inner,
                req,
                link: Arc::clone(link),
                replay,
                limit,
            };
            ResponseFuture::acquire(pending, ticket)
        }
    }
}

/// A copy of the header that shares no reference count with other services.
fn own_copy(header: &HeaderValue) -> HeaderValue {
    let mut own = HeaderValue::from_bytes(header.as_bytes()).unwrap_or_else(|_| header.clone());
    own.set_sensitive(true);
    own
}
