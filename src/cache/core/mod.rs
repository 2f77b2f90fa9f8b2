//! The token cache's decisions, as a pure state machine: [`Core::handle`]
//! takes an event and the time it happened, updates the state and says what
//! to do ([`Action`]s). No I/O, no clock, no tokio: the driver
//! (`cache/driver.rs`) runs the grants, the timer and the waiters, and the
//! tests replay any interleaving of events against it.

use std::collections::BTreeMap;

mod ladder;
mod timing;
mod types;

#[cfg(test)]
mod tests;

pub(crate) use self::types::*;

/// The token held, with the times that retire it.
struct Token<A> {
    slot: Slot<A>,
    stale_at: Time,
    expires_at: Time,
    stale: bool,
    /// A replay carrying this token was refused too: another refresh would
    /// not help, so a 401 on it no longer starts one.
    replay_refused: bool,
}

enum Flight<R> {
    Idle,
    Running(Running<R>),
    /// No attempt before `until`: a backoff, or the refusal bound.
    Paused {
        until: Time,
    },
}

struct Running<R> {
    id: FlightId,
    /// The refresh token sent, kept for a failure before it left and for an
    /// answer that rotates none.
    sent: Option<R>,
    /// The credentials generation the grant was made with.
    credentials: u64,
}

struct Rejection<E> {
    error: E,
    until: Time,
    /// Tells one rejection's published view from the next.
    number: u64,
}

struct Waiter {
    deadline: Time,
    not: Option<u64>,
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
    /// The token was dropped because the API refused it: the next grant is
    /// one the refusal bound counts.
    refused: bool,
    last_refusal_grant: Option<Time>,
    waiters: BTreeMap<WaiterId, Waiter>,
    /// Bumped by every change of credentials.
    credentials: u64,
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
            refused: false,
            last_refusal_grant: None,
            waiters: BTreeMap::new(),
            credentials: 0,
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
        match event {
            // Reported from a runtime that is going away: nothing is started or
            // armed from there. The waiters ask again from their own runtimes.
            Event::GrantLost { flight } => {
                if self.running(flight) {
                    self.flight = Flight::Idle;
                    self.last_error = Some(P::error(Why::Lost));
                    self.retry_all(out);
                }
                return self.publish(out);
            }
            Event::TimerLost => {
                self.armed = None;
                self.retry_all(out);
                return self.publish(out);
            }
            _ => {}
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
                self.waiters.remove(&waiter);
            }
            Event::Granted { flight, grant } => self.granted(flight, grant, out),
            Event::GrantFailed { flight, failure } => self.failed(flight, failure, out),
            Event::CredentialsChanged { other_login } => self.credentials_changed(other_login, out),
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
        let due: Vec<_> = (self.waiters.iter())
            .filter(|(_, w)| w.deadline <= now)
            .map(|(&id, w)| (id, w.not))
            .collect();
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
            // Nothing happens before the deadline: answer now.
            None if deadline <= self.now => self.answer(vec![id], self.best_for(not), out),
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
            self.token = None;
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
        for id in &ids {
            self.waiters.remove(id);
        }
        out.push(Action::Answer {
            waiters: ids,
            answer,
        });
    }

    fn retry_all(&mut self, out: &mut Vec<Action<P>>) {
        let all = std::mem::take(&mut self.waiters).into_keys().collect();
        self.answer(all, Answer::Retry, out);
    }

    /// The next time something is due.
    fn next_deadline(&self) -> Option<Time> {
        let token = self.token.as_ref().map(|t| match t.stale {
            false => t.stale_at,
            true => t.expires_at,
        });
        let paused = match self.flight {
            Flight::Paused { until } => Some(until),
            _ => None,
        };
        let rejected = self.rejected.as_ref().map(|r| r.until);
        let waiter = self.waiters.values().map(|w| w.deadline).min();
        [token, paused, rejected, waiter]
            .into_iter()
            .flatten()
            .min()
    }

    fn arm(&mut self, out: &mut Vec<Action<P>>) {
        let next = self.next_deadline();
        if next != self.armed {
            self.armed = next;
            out.push(Action::Arm(next));
        }
    }

    fn publish(&mut self, out: &mut Vec<Action<P>>) {
        let (key, view) = self.view();
        if self.published != Some(key) {
            self.published = Some(key);
            out.push(Action::Publish(view));
        }
    }

    fn view(&self) -> (Published, View<P>) {
        if self.closed {
            return (Published::Closed, View::Failed(P::error(Why::Closed)));
        }
        match (&self.token, &self.rejected) {
            (Some(token), _) => {
                let phase = if self.armed.is_none() {
                    Phase::Unchecked
                } else if !matches!(self.flight, Flight::Idle) {
                    Phase::Refreshing
                } else if token.stale && self.rejected.is_none() {
                    Phase::Stale
                } else {
                    Phase::Fresh
                };
                let view = View::Token(token.slot.clone(), phase);
                (Published::Token(token.slot.id, phase), view)
            }
            // Failing fast needs the timer that lifts the rejection; without it,
            // readers ask the core, which lifts it when its time has come.
            (None, Some(r)) if self.armed.is_some() => {
                (Published::Rejected(r.number), View::Failed(r.error.clone()))
            }
            (None, _) => (Published::Empty, View::Empty),
        }
    }

    fn close(&mut self, out: &mut Vec<Action<P>>) {
        self.closed = true;
        if let Flight::Running(run) = &self.flight {
            out.push(Action::Abort { flight: run.id });
        }
        self.flight = Flight::Idle;
        let all = std::mem::take(&mut self.waiters).into_keys().collect();
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
