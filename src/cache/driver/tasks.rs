//! The driver's tasks: the grant, run in a task of its own so that no
//! caller's cancellation stops it, and the timer that wakes the core at its
//! deadlines. A task that ends unfinished (its runtime shut down) tells the
//! core so, which then asks its waiters to ask again from their own runtimes.

use std::{
    panic::AssertUnwindSafe,
    pin::pin,
    sync::{Arc, Weak},
    time::Duration,
};

use futures_util::FutureExt;
use tokio::{sync::watch, time::Instant};
use tower::util::rng::{HasherRng, Rng};
use tracing::Instrument;

use super::{Live, Shared};
use crate::{
    cache::core::{Class, Event, Failure, FlightId, Granted, Reason},
    error::{Kind, TokenError},
    fetcher::{GrantRequest, GrantType},
    stats::Outcome,
    token::TokenPair,
};

impl Shared {
    /// One grant, in a task of its own. `lost` is made before the task is
    /// spawned, so that a task dropped before its first poll (its runtime
    /// shutting down) reports the grant lost too.
    pub(super) async fn grant(
        self: Arc<Self>,
        flight: FlightId,
        request: GrantRequest,
        reason: Reason,
        mut lost: Lost,
    ) {
        let grant_type = request.grant_type();
        let span = tracing::info_span!(
            target: "daxium_auth",
            "daxium_auth.grant",
            grant_type = grant_type.as_str(),
            reason = ?reason,
            outcome = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
            waiters = tracing::field::Empty,
        );
        let sent_at = Instant::now();
        let result = self.fetch(request).instrument(span.clone()).await;
        lost.event = None;
        let latency = sent_at.elapsed();
        let _entered = span.enter();
        span.record("latency_ms", latency.as_millis() as u64);
        let event = self.settle(flight, grant_type, result, (sent_at, latency), &span);
        let answered = self.run(event);
        span.record("waiters", answered);
    }

    /// A panicking fetcher is a failed grant like any other: backoff, not a
    /// tight loop of new attempts. So is one that does not answer within the
    /// grant timeout: without it, a fetcher that hangs would hold the one
    /// flight, and every caller would fail at its budget for good.
    async fn fetch(&self, request: GrantRequest) -> Result<TokenPair, TokenError> {
        let panicked =
            || TokenError::new(Kind::Transport).with_detail("the token fetcher panicked");
        let fetch = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.fetcher.fetch_boxed(request)
        })) {
            Ok(fetch) => fetch,
            Err(_) => return Err(panicked()),
        };
        let fetch = AssertUnwindSafe(fetch).catch_unwind();
        match tokio::time::timeout(self.grant_timeout, fetch).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(panicked()),
            Err(_) => Err(TokenError::new(Kind::Timeout)
                .with_detail("the token fetcher did not answer within the grant timeout")),
        }
    }

    /// The core's event for a grant's result; counts and logs it.
    fn settle(
        &self,
        flight: FlightId,
        grant_type: GrantType,
        result: Result<TokenPair, TokenError>,
        (sent_at, latency): (Instant, Duration),
        span: &tracing::Span,
    ) -> Event<Live> {
        let jitter = HasherRng::new().next_f64();
        let sent_at = self.time(sent_at);
        let err = match result {
            Ok(pair) => {
                span.record("outcome", Outcome::Ok.as_str());
                self.counters.grant_timed(grant_type, Outcome::Ok, latency);
                tracing::info!(target: "daxium_auth", "grant succeeded");
                let (access, refresh, lifetime, refresh_lifetime) = pair.into_parts();
                let grant = Granted {
                    access: access.into_header(),
                    refresh,
                    lifetime,
                    refresh_lifetime,
                    sent_at,
                    jitter,
                };
                return Event::Granted { flight, grant };
            }
            Err(err) if err.grant_type().is_none() => err.with_grant(grant_type),
            Err(err) => err,
        };
        let (error, rotated) = err.split_refresh_token();
        let (class, outcome) = match () {
            _ if error.is_grant_rejected() => (Class::Rejected, Outcome::Rejected),
            _ if !error.may_have_been_sent() => (Class::Unsent, Outcome::Failed),
            _ => (Class::Sent, Outcome::Failed),
        };
        span.record("outcome", outcome.as_str());
        self.counters.grant_timed(grant_type, outcome, latency);
        tracing::warn!(target: "daxium_auth", error = %error, "grant failed");
        let failure = Failure {
            retry_after: error.retry_after(),
            error,
            class,
            rotated,
            jitter,
        };
        Event::GrantFailed { flight, failure }
    }
}

/// Wakes the core at the deadlines it asks for, until the cache goes.
///
/// `lost` is made before the task is spawned, so that a task dropped before
/// its first poll reports itself lost too.
pub(super) async fn timer(
    shared: Weak<Shared>,
    mut deadline: watch::Receiver<Option<Instant>>,
    mut lost: Lost,
) {
    let mut fired = None;
    loop {
        let at = *deadline.borrow_and_update();
        let due = match at.filter(|at| Some(*at) != fired) {
            Some(at) => {
                let sleep = pin!(tokio::time::sleep_until(at));
                let changed = pin!(deadline.changed());
                match futures_util::future::select(sleep, changed).await {
                    futures_util::future::Either::Left(_) => Some(at),
                    futures_util::future::Either::Right((changed, _)) => match changed {
                        Ok(()) => None,
                        Err(_) => break,
                    },
                }
            }
            None if deadline.changed().await.is_err() => break,
            None => None,
        };
        if let Some(at) = due {
            let Some(shared) = shared.upgrade() else {
                break;
            };
            fired = Some(at);
            shared.run(Event::Tick);
        }
    }
    lost.event = None;
}

/// Tells the core that a task ended without finishing its work: dropped with
/// its runtime, or never run.
pub(super) struct Lost {
    shared: Weak<Shared>,
    pub(super) event: Option<Event<Live>>,
}

impl Lost {
    pub(super) fn new(shared: &Arc<Shared>, event: Event<Live>) -> Self {
        Self::new_weak(Arc::downgrade(shared), event)
    }

    pub(super) fn new_weak(shared: Weak<Shared>, event: Event<Live>) -> Self {
        Self {
            shared,
            event: Some(event),
        }
    }
}

impl Drop for Lost {
    fn drop(&mut self) {
        if let (Some(event), Some(shared)) = (self.event.take(), self.shared.upgrade()) {
            shared.run(event);
        }
    }
}
