//! [`ResponseFuture`]: the state machine of one request. The common path polls
//! the inner future and looks at the status; waiting for a grant and the one
//! replay after a 401 are the rare paths, and only they allocate (besides the
//! copy of a request's headers kept for a replay, when it has any).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{
    Extensions, HeaderMap, Method, Request, Response, StatusCode, Uri, Version,
    header::{AUTHORIZATION, WWW_AUTHENTICATE},
};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower_service::Service;

use crate::{
    body::{Replay, ReplayBody},
    cache::{Answer, Event, Live, LiveSlot, Shared, Ticket},
    error::{Error, TokenError},
    service::{CacheNumber, Link, failure, send},
};

type Acquire = Pin<Box<dyn Future<Output = Answer<Live>> + Send>>;

pin_project! {
    /// The response future of [`AuthService`](crate::AuthService).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S, B, S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        // The first attempt, or a request for another origin. The common
        // path: nothing boxed.
        Sent { #[pin] fut: F, after: After<S, B> },
        // Everything else, boxed: only the rare paths pay for its size.
        Rare { rare: Pin<Box<Rare<S, B>>> },
    }
}

pin_project! {
    #[project = RareProj]
    enum Rare<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        // No token, and the cache says why.
        Failed { err: Option<TokenError> },
        // No valid token yet: wait for the grant, then call the service made ready.
        Acquire { token: Acquire, pending: Option<Pending<S, B>> },
        // After a 401: wait for the token to replay with (a refresh in flight
        // first). The refused answer goes back if the cache says no replay.
        Reacquire { token: Acquire, replay: Option<Reacquire<S, B>> },
        // The one replay; its answer goes back as it is, and the cache learns
        // when it was refused too.
        Replay { #[pin] fut: Oneshot<S, Request<ReplayBody<B>>>, id: u64, link: Arc<Link<S>> },
    }
}

/// What the first attempt keeps for a 401: for a request without replay, two
/// words and no reference count; for one with, the copy of the request, in
/// place as the plain way keeps it (a box would cost an allocation and a free
/// more than the moves of a larger future).
#[allow(clippy::large_enum_variant)]
pub(crate) enum After<S, B> {
    /// Report a 401 on token `id` (`0`: a request for another origin, which
    /// carried no token) to the cache numbered `cache`, found at 401 time.
    Report { id: u64, cache: CacheNumber },
    /// Report it, and replay the request: the copy keeps a handle on the
    /// cache, which the replay needs alive.
    Replay(Retry<S, B>),
}

/// What the replay after a 401 keeps while it waits for a token.
struct Reacquire<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    service: S,
    req: Request<ReplayBody<B>>,
    refused: S::Response,
    link: Arc<Link<S>>,
}

/// A request that waits for a token, with the service made ready for it.
pub(crate) struct Pending<S, B> {
    pub(crate) inner: S,
    pub(crate) req: Request<B>,
    pub(crate) link: Arc<Link<S>>,
    pub(crate) replay: bool,
    pub(crate) limit: usize,
}

/// What a replay needs: the request without its body, how to replay the body,
/// and the link to the cache and to the service's spare clone (cloned again
/// for the replay, and driven ready by `Oneshot` before the call).
pub(crate) struct Retry<S, B> {
    id: u64,
    link: Arc<Link<S>>,
    method: Method,
    uri: Uri,
    version: Version,
    /// `None` for a request with no header before the token (most): no map
    /// to make and drop for each request.
    headers: Option<Box<HeaderMap>>,
    extensions: Extensions,
    body: Replay,
    _body: std::marker::PhantomData<fn() -> B>,
}

impl<S, B> Retry<S, B> {
    #[inline]
    pub(crate) fn new<T>(req: &Request<T>, body: Replay, id: u64, link: Arc<Link<S>>) -> Self {
        Self {
            id,
            link,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: (!req.headers().is_empty()).then(|| Box::new(req.headers().clone())),
            extensions: req.extensions().clone(),
            body,
            _body: std::marker::PhantomData,
        }
    }

