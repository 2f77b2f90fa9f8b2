//! The fleet's property test: three replicas, each its own core, share one
//! model of a token store (a versioned record and a lease with a time to live)
//! and one token server that rotates refresh tokens. Random interleavings of
//! their calls, each answered or failed, store outages, replicas that die
//! mid-protocol, dead holders whose lease stays held past its expiry, a
//! store that fails over and loses its last acknowledged writes, 401s,
//! forced refreshes and time passing are checked after every step: a
//! refresh token is sent at most once fleet-wide and never past its expiry
//! (the server states one, longer than an access token's), no replica shows
//! a token past its expiry, no replica has two grants in flight; and once
//! the faults stop, every live replica that asks gets a valid token.
//!
//! The store follows `RedisStore`'s epoch rule: a failover starts a new
//! epoch, a record of an older one is read with its refresh token spent, and
//! a spend mark over it is refused. Without the rule, a lost spend mark lets
//! the next holder send the token again (a test below shows the check
//! finding it).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::super::{
    Action, Answer, CacheConfig, Class, Core, Event, Failure, FlightId, Grant, Granted, Record,
    StoreCall, StoreReply, Time, View, WaiterId,
};
use super::harness::{T, TErr};

pub(super) const REPLICAS: usize = 3;
const LIFETIME: Duration = Duration::from_secs(60);
/// How many of its last writes a failover may lose, one per rollback.
const REMEMBERED: usize = 4;
/// Long enough for one refresh, short enough that idle spells outlive it.
const REFRESH_LIFETIME: Duration = Duration::from_secs(90);

#[derive(Clone)]
enum Call {
    Grant {
        flight: FlightId,
        sent_at: Time,
    },
    Store {
        flight: FlightId,
        call: StoreCall<T>,
    },
}

#[derive(Clone)]
struct Replica {
    core: Core<T>,
    calls: VecDeque<Call>,
    alive: bool,
    view: Option<View<T>>,
    armed: Option<Time>,
    answered: BTreeMap<WaiterId, bool>,
    /// Access tokens the API refused to this replica.
    refused: BTreeSet<u32>,
}

#[derive(Clone)]
pub(super) struct Stored {
    version: u64,
    access: u32,
    refresh: Option<u32>,
    expires_at: Time,
    refresh_until: Option<Time>,
    spent: bool,
    /// Written by another fleet under another seal key: no replica reads it.
    unreadable: bool,
    /// The store's epoch when it was written.
    epoch: u64,
}

/// The store's state before one write: the record and the lease.
type Snapshot = (Option<Stored>, Option<(usize, Time)>);

#[derive(Clone)]
pub(super) struct World {
    replicas: Vec<Replica>,
    now: Time,
    up: bool,
    /// A dead holder's lease stays held past its expiry, with nothing left
    /// (a frozen process keeping its file lock).
    frozen: bool,
    pub(super) record: Option<Stored>,
    lease: Option<(usize, Time)>,
    /// The state before each of the last writes, newest last: what a
    /// failover goes back to.
    history: Vec<Snapshot>,
    /// One more at each failover.
    epoch: u64,
    /// Whether the store keeps the epoch rule (off only to show what it
    /// prevents).
    pub(super) epochs: bool,
    /// Access token -> expiry, as the server issued them.
    access: BTreeMap<u32, Time>,
    /// Refresh token -> expiry, as the server issued them.
    refresh: BTreeMap<u32, Time>,
    sent: BTreeSet<u32>,
    next: u32,
    next_waiter: u64,
    ttl: Duration,
}

impl World {
    pub(super) fn new() -> Self {
        let config = CacheConfig {
            shared: true,
            ..CacheConfig::default()
        };
        let ttl = config.lease_ttl;
        let replica = || Replica {
            core: Core::new(config.clone()),
            calls: VecDeque::new(),
            alive: true,
            view: None,
            armed: None,
            answered: BTreeMap::new(),
            refused: BTreeSet::new(),
        };
        Self {
            replicas: (0..REPLICAS).map(|_| replica()).collect(),
            now: Time::ZERO,
            up: true,
            frozen: false,
            record: None,
            lease: None,
            history: Vec::new(),
            epoch: 0,
            epochs: true,
            access: BTreeMap::new(),
            refresh: BTreeMap::new(),
            sent: BTreeSet::new(),
            next: 0,
            next_waiter: 1,
            ttl,
        }
    }

    fn serial(&mut self) -> u32 {
        self.next += 1;
        self.next
    }

