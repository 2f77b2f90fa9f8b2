//! Table tests of the core: one per transition, each named as the sentence it
//! proves. They run through the checking harness, so every invariant is
//! checked in each of them too; `props.rs` replays random interleavings.

use std::time::Duration;

use super::{Answer, CacheConfig, FlightId, Grant, Phase, Reason, View, WaiterId};

mod checks;
mod close;
mod explore;
mod fleet;
mod forced;
mod harness;
mod login;
mod props;
mod refresh_expiry;
mod refusals;

use harness::{Harness, Reply, TErr};

const BUDGET: Duration = Duration::from_secs(10);
const HOUR: u64 = 3600;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn harness() -> Harness {
    Harness::new(CacheConfig::default())
}

/// A harness holding a fresh token of `lifetime` seconds from a password grant.
fn with_token(lifetime: u64) -> Harness {
    let mut h = harness();
    h.need(BUDGET);
    let flight = h.running().expect("a grant");
    h.complete(
        flight,
        Reply::Ok {
            lifetime,
            rotate: true,
        },
        0.0,
    );
    h
}

impl Harness {
    /// The token server answers `flight` with an hour-long pair.
    fn grant_ok(&mut self, flight: FlightId) {
        self.complete(
            flight,
            Reply::Ok {
                lifetime: HOUR,
                rotate: true,
            },
            0.0,
        );
    }
}

fn token_id(h: &Harness) -> u64 {
    h.token().expect("a token").0.id
}

fn phase(h: &Harness) -> Phase {
    h.token().expect("a token").1
}

fn is_token(answer: Option<&Answer<harness::T>>) -> bool {
    matches!(answer, Some(Answer::Token(_)))
}

fn is_failed(answer: Option<&Answer<harness::T>>) -> bool {
    matches!(answer, Some(Answer::Failed(_)))
}

fn grant_of(h: &Harness, flight: FlightId) -> (Grant<u32>, Reason) {
    let info = &h.flights[&flight];
    (info.grant.clone(), info.reason)
}

#[test]
fn the_first_caller_starts_a_password_grant_and_waits() {
    let mut h = harness();
    let w = h.need(BUDGET);
    let flight = h.running().expect("a grant started");
    assert_eq!(grant_of(&h, flight), (Grant::Password, Reason::Demand));
    assert!(!h.answers.contains_key(&w));
    assert!(matches!(h.view, None | Some(View::Empty)));
}

#[test]
fn concurrent_callers_share_one_grant_and_its_token() {
    let mut h = harness();
    let waiters: Vec<WaiterId> = (0..100).map(|_| h.need(BUDGET)).collect();
    assert_eq!(h.grants, 1);
    h.grant_ok(h.running().unwrap());
    let id = token_id(&h);
    for w in waiters {
        assert!(matches!(&h.answers[&w], Answer::Token(slot) if slot.id == id));
    }
    assert_eq!(phase(&h), Phase::Fresh);
}

#[test]
fn a_stale_token_is_still_attached_and_one_caller_starts_a_background_refresh() {
    let mut h = with_token(HOUR);
    h.advance(secs(HOUR - 30), false);
    assert_eq!(phase(&h), Phase::Stale);
    h.kick();
    let flight = h.running().expect("a refresh");
    assert!(matches!(
        grant_of(&h, flight),
        (Grant::Refresh(_), Reason::Stale)
    ));
    assert_eq!(phase(&h), Phase::Refreshing);
    let w = h.need(BUDGET);
    assert!(
        is_token(h.answers.get(&w)),
        "callers keep the valid token meanwhile"
    );
    assert_eq!(h.grants, 2);
}

#[test]
fn an_expired_token_is_withdrawn_at_its_expiry() {
    let mut h = with_token(HOUR);
    h.advance(secs(HOUR), false);
    assert!(h.token().is_none());
    assert_eq!(h.running(), None, "no caller, no grant");
}

#[test]
fn a_token_is_withdrawn_even_when_the_timer_fires_late() {
    let mut h = with_token(60);
    h.advance(secs(2 * HOUR), true);
    assert!(h.token().is_none());
}

#[test]
fn a_refused_refresh_token_falls_back_to_the_password_grant_at_once() {
    let mut h = with_token(HOUR);
    h.advance(secs(HOUR), false);
    let w = h.need(BUDGET);
    let refresh = h.running().unwrap();
    assert!(matches!(grant_of(&h, refresh).0, Grant::Refresh(_)));
    h.complete(refresh, Reply::Rejected, 0.0);
    let password = h.running().expect("the password grant");
    assert_eq!(grant_of(&h, password), (Grant::Password, Reason::Chained));
    assert!(
        !h.answers.contains_key(&w),
        "the waiter waits through the ladder"
    );
    h.grant_ok(password);
    assert!(is_token(h.answers.get(&w)));
}

#[test]
fn a_rejected_password_fails_every_waiter_and_holds_until_the_credentials_change() {
    let mut h = harness();
    let a = h.need(BUDGET);
    let b = h.need(BUDGET);
    h.complete(h.running().unwrap(), Reply::Rejected, 0.0);
    assert!(is_failed(h.answers.get(&a)) && is_failed(h.answers.get(&b)));
    assert!(matches!(h.view, Some(View::Failed(_))));
    for _ in 0..100 {
        h.need(BUDGET);
    }
    assert_eq!(h.grants, 1, "no hammering of a refused password");
    h.credentials(false);
    h.need(BUDGET);
    assert_eq!(h.grants, 2, "new credentials try again");
}