    /// The token id and the handle, and the replay request, or `None` when
    /// the body cannot be sent again.
    #[allow(clippy::type_complexity)]
    fn into_request(self) -> (u64, Arc<Link<S>>, Option<(S, Request<ReplayBody<B>>)>)
    where
        S: Clone,
    {
        let Self {
            id,
            link,
            method,
            uri,
            version,
            headers,
            extensions,
            body,
            ..
        } = self;
        let (Some(body), Some(service)) = (body.body(), link.spare()) else {
            return (id, link, None);
        };
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        if let Some(headers) = headers {
            *req.headers_mut() = *headers;
        }
        *req.extensions_mut() = extensions;
        (id, link, Some((service, req)))
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    /// A request for another origin: its 401 says nothing about the token.
    pub(crate) fn passthrough(fut: S::Future, cache: CacheNumber) -> Self {
        Self::sent(fut, After::<S, B>::Report { id: 0, cache })
    }

    #[cold]
    pub(crate) fn failed(err: TokenError) -> Self {
        Self::rare(Rare::Failed { err: Some(err) })
    }

    #[cold]
    pub(crate) fn acquire(pending: Pending<S, B>, ticket: Ticket) -> Self {
        Self::rare(Rare::Acquire {
            token: Box::pin(Arc::clone(pending.link.shared()).wait(ticket)),
            pending: Some(pending),
        })
    }

    fn rare(rare: Rare<S, B>) -> Self {
        Self {
            state: State::Rare {
                rare: Box::pin(rare),
            },
        }
    }

    /// The first attempt.
    #[inline]
    pub(crate) fn sent(fut: S::Future, after: After<S, B>) -> Self {
        Self {
            state: State::Sent { fut, after },
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Sent {
                after: After::Report { id: 0, .. },
                ..
            } => "passthrough",
            State::Sent { .. } => "sent",
            State::Rare { rare } => match &**rare {
                Rare::Failed { .. } => "failed",
                Rare::Acquire { .. } => "acquire",
                Rare::Reacquire { .. } => "reacquire",
                Rare::Replay { .. } => "replay",
            },
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body,
{
    type Output = Result<Response<ResBody>, Error<S::Error>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                // The common path, small enough to inline into the caller: the
                // first attempt, answered with anything but a 401.
                StateProj::Sent { fut, after } => {
                    let res = ready!(fut.poll(cx)).map_err(Error::Inner)?;
                    if res.status() != StatusCode::UNAUTHORIZED {
                        return Poll::Ready(Ok(res));
                    }
                    match after_401(after, res) {
                        Ok(next) => next,
                        Err(res) => return Poll::Ready(Ok(res)),
                    }
                }
                StateProj::Rare { rare } => match ready!(poll_rare(rare.as_mut(), cx)) {
                    Step::Done(out) => return Poll::Ready(out),
                    Step::Next(next) => next,
                },
            };
            state.set(next);
        }
    }
}

/// What a rare state comes to: the future's output, or the next state.
enum Step<S, B, ResBody>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>>,
{
    Done(Result<Response<ResBody>, Error<S::Error>>),
    Next(State<S, B, S::Future>),
}

/// After a 401 on the first attempt: the answer to return, or, for a 401 about
/// the token, the state that replays the request (the token is dropped first if
/// it is still the current one).
#[cold]
#[inline(never)]
fn after_401<S, B, F, ResBody>(
    after: &mut After<S, B>,
    res: Response<ResBody>,
) -> Result<State<S, B, F>, Response<ResBody>>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
{
    let id = match after {
        After::Report { id, .. } => *id,
        After::Replay(retry) => retry.id,
    };
    // Another origin's 401 says nothing about the token.
    if id == 0 || !refuses_token(res.headers()) {
        return Err(res);
    }
    let spent = After::Report {
        id: 0,
        cache: CacheNumber::NONE,
    };
    let (link, service, req) = match std::mem::replace(after, spent) {
        After::Report { id, cache } => {
            // No replay, but the cache still refreshes if this token is current.
            if let Some(shared) = cache.find() {
                refused_without_replay(&shared, id);
            }
            return Err(res);
        }
        After::Replay(retry) => match retry.into_request() {
            (_, link, Some((service, req))) => (link, service, req),
            (id, link, None) => {
                refused_without_replay(link.shared(), id);
                return Err(res);
            }
        },
    };
    let shared = link.shared();
    match shared.ask(Some(id)) {
        Ok(Answer::Token(slot)) => Ok(replay(service, req, slot, link)),
        Ok(Answer::Failed(err)) => Ok(rare(Rare::Failed { err: Some(err) })),
        Ok(Answer::NoReplay | Answer::Retry) => {
            shared.counters.replay_skipped();
            Err(res)
        }
        Err(ticket) => Ok(rare(Rare::Reacquire {
            token: Box::pin(Arc::clone(shared).wait(ticket)),
            replay: Some(Reacquire {
                service,
                req,
                refused: res,
                link,
            }),
        })),
    }
}

/// Tells the cache that token `id` was refused, for a request that is not
/// replayed.
fn refused_without_replay(shared: &Arc<Shared>, id: u64) {
    shared.run(Event::Refused { id, waiter: None });
    shared.counters.replay_skipped();
}

fn rare<S, B, F>(rare: Rare<S, B>) -> State<S, B, F>
where
    S: Service<Request<ReplayBody<B>>>,
{
    State::Rare {
        rare: Box::pin(rare),
    }
}

/// The replay, with the token the cache chose.
fn replay<S, B, F>(
    service: S,
    mut req: Request<ReplayBody<B>>,
    slot: LiveSlot,
    link: Arc<Link<S>>,
) -> State<S, B, F>
where
    S: Service<Request<ReplayBody<B>>>,
{
    link.shared().counters.replayed();
    tracing::debug!(target: "daxium_auth", method = %req.method(), "401: replaying the request once with a new token");
    req.headers_mut().insert(AUTHORIZATION, slot.access);
    rare(Rare::Replay {
        fut: Oneshot::new(service, req),
        id: slot.id,
        link,
    })
}

/// Every state but the common path's.
#[inline(never)]
fn poll_rare<S, B, ResBody>(
    rare: Pin<&mut Rare<S, B>>,
    cx: &mut Context<'_>,
) -> Poll<Step<S, B, ResBody>>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body,
{
    let next = match rare.project() {
        RareProj::Failed { err } => {
            let err = err.take().expect("polled after completion");
            return Poll::Ready(Step::Done(Err(Error::Token(err))));
        }
        RareProj::Acquire { token, pending } => {
            let slot = match ready!(token.as_mut().poll(cx)) {
                Answer::Token(slot) => slot,
                answer => return Poll::Ready(Step::Done(Err(Error::Token(failure(answer))))),
            };
            let Pending {
                mut inner,
                req,
                link,
                replay,
                limit,
            } = pending.take().expect("polled after completion");
            send(&mut inner, req, slot.id, slot.access, link, replay, limit).state
        }
        RareProj::Reacquire {
            token,
            replay: pending,
        } => {
            let answer = ready!(token.as_mut().poll(cx));
            let Reacquire {
                service,
                req,
                refused,
                link,
            } = pending.take().expect("polled after completion");
            match answer {
                Answer::Token(slot) => replay(service, req, slot, link),
                Answer::NoReplay | Answer::Retry => {
                    link.shared().counters.replay_skipped();
                    return Poll::Ready(Step::Done(Ok(refused)));
                }
                Answer::Failed(err) => return Poll::Ready(Step::Done(Err(Error::Token(err)))),
            }
        }
        RareProj::Replay { fut, id, link } => {
            let res = ready!(fut.poll(cx)).map_err(Error::Inner);
            if let Ok(res) = &res
                && res.status() == StatusCode::UNAUTHORIZED
                && refuses_token(res.headers())
            {
                link.shared().run(Event::ReplayRefused { id: *id });
            }
            return Poll::Ready(Step::Done(res));
        }
    };
    Poll::Ready(Step::Next(next))
}

/// Whether a 401 is about the token. A `WWW-Authenticate` challenge naming
/// another error (`insufficient_scope`, say) is not: refreshing would not help,
/// and would cost a grant per request.
pub(crate) fn refuses_token(headers: &HeaderMap) -> bool {
    let mut challenges = headers.get_all(WWW_AUTHENTICATE).iter().peekable();
    if challenges.peek().is_none() {
        return true;
    }
    challenges.any(|value| {
        let value = value.to_str().unwrap_or_default().to_ascii_lowercase();
        !value.contains("error=") || value.contains("invalid_token")
    })
}
