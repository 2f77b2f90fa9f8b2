//! Table tests of a forced refresh ([`Event::Forced`](super::super::Event)):
//! it replaces a token old enough, joins the grant in flight, and never makes
//! a grant that the backoff, the refusal pause or a refused password would
//! not; a token younger than the minimum age is the new token already.

use std::time::Duration;

use super::super::MIN_AGE_TO_FORCE;
use super::harness::Reply;
use super::{
    Answer, BUDGET, Grant, HOUR, Reason, grant_of, harness, is_failed, is_token, secs, token_id,
    with_token,
};

/// A harness with an hour-long token old enough to be replaced.
fn with_old_token() -> super::Harness {
    let mut h = with_token(HOUR);
    h.advance(MIN_AGE_TO_FORCE, false);
    h
}

#[test]
fn a_forced_refresh_replaces_an_old_token_with_a_refresh_grant() {
    let mut h = with_old_token();
    let old = token_id(&h);
    let w = h.forced(BUDGET);
    let flight = h.running().expect("a grant");
    assert!(matches!(
        grant_of(&h, flight),
        (Grant::Refresh(_), Reason::Forced)
    ));
    assert!(!h.answers.contains_key(&w), "it waits for the new token");
    let ask = h.need(BUDGET);
    assert!(
        is_token(h.answers.get(&ask)),
        "requests keep the old token meanwhile"
    );
    h.grant_ok(flight);
    assert!(matches!(&h.answers[&w], Answer::Token(slot) if slot.id > old));
}

#[test]
fn a_thousand_forced_refreshes_make_one_grant() {
    let mut h = with_old_token();
    let waiters: Vec<_> = (0..1_000).map(|_| h.forced(BUDGET)).collect();
    assert_eq!(h.grants, 2, "the login, and one refresh");
    h.grant_ok(h.running().unwrap());
    let id = token_id(&h);
    for w in waiters {
        assert!(matches!(&h.answers[&w], Answer::Token(slot) if slot.id == id));
    }
}

#[test]
fn a_forced_refresh_of_a_young_token_returns_it_at_once_without_a_grant() {
    let mut h = with_token(HOUR);
    h.advance(MIN_AGE_TO_FORCE - Duration::from_millis(1), false);
    let id = token_id(&h);
    let w = h.forced(BUDGET);
    assert!(matches!(&h.answers[&w], Answer::Token(slot) if slot.id == id));
    assert_eq!(h.grants, 1);
}

#[test]
fn a_forced_refresh_of_a_young_token_inside_its_margin_replaces_it() {
    // A 4-second token is due for its refresh at 2 s or so, before the
    // minimum age: being due is reason enough.
    let mut h = with_token(4);
    h.advance(secs(3), false);
    let old = token_id(&h);
    let w = h.forced(BUDGET);
    h.grant_ok(h.running().expect("a grant"));
    assert!(matches!(&h.answers[&w], Answer::Token(slot) if slot.id > old));
}

#[test]
fn a_forced_refresh_joins_the_grant_in_flight() {
    let mut h = with_token(HOUR);
    h.advance(secs(HOUR - 30), false);
    h.kick();
    let flight = h.running().expect("the background refresh");
    let w = h.forced(BUDGET);
    assert_eq!(h.running(), Some(flight), "no second grant");
    assert_eq!(h.grants, 2);
    h.grant_ok(flight);
    assert!(is_token(h.answers.get(&w)));
}

#[test]
fn a_forced_refresh_without_a_token_logs_in() {
    let mut h = harness();
    let w = h.forced(BUDGET);
    let flight = h.running().expect("a login");
    assert_eq!(grant_of(&h, flight), (Grant::Password, Reason::Demand));
    h.grant_ok(flight);
    assert!(is_token(h.answers.get(&w)));
}

#[test]
fn a_forced_refresh_during_a_backoff_waits_for_the_next_attempt() {
    let mut h = with_old_token();
    let first = h.forced(BUDGET);
    h.complete(h.running().unwrap(), Reply::Sent { retry_after: None }, 0.0);
    assert!(
        !h.answers.contains_key(&first),
        "the next attempt is within its budget"
    );
    let second = h.forced(BUDGET);
    assert_eq!(h.running(), None, "no attempt before the backoff ends");
    assert_eq!(h.grants, 2);
    h.advance(Duration::from_millis(500), false);
    let retry = h.running().expect("the next attempt");
    assert_eq!(grant_of(&h, retry), (Grant::Password, Reason::Forced));
    h.grant_ok(retry);
    assert!(is_token(h.answers.get(&first)) && is_token(h.answers.get(&second)));
}

#[test]
fn a_forced_refresh_whose_next_attempt_lies_beyond_its_budget_fails_at_once() {
    let mut h = with_old_token();
    h.forced(BUDGET);
    h.complete(
        h.running().unwrap(),
        Reply::Sent {
            retry_after: Some(60),
        },
        0.0,
    );
    let w = h.forced(BUDGET);
    assert!(
        is_failed(h.answers.get(&w)),
        "the last error, without waiting"
    );
    assert_eq!(h.grants, 2);
    let ask = h.need(BUDGET);
    assert!(
        is_token(h.answers.get(&ask)),
        "requests keep the valid token"
    );
}

#[test]
fn a_forced_refresh_fails_at_once_while_the_password_is_rejected() {
    let mut h = with_old_token();
    let w = h.forced(BUDGET);
    h.complete(h.running().unwrap(), Reply::Rejected, 0.0);
    h.complete(
        h.running().expect("the password grant"),
        Reply::Rejected,
        0.0,
    );
    assert!(is_failed(h.answers.get(&w)));
    for _ in 0..100 {
        let again = h.forced(BUDGET);
        assert!(is_failed(h.answers.get(&again)));
    }
    assert_eq!(h.grants, 3, "the login, the refresh, the password: no more");
}

#[test]
fn a_forced_refresh_fails_at_once_while_the_api_refuses_every_token() {
    let mut h = harness();
    // Three new tokens in a row refused on first use.
    for _ in 0..3 {
        h.need(BUDGET);
        h.grant_ok(h.running().expect("a grant"));
        h.refused(token_id(&h), None);
    }
    assert_eq!(h.running(), None, "the pause holds the next grant");
    let grants = h.grants;
    let w = h.forced(BUDGET);
    assert!(matches!(
        &h.answers[&w],
        Answer::Failed(super::harness::TErr::Core(super::super::Why::Refused))
    ));
    assert_eq!(h.grants, grants);
}

#[test]
fn forced_refreshes_in_a_loop_make_one_grant_per_minimum_age() {
    let mut h = with_token(HOUR);
    let step = Duration::from_millis(100);
    let rounds = 600u32; // a minute
    for _ in 0..rounds {
        let w = h.forced(BUDGET);
        if let Some(flight) = h.running() {
            h.grant_ok(flight);
        }
        assert!(is_token(h.answers.get(&w)));
        h.advance(step, false);
    }
    let minute = step * rounds;
    let most = 1 + (minute.as_millis() / MIN_AGE_TO_FORCE.as_millis()) as usize;
    assert!(
        h.grants <= most,
        "{} grants in a minute, at most {most}",
        h.grants
    );
    assert!(
        h.grants >= most - 1,
        "{} grants: every due one made",
        h.grants
    );
}