    fn step(&mut self, r: usize, event: Event<T>) {
        if !self.replicas[r].alive {
            return;
        }
        let mut out = Vec::new();
        self.replicas[r].core.handle(self.now, event, &mut out);
        for action in out {
            self.execute(r, action);
        }
        if let Some(View::Token(slot, _)) = &self.replicas[r].view {
            assert!(
                self.access[&slot.access] > self.now,
                "replica {r} shows an expired token"
            );
        }
    }

    fn execute(&mut self, r: usize, action: Action<T>) {
        match action {
            Action::Start { flight, grant, .. } => {
                let grants = self.replicas[r]
                    .calls
                    .iter()
                    .filter(|c| matches!(c, Call::Grant { .. }));
                assert_eq!(grants.count(), 0, "replica {r}: two grants in flight");
                if let Grant::Refresh(token) = &grant {
                    assert!(
                        self.sent.insert(*token),
                        "refresh token {token} sent twice in the fleet"
                    );
                    assert!(
                        self.now < self.refresh[token],
                        "replica {r} sent refresh token {token} past its expiry"
                    );
                }
                let call = Call::Grant {
                    flight,
                    sent_at: self.now,
                };
                self.replicas[r].calls.push_back(call);
            }
            Action::Store {
                call: StoreCall::Release,
                ..
            } => {
                if self.up && self.lease.is_some_and(|(owner, _)| owner == r) {
                    self.remember();
                    self.lease = None;
                }
            }
            Action::Store { flight, call } => self.replicas[r]
                .calls
                .push_back(Call::Store { flight, call }),
            Action::Abort { flight } => self.replicas[r].calls.retain(|c| match c {
                Call::Grant { flight: f, .. } | Call::Store { flight: f, .. } => *f != flight,
            }),
            Action::Publish(view) => {
                if let View::Token(slot, _) = &view {
                    let refused = self.replicas[r].refused.contains(&slot.access);
                    assert!(!refused, "replica {r} took back the token the API refused");
                }
                self.replicas[r].view = Some(view);
            }
            Action::Answer { waiters, answer } => {
                for w in waiters {
                    let got = matches!(answer, Answer::Token(_));
                    assert!(
                        self.replicas[r].answered.insert(w, got).is_none(),
                        "answered twice"
                    );
                }
            }
            Action::Arm(at) => self.replicas[r].armed = at,
            Action::Login(_) => {}
        }
    }

    fn record(&self) -> Option<Record<T>> {
        self.record.as_ref().filter(|s| !s.unreadable).map(|s| {
            // A record from before a failover may lack its spend mark.
            let withheld = self.stale(s);
            Record {
                version: s.version,
                access: s.access,
                refresh: if withheld { None } else { s.refresh },
                expires_at: s.expires_at,
                refresh_until: s.refresh_until,
                spent: s.spent || withheld,
            }
        })
    }

    /// Whether the epoch rule holds `stored` back: written before a failover.
    fn stale(&self, stored: &Stored) -> bool {
        self.epochs && stored.epoch != self.epoch
    }

    /// Keeps the state before a write, for a failover to go back to.
    fn remember(&mut self) {
        if self.history.len() == REMEMBERED {
            self.history.remove(0);
        }
        self.history.push((self.record.clone(), self.lease));
    }

    fn write(&mut self, expected: Option<u64>, record: &Record<T>, spent: bool) -> StoreReply<T> {
        match &self.record {
            Some(s) if Some(s.version) != expected && s.unreadable => {
                return StoreReply::Unreadable(s.version);
            }
            stored if stored.as_ref().map(|s| s.version) != expected => {
                return StoreReply::Conflict(self.record());
            }
            // A spend mark only over a record of this epoch.
            Some(s) if spent && self.stale(s) => return StoreReply::Conflict(self.record()),
            _ => {}
        }
        self.remember();
        let version = expected.map_or(1, |v| v + 1);
        let refresh = if spent { None } else { record.refresh };
        let (access, expires_at) = (record.access, record.expires_at);
        self.record = Some(Stored {
            version,
            access,
            refresh,
            expires_at,
            refresh_until: record.refresh_until,
            spent,
            unreadable: false,
            epoch: self.epoch,
        });
        StoreReply::Written(version)
    }

