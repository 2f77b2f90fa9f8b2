//! The token endpoint's decisions: [`decide_grant`] reads one request (method,
//! content type, form) against the accepted login and the token books, and
//! returns the reply and its outcome, which the server then sends and counts.
//! The settings that shape the decisions (lifetime, rotation, reuse
//! protection, revocation on refresh) are here too.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use http::{Method, StatusCode};
use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::{
    books::{Books, Login, RefreshStatus},
    codes,
    counters::GrantOutcome,
};
use crate::Credentials;

/// Cap on a token endpoint request body.
pub(super) const GRANT_BODY_LIMIT: usize = 64 * 1024;

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) token_lifetime: Duration,
    /// How long a refresh token is taken, if not for ever.
    pub(super) refresh_lifetime: Option<Duration>,
    pub(super) rotation: bool,
    pub(super) reuse_protection: bool,
    /// Whether a refresh revokes the access token issued with the refresh
    /// token presented.
    pub(super) revoke_on_refresh: bool,
    /// How long every answer is held back; the server waits, not the decision.
    pub(super) grant_latency: Duration,
}

impl Config {
    /// `expires_in` as sent: whole seconds rounded up, at least 1, so that the
    /// client never believes in a longer life than the server enforces and
    /// never sees 0 ("expired already" to some clients).
    pub(super) fn expires_in(&self) -> u64 {
        let lifetime = self.token_lifetime;
        let secs = lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// `refresh_expires_in` for a refresh token that is taken until `expires_at`:
/// whole seconds rounded down, at least 1, so that a client that counts from
/// when it sent the grant never believes in a longer life than the server
/// enforces; `None` for one that does not expire.
fn refresh_expires_in(expires_at: Option<Instant>, now: Instant) -> Option<u64> {
    expires_at.map(|at| at.saturating_duration_since(now).as_secs().max(1))
}

/// A token endpoint request, reduced to what decides the answer.
#[derive(Debug)]
pub(super) struct GrantInput<'a> {
    pub(super) method: &'a Method,
    pub(super) content_type: Option<&'a str>,
    /// `None` when the body was over [`GRANT_BODY_LIMIT`].
    pub(super) body: Option<&'a [u8]>,
}

/// A refusal: status, `DAERR-` code and message of the error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: &'static str,
}

impl Refusal {
    const fn new(status: StatusCode, code: &'static str, message: &'static str) -> Self {
        Self {
            status,
            code,
            message,
        }
    }

    const fn bad_request(message: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, message)
    }

    const fn unauthorized(code: &'static str, message: &'static str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
}

/// The answer to a token endpoint request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum GrantReply {
    Issued {
        access_token: String,
        refresh_token: String,
        expires_in: u64,
        /// The refresh token's remaining life, when it has one.
        refresh_expires_in: Option<u64>,
    },
    Refused(Refusal),
}

/// Decides a token endpoint request for the login `accepted`: the reply, and
/// how the request ended. Issuing, spending and revoking happen in `books`.
pub(super) fn decide_grant(
    books: &mut Books,
    accepted: &Credentials,
    config: &Config,
    input: &GrantInput<'_>,
    now: Instant,
) -> (GrantReply, GrantOutcome) {
    let bad = |refusal| (GrantReply::Refused(refusal), GrantOutcome::BadRequest);
    if input.method != Method::POST {
        return bad(Refusal::bad_request("the token endpoint takes POST only"));
    }
    if !input.content_type.is_some_and(is_form_content_type) {
        return bad(Refusal::bad_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let Some(body) = input.body else {
        return bad(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::TOKEN_REQUEST_TOO_LARGE,
            "the request body is too large",
        ));
    };
    let Some(form) = parse_form(body) else {
        return bad(Refusal::bad_request(
            "the body is not a form, or repeats a parameter",
        ));
    };
    let grant = Grant {
        books,
        accepted,
        config,
        form: &form,
        now,
    };
    match form.get("grant_type").map(String::as_str) {
        None => bad(Refusal::bad_request("grant_type is required")),
        Some("password") => grant.password(),
        Some("refresh_token") => grant.refresh(),
        Some(_) => bad(Refusal::new(
            StatusCode::BAD_REQUEST,
            codes::UNSUPPORTED_GRANT_TYPE,
            "grant_type must be password or refresh_token",
        )),
    }
}

/// One grant request being decided.
struct Grant<'a> {
    books: &'a mut Books,
    accepted: &'a Credentials,
    config: &'a Config,
    form: &'a HashMap<String, String>,
    now: Instant,
}

