//! Table tests of the core beyond the grant ladder: what a 401 does, a change
//! of login, timers and grants lost with their runtime, waiters that go, and
//! the close.

use std::time::Duration;

use super::{
    Answer, BUDGET, Grant, HOUR, Phase, Reason, grant_of, harness,
    harness::{Reply, TErr},
    is_token, phase, secs, token_id, with_token,
};

#[test]
fn a_401_on_the_current_token_starts_one_refresh_and_the_replay_waits_for_it() {
    let mut h = with_token(HOUR);
    let id = token_id(&h);
    let replays: Vec<_> = (0..20)
        .map(|_| h.refused(id, Some(BUDGET)).unwrap())
        .collect();
    assert_eq!(
        h.grants, 2,
        "one refresh for every request that saw the token"
    );
    let flight = h.running().unwrap();
    assert_eq!(grant_of(&h, flight).1, Reason::Refusal);
    h.grant_ok(flight);
    let new = token_id(&h);
    assert_ne!(new, id);
    for w in replays {
        assert!(matches!(&h.answers[&w], Answer::Token(slot) if slot.id == new));
    }
}

#[test]
fn a_401_on_a_replaced_token_replays_with_the_current_one_without_a_refresh() {
    let mut h = with_token(HOUR);
    let old = token_id(&h);
    h.refused(old, None);
    h.grant_ok(h.running().unwrap());
    let w = h.refused(old, Some(BUDGET)).unwrap();
    assert!(matches!(&h.answers[&w], Answer::Token(slot) if slot.id != old));
    assert_eq!(h.grants, 2);
}

#[test]
fn a_401_on_an_old_token_while_a_refresh_is_in_flight_waits_for_that_refresh() {
    let mut h = with_token(HOUR);
    let old = token_id(&h);
    h.refused(old, None);
    h.grant_ok(h.running().unwrap());
    let current = token_id(&h);
    h.advance(secs(HOUR - 30), false);
    h.kick();
    let refresh = h.running().expect("a background refresh");
    // The server revokes `current` as it processes the refresh: the replay of
    // a request refused with `old` must not use it.
    let w = h.refused(old, Some(BUDGET)).unwrap();
    assert!(!h.answers.contains_key(&w));
    h.grant_ok(refresh);
    assert!(matches!(&h.answers[&w], Answer::Token(slot) if slot.id != current && slot.id != old));
}

#[test]
fn a_refused_token_is_never_handed_out_again_even_when_its_replay_is_refused_too() {
    let mut h = with_token(HOUR);
    let first = token_id(&h);
    h.refused(first, Some(BUDGET));
    h.grant_ok(h.running().unwrap());
    let second = token_id(&h);
    // The replay with the new token is refused too: that token is dropped as
    // well, and the next request waits for a third.
    h.refused(second, None);
    assert!(
        h.token().is_none(),
        "no request starts with a refused token"
    );
    let w = h.need(BUDGET);
    assert!(!h.answers.contains_key(&w));
    h.grant_ok(h.running().unwrap());
    assert!(matches!(&h.answers[&w], Answer::Token(slot) if slot.id > second));
}

#[test]
fn a_revoked_token_that_had_worked_is_replaced_at_once_every_time() {
    let mut h = with_token(HOUR);
    for _ in 0..50 {
        let id = token_id(&h);
        h.accepted(id);
        let w = h.refused(id, Some(BUDGET)).unwrap();
        let flight = h.running().expect("a refresh at once, with no pause");
        assert_eq!(grant_of(&h, flight).1, Reason::Refusal);
        h.grant_ok(flight);
        assert!(matches!(&h.answers[&w], Answer::Token(slot) if slot.id > id));
        h.advance(Duration::from_millis(10), false);
    }
    assert_eq!(h.grants, 51);
}

#[test]
fn a_refusal_of_a_token_that_had_worked_is_a_resend_for_every_request_that_carried_it() {
    let mut h = with_token(HOUR);
    let id = token_id(&h);
    h.accepted(id);
    assert!(
        h.core.resends(id, h.now),
        "revoked: a resend, not the replay"
    );
    let first = h.refused(id, Some(BUDGET)).unwrap();
    // The other requests in flight with it: their refusals come after the
    // token was dropped, and are revocations too.
    let others: Vec<_> = (0..5)
        .map(|_| {
            assert!(h.core.resends(id, h.now));
            h.refused(id, Some(BUDGET)).unwrap()
        })
        .collect();
    assert_eq!(h.grants, 2, "one refresh for them all");
    h.grant_ok(h.running().unwrap());
    let new = token_id(&h);
    for w in std::iter::once(first).chain(others) {
        assert!(matches!(&h.answers[&w], Answer::Token(slot) if slot.id == new));
    }
    // The new token is refused on first use: that is a replay, for the
    // requests that carried it all.
    assert!(!h.core.resends(new, h.now));
    h.refused(new, None);
    assert!(!h.core.resends(new, h.now));
}

