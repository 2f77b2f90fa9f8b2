//! The core's side of a token store shared by a fleet (see `crate::store`): a flight
//! takes the lease, reads the record again and adopts a newer one, marks the
//! refresh token spent before sending it, writes the new pair under the
//! version check and releases the lease. Without the lease it waits for a new
//! record; with the store down it carries on alone, never with a shared
//! refresh token.

use super::{
    Action, Core, Flight, FlightId, Kept, Payload, Record, Running, Step, StoreCall, StoreReply,
    TokenSource, timing::schedule,
};

/// The least wait before a replica asks again for a lease that is held.
const LEASE_RETRY_FLOOR: std::time::Duration = std::time::Duration::from_millis(100);

impl<P: Payload> Core<P> {
    /// A store call of flight `flight` answered.
    pub(super) fn stored(
        &mut self,
        flight: FlightId,
        reply: StoreReply<P>,
        out: &mut Vec<Action<P>>,
    ) {
        let step = match &self.flight {
            Flight::Running(run) if run.id == flight => run.step,
            _ => return,
        };
        if !matches!(reply, StoreReply::Down) {
            self.store_down = false;
        }
        let call = |call| Action::Store { flight, call };
        match (step, reply) {
            (Step::Lease | Step::Read | Step::Watch | Step::Spend, StoreReply::Down) => {
                self.alone(out)
            }
            (Step::Lease, StoreReply::Leased) => {
                self.step(Step::Read, |run| run.leased = true);
                out.push(call(StoreCall::Read));
            }
            (Step::Lease, StoreReply::Held(remaining)) => {
                // A holder past its stated expiry (frozen, or its timer lost)
                // says 0 left: ask again at a pace, not in a loop.
                let ttl = self.config.lease_ttl;
                let wait = match remaining {
                    Some(r) if r.is_zero() => LEASE_RETRY_FLOOR.min(ttl),
                    Some(r) => r.min(ttl),
                    None => ttl,
                };
                let (since, until) = (self.version, self.now.saturating_add(wait));
                self.step(Step::Watch, |run| run.until = until);
                out.push(call(StoreCall::Watch { since, until }));
            }
            (Step::Read, StoreReply::Record(record))
            | (Step::Spend, StoreReply::Conflict(record)) => self.under_lease(record, out),
            // Nothing to spend that this replica can read: as if there were
            // no record, whose version the pair's write then expects.
            (Step::Spend, StoreReply::Unreadable(_)) => self.under_lease(None, out),
            (Step::Spend, StoreReply::Written(version)) => {
                let mut refresh = None;
                self.step(Step::Grant, |run| {
                    run.base = Some(version);
                    refresh = run.sent.take();
                });
                if let Some(refresh) = refresh {
                    self.send(Some(refresh), out);
                }
            }
            (Step::Watch, StoreReply::Record(Some(record))) if self.adoptable(&record) => {
                self.flight = Flight::Idle;
                self.adopt(record, out);
            }
            // A record that cannot be taken (the holder's "refreshing" mark, an
            // expired one): wait on for the next, until the lease could lapse.
            (Step::Watch, StoreReply::Record(Some(record))) if self.now < self.watch_until() => {
                let (since, until) = (Some(record.version), self.watch_until());
                out.push(call(StoreCall::Watch { since, until }));
            }
            // Nothing new in time: the holder may be gone; try the lease again.
            (Step::Watch, StoreReply::Record(_)) => {
                self.step(Step::Lease, |_| {});
                out.push(call(StoreCall::Lease));
            }
            // A record no replica of this login can read (a rotated seal
            // key): replaced, once, so that the fleet shares again.
            (Step::Write, StoreReply::Unreadable(version))
                if !self.replaced() && self.token.is_some() =>
            {
                if let Some(record) = self.pair_record() {
                    self.step(Step::Write, |run| {
                        run.base = Some(version);
                        run.replaced = true;
                    });
                    let expected = Some(version);
                    out.push(call(StoreCall::Write { expected, record }));
                }
            }
            (Step::Write, reply) => {
                match reply {
                    // The store holds the refresh token now: this replica sends it
                    // only under the lease, after reading it back.
                    StoreReply::Written(version) => {
                        self.version = Some(version);
                        self.refresh = None;
                    }
                    // Not written: the refresh token is this replica's alone.
                    StoreReply::Conflict(_) | StoreReply::Unreadable(_) => {}
                    // A write that timed out may have landed: the token may be the
                    // fleet's now, and is never sent without the lease; and the
                    // version it would have is not news when read back.
                    _ => {
                        self.refresh = None;
                        self.version = Some(self.flight_base().map_or(1, |v| v.saturating_add(1)));
                    }
                }
                self.flight = Flight::Idle;
                out.push(call(StoreCall::Release));
            }
            _ => {}
        }
    }

    /// The store version the flight in flight builds on.
    fn flight_base(&self) -> Option<u64> {
        match &self.flight {
            Flight::Running(run) => run.base,
            _ => None,
        }
    }

