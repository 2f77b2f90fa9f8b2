//! [`ResponseFuture`]: the state machine of one request. The common path polls
//! the inner future and checks the answer against the refusal rule; waiting
//! for a grant and sending a refused request again are the rare paths, and
//! only they allocate (besides the copy of a request's headers kept for a
//! replay, when it has any).
//!
//! A refused request is sent again with the current token when the token it
//! carried had been replaced while it was in flight (the layer's own refresh,
//! an adopted fleet record, a change of login), or had worked and was revoked
//! (the API accepted it before): that is a resend, not its replay. A refusal
//! of a token that never worked uses the request's one replay. A refusal of
//! the current token drops it either way. No request is sent more than three
//! times.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Extensions, HeaderMap, Method, Request, Response, Uri, Version, header::AUTHORIZATION};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower_service::Service;

use crate::{
    body::{Replay, ReplayBody},
    cache::{Answer, Event, Live, LiveSlot, Resend, Shared, Ticket},
    error::{Error, TokenError},
    refusal::{Refusal, accepts},
    service::{CacheNumber, Link, failure, send},
};

type Acquire = Pin<Box<dyn Future<Output = Answer<Live>> + Send>>;

/// How long a refusal that came before the request's body was all sent (a
/// gRPC interceptor answers on the request's head) waits for the body to
/// finish, so that it can be replayed. A body still streaming then is not.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The most times one request is sent: the first attempt and two more,
/// resends after a refusal of a token replaced in flight or revoked after it
/// worked, or the one replay after a refusal of a token that never worked.
/// Nothing can loop.
pub(crate) const MAX_SENDS: u8 = 3;

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
        Sent { #[pin] fut: F, check: Check, after: After<S, B> },
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
        // After a refusal: wait for the token to send the request again with
        // (a refresh in flight first), and for the body's recording to
        // settle if the refusal came before it was all sent. The refusal
        // goes back if the cache says no token could help, or the body
        // cannot be sent again.
        Reacquire { token: Acquire, resend: Option<Resending<S, B>>, settle: Option<Pin<Box<tokio::time::Sleep>>> },
        // The request sent again; a refusal of it may send it once more,
        // within `MAX_SENDS`. `replayed`: the token whose refusal its one
        // replay was spent on, if it was.
        Again { #[pin] fut: Oneshot<S, Request<ReplayBody<B>>>, check: Check, retry: Option<Retry<S, B>>, replayed: Option<u64> },
    }
}

/// What every answer is checked for: whether it refuses the token, and
/// whether the cache still wants to hear that the token worked (only until
/// the first answer that says so).
#[derive(Clone, Copy)]
pub(crate) struct Check {
    pub(crate) refusal: Refusal,
    pub(crate) confirm: bool,
}

/// What the first attempt keeps for a refusal: for a request without replay,
/// two words and no reference count; for one with, the copy of the request,
/// in place as the plain way keeps it (a box would cost an allocation and a
/// free more than the moves of a larger future).
#[allow(clippy::large_enum_variant)]
pub(crate) enum After<S, B> {
    /// Report a refusal of token `id` (`0`: a request for another origin,
    /// which carried no token) to the cache numbered `cache`, found then.
    Report { id: u64, cache: CacheNumber },
    /// Report it, and send the request again: the copy keeps a handle on the
    /// cache, which the resend needs alive.
    Replay(Retry<S, B>),
}

/// A refused request waiting for the token to send it again with.
struct Resending<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    retry: Retry<S, B>,
    refused: S::Response,
    /// The token whose refusal the request's one replay was spent on, if
    /// it was (by this send, or an earlier one).
    replayed: Option<u64>,
    /// Whether this send is the request's one replay (not a resend).
    replay: bool,
}

/// A request that waits for a token, with the service made ready for it.
pub(crate) struct Pending<S, B> {
    pub(crate) inner: S,
    pub(crate) req: Request<B>,
    pub(crate) link: Arc<Link<S>>,
    pub(crate) replay: bool,
    pub(crate) limit: usize,
}

/// What sending a request again needs: the request without its body, how to
/// replay the body, the link to the cache and to the service's spare clone
/// (cloned again for each send, and driven ready by `Oneshot` before the
/// call), and how many sends it has had. Which token its replay was spent
/// on, if it was, the rare states keep: the first attempt has had none.
pub(crate) struct Retry<S, B> {
    /// The token the last send carried.
    id: u64,
    link: Arc<Link<S>>,
    method: Method,
    uri: Uri,
    version: Version,
    /// `None` for a request with no header before the token (most): no map
    /// to make and drop for each request.
    headers: Option<Box<HeaderMap>>,
    extensions: Extensions,
    body: Replay<B>,
    sends: u8,
    _body: std::marker::PhantomData<fn() -> B>,
}

