//! What the mock server counts and logs: [`MockCounters`], one counter per
//! outcome of a token endpoint or protected resource request, and
//! [`RecordedGrant`], each token endpoint request as it arrived. The outcomes
//! are named here, so that the decisions say what happened and this file alone
//! says what that adds to.

use std::fmt;

use bytes::Bytes;

use super::books::ApiDenial;

/// A snapshot of what the mock server has answered, from
/// [`MockServer::counters`](super::MockServer::counters).
///
/// Every request to the token endpoint counts once in `grant_requests` and,
/// unless a fault replaced its answer, once in exactly one of `password_ok`,
/// `password_rejected`, `refresh_ok`, `refresh_rejected` and `bad_requests`.
/// Every fault taken from the queue counts in `faults_injected`; a
/// [`Fault::Delay`](super::Fault::Delay) is followed by the normal answer, which counts as well.
/// `refresh_reuse` counts the refresh rejections (already in `refresh_rejected`)
/// whose token had been spent before, `refresh_expired` those whose token
/// was past its lifetime. `refresh_revoked_access` counts the
/// access tokens that refreshes (already in `refresh_ok`) revoked under
/// [`revoke_on_refresh`](super::MockServerBuilder::revoke_on_refresh).
///
/// Every protected resource check counts once in `api_requests` and once in
/// exactly one of `api_ok`, `api_no_token`, `api_unknown`, `api_expired`,
/// `api_revoked`, `api_refused_all`, `api_injected` and `api_too_large`. A request whose body
/// never fully arrived is dropped without an outcome. `api_revoked_in_use`
/// counts the revocations (already in `api_revoked`) of valid tokens that
/// [`revoke_presented`](super::MockServerBuilder::revoke_presented) made on
/// the spot.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MockCounters {
    /// Requests to the token endpoint, of any kind.
    pub grant_requests: u64,
    /// Password grants answered with tokens.
    pub password_ok: u64,
    /// Password grants refused with 401 (wrong client or wrong user).
    pub password_rejected: u64,
    /// Refresh grants answered with tokens.
    pub refresh_ok: u64,
    /// Refresh grants refused with 401 (wrong client, or a refresh token that
    /// is unknown, revoked or spent).
    pub refresh_rejected: u64,
    /// Faults taken from the [`fail_next_grants`](super::MockServer::fail_next_grants) queue.
    pub faults_injected: u64,
    /// Refresh grants that presented a refresh token already spent by an
    /// earlier refresh (each one is also in `refresh_rejected`).
    pub refresh_reuse: u64,
    /// Refresh grants that presented a refresh token past its lifetime
    /// ([`refresh_token_lifetime`](super::MockServerBuilder::refresh_token_lifetime);
    /// each one is also in `refresh_rejected`). A client that knows the
    /// lifetime sends none.
    pub refresh_expired: u64,
    /// Access tokens revoked by a refresh under
    /// [`revoke_on_refresh`](super::MockServerBuilder::revoke_on_refresh):
    /// the one issued together with the refresh token presented, unless it
    /// was revoked already (an expired one counts).
    pub refresh_revoked_access: u64,
    /// Token endpoint requests refused with 400 or 413: wrong method, content
    /// type or form, a missing parameter, an unsupported grant type, a body
    /// over 64 KiB.
    pub bad_requests: u64,
    /// Protected resource requests (and calls of
    /// [`check_access_token`](super::MockServer::check_access_token) or
    /// [`check_authorization`](super::MockServer::check_authorization)).
    pub api_requests: u64,
    /// Protected resource requests let through.
    pub api_ok: u64,
    /// Protected resource requests without a bearer token.
    pub api_no_token: u64,
    /// Protected resource requests with a token the server never issued.
    pub api_unknown: u64,
    /// Protected resource requests with an expired token.
    pub api_expired: u64,
    /// Protected resource requests with a revoked token.
    pub api_revoked: u64,
    /// Protected resource requests whose valid token was revoked on the spot
    /// by [`revoke_presented`](super::MockServerBuilder::revoke_presented)
    /// (each one is also in `api_revoked`).
    pub api_revoked_in_use: u64,
    /// Protected resource requests refused, whatever their token, while
    /// [`refuse_every_token`](super::MockServer::refuse_every_token) was on.
    pub api_refused_all: u64,
    /// Protected resource requests answered from the
    /// [`fail_next_api`](super::MockServer::fail_next_api) queue.
    pub api_injected: u64,
    /// Protected resource requests refused with 413 (body over 1 MiB).
    pub api_too_large: u64,
    /// Protected resource answers held back by
    /// [`slow_api`](super::MockServerBuilder::slow_api) (each request also
    /// counts in its outcome).
    pub api_slowed: u64,
    /// Requests for any other path (404).
    pub not_found: u64,
}

/// One request received by the token endpoint, as it arrived, from
/// [`MockServer::grant_log`](super::MockServer::grant_log).
///
/// It holds the raw form, secrets included, so that a test can check every
/// byte the client sent; its `Debug` shows the body's length only.
#[non_exhaustive]
#[derive(Clone)]
pub struct RecordedGrant {
    /// The request method.
    pub method: http::Method,
    /// Path and query, as received.
    pub uri: String,
    /// The `Content-Type` header, if there was one that is valid text.
    pub content_type: Option<String>,
    /// The raw request body; empty when it was over 64 KiB or never fully arrived.
    pub body: Bytes,
    /// The `grant_type` parameter, if the body parses as a form that has one.
    pub grant_type: Option<String>,
}

