//! Table tests of what the core tells the login's subscribers
//! ([`Action::Login`](super::super::Action)): a version per token, the
//! grant or store each came from, its expiry, and where the login stands
//! after failures, refusals, a rejected password and the close.

use std::time::Duration;

use super::super::{Login, LoginStatus, TokenSource};
use super::harness::Reply;
use super::{BUDGET, HOUR, harness, secs, token_id, with_token};

fn told(h: &super::Harness) -> Login {
    h.told.expect("the login was told")
}

/// The login was last told as `status`, at `version`, without a token.
fn assert_told_without_token(h: &super::Harness, status: LoginStatus, version: u64) {
    let login = told(h);
    assert_eq!(
        (login.status, login.version, login.token),
        (status, version, None)
    );
}

#[test]
fn each_token_bumps_the_version_and_says_which_grant_made_it() {
    let mut h = with_token(HOUR);
    assert_eq!(told(&h).version, 1);
    assert_eq!(told(&h).status, LoginStatus::LoggedIn);
    assert_eq!(
        told(&h).token,
        Some((secs(HOUR), TokenSource::PasswordGrant))
    );
    h.advance(secs(HOUR - 30), false);
    h.kick();
    h.advance(secs(1), false);
    h.grant_ok(h.running().unwrap());
    let login = told(&h);
    assert_eq!(login.version, 2);
    assert_eq!(
        login.token.map(|(_, source)| source),
        Some(TokenSource::RefreshGrant)
    );
    assert_eq!(
        login.token.map(|(at, _)| at),
        Some(secs(HOUR - 30 + HOUR)),
        "expiry counts from when the refresh was sent"
    );
}

#[test]
fn a_new_login_is_told_logged_out_until_its_first_token() {
    let mut h = harness();
    h.need(BUDGET);
    assert_eq!(told(&h).status, LoginStatus::LoggedOut);
    assert_eq!(told(&h).version, 0);
    h.grant_ok(h.running().unwrap());
    assert_eq!(told(&h).status, LoginStatus::LoggedIn);
    h.credentials(true);
    assert_told_without_token(&h, LoginStatus::LoggedOut, 1);
}

#[test]
fn a_failed_grant_is_told_as_a_backoff_then_the_token_as_logged_in() {
    let mut h = harness();
    h.need(BUDGET);
    h.complete(h.running().unwrap(), Reply::Sent { retry_after: None }, 0.0);
    assert_eq!(told(&h).status, LoginStatus::BackingOff);
    h.advance(Duration::from_millis(500), false);
    assert_eq!(
        told(&h).status,
        LoginStatus::LoggedOut,
        "the next attempt runs"
    );
    h.grant_ok(h.running().unwrap());
    assert_eq!(told(&h).status, LoginStatus::LoggedIn);
}

#[test]
fn a_failed_refresh_backs_off_while_the_token_stays_valid() {
    let mut h = with_token(HOUR);
    h.advance(secs(HOUR - 30), false);
    h.kick();
    h.complete(h.running().unwrap(), Reply::Sent { retry_after: None }, 0.0);
    let login = told(&h);
    assert_eq!(login.status, LoginStatus::BackingOff);
    assert_eq!(login.token, Some((secs(HOUR), TokenSource::PasswordGrant)));
}

#[test]
fn a_rejected_password_is_told_until_the_credentials_change() {
    let mut h = harness();
    h.need(BUDGET);
    h.complete(h.running().unwrap(), Reply::Rejected, 0.0);
    assert_eq!(told(&h).status, LoginStatus::Rejected);
    h.credentials(false);
    assert_eq!(told(&h).status, LoginStatus::LoggedOut);
}

#[test]
fn an_api_refusing_every_token_is_told_as_refused() {
    let mut h = harness();
    for _ in 0..3 {
        h.need(BUDGET);
        h.grant_ok(h.running().unwrap());
        h.refused(token_id(&h), None);
    }
    assert_told_without_token(&h, LoginStatus::Refused, 3);
}

#[test]
fn the_close_is_told_last() {
    let mut h = with_token(HOUR);
    h.close();
    assert_told_without_token(&h, LoginStatus::Closed, 1);
}