impl Grant<'_> {
    fn has(&self, required: &[&str]) -> bool {
        required.iter().all(|name| self.form.contains_key(*name))
    }

    fn client_matches(&self) -> bool {
        self.form["client_id"] == self.accepted.client_id()
            && self.form["client_secret"] == self.accepted.client_secret().expose_secret()
    }

    fn issue(self, login: Login, refresh_token: String) -> GrantReply {
        let access_token = self
            .books
            .issue_access(login, self.config.token_lifetime, self.now);
        self.books.pair(&refresh_token, &access_token);
        let refresh_until = (self.books.refresh_mut(&refresh_token)).and_then(|e| e.expires_at);
        GrantReply::Issued {
            access_token,
            refresh_token,
            expires_in: self.config.expires_in(),
            refresh_expires_in: refresh_expires_in(refresh_until, self.now),
        }
    }

    /// A new refresh token of `login`, with the configured lifetime.
    fn new_refresh(&mut self, login: Login) -> String {
        let expires_at = (self.config.refresh_lifetime).map(|life| self.now + life);
        self.books.issue_refresh(login, expires_at)
    }

    fn password(mut self) -> (GrantReply, GrantOutcome) {
        if !self.has(&["client_id", "client_secret", "username", "password"]) {
            let refusal = Refusal::bad_request(
                "the password grant needs client_id, client_secret, username and password",
            );
            return (GrantReply::Refused(refusal), GrantOutcome::BadRequest);
        }
        let refusal = if !self.client_matches() {
            Some(Refusal::unauthorized(
                codes::INVALID_CLIENT,
                "invalid client credentials",
            ))
        } else if self.form["username"] != self.accepted.username()
            || self.form["password"] != self.accepted.password().expose_secret()
        {
            Some(Refusal::unauthorized(
                codes::INVALID_CREDENTIALS,
                "invalid username or password",
            ))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return (GrantReply::Refused(refusal), GrantOutcome::PasswordRejected);
        }
        let login = Login {
            client_id: self.form["client_id"].clone(),
            username: self.form["username"].clone(),
        };
        let refresh_token = self.new_refresh(login.clone());
        (self.issue(login, refresh_token), GrantOutcome::PasswordOk)
    }

    fn refresh(mut self) -> (GrantReply, GrantOutcome) {
        if !self.has(&["client_id", "client_secret", "refresh_token"]) {
            let refusal = Refusal::bad_request(
                "the refresh grant needs client_id, client_secret and refresh_token",
            );
            return (GrantReply::Refused(refusal), GrantOutcome::BadRequest);
        }
        let rejected = |refusal, reused| {
            let outcome = GrantOutcome::RefreshRejected {
                reused,
                expired: false,
            };
            (GrantReply::Refused(refusal), outcome)
        };
        if !self.client_matches() {
            let refusal =
                Refusal::unauthorized(codes::INVALID_CLIENT, "invalid client credentials");
            return rejected(refusal, false);
        }
        let presented = self.form["refresh_token"].as_str();
        let invalid = Refusal::unauthorized(codes::INVALID_REFRESH_TOKEN, "invalid refresh token");
        let Some(entry) = self.books.refresh_mut(presented) else {
            return rejected(invalid, false);
        };
        if entry.login.client_id != self.form["client_id"] {
            return rejected(invalid, false);
        }
        let login = entry.login.clone();
        match entry.status {
            RefreshStatus::Revoked => rejected(invalid, false),
            RefreshStatus::Spent => {
                if self.config.reuse_protection {
                    // Either the client or a thief holds a newer token of the
                    // same chain; the server cannot tell which, so nobody keeps one.
                    self.books.revoke_login(&login);
                }
                let refusal = Refusal::unauthorized(
                    codes::REFRESH_TOKEN_REUSED,
                    "refresh token already used",
                );
                rejected(refusal, true)
            }
            RefreshStatus::Live if entry.expires_at.is_some_and(|at| self.now >= at) => {
                let refusal =
                    Refusal::unauthorized(codes::EXPIRED_REFRESH_TOKEN, "refresh token expired");
                let outcome = GrantOutcome::RefreshRejected {
                    reused: false,
                    expired: true,
                };
                (GrantReply::Refused(refusal), outcome)
            }
            RefreshStatus::Live => {
                let previous = entry.access.take();
                let refresh_token = if self.config.rotation {
                    entry.status = RefreshStatus::Spent;
                    self.new_refresh(login.clone())
                } else {
                    presented.to_owned()
                };
                // As django-oauth-toolkit does: the pair presented is replaced
                // whole, so a client that goes on with the old access token
                // after its refresh meets a 401.
                let revoked_access = self.config.revoke_on_refresh
                    && previous.is_some_and(|access| self.books.revoke(&access));
                let outcome = GrantOutcome::RefreshOk { revoked_access };
                (self.issue(login, refresh_token), outcome)
            }
        }
    }
}

/// `application/x-www-form-urlencoded`, with any parameters (a charset).
fn is_form_content_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

/// Parses a form the way RFC 6749 §3.1 reads one: a parameter without a value
/// is as if omitted, a repeated parameter makes the request invalid.
pub(super) fn parse_form(body: &[u8]) -> Option<HashMap<String, String>> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
    let mut form = HashMap::with_capacity(pairs.len());
    let mut seen = HashSet::with_capacity(pairs.len());
    for (name, value) in pairs {
        if !seen.insert(name.clone()) {
            return None;
        }
        if !value.is_empty() {
            form.insert(name, value);
        }
    }
    Some(form)
}

#[cfg(test)]
mod tests;
