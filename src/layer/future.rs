//! [`ResponseFuture`]: the state machine of one request. The common path polls
//! the inner future and checks the answer against the refusal rule; waiting
//! for a grant and sending a refused request again are the rare paths, and
//! only they allocate (besides the copy of a request's headers kept for a
//! replay, when it has any).
//!
//! Sending a request with a token starts here ([`send`], [`dispatch`]); what
//! follows a refusal, the request sent again, is in `resend`.
//!
//! A refused request is sent again with the current token when the token it
//! carried had been replaced while it was in flight (the layer's own refresh,
//! an adopted fleet record, a change of login), or had worked and was revoked
//! (the API accepted it before): that is a resend, not its replay. A refusal
//! of a token that never worked uses the request's one replay. A refusal of
//! the current token drops it either way. No request is sent more than five
//! times (`MAX_SENDS`).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{HeaderValue, Request, Response, header::AUTHORIZATION};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower_service::Service;

use super::{
    body::{Replay, ReplayBody},
    link::{Link, failure},
    refusal::{Refusal, accepts},
};
use crate::{
    cache::{Answer, CacheNumber, Live, LiveSlot, Ticket},
    error::{Error, TokenError},
};

mod resend;

use self::resend::{Resending, Retry, after_refusal, again, confirm, refused, settle_limit};

type Acquire = Pin<Box<dyn Future<Output = Answer<Live>> + Send>>;

/// The most times one request is sent: the first attempt and four more,
/// resends after a refusal of a token replaced in flight or revoked after it
/// worked, and at most one replay after a refusal of a token that never
/// worked. Each send carries a newer token than the one before (a refused
/// token is never sent again), so nothing can loop, and a request costs an
/// API that refuses it at most five sends. Four would leave ~0.1% of the
/// requests failing against an API that revokes 1% of the tokens it sees
/// at 32 requests in flight: the requests refused with a revoked token all
/// go out again together with the next one, and travel with its revocation
/// about one time in five (`tests/refusals.rs`).
pub(crate) const MAX_SENDS: u8 = 5;

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

/// A request that waits for a token, with the service made ready for it.
pub(crate) struct Pending<S, B> {
    pub(crate) inner: S,
    pub(crate) req: Request<B>,
    pub(crate) link: Arc<Link<S>>,
    pub(crate) replay: bool,
    pub(crate) limit: usize,
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

/// Sends `req` with the token of `slot`, keeping what a replay needs when
/// `replay` (`link` then holds a spare service).
pub(super) fn send<S, B, ResBody>(
    inner: &mut S,
    req: Request<B>,
    slot: &LiveSlot,
    link: Arc<Link<S>>,
    replay: bool,
    limit: usize,
) -> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body,
{
    let config = link.layer.config();
    let check = Check {
        refusal: config.refusal,
        confirm: !slot.accepted,
    };
    let (id, header) = (slot.id, slot.access.clone());
    if !replay {
        let mut req = req.map(ReplayBody::new);
        req.headers_mut().insert(AUTHORIZATION, header);
        let cache = config.cache;
        return ResponseFuture::sent(inner.call(req), check, After::Report { id, cache });
    }
    dispatch(inner, req, (id, header, check), link, limit)
}

/// Sends `req` with the token `id` (its header, and what its answer is
/// checked for), keeping what a replay needs.
#[inline]
pub(super) fn dispatch<S, B, ResBody>(
    inner: &mut S,
    req: Request<B>,
    (id, header, check): (u64, HeaderValue, Check),
    link: Arc<Link<S>>,
    limit: usize,
) -> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body,
{
    // The request stays whole here too: taking it apart into `Parts` and back
    // moves more bytes than the rest of this function touches.
    //
    // A streamed body of unknown size may still have a declared length: the
    // recording is complete once that much has gone out. A body whose size is
    // known (the usual case) costs no header lookup.
    let declared = if req.body().size_hint().exact().is_none() {
        declared_length(req.headers())
    } else {
        None
    };
    // `None` until the closure runs: assigning over a `Replay` would drop
    // one.
    let mut kind = None;
    let mut req = req.map(|body| {
        let (body, how) = ReplayBody::first(body, limit, declared);
        kind = Some(how);
        body
    });
    let Some(kind) = kind else {
        unreachable!("`Request::map` calls its closure")
    };
    if let Replay::Never = kind {
        req.headers_mut().insert(AUTHORIZATION, header);
        let cache = link.layer.config().cache;
        return ResponseFuture::sent(inner.call(req), check, After::Report { id, cache });
    }
    // The copy for a replay is taken before the header goes in.
    let retry = Retry::new(&req, kind, id, link);
    req.headers_mut().insert(AUTHORIZATION, header);
    ResponseFuture::sent(inner.call(req), check, After::Replay(retry))
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
