//! A test driver for the core, with a token server behind it: it issues
//! numbered tokens, remembers which login each belongs to and when it
//! expires, and checks every invariant of the cache after every step. The
//! table tests and the property test both drive the core through it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::super::{
    Answer, CacheConfig, Class, Core, Event, Failure, FlightId, Grant, Granted, Login, Payload,
    Phase, Reason, Slot, Time, TokenSource, View, WaiterId, Why, timing::backoff_floor,
};

mod server;

/// The test payload: tokens and errors are numbers.
#[derive(Clone)]
pub(super) enum T {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TErr {
    /// A failure the token server answered, by number.
    Grant(u32),
    Core(Why),
}

impl Payload for T {
    type Access = u32;
    type Refresh = u32;
    type Error = TErr;

    fn error(why: Why) -> TErr {
        TErr::Core(why)
    }
}

/// How the token server answers a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
    /// A token pair of this lifetime (seconds), with a new refresh token or not.
    Ok {
        lifetime: u64,
        rotate: bool,
    },
    Rejected,
    /// Never sent (connection refused).
    Unsent,
    /// Sent, then failed (5xx, reset, timeout), maybe with `Retry-After`.
    Sent {
        retry_after: Option<u64>,
    },
    /// A 2xx whose access token is unusable, but which rotated the refresh token.
    Unusable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlightState {
    Running,
    Aborted,
    Done,
}

#[derive(Debug, Clone)]
pub(super) struct FlightInfo {
    pub(super) grant: Grant<u32>,
    pub(super) reason: Reason,
    pub(super) login: u32,
    pub(super) credentials: u32,
    pub(super) started: Time,
    pub(super) state: FlightState,
}

pub(super) struct WaiterInfo {
    pub(super) deadline: Time,
    pub(super) not: Option<u64>,
    /// A forced refresh: the token current when it asked, and whether that
    /// token was too young to replace.
    pub(super) forced: Option<(u64, bool)>,
    /// It waits to send again a request refused with a token the API had
    /// accepted (revoked): it is never turned away for the refusal.
    pub(super) revoked: bool,
}

/// Drives a core and checks it.
pub(super) struct Harness {
    pub(super) core: Core<T>,
    pub(super) config: CacheConfig,
    pub(super) now: Time,
    pub(super) view: Option<View<T>>,
    pub(super) armed: Option<Time>,
    pub(super) flights: BTreeMap<FlightId, FlightInfo>,
    pub(super) waiters: BTreeMap<WaiterId, WaiterInfo>,
    /// Every answer given, by waiter.
    pub(super) answers: BTreeMap<WaiterId, Answer<T>>,
    pub(super) next_waiter: u64,
    pub(super) next_serial: u32,
    /// Access token -> (login, expiry).
    pub(super) access: BTreeMap<u32, (u32, Time)>,
    /// Refresh token -> login.
    pub(super) refresh: BTreeMap<u32, u32>,
    /// Refresh token -> when the server stops taking it, for those it
    /// issued with a lifetime.
    pub(super) refresh_expiry: BTreeMap<u32, Time>,
    /// The lifetime the server states for the refresh tokens it issues.
    pub(super) refresh_lifetime: Option<Duration>,
    pub(super) sent_refresh: BTreeSet<u32>,
    /// The current login and credentials generation.
    pub(super) login: u32,
    pub(super) credentials: u32,
    /// Password refused at this time with this credentials generation.
    pub(super) rejected: Option<(Time, u32)>,
    /// No attempt before this time (the backoff's floor).
    pub(super) not_before: Option<Time>,
    pub(super) attempt: u32,
    /// Token ids the API accepted while they were current.
    pub(super) accepted: BTreeSet<u64>,
    /// Token ids the API refused while they were current and is known to
    /// have accepted, before the refusal or after it (an answer told late).
    pub(super) revoked: BTreeSet<u64>,
    /// Token ids the API refused while they were current: never handed out
    /// or published again.
    pub(super) refused: BTreeSet<u64>,
    /// Tokens in a row refused before the API accepted any, and the time
    /// before which no grant for a refusal may start because of them.
    pub(super) unproven: u32,
    /// The first token of that streak.
    pub(super) streak_from: u64,
    pub(super) refusal_hold: Option<Time>,
    pub(super) grants: usize,
    pub(super) closed: bool,
    /// Every token id published or handed out, in order.
    pub(super) shown_tokens: Vec<u64>,
    /// When each token id was first shown: the core took it then.
    pub(super) born: BTreeMap<u64, Time>,
    /// Access token -> the grant that issued it.
    pub(super) sources: BTreeMap<u32, TokenSource>,
    /// What the login's subscribers were told last.
    pub(super) told: Option<Login>,
}

impl Harness {
    pub(super) fn new(config: CacheConfig) -> Self {
        Self {
            core: Core::new(config.clone()),
            config,
            now: Time::ZERO,
            view: None,
            armed: None,
            flights: BTreeMap::new(),
            waiters: BTreeMap::new(),
            answers: BTreeMap::new(),
            next_waiter: 1,
            next_serial: 1,
            access: BTreeMap::new(),
            refresh: BTreeMap::new(),
            refresh_expiry: BTreeMap::new(),
            refresh_lifetime: None,
            sent_refresh: BTreeSet::new(),
            login: 0,
            credentials: 0,
            rejected: None,
            not_before: None,
            attempt: 0,
            accepted: BTreeSet::new(),
            revoked: BTreeSet::new(),
            refused: BTreeSet::new(),
            unproven: 0,
            streak_from: 0,
            refusal_hold: None,
            grants: 0,
            closed: false,
            shown_tokens: Vec::new(),
            born: BTreeMap::new(),
            sources: BTreeMap::new(),
            told: None,
        }
    }

