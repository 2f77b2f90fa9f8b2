//! What the mock server remembers, behind one mutex: the accepted login, the
//! token books, the fault queues, the refuse-every-token switch, the dice,
//! the counters and the grant log. Each method is one short critical section
//! that the HTTP handlers and the test-facing methods of `MockServer` (also
//! from sync code) share.

use std::{
    collections::VecDeque,
    fmt,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use http::StatusCode;
use tokio::time::Instant;

use super::{
    Fault,
    api::{ApiConfig, decide_api, hold_back},
    books::{ApiDenial, Books, Presented},
    counters::{ApiOutcome, MockCounters, RecordedGrant},
    dice::Dice,
    grant::{Config, GrantInput, GrantReply, decide_grant},
};
use crate::Credentials;

/// Everything a connection needs: the fixed settings and the state.
pub(super) struct Shared {
    pub(super) config: Config,
    pub(super) api: ApiConfig,
    state: Mutex<State>,
}

impl Shared {
    pub(super) fn new(
        config: Config,
        api: ApiConfig,
        credentials: Credentials,
        dice: Dice,
    ) -> Self {
        Self {
            config,
            api,
            state: Mutex::new(State::new(credentials, dice)),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not turn every
        // later call (a Drop, another test's assertion) into a second panic;
        // each critical section leaves the state consistent anyway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// The server's memory. The HTTP side never holds the guard across an `.await`.
#[derive(Debug)]
pub(super) struct State {
    credentials: Credentials,
    books: Books,
    grant_faults: VecDeque<Fault>,
    api_faults: VecDeque<StatusCode>,
    refuse_every_token: bool,
    dice: Dice,
    counters: MockCounters,
    grant_log: Vec<RecordedGrant>,
}

impl State {
    fn new(credentials: Credentials, dice: Dice) -> Self {
        Self {
            credentials,
            books: Books::new(),
            grant_faults: VecDeque::new(),
            api_faults: VecDeque::new(),
            refuse_every_token: false,
            dice,
            counters: MockCounters::default(),
            grant_log: Vec::new(),
        }
    }

    pub(super) fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub(super) fn set_credentials(&mut self, credentials: Credentials) {
        self.credentials = credentials;
    }

    pub(super) fn counters(&self) -> MockCounters {
        self.counters
    }

    pub(super) fn grant_log(&self) -> Vec<RecordedGrant> {
        self.grant_log.clone()
    }

    pub(super) fn queue_grant_faults(&mut self, n: usize, fault: Fault) {
        self.grant_faults.extend(std::iter::repeat_n(fault, n));
    }

    pub(super) fn queue_api_faults(&mut self, n: usize, status: StatusCode) {
        self.api_faults.extend(std::iter::repeat_n(status, n));
    }

    /// Logs a token endpoint request.
    pub(super) fn record_grant(&mut self, recorded: RecordedGrant) {
        self.grant_log.push(recorded);
        self.counters.grant_requests += 1;
    }

    /// Takes the fault that the request just recorded is to meet, if any.
    pub(super) fn take_grant_fault(&mut self) -> Option<Fault> {
        let fault = self.grant_faults.pop_front();
        if fault.is_some() {
            self.counters.faults_injected += 1;
        }
        fault
    }

    /// Decides a token endpoint request and counts the outcome.
    pub(super) fn grant(
        &mut self,
        config: &Config,
        input: &GrantInput<'_>,
        now: Instant,
    ) -> GrantReply {
        let (reply, outcome) = decide_grant(&mut self.books, &self.credentials, config, input, now);
        self.counters.count_grant(outcome);
        reply
    }

    pub(super) fn revoke(&mut self, access_token: &str) -> bool {
        self.books.revoke(access_token)
    }

    pub(super) fn refuse_every_token(&mut self, on: bool) {
        self.refuse_every_token = on;
    }

    pub(super) fn revoke_all(&mut self) {
        self.books.revoke_all();
    }

    pub(super) fn expire_all(&mut self, now: Instant) {
        self.books.expire_all(now);
    }

    /// Takes the next queued API status, if any, and counts the request.
    pub(super) fn begin_api(&mut self) -> Option<StatusCode> {
        let status = self.api_faults.pop_front();
        if status.is_some() {
            self.counters.count_api(ApiOutcome::Injected);
        }
        status
    }

    pub(super) fn count_api_too_large(&mut self) {
        self.counters.count_api(ApiOutcome::TooLarge);
    }

    pub(super) fn count_not_found(&mut self) {
        self.counters.not_found += 1;
    }

    /// Decides whether the protected resource lets `presented` through, and
    /// counts the outcome.
    pub(super) fn check(
        &mut self,
        config: &ApiConfig,
        presented: Presented<'_>,
        now: Instant,
    ) -> Result<(), ApiDenial> {
        let (answer, outcome) = decide_api(
            &mut self.books,
            &mut self.dice,
            config,
            self.refuse_every_token,
            presented,
            now,
        );
        self.counters.count_api(outcome);
        answer
    }

    /// How long the answer just decided is held back, and counts it.
    pub(super) fn hold_back(&mut self, config: &ApiConfig) -> Duration {
        let hold = hold_back(&mut self.dice, config);
        self.counters.api_slowed += u64::from(hold.is_some());
        hold.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;

    #[test]
    fn every_request_counts_once_in_its_outcome() {
        let config = Config {
            token_lifetime: Duration::from_secs(60),
            refresh_lifetime: None,
            rotation: true,
            reuse_protection: false,
            revoke_on_refresh: false,
            grant_latency: Duration::ZERO,
        };
        let api = ApiConfig {
            revoke_presented: 0.0,
            slow: None,
            grpc_refusals: false,
        };
        let mut state = State::new(
            Credentials::new("cid", "csecret", "user", "pass"),
            Dice::seeded(0),
        );
        let now = Instant::now();
        let grant = |state: &mut State, method: &Method, body: &str| {
            let input = GrantInput {
                method,
                content_type: Some("application/x-www-form-urlencoded"),
                body: Some(body.as_bytes()),
            };
            state.grant(&config, &input, now)
        };
        let password =
            "grant_type=password&client_id=cid&client_secret=csecret&username=user&password=pass";
        let GrantReply::Issued { access_token, .. } = grant(&mut state, &Method::POST, password)
        else {
            panic!("refused");
        };
        grant(&mut state, &Method::GET, password);
        grant(
            &mut state,
            &Method::POST,
            &password.replace("password=pass", "password=nope"),
        );
        assert_eq!(
            state.check(&api, Presented::Bearer(&access_token), now),
            Ok(())
        );
        assert!(state.revoke(&access_token));
        assert_eq!(
            state.check(&api, Presented::Bearer(&access_token), now),
            Err(ApiDenial::Revoked)
        );
        state.queue_api_faults(1, StatusCode::BAD_GATEWAY);
        assert_eq!(state.begin_api(), Some(StatusCode::BAD_GATEWAY));
        assert_eq!(state.begin_api(), None, "nothing queued, nothing counted");

        let c = state.counters();
        assert_eq!(
            (c.password_ok, c.bad_requests, c.password_rejected),
            (1, 1, 1)
        );
        assert_eq!(
            (c.api_requests, c.api_ok, c.api_revoked, c.api_injected),
            (3, 1, 1, 1)
        );
    }
}
