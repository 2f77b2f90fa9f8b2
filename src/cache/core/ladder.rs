//! The grant ladder, the part of the core that settles grants: commit a
//! token pair, fall back from a refused refresh token to the password grant,
//! hold a refused password, back off after anything else, and start the next
//! grant when one is wanted and allowed.

use super::{
    Action, Answer, Class, Core, Failure, Flight, FlightId, Grant, Granted, Kept, Payload, Reason,
    Rejection, Running, Slot, Step, StoreCall, Time, Token, TokenSource, Waiter, Why,
    timing::{backoff, schedule},
};

impl<P: Payload> Core<P> {
    /// Makes `access` the token, with the refresh token to keep, the times
    /// that retire it and where it came from, and hands it to every waiter.
    pub(super) fn commit(
        &mut self,
        access: P::Access,
        refresh: Option<Kept<P::Refresh>>,
        (stale_at, expires_at): (Time, Time),
        source: TokenSource,
        out: &mut Vec<Action<P>>,
    ) {
        let slot = Slot {
            id: self.next_token,
            access,
            accepted: false,
        };
        self.next_token += 1;
        self.token = Some(Token {
            slot: slot.clone(),
            stale_at,
            expires_at,
            stale: self.now >= stale_at,
            born: self.now,
            source,
        });
        self.refresh = refresh;
        self.attempt = 0;
        self.last_error = None;
        self.rejected = None;
        self.refused = false;
        // A new token is what a forced refresh waited for, whichever grant
        // brought it.
        self.forced = false;
        let all = self.waiters.ids();
        self.answer(all, Answer::Token(slot), out);
    }

    /// Releases the store's lease after a flight, unless the ladder goes on
    /// under it.
    fn let_go(&mut self, leased: bool, out: &mut Vec<Action<P>>) {
        if let (true, Flight::Idle | Flight::Paused { .. }) = (leased, &self.flight) {
            out.push(Action::Store {
                flight: FlightId(0),
                call: StoreCall::Release,
            });
        }
    }

    pub(super) fn running(&self, flight: FlightId) -> bool {
        matches!(&self.flight, Flight::Running(run) if run.id == flight)
    }

    /// The flight in flight, if it is `flight` and its grant was sent.
    fn take_running(&mut self, flight: FlightId) -> Option<Running<P::Refresh>> {
        let sent = matches!(&self.flight, Flight::Running(run) if run.id == flight && run.step == Step::Grant);
        if !sent {
            return None;
        }
        match std::mem::replace(&mut self.flight, Flight::Idle) {
            Flight::Running(run) => Some(run),
            _ => None,
        }
    }

    pub(super) fn granted(
        &mut self,
        flight: FlightId,
        grant: Granted<P>,
        out: &mut Vec<Action<P>>,
    ) {
        let Some(mut run) = self.take_running(flight) else {
            return;
        };
        let margin = self.config.refresh_margin;
        let (stale_at, expires_at) = schedule(grant.sent_at, grant.lifetime, margin, grant.jitter);
        let source = match run.sent {
            Some(_) => TokenSource::RefreshGrant,
            None => TokenSource::PasswordGrant,
        };
        // An answer without a refresh token keeps the one that was sent; a
        // lifetime the answer states is the kept token's too (a server that
        // does not rotate says how long the one it kept lives).
        let until = (grant.refresh_lifetime).map(|life| grant.sent_at.saturating_add(life));
        let refresh = match (grant.refresh, run.sent.take()) {
            (Some(token), _) => Some(Kept { token, until }),
            (None, Some(kept)) => Some(Kept {
                until: until.or(kept.until),
                ..kept
            }),
            (None, None) => None,
        };
        if expires_at <= self.now {
            // The refresh token of the answer is good, with its lifetime.
            self.refresh = refresh;
            let failure = Failure {
                error: P::error(Why::Expired),
                class: Class::Sent,
                rotated: None,
                retry_after: None,
                jitter: grant.jitter,
            };
            self.settle_failure(failure, run.credentials, false, out);
            return self.let_go(run.leased, out);
        }
        // The store version seen last stays: a record of that version is not
        // adopted again (its token may be the one the API refused).
        self.commit(grant.access, refresh, (stale_at, expires_at), source, out);
        if run.leased {
            self.publish_pair(run, out);
        }
    }

    pub(super) fn failed(
        &mut self,
        flight: FlightId,
        failure: Failure<P>,
        out: &mut Vec<Action<P>>,
    ) {
        let Some(run) = self.take_running(flight) else {
            return;
        };
        let was_refresh = run.sent.is_some();
        if failure.rotated.is_none() && failure.class == Class::Unsent && !run.leased {
            // It never left: the refresh token is still good. (A shared one was
            // marked spent in the store already, and stays so.)
            self.refresh = run.sent;
        }
        self.settle_failure(failure, run.credentials, was_refresh, out);
        self.let_go(run.leased, out);
    }

