//! [`ResponseFuture`]: the state machine of one request. The common path polls
//! the inner future and looks at the status; waiting for a grant and the one
//! replay after a 401 are the rare paths, and only they allocate.

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
    cache::{Answer, Event, Live, LiveSlot, Ticket},
    error::{Error, TokenError},
    service::{Local, dispatch, failure},
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
        // A request for another origin: no token, no replay.
        Passthrough { #[pin] fut: F },
        // No token, and the cache says why.
        Failed { err: Option<TokenError> },
        // No valid token yet: wait for the grant, then call the service made ready.
        Acquire { token: Acquire, pending: Option<Box<Pending<S, B>>> },
        // The first attempt.
        Sent { #[pin] fut: F, id: u64, local: Arc<Local>, retry: Option<Box<Retry<S, B>>> },
        // After a 401: wait for the token to replay with (a refresh in flight
        // first). The refused answer goes back if the cache says no replay.
        Reacquire { token: Acquire, replay: Option<Box<Reacquire<S, B>>> },
        // The one replay; its answer goes back as it is, and the cache learns
        // when it was refused too.
        Replay { fut: Pin<Box<Oneshot<S, Request<ReplayBody<B>>>>>, id: u64, local: Arc<Local> },
    }
}

/// What the replay after a 401 keeps while it waits for a token.
pub(crate) struct Reacquire<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    service: S,
    req: Request<ReplayBody<B>>,
    refused: S::Response,
    local: Arc<Local>,
}

pub(crate) struct Pending<S, B> {
    inner: S,
    req: Request<B>,
    local: Arc<Local>,
    replay: bool,
}

/// What a replay needs: the request without its body, how to replay the body,
/// and a clone of the service (driven ready by `Oneshot` before the call).
pub(crate) struct Retry<S, B> {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    body: Replay,
    service: S,
    _body: std::marker::PhantomData<fn() -> B>,
}

