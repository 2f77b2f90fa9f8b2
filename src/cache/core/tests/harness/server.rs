//! The harness's token server and the driver's other events: a flight
//! answered (a pair issued, a refusal, a transient failure), a flight or the
//! timer lost, a kick, a token shown to work, new credentials, and the close.

use std::time::Duration;

use super::*;

impl Harness {
    /// The token server answers flight `flight`.
    pub(in crate::cache::core::tests) fn complete(
        &mut self,
        flight: FlightId,
        reply: Reply,
        jitter: f64,
    ) {
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
    pub(in crate::cache::core::tests) fn lost(&mut self, flight: FlightId) {
        if let Some(info) = self
            .flights
            .get_mut(&flight)
            .filter(|f| f.state == FlightState::Running)
        {
            info.state = FlightState::Done;
        }
        self.step(self.now, Event::GrantLost { flight });
    }

    pub(in crate::cache::core::tests) fn timer_lost(&mut self) {
        // The timer task is gone with its runtime.
        self.armed = None;
        self.step(self.now, Event::TimerLost);
    }

    pub(in crate::cache::core::tests) fn kick(&mut self) {
        self.step(self.now, Event::Kick);
    }

    /// The API accepted a request carrying token `id`.
    pub(in crate::cache::core::tests) fn accepted(&mut self, id: u64) {
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
    pub(in crate::cache::core::tests) fn next_token_id(&self) -> u64 {
        let shown = self.shown_tokens.last().copied().unwrap_or(0);
        shown + 1
    }

    pub(in crate::cache::core::tests) fn credentials(&mut self, other_login: bool) {
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

    pub(in crate::cache::core::tests) fn close(&mut self) {
        self.step(self.now, Event::Close);
        self.closed = true;
        assert_eq!(
            self.told.map(|login| login.status),
            Some(super::super::super::LoginStatus::Closed),
            "the close is told"
        );
        assert!(self.waiters.is_empty(), "the close answers every waiter");
        assert!(
            self.running().is_none(),
            "the close stops the grant in flight"
        );
    }
}
