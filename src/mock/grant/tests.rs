//! The token endpoint's decisions, case by case: malformed requests, both
//! grants, rotation, reuse and its protection, revocation on refresh, and
//! the settings' arithmetic.

use super::*;
use crate::mock::books::{ApiDenial, Presented};

/// The endpoint's default settings.
fn config() -> Config {
    crate::mock::MockServer::builder().config
}

/// The token books and the login the endpoint accepts.
struct Endpoint {
    books: Books,
    accepted: Credentials,
    config: Config,
}

impl Endpoint {
    fn new(config: Config) -> Self {
        Self {
            books: Books::new(),
            accepted: Credentials::new("cid", "csecret", "user", "pass"),
            config,
        }
    }

    fn decide(&mut self, input: &GrantInput<'_>) -> (GrantReply, GrantOutcome) {
        self.decide_at(input, Instant::now())
    }

    fn decide_at(&mut self, input: &GrantInput<'_>, now: Instant) -> (GrantReply, GrantOutcome) {
        decide_grant(&mut self.books, &self.accepted, &self.config, input, now)
    }

    fn form(&mut self, body: &str) -> (GrantReply, GrantOutcome) {
        self.decide(&form_input(body))
    }

    /// The pair that `body` must be granted.
    fn issued(&mut self, body: &str) -> (String, String) {
        match self.form(body).0 {
            GrantReply::Issued {
                access_token,
                refresh_token,
                ..
            } => (access_token, refresh_token),
            GrantReply::Refused(refusal) => panic!("refused: {refusal:?}"),
        }
    }

    /// The refusal that `body` must meet, and its outcome.
    fn refused(&mut self, body: &str) -> (Refusal, GrantOutcome) {
        match self.form(body) {
            (GrantReply::Refused(refusal), outcome) => (refusal, outcome),
            (GrantReply::Issued { .. }, _) => panic!("issued"),
        }
    }

    fn check(&self, access: &str) -> Result<(), ApiDenial> {
        self.books.check(Presented::Bearer(access), Instant::now())
    }
}

fn form_input(body: &str) -> GrantInput<'_> {
    GrantInput {
        method: &Method::POST,
        content_type: Some("application/x-www-form-urlencoded"),
        body: Some(body.as_bytes()),
    }
}

const PASSWORD: &str =
    "grant_type=password&client_id=cid&client_secret=csecret&username=user&password=pass";

fn refresh_body(token: &str) -> String {
    format!("grant_type=refresh_token&client_id=cid&client_secret=csecret&refresh_token={token}")
}

#[test]
fn expires_in_rounds_up_to_whole_seconds() {
    let mut c = config();
    for (lifetime, secs) in [
        (0, 1),
        (1, 1),
        (999, 1),
        (1000, 1),
        (1001, 2),
        (3_600_000, 3600),
    ] {
        c.token_lifetime = Duration::from_millis(lifetime);
        assert_eq!(c.expires_in(), secs, "{lifetime} ms");
    }
}

#[test]
fn form_rules() {
    let form = parse_form(b"a=1&b=&c=x%20y").expect("form");
    assert_eq!(form.get("a").map(String::as_str), Some("1"));
    assert!(!form.contains_key("b"), "an empty value is as if omitted");
    assert_eq!(form.get("c").map(String::as_str), Some("x y"));
    assert!(
        parse_form(b"a=1&a=2").is_none(),
        "a repeated parameter is invalid"
    );
}

#[test]
fn content_type_rules() {
    assert!(is_form_content_type("application/x-www-form-urlencoded"));
    assert!(is_form_content_type(
        "Application/X-WWW-Form-Urlencoded; charset=UTF-8"
    ));
    assert!(!is_form_content_type("application/json"));
    assert!(!is_form_content_type("application/x-www-form-urlencodedx"));
}