    /// Whether the flight in flight wrote over an unreadable record already.
    fn replaced(&self) -> bool {
        matches!(&self.flight, Flight::Running(run) if run.replaced)
    }

    /// When the flight's wait for a new record ends.
    fn watch_until(&self) -> super::Time {
        match &self.flight {
            Flight::Running(run) => run.until,
            _ => super::Time::ZERO,
        }
    }

    /// Moves the flight in flight to `step`, changing it with `change`.
    fn step(&mut self, step: Step, change: impl FnOnce(&mut Running<P::Refresh>)) {
        if let Flight::Running(run) = &mut self.flight {
            run.step = step;
            change(run);
        }
    }

    /// Under the lease, with the record as stored now: adopt it, or grant.
    fn under_lease(&mut self, record: Option<Record<P>>, out: &mut Vec<Action<P>>) {
        let Flight::Running(run) = &self.flight else {
            return;
        };
        let flight = run.id;
        match record {
            Some(record) if self.adoptable(&record) => {
                self.flight = Flight::Idle;
                self.adopt(record, out);
                out.push(Action::Store {
                    flight,
                    call: StoreCall::Release,
                });
            }
            // A shared refresh token past its expiry is not sent: the record
            // is replaced by a password grant's pair.
            Some(Record {
                version,
                access,
                refresh: Some(refresh),
                expires_at,
                refresh_until,
                ..
            }) if refresh_until.is_none_or(|until| self.now < until) => {
                // Spent in the store before it is sent: a holder that dies now
                // leaves nothing for the next one to send again.
                let record = Record {
                    version,
                    access,
                    refresh: Some(refresh.clone()),
                    expires_at,
                    refresh_until,
                    spent: true,
                };
                let kept = Kept {
                    token: refresh,
                    until: refresh_until,
                };
                self.step(Step::Spend, |run| run.sent = Some(kept));
                out.push(Action::Store {
                    flight,
                    call: StoreCall::Spend { record },
                });
            }
            record => {
                let base = record.map(|r| r.version);
                self.step(Step::Grant, |run| run.base = base);
                // A refresh token of this replica's own (from a grant while the
                // store was down) is no one else's: it may be sent.
                let refresh = self.refresh.take();
                self.send(refresh, out);
            }
        }
    }

    /// The store did not answer: this flight goes on without it.
    fn alone(&mut self, out: &mut Vec<Action<P>>) {
        if !self.store_down {
            self.store_down = true;
            tracing::warn!(target: "daxium_auth", "token store unavailable; going on alone until it answers");
        }
        if let Flight::Running(run) = &mut self.flight
            && std::mem::take(&mut run.leased)
        {
            // Should the store answer again, the others need not wait for the
            // lease to lapse.
            let flight = run.id;
            out.push(Action::Store {
                flight,
                call: StoreCall::Release,
            });
        }
        let refresh = self.refresh.take();
        self.send(refresh, out);
    }

    /// Whether a stored record is worth taking instead of a grant: another
    /// version than this replica's, not expired, not the token the API refused
    /// it, and not a holder's mark that it is refreshing (whose access token
    /// may be the one refused).
    fn adoptable(&self, record: &Record<P>) -> bool {
        !record.spent
            && self.refused_access.as_ref() != Some(&record.access)
            && record.expires_at > self.now
            // Versions only grow in a store: one below ours means the store lost
            // its data and this is a new record.
            && self.version != Some(record.version)
    }

    /// Takes the stored record's token as this replica's.
    fn adopt(&mut self, record: Record<P>, out: &mut Vec<Action<P>>) {
        let remaining = record.expires_at.saturating_sub(self.now);
        let (stale_at, expires_at) = schedule(self.now, remaining, self.config.refresh_margin, 0.0);
        // The refresh token stays in the store, used only under the lease.
        self.version = Some(record.version);
        self.commit(
            record.access,
            None,
            (stale_at, expires_at),
            TokenSource::Store,
            out,
        );
    }

    /// After a grant under the lease: the new pair goes to the store.
    pub(super) fn publish_pair(&mut self, mut run: Running<P::Refresh>, out: &mut Vec<Action<P>>) {
        let Some(record) = self.pair_record() else {
            return;
        };
        let (flight, expected) = (run.id, run.base);
        run.step = Step::Write;
        self.flight = Flight::Running(run);
        out.push(Action::Store {
            flight,
            call: StoreCall::Write { expected, record },
        });
    }

    /// The record of this replica's pair, for the store.
    fn pair_record(&self) -> Option<Record<P>> {
        let token = self.token.as_ref()?;
        let refresh = self.refresh.as_ref();
        Some(Record {
            version: 0,
            access: token.slot.access.clone(),
            refresh: refresh.map(|kept| kept.token.clone()),
            expires_at: token.expires_at,
            refresh_until: refresh.and_then(|kept| kept.until),
            spent: false,
        })
    }
}
