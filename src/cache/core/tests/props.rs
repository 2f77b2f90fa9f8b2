//! The property test of the core: random sequences of events (callers with
//! any budget, forced refreshes, refusals of current, old and unknown tokens,
//! answers that show a token works, grant answers of every class for the
//! flight in flight or for stale ones, lost grants and timers, credential
//! changes, time passing on time or late), against a server that states a
//! refresh token lifetime or not, each step checked by the harness's
//! invariants, and a close at the end that must answer everyone.
//!
//! Among them, the outcomes a user sees of refusals: no waiter is answered,
//! and no view shows, a token the API refused; a request refused with a
//! token is sent again only with a newer one; no waiter is turned away while
//! a usable token is current (so a refusal of a superseded token always
//! gets the current one); a refused token is replaced at once, revoked ones
//! always and tokens refused on first use until a streak of three (which an
//! answer showing that one of them worked, late, ends); and no grant for a
//! refusal starts before the pause such a streak calls for; and a refusal of
//! a token the API had accepted (told before the refusal or after it) is a
//! revocation, which never fails the request while sends remain: it is sent
//! again as a resend, with a newer token, also after its replay, and is
//! never turned away for the refusal.
//! Each was checked to fail when its rule is taken out of the core.

use std::time::Duration;

use proptest::prelude::*;

use super::harness::{Harness, Reply};
use super::{CacheConfig, FlightId, WaiterId};

#[derive(Debug, Clone)]
enum Op {
    Need {
        budget_ms: u64,
    },
    Kick,
    /// A 401 on the published token (`pick` 0), an older one, an unknown
    /// one, or the last one shown (the refused one, when none is published).
    Refused {
        pick: u8,
        replay: bool,
        budget_ms: u64,
    },
    /// The API accepted a request carrying the published token (`pick` 0),
    /// an older one, an unknown one, or the last one shown (an answer that
    /// comes after the token's refusal).
    Accepted {
        pick: u8,
    },
    Gone {
        pick: u8,
    },
    /// The token server answers a flight: the one in flight (`stale` false)
    /// or an earlier one.
    Complete {
        stale: bool,
        pick: u8,
        reply: Reply,
        jitter: f64,
    },
    Lost {
        stale: bool,
        pick: u8,
    },
    Advance {
        ms: u64,
        late: bool,
    },
    TimerLost,
    /// A refresh asked for, however fresh the token.
    Refresh,
    /// The application forces a refresh, waiting at most this long.
    Forced {
        budget_ms: u64,
    },
    Credentials {
        other_login: bool,
    },
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        4 => (prop_oneof![1..=5u64, 6..=120u64, Just(3600u64)], any::<bool>())
            .prop_map(|(lifetime, rotate)| Reply::Ok { lifetime, rotate }),
        1 => Just(Reply::Rejected),
        1 => Just(Reply::Unsent),
        2 => proptest::option::of(0..=5u64).prop_map(|retry_after| Reply::Sent { retry_after }),
        1 => Just(Reply::Unusable),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let budget = prop_oneof![Just(0u64), 1..=2_000u64, Just(10_000u64)];
    prop_oneof![
        4 => budget.clone().prop_map(|budget_ms| Op::Need { budget_ms }),
        1 => Just(Op::Kick),
        3 => (0..5u8, any::<bool>(), budget.clone()).prop_map(|(pick, replay, budget_ms)| Op::Refused { pick, replay, budget_ms }),
        3 => (0..5u8).prop_map(|pick| Op::Accepted { pick }),
        1 => any::<u8>().prop_map(|pick| Op::Gone { pick }),
        5 => (prop::bool::weighted(0.15), any::<u8>(), reply(), 0.0..=1.0f64)
            .prop_map(|(stale, pick, reply, jitter)| Op::Complete { stale, pick, reply, jitter }),
        1 => (any::<bool>(), any::<u8>()).prop_map(|(stale, pick)| Op::Lost { stale, pick }),
        4 => (prop_oneof![0..=50u64, 51..=3_000u64, 3_001..=4_000_000u64], any::<bool>())
            .prop_map(|(ms, late)| Op::Advance { ms, late }),
        1 => Just(Op::TimerLost),
        1 => Just(Op::Refresh),
        2 => budget.clone().prop_map(|budget_ms| Op::Forced { budget_ms }),
        1 => any::<bool>().prop_map(|other_login| Op::Credentials { other_login }),
    ]
}

fn pick<T: Copy>(items: &[T], pick: u8) -> Option<T> {
    (!items.is_empty()).then(|| items[pick as usize % items.len()])
}