#[test]
fn a_rejected_password_is_tried_again_after_the_cooldown() {
    let mut h = harness();
    h.need(BUDGET);
    h.complete(h.running().unwrap(), Reply::Rejected, 0.0);
    h.advance(secs(299), false);
    h.need(BUDGET);
    assert_eq!(h.grants, 1);
    h.advance(secs(1), false);
    h.need(BUDGET);
    assert_eq!(h.grants, 2);
}

#[test]
fn a_password_refused_after_the_credentials_changed_is_tried_with_the_new_ones() {
    let mut h = harness();
    let w = h.need(BUDGET);
    let first = h.running().unwrap();
    h.credentials(false);
    h.complete(first, Reply::Rejected, 0.0);
    let second = h.running().expect("the new password, at once");
    assert_eq!(grant_of(&h, second), (Grant::Password, Reason::Chained));
    h.grant_ok(second);
    assert!(is_token(h.answers.get(&w)));
}

#[test]
fn a_cold_start_that_meets_one_transient_failure_waits_for_the_next_attempt() {
    let mut h = harness();
    let w = h.need(BUDGET);
    h.complete(h.running().unwrap(), Reply::Sent { retry_after: None }, 1.0);
    assert!(
        !h.answers.contains_key(&w),
        "the next attempt is within the budget"
    );
    assert_eq!(h.running(), None, "no attempt before the backoff ends");
    h.advance(Duration::from_millis(500), false);
    let retry = h.running().expect("the next attempt, for the waiter");
    h.grant_ok(retry);
    assert!(is_token(h.answers.get(&w)));
}

#[test]
fn a_waiter_whose_budget_ends_before_the_next_attempt_gets_the_error_at_once() {
    let mut h = harness();
    let short = h.need(Duration::from_millis(100));
    let long = h.need(BUDGET);
    h.complete(
        h.running().unwrap(),
        Reply::Sent {
            retry_after: Some(5),
        },
        0.0,
    );
    assert!(matches!(&h.answers[&short], Answer::Failed(TErr::Grant(1))));
    assert!(!h.answers.contains_key(&long));
    let late = h.need(Duration::from_secs(1));
    assert!(
        is_failed(h.answers.get(&late)),
        "a newcomer with a short budget fails fast"
    );
}

#[test]
fn a_waiter_that_runs_out_of_budget_gets_the_last_error() {
    let mut h = harness();
    let w = h.need(Duration::from_secs(2));
    h.advance(Duration::from_secs(2), false);
    assert!(matches!(
        &h.answers[&w],
        Answer::Failed(TErr::Core(super::Why::Budget))
    ));
    assert!(h.running().is_some(), "the grant goes on for later callers");
}

#[test]
fn a_long_outage_costs_one_attempt_per_backoff_step_not_one_per_request() {
    let mut h = harness();
    h.need(BUDGET);
    for _ in 0..10 {
        if let Some(flight) = h.running() {
            h.complete(flight, Reply::Sent { retry_after: None }, 0.0);
        }
        for _ in 0..50 {
            h.need(Duration::from_millis(1));
        }
        h.advance(Duration::from_secs(1), false);
    }
    assert!(h.grants <= 10, "{} attempts", h.grants);
}

#[test]
fn a_failure_before_sending_keeps_the_refresh_token() {
    let mut h = with_token(HOUR);
    h.advance(secs(HOUR), false);
    h.need(BUDGET);
    let first = h.running().unwrap();
    let Grant::Refresh(r) = grant_of(&h, first).0 else {
        panic!("a refresh")
    };
    h.complete(first, Reply::Unsent, 0.0);
    h.advance(secs(1), false);
    let again = h.running().expect("the next attempt");
    assert_eq!(grant_of(&h, again).0, Grant::Refresh(r));
}

#[test]
fn a_failure_after_sending_spends_the_refresh_token() {
    let mut h = with_token(HOUR);
    h.advance(secs(HOUR), false);
    h.need(BUDGET);
    h.complete(h.running().unwrap(), Reply::Sent { retry_after: None }, 0.0);
    h.advance(secs(1), false);
    let again = h.running().expect("the next attempt");
    assert_eq!(grant_of(&h, again).0, Grant::Password);
}

#[test]
fn an_unusable_answer_keeps_its_rotated_refresh_token() {
    let mut h = with_token(HOUR);
    h.advance(secs(HOUR), false);
    h.need(BUDGET);
    let first = h.running().unwrap();
    let Grant::Refresh(sent) = grant_of(&h, first).0 else {
        panic!("a refresh")
    };
    h.complete(first, Reply::Unusable, 0.0);
    h.advance(secs(1), false);
    let Grant::Refresh(next) = grant_of(&h, h.running().unwrap()).0 else {
        panic!("the rotated refresh token is used")
    };
    assert_ne!(sent, next);
}

#[test]
fn a_pair_that_arrives_expired_is_retried_with_its_refresh_token() {
    let mut h = harness();
    let w = h.need(BUDGET);
    let flight = h.running().unwrap();
    h.advance(secs(3), false);
    h.complete(
        flight,
        Reply::Ok {
            lifetime: 1,
            rotate: true,
        },
        0.0,
    );
    assert!(h.token().is_none() && !h.answers.contains_key(&w));
    h.advance(secs(1), false);
    assert!(matches!(
        grant_of(&h, h.running().unwrap()).0,
        Grant::Refresh(_)
    ));
}
