//! What follows a refusal: the copy of a request kept to send it again
//! ([`Retry`]), and the decision to send it.
//!
//! A refused request is sent again with the current token when the token it
//! carried had been replaced while it was in flight (the layer's own refresh,
//! an adopted fleet record, a change of login): that is not its replay. A
//! refusal of the current token drops it and uses the request's one replay.
//! No request is sent more than five times (`MAX_SENDS`).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Extensions, HeaderMap, Method, Request, Response, Uri, Version, header::AUTHORIZATION};
use tower::util::Oneshot;
use tower_service::Service;

use super::{Acquire, After, Check, MAX_SENDS, Rare, State};
use crate::{
    cache::{Answer, CacheNumber, Event, Live, LiveSlot, Resend, Shared},
    layer::{
        body::{Replay, ReplayBody},
        link::Link,
        refusal::accepts,
    },
};

/// How long a refusal that came before the request's body was all sent (a
/// gRPC interceptor answers on the request's head) waits for the body to
/// finish, so that it can be replayed. A body still streaming then is not.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A refused request waiting for the token to send it again with.
pub(super) struct Resending<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    pub(super) retry: Retry<S, B>,
    pub(super) refused: S::Response,
    /// The token whose refusal the request's one replay was spent on, if
    /// it was (by this send, or an earlier one).
    pub(super) replayed: Option<u64>,
    /// Whether this send is the request's one replay (not a resend).
    pub(super) replay: bool,
}

/// What sending a request again needs: the request without its body, how to
/// replay the body, the link to the cache and to the service's spare clone
/// (cloned again for each send, and driven ready by `Oneshot` before the
/// call), and how many sends it has had. Which token its replay was spent
/// on, if it was, the rare states keep: the first attempt has had none.
pub(crate) struct Retry<S, B> {
    /// The token the last send carried.
    pub(super) id: u64,
    pub(super) link: Arc<Link<S>>,
    method: Method,
    uri: Uri,
    version: Version,
    /// `None` for a request with no header before the token (most): no map
    /// to make and drop for each request.
    headers: Option<Box<HeaderMap>>,
    extensions: Extensions,
    pub(super) body: Replay<B>,
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
    pub(super) fn request(&mut self, slot: &LiveSlot) -> Option<(S, Request<ReplayBody<B>>)>
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

/// The first answer that shows the token works: the cache learns it once.
#[cold]
#[inline(never)]
pub(super) fn confirm<S, B, ResBody>(after: &After<S, B>, res: &Response<ResBody>) {
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
pub(super) fn after_refusal<S, B, F, ResBody>(
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
pub(super) fn refused<S, B, F, ResBody>(
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
pub(super) fn again<S, B, F>(
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
    retry
        .link
        .shared()
        .counters
        .sent_again(replay, req.method());
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
pub(super) fn settle_limit(
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