fn flight(h: &Harness, stale: bool, n: u8) -> Option<FlightId> {
    if !stale {
        return h.running();
    }
    let ended: Vec<FlightId> = (h.flights.iter())
        .filter(|(_, f)| f.state != super::harness::FlightState::Running)
        .map(|(id, _)| *id)
        .collect();
    pick(&ended, n)
}

/// A token id to refuse: the published one, the one before, or one no token has.
fn token(h: &Harness, pick: u8) -> u64 {
    let current = h.token().map_or(0, |(slot, _)| slot.id);
    match pick {
        0 | 1 => current,
        2 => current.saturating_sub(1),
        3 => 0,
        _ => h.shown_tokens.last().copied().unwrap_or(0),
    }
}

fn apply(h: &mut Harness, op: &Op, outstanding: &mut Vec<WaiterId>) {
    match *op {
        Op::Need { budget_ms } => outstanding.push(h.need(Duration::from_millis(budget_ms))),
        Op::Kick => h.kick(),
        Op::Refused {
            pick,
            replay,
            budget_ms,
        } => {
            let budget = replay.then(|| Duration::from_millis(budget_ms));
            outstanding.extend(h.refused(token(h, pick), budget));
        }
        Op::Accepted { pick } => h.accepted(token(h, pick)),
        Op::Gone { pick: n } => {
            let open: Vec<WaiterId> = (outstanding.iter())
                .copied()
                .filter(|w| !h.answers.contains_key(w))
                .collect();
            if let Some(w) = pick(&open, n) {
                h.gone(w);
            }
        }
        Op::Complete {
            stale,
            pick,
            reply,
            jitter,
        } => {
            if let Some(f) = flight(h, stale, pick) {
                h.complete(f, reply, jitter);
            }
        }
        Op::Lost { stale, pick } => {
            if let Some(f) = flight(h, stale, pick) {
                h.lost(f);
            }
        }
        Op::Advance { ms, late } => h.advance(Duration::from_millis(ms), late),
        Op::TimerLost => h.timer_lost(),
        Op::Refresh => h.step(h.now, super::super::Event::Refresh),
        Op::Forced { budget_ms } => outstanding.push(h.forced(Duration::from_millis(budget_ms))),
        Op::Credentials { other_login } => h.credentials(other_login),
    }
}

/// The refresh token lifetime the server states, if any: from shorter than
/// an access token's to hours.
fn refresh_lifetime() -> impl Strategy<Value = Option<Duration>> {
    proptest::option::of(prop_oneof![1..=10u64, 11..=7_200u64].prop_map(Duration::from_secs))
}

/// Up to `most` operations, and the lifetime of the refresh tokens.
fn script(most: usize) -> impl Strategy<Value = (Vec<Op>, Option<Duration>)> {
    (prop::collection::vec(op(), 1..most), refresh_lifetime())
}

/// A harness with the default settings, after `ops`.
fn played(ops: &[Op], refresh_lifetime: Option<Duration>) -> Harness {
    let mut h = Harness::new(CacheConfig::default());
    h.refresh_lifetime = refresh_lifetime;
    let mut outstanding = Vec::new();
    for op in ops {
        apply(&mut h, op, &mut outstanding);
    }
    h
}

pub(super) fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

/// `cases` cases, shrunk for at most 20,000 steps, with no failure file.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        max_shrink_iters: 20_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(cases()))]

    #[test]
    fn every_interleaving_keeps_the_invariants((ops, refresh_lifetime) in script(80)) {
        let mut h = played(&ops, refresh_lifetime);
        // Once the faults stop and time passes, the waiters are answered; the
        // close answers whoever is left.
        h.close();
        prop_assert_eq!(h.outstanding(), 0);
    }

}

proptest! {
    #![proptest_config(config(cases() / 5))]

    #[test]
    fn a_healthy_endpoint_always_ends_with_every_waiter_served((ops, refresh_lifetime) in script(60)) {
        let mut h = played(&ops, refresh_lifetime);
        // The faults stop, and a new login starts over: the server answers
        // every grant with a good pair, and every caller with a full budget
        // gets a token.
        h.credentials(true);
        let mut late = Vec::new();
        for _ in 0..8 {
            late.push(h.need(Duration::from_secs(10)));
            if let Some(f) = h.running() {
                h.complete(f, Reply::Ok { lifetime: 3600, rotate: true }, 0.5);
            }
            h.advance(Duration::from_secs(1), false);
        }
        for w in &late {
            prop_assert!(matches!(h.answers.get(w), Some(super::Answer::Token(_))), "{:?} unserved", w);
        }
    }
}