#[test]
fn an_answer_told_after_the_refusal_makes_the_refusals_still_to_come_resends() {
    let mut h = with_token(HOUR);
    let id = token_id(&h);
    // Refused before any answer showed it worked: taken for a refusal on
    // first use.
    h.refused(id, None);
    assert!(!h.core.resends(id, h.now) && !h.core.worked(id));
    // A request the API accepted before it revoked the token answers now.
    h.accepted(id);
    assert!(h.core.worked(id), "it had worked");
    assert!(
        h.core.resends(id, h.now),
        "the refusals still to come are revocations"
    );
    h.grant_ok(h.running().unwrap());
    let w = h.refused(id, Some(BUDGET)).unwrap();
    assert!(matches!(&h.answers[&w], Answer::Token(slot) if slot.id > id));
}

#[test]
fn a_token_replaced_before_it_worked_is_a_resend_and_one_refused_long_ago_too() {
    let mut h = with_token(HOUR);
    let old = token_id(&h);
    h.step(h.now, super::super::Event::Refresh);
    h.grant_ok(h.running().unwrap());
    assert!(h.core.resends(old, h.now) && !h.core.worked(old));
    // Refused on first use, then forgotten behind as many more refusals as
    // the core keeps: a refusal of it is taken for one of a replaced token
    // again.
    let refused = token_id(&h);
    h.refused(refused, None);
    assert!(!h.core.resends(refused, h.now));
    let kept = super::super::REFUSED_KEPT;
    for more in 1..=kept {
        h.grant_ok(h.running().unwrap());
        let id = token_id(&h);
        h.accepted(id);
        h.refused(id, None);
        if more == 4 {
            // Still known after the four later tokens one request of five
            // sends can carry: its late refusal is not taken for a resend.
            assert!(!h.core.resends(refused, h.now));
        }
    }
    assert!(h.core.resends(refused, h.now));
}

#[test]
fn new_tokens_refused_on_first_use_slow_the_grants_down_and_callers_hear_it_at_once() {
    let mut h = with_token(HOUR);
    // Two tokens in a row refused before they worked: a revocation at random
    // can do that; the grants go on at once.
    for _ in 0..2 {
        let id = token_id(&h);
        h.refused(id, None);
        h.grant_ok(h.running().expect("no pause yet"));
    }
    // The third in a row: the API refuses every token.
    let id = token_id(&h);
    let replay = h.refused(id, Some(BUDGET)).unwrap();
    assert!(h.running().is_none(), "a pause before the next grant");
    assert!(
        matches!(h.answers[&replay], Answer::NoReplay),
        "the refusal goes back at once"
    );
    let w = h.need(BUDGET);
    assert!(
        matches!(
            &h.answers[&w],
            Answer::Failed(TErr::Core(super::super::Why::Refused))
        ),
        "a new request is told at once, not made to wait"
    );
    h.advance(secs(1), false);
    let flight = h.running().expect("the pause of 1 s is over");
    h.grant_ok(flight);
    // The fourth in a row: the pause doubles.
    let id = token_id(&h);
    h.refused(id, None);
    h.advance(Duration::from_millis(1_900), false);
    assert!(h.running().is_none());
    h.advance(Duration::from_millis(100), false);
    let flight = h.running().expect("the pause of 2 s is over");
    h.grant_ok(flight);
    // A token that works ends the streak: its revocation is refreshed at once.
    let id = token_id(&h);
    h.accepted(id);
    h.refused(id, None);
    assert!(h.running().is_some(), "a revocation is refreshed at once");
}

#[test]
fn a_late_answer_showing_that_a_refused_token_had_worked_ends_the_streak_and_the_pause() {
    let mut h = with_token(HOUR);
    // Under load a token is sent by many requests at once: the server may
    // accept a few and then revoke it, and its refusal may reach the cache
    // before the answers that show it worked.
    for _ in 0..5 {
        let id = token_id(&h);
        h.refused(id, None);
        h.accepted(id);
        let flight = h.running().expect("a revoked token is replaced at once");
        h.grant_ok(flight);
    }
    // Three in a row with no answer at all make a pause; an answer that
    // comes late for the last of them ends it.
    for _ in 0..3 {
        let id = token_id(&h);
        h.refused(id, None);
        if let Some(flight) = h.running() {
            h.grant_ok(flight);
        }
    }
    assert!(h.token().is_none() && h.running().is_none(), "a pause");
    let last = *h.shown_tokens.last().unwrap();
    h.accepted(last);
    let flight = h
        .running()
        .expect("it had worked: revoked, replaced at once");
    assert_eq!(grant_of(&h, flight).1, Reason::Refusal);
    assert_eq!(h.grants, 9);
}

