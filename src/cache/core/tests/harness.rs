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

    /// The token server answers flight `flight`.
    pub(super) fn complete(&mut self, flight: FlightId, reply: Reply, jitter: f64) {
        let info = self.flights[&flight].clone();
        let current = info.state == FlightState::Running;
        if current {
            self.flights.get_mut(&flight).expect("known").state = FlightState::Done;
            // A refresh token that never left, or that the server did not
            // rotate, is still good: sending it again is no reuse.
            if let (Grant::Refresh(r), Reply::Unsent | Reply::Ok { rotate: false, .. }) =
                (&info.grant, reply)
            {
                self.sent_refresh.remove(r);
            }
        }
        let sent =
            |class: Class, retry_after: Option<u64>, rotated: Option<u32>| Event::GrantFailed {
                flight,
                failure: Failure {
                    error: TErr::Grant(flight.0 as u32),
                    class,
                    rotated,
                    retry_after: retry_after.map(Duration::from_secs),
                    jitter,
                },
            };
        let event = match reply {
            Reply::Ok { lifetime, rotate } => {
                self.issue(flight, &info, current, lifetime, rotate, jitter)
            }
            Reply::Rejected => {
                if current && info.grant == Grant::Password && self.credentials_at(&info) {
                    self.rejected = Some((self.now, self.credentials));
                }
                sent(Class::Rejected, None, None)
            }
            Reply::Unsent => {
                if current {
                    self.transient(None);
                }
                sent(Class::Unsent, None, None)
            }
            Reply::Sent { retry_after } => {
                if current {
                    self.transient(retry_after);
                }
                sent(Class::Sent, retry_after, None)
            }
            Reply::Unusable => {
                let rotated = self.serial();
                self.refresh.insert(rotated, info.login);
                if current {
                    self.transient(None);
                }
                sent(Class::Sent, None, Some(rotated))
            }
        };
        self.step(self.now, event);
    }

    /// The token server issues a pair for `flight`.
    fn issue(
        &mut self,
        flight: FlightId,
        info: &FlightInfo,
        current: bool,
        lifetime: u64,
        rotate: bool,
        jitter: f64,
    ) -> Event<T> {
        let lifetime = Duration::from_secs(lifetime);
        let access = self.serial();
        let expires = info.started + lifetime;
        self.access.insert(access, (info.login, expires));
        let source = match info.grant {
            Grant::Password => TokenSource::PasswordGrant,
            Grant::Refresh(_) => TokenSource::RefreshGrant,
        };
        self.sources.insert(access, source);
        let refresh = rotate.then(|| self.serial());
        if let Some(r) = refresh {
            self.refresh.insert(r, info.login);
        }
        // The lifetime stated is the one of the refresh token the client holds
        // after the answer: the new one, or the one it sent and keeps (an
        // answer the client drops, for a flight no longer current, changes
        // nothing it holds).
        let kept = match (refresh, &info.grant) {
            (Some(r), _) => Some(r),
            (None, Grant::Refresh(r)) if current => Some(*r),
            (None, _) => None,
        };
        if let (Some(r), Some(life)) = (kept, self.refresh_lifetime) {
            self.refresh_expiry.insert(r, info.started + life);
        }
        if current && expires > self.now {
            self.attempt = 0;
            self.not_before = None;
        } else if current {
            self.transient(None);
        }
        let grant = Granted {
            access,
            refresh,
            lifetime,
            refresh_lifetime: self.refresh_lifetime,
            sent_at: info.started,
            jitter,
        };
        Event::Granted { flight, grant }
    }

    /// Whether the credentials are those the flight started with.
    fn credentials_at(&self, info: &FlightInfo) -> bool {
        info.credentials == self.credentials
    }

    /// A transient failure of the flight in flight: the next attempt not
    /// before the backoff's floor.
    fn transient(&mut self, retry_after: Option<u64>) {
        let (min, max) = (self.config.backoff_min, self.config.backoff_max);
        let floor = backoff_floor(min, max, self.attempt)
            .max(retry_after.map_or(Duration::ZERO, Duration::from_secs));
        self.not_before = Some(self.now + floor);
        self.attempt = self.attempt.saturating_add(1);
    }

    /// A grant's task was lost.
    pub(super) fn lost(&mut self, flight: FlightId) {
        if let Some(info) = self
            .flights
            .get_mut(&flight)
            .filter(|f| f.state == FlightState::Running)
        {
            info.state = FlightState::Done;
        }
        self.step(self.now, Event::GrantLost { flight });
    }

    pub(super) fn timer_lost(&mut self) {
        // The timer task is gone with its runtime.
        self.armed = None;
        self.step(self.now, Event::TimerLost);
    }

    pub(super) fn kick(&mut self) {
        self.step(self.now, Event::Kick);
    }

    /// The API accepted a request carrying token `id`.
    pub(super) fn accepted(&mut self, id: u64) {
        // A token of the streak that worked after all (its answer came after
        // its refusal) ends the streak too.
        let of_streak = self.unproven > 0
            && id >= self.streak_from
            && id < self.next_token_id()
            && !self.closed;
        // A refused token's late answer shows it had worked: the refusals
        // still to come of requests that carried it are revocations. (The
        // core keeps the last few refused tokens, which the ops refuse.)
        if self.refused.contains(&id) && !self.closed {
            self.revoked.insert(id);
        }
        if self.token().is_some_and(|(slot, _)| slot.id == id) {
            self.accepted.insert(id);
            self.unproven = 0;
            self.refusal_hold = None;
        } else if of_streak {
            self.unproven = 0;
            self.refusal_hold = None;
        }
        self.step(self.now, Event::Accepted { id });
    }

    /// The id the core will give its next token: one past the newest any
    /// view or answer showed.
    fn next_token_id(&self) -> u64 {
        let shown = self.shown_tokens.last().copied().unwrap_or(0);
        shown + 1
    }

    pub(super) fn credentials(&mut self, other_login: bool) {
        self.credentials += 1;
        self.attempt = 0;
        self.rejected = None;
        if other_login {
            self.login += 1;
            self.not_before = None;
            // A new login starts with no streak of refusals.
            self.unproven = 0;
            self.refusal_hold = None;
        }
        self.step(self.now, Event::CredentialsChanged { other_login });
    }

    pub(super) fn close(&mut self) {
        self.step(self.now, Event::Close);
        self.closed = true;
        assert_eq!(
            self.told.map(|login| login.status),
            Some(super::super::LoginStatus::Closed),
            "the close is told"
        );
        assert!(self.waiters.is_empty(), "the close answers every waiter");
        assert!(
            self.running().is_none(),
            "the close stops the grant in flight"
        );
    }
}

fn is_token(answer: Option<&Answer<T>>) -> bool {
    matches!(answer, Some(Answer::Token(_)))
}