impl<S, B> Retry<S, B> {
    #[inline]
    pub(crate) fn new<T>(req: &Request<T>, body: Replay<B>, id: u64, link: Arc<Link<S>>) -> Self {
        Self {
            id,
            link,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: (!req.headers().is_empty()).then(|| Box::new(req.headers().clone())),
            extensions: req.extensions().clone(),
            body,
            sends: 1,
            _body: std::marker::PhantomData,
        }
    }

    /// Whether the request may be sent again: its body was recorded whole,
    /// or is still being sent and may yet be, and a spare service is there
    /// to send it.
    fn replayable(&self) -> bool {
        (self.body.is_replayable() || self.body.is_settling()) && self.link.has_spare()
    }

    /// The request to send again with `slot`'s token, on a clone of the
    /// spare service; `None` when the body cannot be sent again.
    fn request(&mut self, slot: &LiveSlot) -> Option<(S, Request<ReplayBody<B>>)>
    where
        S: Clone,
    {
        let (Some(body), Some(service)) = (self.body.body(), self.link.spare()) else {
            return None;
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        if let Some(headers) = &self.headers {
            *req.headers_mut() = (**headers).clone();
        }
        *req.extensions_mut() = self.extensions.clone();
        req.headers_mut().insert(AUTHORIZATION, slot.access.clone());
        Some((service, req))
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    /// A request for another origin: its refusal says nothing about the token.
    pub(crate) fn passthrough(fut: S::Future, cache: CacheNumber) -> Self {
        let check = Check {
            refusal: Refusal::unauthorized(),
            confirm: false,
        };
        Self::sent(fut, check, After::<S, B>::Report { id: 0, cache })
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
    pub(crate) fn sent(fut: S::Future, check: Check, after: After<S, B>) -> Self {
        Self {
            state: State::Sent { fut, check, after },
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
                Rare::Again { .. } => "again",
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
                // first attempt, answered with anything but a refusal.
                StateProj::Sent { fut, check, after } => {
                    let res = ready!(fut.poll(cx)).map_err(Error::Inner)?;
                    if !check.refusal.refuses(res.status(), res.headers()) {
                        if check.confirm {
                            confirm(after, &res);
                        }
                        return Poll::Ready(Ok(res));
                    }
                    match after_refusal(after, res) {
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

/// The first answer that shows the token works: the cache learns it once.
#[cold]
#[inline(never)]
fn confirm<S, B, ResBody>(after: &After<S, B>, res: &Response<ResBody>) {
    if !accepts(res.status()) {
        return;
    }
    match after {
        After::Report { id: 0, .. } => {}
        After::Report { id, cache } => {
            if let Some(shared) = cache.find() {
                shared.accepted(*id);
            }
        }
        After::Replay(retry) => retry.link.shared().accepted(retry.id),
    }
}

/// After a refusal of the first attempt: the answer to return, or the state
/// that sends the request again.
#[cold]
#[inline(never)]
fn after_refusal<S, B, F, ResBody>(
    after: &mut After<S, B>,
    res: Response<ResBody>,
) -> Result<State<S, B, F>, Response<ResBody>>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
{
    let spent = After::Report {
        id: 0,
        cache: CacheNumber::NONE,
    };
    match std::mem::replace(after, spent) {
        // Another origin's refusal says nothing about the token.
        After::Report { id: 0, .. } => Err(res),
        After::Report { id, cache } => {
            // Not sent again, but the cache drops the token if it is current.
            if let Some(shared) = cache.find() {
                refused_without_resend(&shared, id);
            }
            Err(res)
        }
        After::Replay(retry) => refused(retry, res, None),
    }
}

/// A send carrying `retry.id` was refused, after a replay spent on the
/// refusal of token `replayed` if any: the state that sends it again, or the
/// refusal to return.
fn refused<S, B, F, ResBody>(
    mut retry: Retry<S, B>,
    res: Response<ResBody>,
    replayed: Option<u64>,
) -> Result<State<S, B, F>, Response<ResBody>>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
{
    let shared = Arc::clone(retry.link.shared());
    if !retry.replayable() {
        refused_without_resend(&shared, retry.id);
        return Err(res);
    }
    let more = retry.sends < MAX_SENDS;
    let (replay, answer) = match shared.refused(retry.id, replayed, more) {
        Resend::Send { replay, answer } => (replay, answer),
        Resend::No => {
            shared.counters.replay_skipped();
            return Err(res);
        }
    };
    let answer = match answer {
        // The body is still being sent: its recording settles first.
        Ok(Answer::Token(slot)) if retry.body.is_settling() => {
            Err(ready_answer(Answer::Token(slot)))
        }
        Ok(answer) => Ok(answer),
        Err(ticket) => Err(Box::pin(Arc::clone(&shared).wait(ticket)) as Acquire),
    };
    let replayed = if replay { Some(retry.id) } else { replayed };
    match answer {
        Ok(Answer::Token(slot)) => match retry.request(&slot) {
            Some((service, req)) => Ok(again(retry, service, req, &slot, replay, replayed)),
            None => {
                shared.counters.replay_skipped();
                Err(res)
            }
        },
        Ok(Answer::Failed(err)) => Ok(rare_state(Rare::Failed { err: Some(err) })),
        Ok(Answer::NoReplay | Answer::Retry) => {
            shared.counters.replay_skipped();
            Err(res)
        }
        Err(token) => Ok(rare_state(Rare::Reacquire {
            token,
            resend: Some(Resending {
                retry,
                refused: res,
                replayed,
                replay,
            }),
            settle: None,
        })),
    }
}

/// An answer the cache gave already, as the future a wait for one is.
fn ready_answer(answer: Answer<Live>) -> Acquire {
    Box::pin(std::future::ready(answer))
}

/// Tells the cache that token `id` was refused, for a request that is not
/// sent again.
fn refused_without_resend(shared: &Arc<Shared>, id: u64) {
    shared.run(Event::Refused { id, waiter: None });
    shared.counters.replay_skipped();
}

fn rare_state<S, B, F>(rare: Rare<S, B>) -> State<S, B, F>
where
    S: Service<Request<ReplayBody<B>>>,
{
    State::Rare {
        rare: Box::pin(rare),
    }
}

/// Sends the request again with `slot`'s token; `replay` when this send is
/// its replay, spent on the refusal of token `replayed`.
fn again<S, B, F>(
    mut retry: Retry<S, B>,
    service: S,
    req: Request<ReplayBody<B>>,
    slot: &LiveSlot,
    replay: bool,
    replayed: Option<u64>,
) -> State<S, B, F>
where
    S: Service<Request<ReplayBody<B>>>,
{
    let shared = retry.link.shared();
    if replay {
        shared.counters.replayed();
        tracing::debug!(target: "daxium_auth", method = %req.method(), "token refused: replaying the request once with a new token");
    } else {
        shared.counters.resent();
        tracing::debug!(target: "daxium_auth", method = %req.method(), "token replaced or revoked while the request was in flight: sending it again with the current one");
    }
    let check = Check {
        refusal: retry.link.layer.config().refusal,
        confirm: !slot.accepted,
    };
    retry.id = slot.id;
    retry.sends = retry.sends.saturating_add(1);
    rare_state(Rare::Again {
        fut: Oneshot::new(service, req),
        check,
        retry: Some(retry),
        replayed,
    })
}

/// Polls the limit on waiting for a request body to settle, armed at the
/// first poll; without a runtime to time it, the limit has passed.
fn settle_limit(
    settle: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    if settle.is_none() {
        if tokio::runtime::Handle::try_current().is_err() {
            return Poll::Ready(());
        }
        *settle = Some(Box::pin(tokio::time::sleep(SETTLE_LIMIT)));
    }
    settle
        .as_mut()
        .map_or(Poll::Ready(()), |sleep| sleep.as_mut().poll(cx))
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
            send(&mut inner, req, &slot, link, replay, limit).state
        }
        RareProj::Reacquire {
            token,
            resend,
            settle,
        } => {
            let waiting = resend.as_ref().expect("polled after completion");
            let settled = match waiting.retry.body.poll_settled(cx) {
                Poll::Ready(settled) => settled,
                // Bounded: a body that does not finish soon is not replayed.
                Poll::Pending => match settle_limit(settle, cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => false,
                },
            };
            if !settled {
                let Resending { retry, refused, .. } =
                    resend.take().expect("polled after completion");
                retry.link.shared().counters.replay_skipped();
                return Poll::Ready(Step::Done(Ok(refused)));
            }
            let answer = ready!(token.as_mut().poll(cx));
            let Resending {
                mut retry,
                refused,
                replayed,
                replay,
            } = resend.take().expect("polled after completion");
            let shared = Arc::clone(retry.link.shared());
            match answer {
                Answer::Token(slot) => match retry.request(&slot) {
                    Some((service, req)) => again(retry, service, req, &slot, replay, replayed),
                    None => {
                        shared.counters.replay_skipped();
                        return Poll::Ready(Step::Done(Ok(refused)));
                    }
                },
                Answer::NoReplay | Answer::Retry => {
                    shared.counters.replay_skipped();
                    return Poll::Ready(Step::Done(Ok(refused)));
                }
                Answer::Failed(err) => return Poll::Ready(Step::Done(Err(Error::Token(err)))),
            }
        }
        RareProj::Again {
            fut,
            check,
            retry,
            replayed,
        } => {
            let res = match ready!(fut.poll(cx)) {
                Ok(res) => res,
                Err(err) => return Poll::Ready(Step::Done(Err(Error::Inner(err)))),
            };
            let retry = retry.take().expect("polled after completion");
            if !check.refusal.refuses(res.status(), res.headers()) {
                if check.confirm && accepts(res.status()) {
                    retry.link.shared().accepted(retry.id);
                }
                return Poll::Ready(Step::Done(Ok(res)));
            }
            match refused(retry, res, *replayed) {
                Ok(next) => next,
                Err(res) => return Poll::Ready(Step::Done(Ok(res))),
            }
        }
    };
    Poll::Ready(Step::Next(next))
}
