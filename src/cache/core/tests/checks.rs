//! The harness's checks: it runs each event through the core and checks every
//! action against the invariants of the cache (one grant in flight, a refresh
//! token sent once, nothing of a replaced login, every waiter answered once
//! and alike, no token past its expiry, backoff and refusal bounds).

use std::collections::BTreeSet;

use super::super::{
    Action, Answer, Event, FlightId, Grant, Phase, Reason, Slot, Time, View, WaiterId,
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
        for (deadline, not) in step.retried {
            let waiter = WaiterId(self.next_waiter);
            self.next_waiter += 1;
            self.waiters.insert(waiter, WaiterInfo { deadline, not });
            self.step(
                self.now,
                Event::Need {
                    waiter,
                    deadline,
                    not,
                },
            );
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
                    match &answer {
                        Answer::Token(slot) => self.check_token(slot, info.not),
                        Answer::Retry => step.retried.push((info.deadline, info.not)),
                        Answer::Failed(_) | Answer::NoReplay => step.denied.push(info.not),
                    }
                    step.answered(&answer);
                    assert!(self.answers.insert(waiter, answer.clone()).is_none());
                }
            }
            // This harness runs a replica without a store; `fleet.rs` drives
            // replicas with one.
            Action::Store { .. } => panic!("a store call from a cache without a store"),
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
        }
    }

    fn check_after(&self, step: &Step) {
        if let Some((slot, _)) = self.token() {
            assert!(
                step.denied.is_empty(),
                "a waiter turned away (refused with {:?}) while token {} was current and usable",
                step.denied,
                slot.id
            );
        }
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

/// What one step answered.
#[derive(Default)]
struct Step {
    tokens: BTreeSet<u64>,
    errors: Vec<TErr>,
    retried: Vec<(Time, Option<u64>)>,
    /// The waiters answered without a token, by the token they were refused
    /// with.
    denied: Vec<Option<u64>>,
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
