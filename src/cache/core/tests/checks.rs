//! The harness's checks: it runs each event through the core and checks every
//! action against the invariants of the cache (one grant in flight, a refresh
//! token sent once and never past its expiry, nothing of a replaced login,
//! every waiter answered once and alike, no token past its expiry, backoff,
//! refusal and forced-refresh bounds, and a login state that tells what the
//! core holds).

use std::collections::BTreeSet;

use super::super::{
    Action, Answer, Event, FlightId, Grant, LoginStatus, MIN_AGE_TO_FORCE, Phase, Reason, Slot,
    Time, View, WaiterId, Why,
};
use super::harness::{FlightInfo, FlightState, Harness, T, TErr, WaiterInfo};

impl Harness {
    /// Runs one event and checks what the core did.
    pub(super) fn step(&mut self, at: Time, event: Event<T>) {
        self.now = self.now.max(at);
        let lost = matches!(event, Event::GrantLost { .. } | Event::TimerLost);
        let mut out = Vec::new();
        self.core.handle(self.now, event, &mut out);
        let mut step = Step::default();
        for action in out {
            if lost {
                assert!(
                    !matches!(action, Action::Start { .. } | Action::Arm(Some(_))),
                    "nothing is started or armed from a runtime going away"
                );
            }
            self.execute(action, &mut step);
        }
        self.check_after(&step);
        // A waiter told to ask again does, with its deadline.
        for info in step.retried {
            let waiter = WaiterId(self.next_waiter);
            self.next_waiter += 1;
            let (deadline, not) = (info.deadline, info.not);
            let event = match info.forced {
                Some(_) => Event::Forced { waiter, deadline },
                None => Event::Need {
                    waiter,
                    deadline,
                    not,
                },
            };
            self.waiters.insert(waiter, info);
            self.step(self.now, event);
        }
    }

    fn execute(&mut self, action: Action<T>, step: &mut Step) {
        assert!(!self.closed, "nothing happens after the close");
        match action {
            Action::Start {
                flight,
                grant,
                reason,
            } => self.started(flight, grant, reason),
            Action::Abort { flight } => {
                let info = self.flights.get_mut(&flight).expect("a known flight");
                assert_eq!(
                    info.state,
                    FlightState::Running,
                    "only the flight in flight is aborted"
                );
                info.state = FlightState::Aborted;
            }
            Action::Publish(view) => {
                if let View::Token(slot, _) = &view {
                    self.check_token(slot, None);
                }
                self.view = Some(view);
            }
            Action::Answer { waiters, answer } => {
                for waiter in waiters {
                    let info = self
                        .waiters
                        .remove(&waiter)
                        .expect("a waiter is answered once");
                    if info.revoked {
                        assert!(
                            !matches!(
                                answer,
                                Answer::NoReplay | Answer::Failed(TErr::Core(Why::Refused))
                            ),
                            "a request refused with a token that had worked turned away for the refusal"
                        );
                    }
                    match &answer {
                        Answer::Token(slot) => {
                            self.check_token(slot, info.not);
                            if let Some((current, young)) = info.forced {
                                assert!(
                                    slot.id > current || (slot.id == current && young),
                                    "a forced refresh ended with token {} (asked while {current} was current, {})",
                                    slot.id,
                                    if young {
                                        "young"
                                    } else {
                                        "old enough to replace"
                                    }
                                );
                            }
                        }
                        Answer::Retry => step.retried.push(info),
                        Answer::Failed(_) | Answer::NoReplay => step.denied.push(Denied {
                            not: info.not,
                            replacing: info.forced.map(|(current, _)| current),
                        }),
                    }
                    step.answered(&answer);
                    assert!(self.answers.insert(waiter, answer.clone()).is_none());
                }
            }
            // This harness runs a replica without a store; `fleet.rs` drives
            // replicas with one.
            Action::Store { .. } => panic!("a store call from a cache without a store"),
            Action::Login(login) => {
                if let Some(before) = self.told {
                    assert!(before != login, "the login told again unchanged");
                    assert!(
                        before.version <= login.version,
                        "the login's version went back"
                    );
                }
                self.told = Some(login);
            }
            Action::Arm(at) => {
                if let Some(at) = at {
                    assert!(at > self.now, "a deadline is armed in the future");
                }
                self.armed = at;
            }
        }
    }

    fn started(&mut self, flight: FlightId, grant: Grant<u32>, reason: Reason) {
        assert!(self.running().is_none(), "at most one grant in flight");
        match grant {
            Grant::Refresh(r) => {
                assert!(self.sent_refresh.insert(r), "refresh token {r} sent twice");
                assert_eq!(
                    self.refresh.get(&r),
                    Some(&self.login),
                    "a refresh token of another login"
                );
            }
            Grant::Password => {
                if let Some((at, credentials)) = self.rejected {
                    assert!(
                        credentials != self.credentials
                            || self.now >= at + self.config.rejected_cooldown,
                        "a rejected password retried before the credentials changed or the cool-down ended"
                    );
                }
            }
        }
        if reason != Reason::Chained
            && let Some(not_before) = self.not_before
        {
            assert!(
                self.now >= not_before,
                "an attempt before its backoff ended"
            );
        }
        if reason == Reason::Forced {
            // The view before this step: the token the forced refresh replaces.
            let (slot, phase) = self.token().expect("a forced grant replaces a token");
            assert!(
                phase != Phase::Fresh || self.now >= self.born[&slot.id] + MIN_AGE_TO_FORCE,
                "a forced grant for token {} younger than the minimum age",
                slot.id
            );
        }
        if let Grant::Refresh(r) = grant
            && let Some(expiry) = self.refresh_expiry.get(&r)
        {
            assert!(self.now < *expiry, "refresh token {r} sent past its expiry");
        }
        if reason == Reason::Refusal
            && let Some(hold) = self.refusal_hold
        {
            assert!(
                self.now >= hold,
                "a grant for a refusal before the pause that a streak of tokens refused on first use calls for"
            );
        }
        self.grants += 1;
        let info = FlightInfo {
            grant,
            reason,
            login: self.login,
            credentials: self.credentials,
            started: self.now,
            state: FlightState::Running,
        };
        assert!(
            self.flights.insert(flight, info).is_none(),
            "flight ids are not reused"
        );
    }