    fn serial(&mut self) -> u32 {
        self.next_serial += 1;
        self.next_serial
    }

    /// The flight in flight, if any.
    pub(super) fn running(&self) -> Option<FlightId> {
        (self.flights.iter())
            .find(|(_, f)| f.state == FlightState::Running)
            .map(|(id, _)| *id)
    }

    /// The published token, if any.
    pub(super) fn token(&self) -> Option<(Slot<u32>, Phase)> {
        match &self.view {
            Some(View::Token(slot, phase)) => Some((slot.clone(), *phase)),
            _ => None,
        }
    }

    pub(super) fn outstanding(&self) -> usize {
        self.waiters.len()
    }

    /// Moves time on by `by`; the timer fires on time, or late (at the end).
    pub(super) fn advance(&mut self, by: Duration, late: bool) {
        let end = self.now + by;
        // Each tick moves the deadline on; a handful covers every kind of deadline.
        for _ in 0..16 {
            let Some(at) = self.armed.filter(|at| *at <= end) else {
                break;
            };
            let at = if late { end } else { at.max(self.now) };
            self.step(at, Event::Tick);
        }
        self.now = self.now.max(end);
    }

    /// A caller needs a token, waiting at most `budget`.
    pub(super) fn need(&mut self, budget: Duration) -> WaiterId {
        let waiter = self.new_waiter(budget, None);
        let deadline = self.waiters[&waiter].deadline;
        let view = self.token();
        let failed = matches!(self.view, Some(View::Failed(_)));
        self.step(
            self.now,
            Event::Need {
                waiter,
                deadline,
                not: None,
            },
        );
        // What readers are shown must agree with what the core answers.
        if let Some((slot, Phase::Fresh | Phase::Stale | Phase::Refreshing)) = view {
            assert!(
                matches!(&self.answers.get(&waiter), Some(Answer::Token(s)) if *s == slot),
                "a caller that asks while a valid token is published gets it at once"
            );
        }
        if failed {
            assert!(matches!(self.answers.get(&waiter), Some(Answer::Failed(_))));
        }
        waiter
    }

    /// The application forces a refresh, waiting at most `budget`.
    pub(super) fn forced(&mut self, budget: Duration) -> WaiterId {
        let shown = self.token();
        let current = shown.as_ref().map(|(slot, _)| {
            let young = self.now < self.born[&slot.id] + super::super::MIN_AGE_TO_FORCE;
            (slot.id, young)
        });
        let waiter = self.new_waiter(budget, None);
        let info = self.waiters.get_mut(&waiter).expect("just made");
        info.forced = current;
        let deadline = info.deadline;
        self.step(self.now, Event::Forced { waiter, deadline });
        // (A token inside its margin shows fresh while the password is
        // refused: a forced refresh fails then.)
        let rejected = self.rejected.is_some_and(|(at, c)| {
            c == self.credentials && self.now < at + self.config.rejected_cooldown
        });
        if let (Some((_, Phase::Fresh)), Some((_, true)), false) = (shown, current, rejected) {
            assert!(
                is_token(self.answers.get(&waiter)),
                "a forced refresh of a token too young to replace gets it at once"
            );
        }
        waiter
    }