    /// The ladder after a failure: the password grant at once when the refresh
    /// token was refused, a rejection that holds, or a backoff.
    fn settle_failure(
        &mut self,
        failure: Failure<P>,
        credentials: u64,
        was_refresh: bool,
        out: &mut Vec<Action<P>>,
    ) {
        if let Some(token) = failure.rotated {
            // Its lifetime is unknown: the answer that held it was unusable.
            self.refresh = Some(Kept { token, until: None });
        }
        self.last_error = Some(failure.error.clone());
        if failure.class == Class::Rejected {
            if was_refresh || credentials != self.credentials {
                return self.start(Reason::Chained, out);
            }
            tracing::error!(target: "daxium_auth", "password grant rejected; no new attempt until the credentials change or the cool-down ends");
            self.rejections += 1;
            self.rejected = Some(Rejection {
                error: failure.error,
                until: self.now.saturating_add(self.config.rejected_cooldown),
                number: self.rejections,
            });
            return self.answer_each(|_| true, out);
        }
        let (min, max) = (self.config.backoff_min, self.config.backoff_max);
        let delay = backoff(min, max, self.attempt, failure.retry_after, failure.jitter);
        self.attempt = self.attempt.saturating_add(1);
        let until = self.now.saturating_add(delay);
        self.flight = Flight::Paused {
            until,
            refusing: false,
        };
        // Those who would wait past their budget get the error now.
        self.answer_each(|waiter| waiter.deadline < until, out);
    }

    /// Answers every waiter that has a valid token to use, and those for whom
    /// `give_up` holds (with the token's absence or the last error).
    fn answer_each(&mut self, give_up: impl Fn(&Waiter) -> bool, out: &mut Vec<Action<P>>) {
        let (mut tokens, mut no_replay, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for (id, waiter) in self.waiters.iter() {
            match self.best_for(waiter.not) {
                Answer::Token(_) => tokens.push(id),
                _ if !give_up(waiter) => {}
                Answer::NoReplay => no_replay.push(id),
                _ => errors.push(id),
            }
        }
        if let Some(token) = &self.token {
            let slot = token.slot.clone();
            self.answer(tokens, Answer::Token(slot), out);
        }
        self.answer(no_replay, Answer::NoReplay, out);
        let failure = self.failure();
        self.answer(errors, failure, out);
    }

    pub(super) fn credentials_changed(&mut self, other_login: bool, out: &mut Vec<Action<P>>) {
        self.credentials += 1;
        self.attempt = 0;
        self.rejected = None;
        self.last_error = None;
        if !other_login {
            return;
        }
        // The session belongs to the previous login: nothing of it is kept, and a
        // grant in flight for it is dropped whole.
        self.token = None;
        self.refresh = None;
        self.refused = false;
        self.unproven = 0;
        self.refusal_hold = None;
        // A lease taken for the previous login lapses with its time to live.
        self.version = None;
        if let Flight::Running(run) = &self.flight {
            out.push(Action::Abort { flight: run.id });
        }
        self.flight = Flight::Idle;
    }

    /// Starts a grant when one is wanted and allowed.
    pub(super) fn progress(&mut self, out: &mut Vec<Action<P>>) {
        if !matches!(self.flight, Flight::Idle) || self.rejected.is_some() {
            return;
        }
        let wanted = match &self.token {
            Some(token) => token.stale && std::mem::take(&mut self.refresh_due),
            None => self.refused || self.demand || !self.waiters.is_empty(),
        };
        if !wanted {
            return;
        }
        let reason = match (&self.token, self.refused) {
            (_, true) => Reason::Refusal,
            (Some(_), false) if self.forced => Reason::Forced,
            (Some(_), false) => Reason::Stale,
            (None, false) => Reason::Demand,
        };
        if reason == Reason::Refusal {
            if let Some(until) = self.refusal_hold.filter(|until| self.now < *until) {
                // The API refuses every new token: those waiting learn it now
                // rather than wait for a grant that cannot help.
                self.flight = Flight::Paused {
                    until,
                    refusing: true,
                };
                return self.answer_each(|_| true, out);
            }
            self.refusal_hold = None;
            self.refused = false;
        }
        self.start(reason, out);
    }

    /// Sends the grant of the flight in flight: with `refresh`, the refresh
    /// grant, else the password grant. A refresh token is spent the moment it
    /// is sent: the flight keeps it only to give it back if the request never
    /// left. One past its expiry is not sent (the endpoint would refuse it):
    /// the password grant goes at once instead.
    pub(super) fn send(&mut self, refresh: Option<Kept<P::Refresh>>, out: &mut Vec<Action<P>>) {
        let now = self.now;
        let Flight::Running(run) = &mut self.flight else {
            return;
        };
        let refresh = refresh.filter(|kept| {
            let usable = kept.usable_at(now);
            if !usable {
                tracing::debug!(target: "daxium_auth", "refresh token past its expiry; using the password grant");
            }
            usable
        });
        run.step = Step::Grant;
        let grant =
            (refresh.as_ref()).map_or(Grant::Password, |kept| Grant::Refresh(kept.token.clone()));
        run.sent = refresh;
        out.push(Action::Start {
            flight: run.id,
            grant,
            reason: run.reason,
        });
    }

    /// Starts a flight: the grant, or first the store's lease.
    fn start(&mut self, reason: Reason, out: &mut Vec<Action<P>>) {
        let flight = FlightId(self.next_flight);
        self.next_flight += 1;
        self.demand = false;
        self.forced = false;
        let shared = self.config.shared;
        self.flight = Flight::Running(Running {
            id: flight,
            sent: None,
            credentials: self.credentials,
            reason,
            step: if shared { Step::Lease } else { Step::Grant },
            leased: false,
            base: None,
            until: Time::ZERO,
            replaced: false,
        });
        if shared {
            // The grant waits for the lease: someone else may be making it.
            return out.push(Action::Store {
                flight,
                call: StoreCall::Lease,
            });
        }
        let refresh = self.refresh.take();
        self.send(refresh, out);
    }
}