#[test]
fn a_late_answer_for_a_token_older_than_the_streak_does_not_end_it() {
    let mut h = with_token(HOUR);
    let old = token_id(&h);
    h.accepted(old);
    h.refused(old, None);
    for _ in 0..3 {
        if let Some(flight) = h.running() {
            h.grant_ok(flight);
        }
        let id = token_id(&h);
        h.refused(id, None);
    }
    assert!(h.running().is_none(), "a pause");
    // A request sent with the revoked token before its revocation says
    // nothing of the tokens after it.
    h.accepted(old);
    assert!(h.running().is_none(), "the pause holds");
    h.advance(secs(1), false);
    assert!(h.running().is_some());
}

#[test]
fn an_api_that_refuses_every_token_gets_few_grants() {
    let mut h = with_token(HOUR);
    let start = h.now;
    while h.now < start + secs(10) {
        if let Some(id) = h.token().map(|(slot, _)| slot.id) {
            h.refused(id, None);
        }
        if let Some(flight) = h.running() {
            h.grant_ok(flight);
        }
        h.need(Duration::ZERO);
        h.advance(Duration::from_millis(50), false);
    }
    // Three at once, then after 1, 2 and 4 s of pause.
    assert!(h.grants <= 7, "{} grants in 10 s", h.grants);
}

#[test]
fn another_login_drops_the_session_and_the_grant_in_flight() {
    let mut h = with_token(HOUR);
    h.advance(secs(HOUR - 30), false);
    h.kick();
    let old = h.running().unwrap();
    h.credentials(true);
    assert!(
        h.token().is_none(),
        "nothing of the previous login is attached"
    );
    assert_eq!(h.flights[&old].state, harness::FlightState::Aborted);
    let w = h.need(BUDGET);
    let new = h.running().unwrap();
    assert_eq!(grant_of(&h, new).0, Grant::Password);
    // The old grant answers late: dropped whole, its refresh token too.
    h.grant_ok(old);
    assert!(!h.answers.contains_key(&w));
    h.grant_ok(new);
    assert!(is_token(h.answers.get(&w)));
}

#[test]
fn a_new_password_for_the_same_login_keeps_the_token() {
    let mut h = with_token(HOUR);
    let id = token_id(&h);
    h.credentials(false);
    assert_eq!(token_id(&h), id);
}

#[test]
fn a_lost_timer_shows_the_token_unchecked_and_the_next_caller_rearms_it() {
    let mut h = with_token(60);
    h.timer_lost();
    assert_eq!(phase(&h), Phase::Unchecked);
    let w = h.need(BUDGET);
    assert!(is_token(h.answers.get(&w)));
    assert!(h.armed.is_some());
    assert_eq!(phase(&h), Phase::Fresh);
}

#[test]
fn a_lost_timer_never_lets_a_token_be_served_past_its_expiry() {
    let mut h = with_token(60);
    h.timer_lost();
    h.now += secs(2 * HOUR);
    let w = h.need(BUDGET);
    assert!(
        !h.answers.contains_key(&w),
        "the expired token is not handed out"
    );
    assert!(h.running().is_some());
}

#[test]
fn a_lost_grant_tells_its_waiters_to_ask_again_and_the_next_ask_starts_a_grant() {
    let mut h = harness();
    let w = h.need(BUDGET);
    let flight = h.running().unwrap();
    h.lost(flight);
    assert!(matches!(h.answers[&w], Answer::Retry));
    assert!(
        h.running().is_some(),
        "the waiter asked again, which started a grant"
    );
    assert_eq!(h.outstanding(), 1);
}

#[test]
fn the_close_answers_every_waiter_and_stops_the_grant() {
    let mut h = harness();
    let w = h.need(BUDGET);
    h.close();
    assert!(matches!(
        &h.answers[&w],
        Answer::Failed(TErr::Core(super::super::Why::Closed))
    ));
}

#[test]
fn a_waiter_that_goes_away_is_forgotten() {
    let mut h = harness();
    let w = h.need(BUDGET);
    h.gone(w);
    assert_eq!(h.outstanding(), 0);
    h.grant_ok(h.running().unwrap());
    assert!(!h.answers.contains_key(&w));
}

#[test]
fn after_a_backoff_with_no_one_waiting_the_next_caller_starts_the_attempt() {
    let mut h = harness();
    h.need(Duration::from_millis(1));
    h.complete(h.running().unwrap(), Reply::Sent { retry_after: None }, 0.0);
    h.advance(secs(5), false);
    assert_eq!(h.running(), None, "no one waits: no attempt");
    h.need(BUDGET);
    assert!(h.running().is_some());
}
