//! The token cache's decisions, as a pure state machine: [`Core::handle`]
//! takes an event and the time it happened, updates the state and says what
//! to do ([`Action`]s). No I/O, no clock, no tokio: the driver
//! (`cache/driver.rs`) runs the grants, the timer and the waiters, and the
//! tests replay any interleaving of events against it.

mod fleet;
mod ladder;
mod published;
mod timing;
mod types;
mod waiters;

#[cfg(test)]
mod tests;

pub(crate) use self::types::*;
use self::waiters::{Waiter, Waiters};

/// The token held, with the times that retire it.
#[cfg_attr(test, derive(Clone))]
struct Token<A> {
    slot: Slot<A>,
    stale_at: Time,
    expires_at: Time,
    stale: bool,
    /// A replay carrying this token was refused too: another refresh would
    /// not help, so a 401 on it no longer starts one.
    replay_refused: bool,
}

#[cfg_attr(test, derive(Clone))]
enum Flight<R> {
    Idle,
    Running(Running<R>),
    /// No attempt before `until`: a backoff, or the refusal bound.
    Paused {
        until: Time,
    },
}

#[cfg_attr(test, derive(Clone))]
struct Running<R> {
    id: FlightId,
    /// The refresh token sent, kept for a failure before it left and for an
    /// answer that rotates none.
    sent: Option<R>,
    /// The credentials generation the grant was made with.
    credentials: u64,
    reason: Reason,
    /// Where the flight is in the store's protocol (`Grant` without a store).
    step: Step,
    /// Whether this replica holds the store's lease.
    leased: bool,
    /// The store version the grant builds on.
    base: Option<u64>,
    /// Until when a replica without the lease waits for a new record.
    until: Time,
    /// Whether the pair's write went over a record no replica could read
    /// already: that is done once per flight.
    replaced: bool,
}

/// The steps of a flight with a token store (DESIGN §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Lease,
    Read,
    Watch,
    Spend,
    Grant,
    Write,
}

#[cfg_attr(test, derive(Clone))]
struct Rejection<E> {
    error: E,
    until: Time,
    /// Tells one rejection's published view from the next.
    number: u64,
}

/// What was published last, to publish only changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Published {
    Token(u64, Phase),
    Empty,
    Rejected(u64),
    Closed,
}

/// The state of one token cache.
#[cfg_attr(test, derive(Clone))]
pub(crate) struct Core<P: Payload> {
    config: CacheConfig,
    now: Time,
    token: Option<Token<P::Access>>,
    refresh: Option<P::Refresh>,
    flight: Flight<P::Refresh>,
    last_error: Option<P::Error>,
    attempt: u32,
    rejected: Option<Rejection<P::Error>>,
    /// A pause has just ended, or a caller saw the token stale: a stale token
    /// is refreshed now. Otherwise a stale token waits for a caller, so that
    /// an idle client makes no grants.
    refresh_due: bool,
    /// The token the API refused last: never taken back from the store.
    refused_access: Option<P::Access>,
    /// A caller that could not wait found no token: a grant is wanted even
    /// with no one waiting for it.
    demand: bool,
    /// The token was dropped because the API refused it: the next grant is
    /// one the refusal bound counts.
    refused: bool,
    last_refusal_grant: Option<Time>,
    waiters: Waiters,
    /// Bumped by every change of credentials.
    credentials: u64,
    /// The newest store version this replica has taken or written; a record
    /// is adopted only when newer.
    version: Option<u64>,
    /// The store did not answer the last call: warned once per outage.
    store_down: bool,
    next_token: u64,
    next_flight: u64,
    rejections: u64,
    armed: Option<Time>,
    published: Option<Published>,
    closed: bool,
}

