//! Table tests of a refresh token's lifetime (`refresh_expires_in`): a
//! refresh token past its expiry is never sent, neither a replica's own nor
//! the one of a store's record; the password grant goes at once instead. A
//! refresh token whose lifetime is unknown is sent until the endpoint
//! refuses it.

use std::time::Duration;

use super::super::{
    Action, CacheConfig, Core, Event, Grant, Reason, Record, StoreCall, StoreReply, WaiterId,
};
use super::harness::{Reply, T};
use super::{BUDGET, HOUR, grant_of, harness, secs};

/// A harness whose server gives refresh tokens `refresh` seconds of life,
/// holding an hour-long token.
fn with_refresh_lifetime(refresh: u64) -> super::Harness {
    let mut h = harness();
    h.refresh_lifetime = Some(secs(refresh));
    h.need(BUDGET);
    h.grant_ok(h.running().unwrap());
    h
}

#[test]
fn a_refresh_token_past_its_expiry_is_not_sent_and_the_password_grant_goes_at_once() {
    let mut h = with_refresh_lifetime(1800);
    h.advance(secs(HOUR), false);
    h.need(BUDGET);
    let flight = h.running().expect("a grant");
    assert_eq!(grant_of(&h, flight), (Grant::Password, Reason::Demand));
    assert!(h.sent_refresh.is_empty(), "no refresh token sent");
}

#[test]
fn a_refresh_token_within_its_lifetime_is_sent() {
    let mut h = with_refresh_lifetime(2 * HOUR);
    h.advance(secs(HOUR), false);
    h.need(BUDGET);
    let flight = h.running().expect("a grant");
    assert!(matches!(grant_of(&h, flight).0, Grant::Refresh(_)));
}

#[test]
fn a_refresh_token_kept_by_its_answer_takes_the_lifetime_the_answer_states() {
    let mut h = with_refresh_lifetime(2 * HOUR);
    h.advance(secs(HOUR - 30), false);
    h.kick();
    // The server keeps the refresh token, and says it lives 2 hours from now.
    let Grant::Refresh(kept) = grant_of(&h, h.running().unwrap()).0 else {
        panic!("a refresh")
    };
    h.complete(
        h.running().unwrap(),
        Reply::Ok {
            lifetime: HOUR,
            rotate: false,
        },
        0.0,
    );
    // Past the first lifetime, within the second: the kept token is sent.
    h.advance(secs(HOUR + 30), false);
    h.need(BUDGET);
    assert_eq!(grant_of(&h, h.running().unwrap()).0, Grant::Refresh(kept));
}

#[test]
fn a_refresh_token_of_unknown_lifetime_is_sent_however_old() {
    let mut h = with_refresh_lifetime(1);
    // An answer that is unusable but rotated the refresh token: its lifetime
    // is unknown.
    h.advance(secs(HOUR), false);
    h.need(BUDGET);
    h.complete(h.running().unwrap(), Reply::Unusable, 0.0);
    h.advance(secs(10 * HOUR), false);
    h.need(BUDGET);
    assert!(matches!(
        grant_of(&h, h.running().unwrap()).0,
        Grant::Refresh(_)
    ));
}

/// A replica sharing a store, under the lease, reads a record whose access
/// token expired and whose refresh token expires at `refresh_until`: what
/// does it do?
fn under_the_lease_with(refresh_until: Duration) -> Vec<Action<T>> {
    let config = CacheConfig {
        shared: true,
        ..CacheConfig::default()
    };
    let mut core = Core::<T>::new(config);
    let now = secs(100);
    let mut out = Vec::new();
    let need = Event::Need {
        waiter: WaiterId(1),
        deadline: now + BUDGET,
        not: None,
    };
    core.handle(now, need, &mut out);
    let flight = out
        .iter()
        .find_map(|a| match a {
            Action::Store {
                flight,
                call: StoreCall::Lease,
            } => Some(*flight),
            _ => None,
        })
        .expect("the lease asked for");
    core.handle(
        now,
        Event::Stored {
            flight,
            reply: StoreReply::Leased,
        },
        &mut out,
    );
    let record = Record {
        version: 4,
        access: 40,
        refresh: Some(41),
        expires_at: now,
        refresh_until: Some(refresh_until),
        spent: false,
    };
    out.clear();
    let reply = StoreReply::Record(Some(record));
    core.handle(now, Event::Stored { flight, reply }, &mut out);
    out
}

#[test]
fn a_shared_refresh_token_past_its_expiry_is_not_sent_and_the_holder_logs_in() {
    let out = under_the_lease_with(secs(100));
    assert!(
        !out.iter().any(|a| matches!(
            a,
            Action::Store {
                call: StoreCall::Spend { .. },
                ..
            }
        )),
        "nothing to spend"
    );
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Start {
            grant: Grant::Password,
            ..
        }
    )));
}

#[test]
fn a_shared_refresh_token_within_its_lifetime_is_spent_then_sent() {
    let out = under_the_lease_with(secs(101));
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Store {
            call: StoreCall::Spend { .. },
            ..
        }
    )));
    assert!(!out.iter().any(|a| matches!(a, Action::Start { .. })));
}
