//! The token cache's decisions, as a pure state machine: [`Core::handle`]
//! takes an event and the time it happened, updates the state and says what
//! to do ([`Action`]s). No I/O, no clock, no tokio: the driver
//! (`cache/driver/`) runs the grants, the timer and the waiters, and the
//! tests replay any interleaving of events against it.

mod fleet;
mod ladder;
mod published;
mod refusals;
mod timing;
mod types;
mod waiters;

#[cfg(test)]
mod tests;

pub(crate) use self::types::*;

use self::refusals::{REFUSED_KEPT, RefusedId};
use self::waiters::{Waiter, Waiters};

/// The token held, with the times that retire it, when it came and from
/// where. Whether the API accepted it yet is `slot.accepted`.
#[cfg_attr(test, derive(Clone))]
struct Token<A> {
    slot: Slot<A>,
    stale_at: Time,
    expires_at: Time,
    stale: bool,
    born: Time,
    source: TokenSource,
}

/// The youngest token a forced refresh replaces (unless it is inside its
/// refresh margin already): a younger one is the new token the caller asked
/// for. So a loop that forces refreshes makes one grant per this much time
/// at most, besides the backoff and the refusal pause that every grant obeys.
pub(crate) const MIN_AGE_TO_FORCE: Time = Time::from_secs(5);

#[cfg_attr(test, derive(Clone))]
enum Flight<R> {
    Idle,
    Running(Running<R>),
    /// No attempt before `until`: a backoff, or (`refusing`) the pause after
    /// a streak of tokens the API refused on first use.
    Paused {
        until: Time,
        refusing: bool,
    },
}

#[cfg_attr(test, derive(Clone))]
struct Running<R> {
    id: FlightId,
    /// The refresh token sent, kept for a failure before it left and for an
    /// answer that rotates none.
    sent: Option<Kept<R>>,
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

/// The steps of a flight with a token store (the protocol in `crate::store`).
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
    /// Token id, phase, and whether the API accepted it.
    Token(u64, Phase, bool),
    Empty,
    Rejected(u64),
    Refusing,
    Closed,
}

/// The state of one token cache.
#[cfg_attr(test, derive(Clone))]
pub(crate) struct Core<P: Payload> {
    config: CacheConfig,
    now: Time,
    token: Option<Token<P::Access>>,
    refresh: Option<Kept<P::Refresh>>,
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
    /// The application forced a refresh: the grant that replaces the token is
    /// its.
    forced: bool,
    /// The token was dropped because the API refused it: the next grant is
    /// a refusal's.
    refused: bool,
    /// How many tokens in a row the API refused before it accepted any.
    unproven: u32,
    /// The first token of that streak: an answer that shows a token from
    /// there on worked ends it.
    streak_from: u64,
    /// No grant for a refusal before this time (set by a streak of
    /// `UNPROVEN_BEFORE_PAUSE` or more).
    refusal_hold: Option<Time>,
    /// The ids of the last tokens dropped because the API refused them.
    refused_ids: std::collections::VecDeque<RefusedId>,
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
    /// What the login's subscribers were told last.
    told: Option<Login>,
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
            forced: false,
            refused: false,
            unproven: 0,
            streak_from: 0,
            refusal_hold: None,
            refused_ids: std::collections::VecDeque::with_capacity(REFUSED_KEPT),
            waiters: Waiters::default(),
            credentials: 0,
            version: None,
            store_down: false,
            next_token: 1,
            next_flight: 1,
            rejections: 0,
            armed: None,
            published: None,
            told: None,
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
            Event::Accepted { id } => self.accepted(id),
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
            Event::Forced { waiter, deadline } => self.forced(waiter, deadline, out),
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
        if matches!(self.flight, Flight::Paused { until, .. } if now >= until) {
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
    /// the refused one; for a request to send again while the API refuses
    /// every new token, its refusal; otherwise the error to report (a forced
    /// refresh, whose old token is still current, gets the error too).
    fn best_for(&self, not: Option<u64>) -> Answer<P> {
        match &self.token {
            Some(t) if Some(t.slot.id) != not => Answer::Token(t.slot.clone()),
            Some(_) => self.failure(),
            None if not.is_some() && self.refusing() => Answer::NoReplay,
            None => self.failure(),
        }
    }

    fn failure(&self) -> Answer<P> {
        Answer::Failed(match (&self.rejected, &self.last_error) {
            (Some(rejected), _) => rejected.error.clone(),
            _ if self.refusing() => P::error(Why::Refused),
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
            // The token is still the one the caller wants replaced (a forced
            // refresh; a refused token is gone by now): it waits for the next
            // attempt if that starts within its budget.
            Some(_) => match &self.flight {
                Flight::Paused {
                    until,
                    refusing: false,
                } if *until <= deadline => None,
                _ => Some(self.failure()),
            },
            None => match (&self.rejected, &self.flight) {
                (Some(rejected), _) => Some(Answer::Failed(rejected.error.clone())),
                // The API refuses every new token: waiting cannot help.
                (None, Flight::Paused { refusing: true, .. }) => Some(self.best_for(not)),
                (None, Flight::Paused { until, .. }) if *until > deadline => Some(self.failure()),
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

    /// The application wants a token newer than the current one. A token
    /// younger than [`MIN_AGE_TO_FORCE`], and not inside its refresh margin,
    /// is that token already; an older one is marked stale and replaced by
    /// the next grant, which the caller waits for. That grant is the one in
    /// flight if there is one, and follows the backoff, the refusal pause
    /// and a refused password as any other: forced refreshes never add
    /// grants that the ladder would not make.
    fn forced(&mut self, waiter: WaiterId, deadline: Time, out: &mut Vec<Action<P>>) {
        let now = self.now;
        let old = (self.token.as_mut())
            .filter(|t| t.stale || now >= t.born.saturating_add(MIN_AGE_TO_FORCE))
            .map(|t| {
                t.stale = true;
                t.slot.id
            });
        if old.is_some() {
            self.refresh_due = true;
            self.forced = true;
            // Started before the caller waits: it waits for this grant.
            self.progress(out);
        }
        self.need(waiter, deadline, old, out);
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
            | Event::Forced { waiter, .. }
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