impl<P: Payload> Core<P> {
    pub(crate) fn new(config: CacheConfig) -> Self {
        Self {
            config,
            now: Time::ZERO,
            token: None,
            refresh: None,
            flight: Flight::Idle,
            last_error: None,
            attempt: 0,
            rejected: None,
            refresh_due: false,
            refused_access: None,
            demand: false,
            refused: false,
            last_refusal_grant: None,
            waiters: Waiters::default(),
            credentials: 0,
            version: None,
            store_down: false,
            next_token: 1,
            next_flight: 1,
            rejections: 0,
            armed: None,
            published: None,
            closed: false,
        }
    }

    pub(crate) fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Handles one event that happened at `now`, appending what to do to `out`.
    pub(crate) fn handle(&mut self, now: Time, event: Event<P>, out: &mut Vec<Action<P>>) {
        self.now = self.now.max(now);
        if self.closed {
            return self.after_close(event, out);
        }
        self.advance(out);
        if self.lost(&event, out) {
            return;
        }
        match event {
            Event::Need {
                waiter,
                deadline,
                not,
            } => {
                // A caller that gets a stale token starts its refresh, as the
                // hot path's kick does.
                self.refresh_due = true;
                self.need(waiter, deadline, not, out);
            }
            Event::Refused { id, waiter } => self.refused(id, waiter, out),
            Event::ReplayRefused { id } => {
                if let Some(token) = self.token.as_mut().filter(|t| t.slot.id == id) {
                    token.replay_refused = true;
                }
            }
            Event::WaiterGone { waiter } => {
                self.waiters.remove(waiter);
            }
            Event::Granted { flight, grant } => self.granted(flight, grant, out),
            Event::GrantFailed { flight, failure } => self.failed(flight, failure, out),
            Event::CredentialsChanged { other_login } => self.credentials_changed(other_login, out),
            Event::Stored { flight, reply } => self.stored(flight, reply, out),
            Event::Close => return self.close(out),
            Event::Kick => self.refresh_due = true,
            Event::Refresh => {
                if let Some(token) = &mut self.token {
                    token.stale = true;
                }
                self.refresh_due = true;
            }
            Event::Tick | Event::GrantLost { .. } | Event::TimerLost => {}
        }
        self.progress(out);
        self.refresh_due = false;
        self.arm(out);
        self.publish(out);
    }

    /// A task reported lost from a runtime that is going away: nothing is
    /// started or armed from there, and the waiters ask again from their own
    /// runtimes. Whether `event` was one.
    fn lost(&mut self, event: &Event<P>, out: &mut Vec<Action<P>>) -> bool {
        match *event {
            Event::GrantLost { flight } => {
                if self.running(flight) {
                    self.flight = Flight::Idle;
                    self.last_error = Some(P::error(Why::Lost));
                    self.retry_all(out);
                }
            }
            Event::TimerLost => {
                self.armed = None;
                self.retry_all(out);
            }
            _ => return false,
        }
        self.publish(out);
        true
    }

    /// Applies what the passing of time decided: staleness, expiry, the end
    /// of a pause or of a rejection, waiters out of budget.
    fn advance(&mut self, out: &mut Vec<Action<P>>) {
        let now = self.now;
        if let Some(token) = &mut self.token {
            token.stale |= now >= token.stale_at;
        }
        if self.token.as_ref().is_some_and(|t| now >= t.expires_at) {
            self.token = None;
        }
        if self.rejected.as_ref().is_some_and(|r| now >= r.until) {
            self.rejected = None;
        }
        if matches!(self.flight, Flight::Paused { until } if now >= until) {
            self.flight = Flight::Idle;
            self.refresh_due = true;
        }
        let due = self.waiters.due(now);
        for (id, not) in due {
            let answer = self.best_for(not);
            self.answer(vec![id], answer, out);
        }
    }

    /// What a waiter that stops waiting gets: the token if it is valid and not
    /// the refused one, no replay if the refused one is still current,
    /// otherwise the error to report.
    fn best_for(&self, not: Option<u64>) -> Answer<P> {
        match &self.token {
            Some(t) if Some(t.slot.id) != not => Answer::Token(t.slot.clone()),
            Some(_) => Answer::NoReplay,
            None => self.failure(),
        }
    }