    fn store(&mut self, r: usize, call: &StoreCall<T>, fail: bool) -> StoreReply<T> {
        if !self.up || fail {
            return StoreReply::Down;
        }
        match call {
            StoreCall::Lease => match self.lease {
                Some((owner, until)) if owner != r && until > self.now => {
                    StoreReply::Held(Some(until - self.now))
                }
                Some((owner, _)) if owner != r && self.frozen && !self.replicas[owner].alive => {
                    StoreReply::Held(Some(Duration::ZERO))
                }
                _ => {
                    self.remember();
                    self.lease = Some((r, self.now + self.ttl));
                    StoreReply::Leased
                }
            },
            StoreCall::Read => StoreReply::Record(self.record()),
            StoreCall::Watch { since, .. } => {
                let changed = self.record.as_ref().map(|s| s.version) != *since;
                StoreReply::Record(if changed { self.record() } else { None })
            }
            StoreCall::Spend { record } => self.write(Some(record.version), record, true),
            StoreCall::Write { expected, record } => self.write(*expected, record, false),
            StoreCall::Release => StoreReply::Down,
        }
    }

    /// Answers the `pick`th pending call of replica `r`.
    fn complete(&mut self, r: usize, pick: usize, fail: bool) {
        let replica = &mut self.replicas[r];
        if !replica.alive || replica.calls.is_empty() {
            return;
        }
        let at = pick % replica.calls.len();
        let call = replica.calls.remove(at).expect("in range");
        let event = match call {
            Call::Store {
                flight,
                call: StoreCall::Watch { since, until },
            } if !fail
                && self.up
                && (self.record.as_ref().map(|s| s.version) == since
                    || self.record.as_ref().is_some_and(|s| s.unreadable))
                && self.now < until =>
            {
                // Nothing new yet (or nothing this replica can read): the wait
                // goes on.
                let call = StoreCall::Watch { since, until };
                self.replicas[r]
                    .calls
                    .push_back(Call::Store { flight, call });
                return;
            }
            // A write that times out may have landed all the same.
            Call::Store {
                flight,
                call: call @ (StoreCall::Write { .. } | StoreCall::Spend { .. }),
            } if fail && self.up && pick % 2 == 1 => {
                let _ = self.store(r, &call, false);
                Event::Stored {
                    flight,
                    reply: StoreReply::Down,
                }
            }
            Call::Store { flight, call } => {
                let reply = self.store(r, &call, fail);
                Event::Stored { flight, reply }
            }
            Call::Grant { flight, .. } if fail => Event::GrantFailed {
                flight,
                failure: Failure {
                    error: TErr::Grant(flight.0 as u32),
                    class: Class::Sent,
                    rotated: None,
                    retry_after: None,
                    jitter: 0.5,
                },
            },
            Call::Grant {
                flight, sent_at, ..
            } => self.issue(flight, sent_at),
        };
        self.step(r, event);
    }

    /// The token server answers a grant with a new pair.
    fn issue(&mut self, flight: FlightId, sent_at: Time) -> Event<T> {
        let access = self.serial();
        let refresh = self.serial();
        self.access.insert(access, sent_at + LIFETIME);
        self.refresh.insert(refresh, sent_at + REFRESH_LIFETIME);
        let grant = Granted {
            access,
            refresh: Some(refresh),
            lifetime: LIFETIME,
            refresh_lifetime: Some(REFRESH_LIFETIME),
            sent_at,
            jitter: 0.5,
        };
        Event::Granted { flight, grant }
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        for _ in 0..16 {
            let due = (0..REPLICAS).find(|&r| {
                self.replicas[r].alive && self.replicas[r].armed.is_some_and(|at| at <= end)
            });
            let Some(r) = due else { break };
            self.now = self.now.max(self.replicas[r].armed.unwrap_or(end));
            self.step(r, Event::Tick);
        }
        self.now = end;
    }

    fn need(&mut self, r: usize) -> WaiterId {
        let waiter = WaiterId(self.next_waiter);
        self.next_waiter += 1;
        let deadline = self.now + Duration::from_secs(10);
        self.step(
            r,
            Event::Need {
                waiter,
                deadline,
                not: None,
            },
        );
        waiter
    }

    /// Replica `r`'s application forces a refresh.
    fn forced(&mut self, r: usize) {
        let waiter = WaiterId(self.next_waiter);
        self.next_waiter += 1;
        let deadline = self.now + Duration::from_secs(10);
        self.step(r, Event::Forced { waiter, deadline });
    }
}

mod ops;

pub(super) use ops::{Op, apply, mid_refresh, recovers};