    /// A token shown or handed out: of the current login, not expired, never
    /// one the API refused, and, for a request to send again, newer than the
    /// one it was refused with.
    fn check_token(&mut self, slot: &Slot<u32>, not: Option<u64>) {
        let (login, expires) = self.access[&slot.access];
        assert_eq!(login, self.login, "a token of a replaced login");
        assert!(expires > self.now, "a token past its expiry");
        assert!(
            !self.refused.contains(&slot.id),
            "token {} handed out or shown after the API refused it",
            slot.id
        );
        if let Some(not) = not {
            assert!(
                slot.id > not,
                "a request refused with token {not} sent again with {}, not a newer one",
                slot.id
            );
        }
        assert_eq!(
            slot.accepted,
            self.accepted.contains(&slot.id),
            "the token's acceptance shown wrongly"
        );
        if self.shown_tokens.last() != Some(&slot.id) {
            assert!(
                self.shown_tokens.last().is_none_or(|last| *last < slot.id),
                "token ids only grow"
            );
            self.shown_tokens.push(slot.id);
            self.born.insert(slot.id, self.now);
        }
    }

    fn check_after(&self, step: &Step) {
        if let Some((slot, _)) = self.token() {
            // A forced refresh may fail while the token it would replace is
            // still current; anyone else is served while a token is.
            let denied: Vec<(Option<u64>, Option<u64>)> = (step.denied.iter())
                .filter(|d| d.replacing.is_none_or(|old| slot.id > old))
                .map(|d| (d.not, d.replacing))
                .collect();
            assert!(
                denied.is_empty(),
                "a waiter turned away (refused with, replacing: {denied:?}) while token {} was current and usable",
                slot.id
            );
        }
        self.check_login();
        assert!(
            step.tokens.len() <= 1,
            "waiters of one step got different tokens"
        );
        assert!(
            step.errors.len() <= 1,
            "waiters of one step got different errors"
        );
        if !self.closed {
            for info in self.waiters.values() {
                assert!(info.deadline > self.now, "a waiter kept past its budget");
            }
        }
        if let Some((slot, phase)) = self.token() {
            let (_, expires) = self.access[&slot.access];
            assert!(expires > self.now, "a published token past its expiry");
            if phase != Phase::Unchecked {
                let armed = self
                    .armed
                    .expect("a published token has its deadline armed");
                assert!(
                    armed <= expires,
                    "the timer would fire after the token expired"
                );
            }
        }
    }
}

impl Harness {
    /// The login told last agrees with what the core holds and shows.
    fn check_login(&self) {
        let Some(login) = self.told else {
            return;
        };
        let shown = self.shown_tokens.last().copied().unwrap_or(0);
        assert_eq!(
            login.version, shown,
            "the login's version is not the tokens taken"
        );
        // The harness marks itself closed once the close's step is done.
        if login.status == LoginStatus::Closed || self.closed {
            return;
        }
        match (self.token(), login.token) {
            (Some((slot, _)), Some((expires_at, source))) => {
                assert_eq!(
                    expires_at, self.access[&slot.access].1,
                    "the token's expiry told wrongly"
                );
                assert_eq!(
                    Some(&source),
                    self.sources.get(&slot.access),
                    "the token's source told wrongly"
                );
            }
            (None, None) => {}
            (shown, told) => panic!(
                "the login says {told:?} while the view shows {:?}",
                shown.map(|(slot, _)| slot.id)
            ),
        }
        if login.status == LoginStatus::LoggedIn {
            assert!(login.token.is_some(), "logged in without a token");
        }
        if login.status == LoginStatus::Rejected {
            assert!(
                self.rejected.is_some(),
                "rejected, with no password refused"
            );
        }
    }
}

/// A waiter answered without a token.
struct Denied {
    /// The token its request was refused with.
    not: Option<u64>,
    /// For a forced refresh, the token it asked to replace.
    replacing: Option<u64>,
}

/// What one step answered.
#[derive(Default)]
struct Step {
    tokens: BTreeSet<u64>,
    errors: Vec<TErr>,
    retried: Vec<WaiterInfo>,
    /// The waiters answered without a token.
    denied: Vec<Denied>,
}

impl Step {
    fn answered(&mut self, answer: &Answer<T>) {
        match answer {
            Answer::Token(slot) => {
                self.tokens.insert(slot.id);
            }
            Answer::Failed(err) if !self.errors.contains(err) => self.errors.push(err.clone()),
            _ => {}
        }
    }
}