    fn failure(&self) -> Answer<P> {
        Answer::Failed(match (&self.rejected, &self.last_error) {
            (Some(rejected), _) => rejected.error.clone(),
            (None, Some(error)) => error.clone(),
            (None, None) => P::error(Why::Budget),
        })
    }

    fn need(&mut self, id: WaiterId, deadline: Time, not: Option<u64>, out: &mut Vec<Action<P>>) {
        let running = matches!(self.flight, Flight::Running(_));
        let answer = match &self.token {
            // A replay waits for a refresh in flight: servers revoke the previous
            // token the moment they process one.
            Some(_) if not.is_some() && running => None,
            Some(t) if Some(t.slot.id) != not => Some(Answer::Token(t.slot.clone())),
            Some(_) => (!running).then_some(Answer::NoReplay),
            None => match (&self.rejected, &self.flight) {
                (Some(rejected), _) => Some(Answer::Failed(rejected.error.clone())),
                (None, Flight::Paused { until }) if *until > deadline => Some(self.failure()),
                (None, _) => None,
            },
        };
        self.waiters.insert(id, Waiter { deadline, not });
        match answer {
            Some(answer) => self.answer(vec![id], answer, out),
            // Nothing happens before the deadline: answer now, and still make
            // the grant the caller needed, for those who come next.
            None if deadline <= self.now => {
                self.demand |= self.token.is_none();
                self.answer(vec![id], self.best_for(not), out);
            }
            None => {}
        }
    }

    fn refused(&mut self, id: u64, waiter: Option<(WaiterId, Time)>, out: &mut Vec<Action<P>>) {
        if self
            .token
            .as_ref()
            .is_some_and(|t| t.slot.id == id && !t.replay_refused)
        {
            tracing::debug!(target: "daxium_auth", "access token refused by the API; refreshing");
            self.refused_access = self.token.take().map(|t| t.slot.access);
            self.refused = true;
        }
        if let Some((waiter, deadline)) = waiter {
            self.need(waiter, deadline, Some(id), out);
        }
    }

    fn answer(&mut self, ids: Vec<WaiterId>, answer: Answer<P>, out: &mut Vec<Action<P>>) {
        if ids.is_empty() {
            return;
        }
        if ids.len() == self.waiters.len() {
            // Every waiter at once (a grant's answer to a stampede): no search.
            self.waiters.take_all();
        } else {
            for id in &ids {
                self.waiters.remove(*id);
            }
        }
        out.push(Action::Answer {
            waiters: ids,
            answer,
        });
    }

    fn retry_all(&mut self, out: &mut Vec<Action<P>>) {
        let all = self.waiters.take_all();
        self.answer(all, Answer::Retry, out);
    }

    fn close(&mut self, out: &mut Vec<Action<P>>) {
        self.closed = true;
        if let Flight::Running(run) = &self.flight {
            out.push(Action::Abort { flight: run.id });
            // A lease still being asked for may be granted after the close:
            // released too (the store ignores a release of another's lease).
            if run.leased || run.step == Step::Lease {
                let flight = run.id;
                out.push(Action::Store {
                    flight,
                    call: StoreCall::Release,
                });
            }
        }
        self.flight = Flight::Idle;
        let all = self.waiters.take_all();
        self.answer(all, Answer::Failed(P::error(Why::Closed)), out);
        self.token = None;
        self.refresh = None;
        if self.armed.take().is_some() {
            out.push(Action::Arm(None));
        }
        self.publish(out);
    }

    /// After the close, whoever asks learns it at once.
    fn after_close(&mut self, event: Event<P>, out: &mut Vec<Action<P>>) {
        let waiter = match event {
            Event::Need { waiter, .. }
            | Event::Refused {
                waiter: Some((waiter, _)),
                ..
            } => waiter,
            _ => return,
        };
        out.push(Action::Answer {
            waiters: vec![waiter],
            answer: Answer::Failed(P::error(Why::Closed)),
        });
    }
}