    /// The API refused token `id`; with `budget`, the caller wants a token to
    /// replay with.
    pub(super) fn refused(&mut self, id: u64, budget: Option<Duration>) -> Option<WaiterId> {
        let waiter = budget.map(|budget| self.new_waiter(budget, Some(id)));
        let arg = waiter.map(|w| (w, self.waiters[&w].deadline));
        let in_flight = self.running().is_some();
        // The token the core holds when the event comes: the one shown,
        // unless it has expired meanwhile (a lost timer shows it on).
        let current = (self.token())
            .filter(|(slot, _)| self.access[&slot.access].1 > self.now)
            .map(|(slot, _)| slot.id);
        // The model of a refusal: only the current token's counts.
        let superseded = id != 0
            && id < self.next_token_id()
            && current != Some(id)
            && !self.refused.contains(&id);
        assert_eq!(
            self.core.superseded(id, self.now),
            superseded,
            "token {id} (current {current:?}) told superseded wrongly"
        );
        let revoked = current == Some(id) && self.accepted.contains(&id);
        // A token the API had accepted and now refuses was revoked: the
        // request is sent again as a resend, also when it has had its replay
        // (the driver asks `resends` for that), while sends remain. One that
        // never worked is the replay: an API that refuses every token gets
        // no more than that.
        let worked = revoked || self.revoked.contains(&id);
        if worked && !self.closed {
            assert!(
                self.core.resends(id, self.now),
                "a refusal of token {id}, which the API had accepted, would fail a request that had its replay"
            );
        }
        if !superseded && !worked {
            assert!(
                !self.core.resends(id, self.now),
                "a refusal of token {id}, which never worked, taken for a resend"
            );
        }
        if let Some(w) = waiter {
            self.waiters.get_mut(&w).expect("just made").revoked = worked && !self.closed;
        }
        if current == Some(id) && !self.closed {
            self.refused.insert(id);
            if revoked {
                self.revoked.insert(id);
            }
            if revoked {
                self.unproven = 0;
            } else {
                if self.unproven == 0 {
                    self.streak_from = id;
                }
                self.unproven += 1;
                if self.unproven >= 3 {
                    let pause = self
                        .config
                        .refusal_pause
                        .saturating_mul(1 << (self.unproven - 3).min(20))
                        .min(self.config.backoff_max.max(self.config.refusal_pause));
                    self.refusal_hold = Some(self.now + pause);
                }
            }
        }
        let grants = self.grants;
        // A backoff after a failed grant still holds (its jitter is the core's).
        let backed_off = !matches!(self.core.flight, super::super::Flight::Idle);
        let rejected = self.rejected.is_some_and(|(at, c)| {
            c == self.credentials && self.now < at + self.config.rejected_cooldown
        });
        self.step(self.now, Event::Refused { id, waiter: arg });
        let held = self.refusal_hold.is_some_and(|until| until > self.now);
        if current == Some(id) && !held && !in_flight && !backed_off && !rejected && !self.closed {
            assert_eq!(
                self.grants,
                grants + 1,
                "a refused token is replaced at once (revoked: always; refused on first use: until a streak of three)"
            );
        }
        if let Some((waiter, deadline)) = arg
            && in_flight
            && deadline > self.now
        {
            assert!(
                !self.answers.contains_key(&waiter),
                "a replay waits for the refresh in flight"
            );
        }
        waiter
    }

    fn new_waiter(&mut self, budget: Duration, not: Option<u64>) -> WaiterId {
        let waiter = WaiterId(self.next_waiter);
        self.next_waiter += 1;
        let deadline = self.now + budget;
        let info = WaiterInfo {
            deadline,
            not,
            forced: None,
            revoked: false,
        };
        self.waiters.insert(waiter, info);
        waiter
    }

    pub(super) fn gone(&mut self, waiter: WaiterId) {
        self.waiters.remove(&waiter);
        self.step(self.now, Event::WaiterGone { waiter });
    }
}

fn is_token(answer: Option<&Answer<T>>) -> bool {
    matches!(answer, Some(Answer::Token(_)))
}