#[test]
fn malformed_requests_are_bad_requests() {
    let mut endpoint = Endpoint::new(config());
    let cases = [
        GrantInput {
            method: &Method::GET,
            ..form_input(PASSWORD)
        },
        GrantInput {
            content_type: Some("application/json"),
            ..form_input(PASSWORD)
        },
        GrantInput {
            content_type: None,
            ..form_input(PASSWORD)
        },
        GrantInput {
            body: None,
            ..form_input(PASSWORD)
        },
        form_input("grant_type=password&client_id=cid"),
        form_input("grant_type=client_credentials&client_id=cid&client_secret=csecret"),
        form_input("client_id=cid"),
    ];
    for (i, input) in cases.iter().enumerate() {
        let (reply, outcome) = endpoint.decide(input);
        let GrantReply::Refused(refusal) = reply else {
            panic!("case {i} issued");
        };
        let expected = if i == 3 {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_eq!(refusal.status, expected, "case {i}");
        assert_eq!(outcome, GrantOutcome::BadRequest, "case {i}");
    }
}

#[test]
fn password_grant_checks_client_and_user() {
    let mut endpoint = Endpoint::new(config());
    let wrong_client = PASSWORD.replace("csecret", "nope");
    let wrong_user = PASSWORD.replace("password=pass", "password=nope");
    for (body, code) in [
        (wrong_client, codes::INVALID_CLIENT),
        (wrong_user, codes::INVALID_CREDENTIALS),
    ] {
        let (refusal, outcome) = endpoint.refused(&body);
        assert_eq!(refusal.code, code);
        assert_eq!(outcome, GrantOutcome::PasswordRejected);
    }
    assert_eq!(endpoint.form(PASSWORD).1, GrantOutcome::PasswordOk);
    let (access, _) = endpoint.issued(PASSWORD);
    assert_eq!(endpoint.check(&access), Ok(()));
}

#[test]
fn rotation_spends_and_reuse_is_detected() {
    let mut endpoint = Endpoint::new(config());
    let (_, first) = endpoint.issued(PASSWORD);
    let (_, second) = endpoint.issued(&refresh_body(&first));
    assert_ne!(first, second);
    let (refusal, outcome) = endpoint.refused(&refresh_body(&first));
    assert_eq!(refusal.code, codes::REFRESH_TOKEN_REUSED);
    assert_eq!(
        outcome,
        GrantOutcome::RefreshRejected {
            reused: true,
            expired: false
        }
    );
    let (refusal, outcome) = endpoint.refused(&refresh_body("made-up"));
    assert_eq!(refusal.code, codes::INVALID_REFRESH_TOKEN);
    assert_eq!(
        outcome,
        GrantOutcome::RefreshRejected {
            reused: false,
            expired: false
        }
    );
    // Without reuse protection the newer token still works.
    assert_eq!(
        endpoint.form(&refresh_body(&second)).1,
        GrantOutcome::RefreshOk {
            revoked_access: false
        }
    );
}

#[test]
fn reuse_protection_revokes_the_login() {
    let mut endpoint = Endpoint::new(Config {
        reuse_protection: true,
        ..config()
    });
    let (access, first) = endpoint.issued(PASSWORD);
    let (access2, second) = endpoint.issued(&refresh_body(&first));
    endpoint.refused(&refresh_body(&first));
    assert_eq!(endpoint.check(&access), Err(ApiDenial::Revoked));
    assert_eq!(endpoint.check(&access2), Err(ApiDenial::Revoked));
    let (refusal, outcome) = endpoint.refused(&refresh_body(&second));
    assert_eq!(refusal.code, codes::INVALID_REFRESH_TOKEN);
    assert_eq!(
        outcome,
        GrantOutcome::RefreshRejected {
            reused: false,
            expired: false
        }
    );
}

#[test]
fn a_refresh_token_lifetime_is_stated_and_enforced() {
    let mut endpoint = Endpoint::new(Config {
        refresh_lifetime: Some(Duration::from_millis(90_500)),
        ..config()
    });
    let start = Instant::now();
    let issued = |reply| match reply {
        GrantReply::Issued {
            refresh_token,
            refresh_expires_in,
            ..
        } => (refresh_token, refresh_expires_in),
        GrantReply::Refused(refusal) => panic!("refused: {refusal:?}"),
    };
    let (first, stated) = issued(endpoint.decide_at(&form_input(PASSWORD), start).0);
    assert_eq!(stated, Some(90), "whole seconds, rounded down");
    // Within its life: refreshed, and the new token lives as long again.
    let later = start + Duration::from_secs(60);
    let (second, stated) = issued(
        endpoint
            .decide_at(&form_input(&refresh_body(&first)), later)
            .0,
    );
    assert_eq!(stated, Some(90));
    // Past its life: refused, and counted as expired.
    let past = later + Duration::from_millis(90_500);
    let (reply, outcome) = endpoint.decide_at(&form_input(&refresh_body(&second)), past);
    let GrantReply::Refused(refusal) = reply else {
        panic!("issued past the refresh token's lifetime")
    };
    assert_eq!(refusal.code, codes::EXPIRED_REFRESH_TOKEN);
    assert_eq!(
        outcome,
        GrantOutcome::RefreshRejected {
            reused: false,
            expired: true
        }
    );
}

#[test]
fn without_a_refresh_token_lifetime_none_is_stated() {
    let mut endpoint = Endpoint::new(config());
    let GrantReply::Issued {
        refresh_expires_in, ..
    } = endpoint.form(PASSWORD).0
    else {
        panic!("refused")
    };
    assert_eq!(refresh_expires_in, None);
}

#[test]
fn no_rotation_keeps_the_refresh_token() {
    let mut endpoint = Endpoint::new(Config {
        rotation: false,
        ..config()
    });
    let (_, first) = endpoint.issued(PASSWORD);
    let (_, same) = endpoint.issued(&refresh_body(&first));
    assert_eq!(first, same);
    assert_eq!(
        endpoint.form(&refresh_body(&first)).1,
        GrantOutcome::RefreshOk {
            revoked_access: false
        }
    );
}

#[test]
fn revoke_on_refresh_revokes_the_access_token_issued_with_the_refresh_token() {
    for rotation in [true, false] {
        let mut endpoint = Endpoint::new(Config {
            revoke_on_refresh: true,
            rotation,
            ..config()
        });
        let (access1, refresh1) = endpoint.issued(PASSWORD);
        let (other, _) = endpoint.issued(PASSWORD);
        let (access2, refresh2) = endpoint.issued(&refresh_body(&refresh1));
        assert_eq!(endpoint.check(&access1), Err(ApiDenial::Revoked));
        assert_eq!(endpoint.check(&access2), Ok(()));
        assert_eq!(endpoint.check(&other), Ok(()), "another pair's token");

        // The next refresh of the chain revokes the access token of the one
        // before: it came with a new refresh token under rotation, with the
        // same one without.
        assert_eq!(refresh2 == refresh1, !rotation);
        let (_, outcome) = endpoint.form(&refresh_body(&refresh2));
        let revoked_access = true;
        assert_eq!(outcome, GrantOutcome::RefreshOk { revoked_access });
        assert_eq!(endpoint.check(&access2), Err(ApiDenial::Revoked));
    }
}

#[test]
fn revoke_on_refresh_counts_only_tokens_it_revoked() {
    let mut endpoint = Endpoint::new(Config {
        revoke_on_refresh: true,
        ..config()
    });
    let (access, refresh) = endpoint.issued(PASSWORD);
    assert!(endpoint.books.revoke(&access));
    let (_, outcome) = endpoint.form(&refresh_body(&refresh));
    let revoked_access = false;
    assert_eq!(outcome, GrantOutcome::RefreshOk { revoked_access });
}