impl fmt::Debug for RecordedGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordedGrant")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("content_type", &self.content_type)
            .field("grant_type", &self.grant_type)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// How a token endpoint request that met no fault ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GrantOutcome {
    PasswordOk,
    PasswordRejected,
    /// `revoked_access`: it revoked the access token issued with the
    /// refresh token presented.
    RefreshOk {
        revoked_access: bool,
    },
    /// `reused`: the refresh token had been spent by an earlier refresh;
    /// `expired`: it was past its lifetime.
    RefreshRejected {
        reused: bool,
        expired: bool,
    },
    /// A 400 or 413: not a grant request the endpoint could decide.
    BadRequest,
}

/// How a protected resource request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ApiOutcome {
    /// Its token was checked.
    Checked(Result<(), ApiDenial>),
    /// Its token was valid, and revoked on the spot.
    RevokedInUse,
    /// Refused whatever its token.
    RefusedAll,
    /// A queued status answered it.
    Injected,
    /// Its body was over the cap.
    TooLarge,
}

impl MockCounters {
    pub(super) fn count_grant(&mut self, outcome: GrantOutcome) {
        *match outcome {
            GrantOutcome::PasswordOk => &mut self.password_ok,
            GrantOutcome::PasswordRejected => &mut self.password_rejected,
            GrantOutcome::RefreshOk { revoked_access } => {
                self.refresh_revoked_access += u64::from(revoked_access);
                &mut self.refresh_ok
            }
            GrantOutcome::RefreshRejected { reused, expired } => {
                self.refresh_reuse += u64::from(reused);
                self.refresh_expired += u64::from(expired);
                &mut self.refresh_rejected
            }
            GrantOutcome::BadRequest => &mut self.bad_requests,
        } += 1;
    }

    pub(super) fn count_api(&mut self, outcome: ApiOutcome) {
        self.api_requests += 1;
        *match outcome {
            ApiOutcome::Checked(Ok(())) => &mut self.api_ok,
            ApiOutcome::Checked(Err(ApiDenial::NoToken)) => &mut self.api_no_token,
            ApiOutcome::Checked(Err(ApiDenial::Unknown)) => &mut self.api_unknown,
            ApiOutcome::Checked(Err(ApiDenial::Expired)) => &mut self.api_expired,
            ApiOutcome::Checked(Err(ApiDenial::Revoked)) => &mut self.api_revoked,
            ApiOutcome::RevokedInUse => {
                self.api_revoked_in_use += 1;
                &mut self.api_revoked
            }
            ApiOutcome::RefusedAll => &mut self.api_refused_all,
            ApiOutcome::Injected => &mut self.api_injected,
            ApiOutcome::TooLarge => &mut self.api_too_large,
        } += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_grant_outcome_adds_to_one_counter() {
        let mut c = MockCounters::default();
        c.count_grant(GrantOutcome::PasswordOk);
        c.count_grant(GrantOutcome::PasswordRejected);
        c.count_grant(GrantOutcome::RefreshOk {
            revoked_access: false,
        });
        c.count_grant(GrantOutcome::RefreshOk {
            revoked_access: true,
        });
        c.count_grant(GrantOutcome::RefreshRejected {
            reused: false,
            expired: false,
        });
        c.count_grant(GrantOutcome::RefreshRejected {
            reused: true,
            expired: false,
        });
        c.count_grant(GrantOutcome::RefreshRejected {
            reused: false,
            expired: true,
        });
        c.count_grant(GrantOutcome::BadRequest);
        assert_eq!(
            (c.password_ok, c.password_rejected, c.refresh_ok),
            (1, 1, 2)
        );
        assert_eq!(c.refresh_revoked_access, 1);
        assert_eq!(
            (c.refresh_rejected, c.refresh_reuse, c.bad_requests),
            (3, 1, 1)
        );
        assert_eq!(c.refresh_expired, 1);
        assert_eq!(c.grant_requests, 0, "counted when the request is logged");
    }

    #[test]
    fn each_api_outcome_adds_to_one_counter_and_the_total() {
        let mut c = MockCounters::default();
        let outcomes = [
            ApiOutcome::Checked(Ok(())),
            ApiOutcome::Checked(Err(ApiDenial::NoToken)),
            ApiOutcome::Checked(Err(ApiDenial::Unknown)),
            ApiOutcome::Checked(Err(ApiDenial::Expired)),
            ApiOutcome::Checked(Err(ApiDenial::Revoked)),
            ApiOutcome::RefusedAll,
            ApiOutcome::Injected,
            ApiOutcome::TooLarge,
        ];
        for outcome in outcomes {
            c.count_api(outcome);
        }
        let each = [
            c.api_ok,
            c.api_no_token,
            c.api_unknown,
            c.api_expired,
            c.api_revoked,
            c.api_refused_all,
            c.api_injected,
            c.api_too_large,
        ];
        assert_eq!(each, [1; 8]);
        assert_eq!(c.api_requests, 8);

        c.count_api(ApiOutcome::RevokedInUse);
        assert_eq!((c.api_revoked, c.api_revoked_in_use), (2, 1));
        assert_eq!(c.api_requests, 9);
    }
}