impl<S, B> Retry<S, B> {
    #[inline]
    pub(crate) fn new<T>(req: &Request<T>, body: Replay, service: S) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            // Most requests carry no header yet: skip the clone's bookkeeping.
            headers: if req.headers().is_empty() {
                HeaderMap::new()
            } else {
                req.headers().clone()
            },
            extensions: req.extensions().clone(),
            body,
            service,
            _body: std::marker::PhantomData,
        }
    }

    /// The replay request, or `None` when the body cannot be sent again.
    fn into_request(self) -> Option<(S, Request<ReplayBody<B>>)> {
        let body = self.body.body()?;
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        *req.extensions_mut() = self.extensions;
        Some((self.service, req))
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    pub(crate) fn passthrough(fut: S::Future) -> Self {
        Self {
            state: State::Passthrough { fut },
        }
    }

    pub(crate) fn failed(err: TokenError) -> Self {
        Self {
            state: State::Failed { err: Some(err) },
        }
    }

    pub(crate) fn acquire(
        inner: S,
        req: Request<B>,
        local: Arc<Local>,
        replay: bool,
        ticket: Ticket,
    ) -> Self {
        Self {
            state: State::Acquire {
                token: Box::pin(Arc::clone(local.shared()).wait(ticket)),
                pending: Some(Box::new(Pending {
                    inner,
                    req,
                    local,
                    replay,
                })),
            },
        }
    }

    #[inline]
    pub(crate) fn sent(
        fut: S::Future,
        id: u64,
        local: Arc<Local>,
        retry: Option<Box<Retry<S, B>>>,
    ) -> Self {
        Self {
            state: State::Sent {
                fut,
                id,
                local,
                retry,
            },
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Passthrough { .. } => "passthrough",
            State::Failed { .. } => "failed",
            State::Acquire { .. } => "acquire",
            State::Sent { .. } => "sent",
            State::Reacquire { .. } => "reacquire",
            State::Replay { .. } => "replay",
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
        // The common path, small enough to inline into the caller: the first
        // attempt, answered with anything but a 401 about the token.
        if let StateProj::Sent {
            fut,
            id,
            local,
            retry,
        } = state.as_mut().project()
        {
            let res = ready!(fut.poll(cx)).map_err(Error::Inner)?;
            match after_401(*id, local, retry, res) {
                Ok(next) => state.set(next),
                Err(res) => return Poll::Ready(Ok(res)),
            }
        }
        poll_rare(state, cx)
    }
}

/// After the first attempt's answer: the answer to return, or, for a 401 about
/// the token, the state that replays the request (the token is dropped first if
/// it is still the current one).
#[inline]
fn after_401<S, B, F, ResBody>(
    id: u64,
    local: &Arc<Local>,
    retry: &mut Option<Box<Retry<S, B>>>,
    res: Response<ResBody>,
) -> Result<State<S, B, F>, Response<ResBody>>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>>,
{
    if res.status() != StatusCode::UNAUTHORIZED || !refuses_token(res.headers()) {
        return Err(res);
    }
    replay_after_401(id, local, retry, res)
}

#[cold]
#[inline(never)]
fn replay_after_401<S, B, F, ResBody>(
    id: u64,
    local: &Arc<Local>,
    retry: &mut Option<Box<Retry<S, B>>>,
    res: Response<ResBody>,
) -> Result<State<S, B, F>, Response<ResBody>>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>>,
{
    let shared = local.shared();
    let Some((service, req)) = retry.take().and_then(|retry| retry.into_request()) else {
        // No replay, but the cache still refreshes if this token is current.
        shared.run(Event::Refused { id, waiter: None });
        shared.counters.replay_skipped();
        return Err(res);
    };
    match shared.ask(Some(id)) {
        Ok(Answer::Token(slot)) => Ok(replay(service, req, slot, local)),
        Ok(Answer::Failed(err)) => Ok(State::Failed { err: Some(err) }),
        Ok(Answer::NoReplay | Answer::Retry) => {
            shared.counters.replay_skipped();
            Err(res)
        }
        Err(ticket) => Ok(State::Reacquire {
            token: Box::pin(Arc::clone(shared).wait(ticket)),
            replay: Some(Box::new(Reacquire {
                service,
                req,
                refused: res,
                local: Arc::clone(local),
            })),
        }),
    }
}

/// The replay, with the token the cache chose.
fn replay<S, B, F>(
    service: S,
    mut req: Request<ReplayBody<B>>,
    slot: LiveSlot,
    local: &Arc<Local>,
) -> State<S, B, F>
where
    S: Service<Request<ReplayBody<B>>>,
{
    local.shared().counters.replayed();
    tracing::debug!(target: "daxium_auth", method = %req.method(), "401: replaying the request once with a new token");
    req.headers_mut().insert(AUTHORIZATION, slot.access);
    State::Replay {
        fut: Box::pin(Oneshot::new(service, req)),
        id: slot.id,
        local: Arc::clone(local),
    }
}

/// Every state but the common path's.
fn poll_rare<S, B, ResBody>(
    mut state: Pin<&mut State<S, B, S::Future>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResBody>, Error<S::Error>>>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body,
{
    loop {
        let next = match state.as_mut().project() {
            StateProj::Passthrough { fut } => return fut.poll(cx).map_err(Error::Inner),
            StateProj::Failed { err } => {
                let err = err.take().expect("polled after completion");
                return Poll::Ready(Err(Error::Token(err)));
            }
            StateProj::Acquire { token, pending } => {
                let slot = match ready!(token.as_mut().poll(cx)) {
                    Answer::Token(slot) => slot,
                    answer => return Poll::Ready(Err(Error::Token(failure(answer)))),
                };
                let Pending {
                    mut inner,
                    req,
                    local,
                    replay,
                } = *pending.take().expect("polled after completion");
                dispatch(&mut inner, req, slot.id, slot.access, &local, replay).state
            }
            StateProj::Sent {
                fut,
                id,
                local,
                retry,
            } => {
                let res = ready!(fut.poll(cx)).map_err(Error::Inner)?;
                match after_401(*id, local, retry, res) {
                    Ok(next) => next,
                    Err(res) => return Poll::Ready(Ok(res)),
                }
            }
            StateProj::Reacquire {
                token,
                replay: pending,
            } => {
                let answer = ready!(token.as_mut().poll(cx));
                let Reacquire {
                    service,
                    req,
                    refused,
                    local,
                } = *pending.take().expect("polled after completion");
                match answer {
                    Answer::Token(slot) => replay(service, req, slot, &local),
                    Answer::NoReplay | Answer::Retry => {
                        local.shared().counters.replay_skipped();
                        return Poll::Ready(Ok(refused));
                    }
                    Answer::Failed(err) => return Poll::Ready(Err(Error::Token(err))),
                }
            }
            StateProj::Replay { fut, id, local } => {
                let res = ready!(fut.as_mut().poll(cx)).map_err(Error::Inner)?;
                if res.status() == StatusCode::UNAUTHORIZED && refuses_token(res.headers()) {
                    local.shared().run(Event::ReplayRefused { id: *id });
                }
                return Poll::Ready(Ok(res));
            }
        };
        state.set(next);
    }
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
