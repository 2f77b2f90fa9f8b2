//! What the mock server remembers: the accepted login, every token it issued
//! and what became of it, the fault queues, the counters and the grant log.
//! It is plain synchronous logic behind one mutex, so that the HTTP handlers
//! and the test-facing methods of `MockServer` (also from sync code) share it.

use std::{
    collections::{HashMap, VecDeque, hash_map::RandomState},
    error::Error as StdError,
    fmt::{self, Write as _},
    hash::{BuildHasher, Hasher},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, StatusCode};
use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::{Fault, codes};
use crate::Credentials;

/// Cap on a token endpoint request body.
pub(super) const GRANT_BODY_LIMIT: usize = 64 * 1024;

/// Cap on a protected resource request body (it is echoed back).
pub(super) const API_BODY_LIMIT: usize = 1024 * 1024;

/// The `scope` of every token response.
pub(super) const SCOPE: &str = "api";

// === Public snapshot types ===

/// A snapshot of what the mock server has answered, from
/// [`MockServer::counters`](super::MockServer::counters).
///
/// Every request to the token endpoint counts once in `grant_requests` and,
/// unless a fault replaced its answer, once in exactly one of `password_ok`,
/// `password_rejected`, `refresh_ok`, `refresh_rejected` and `bad_requests`.
/// Every fault taken from the queue counts in `faults_injected`; a
/// [`Fault::Delay`] is followed by the normal answer, which counts as well.
/// `refresh_reuse` counts the refresh rejections (already in `refresh_rejected`)
/// whose token had been spent before.
///
/// Every protected resource check counts once in `api_requests` and once in
/// exactly one of `api_ok`, `api_no_token`, `api_unknown`, `api_expired`,
/// `api_revoked`, `api_injected` and `api_too_large`. A request whose body
/// never fully arrived is dropped without an outcome.
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
    /// Protected resource requests answered from the
    /// [`fail_next_api`](super::MockServer::fail_next_api) queue.
    pub api_injected: u64,
    /// Protected resource requests refused with 413 (body over 1 MiB).
    pub api_too_large: u64,
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

/// Why the protected resource refuses an access token.
///
/// `Display` is a short sentence without the token, fit for a
/// `tonic::Status` message.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiDenial {
    /// No bearer token was presented.
    NoToken,
    /// The token was never issued by this server (or was sent malformed, or in
    /// more than one `Authorization` header).
    Unknown,
    /// The token is past its lifetime.
    Expired,
    /// The token was revoked.
    Revoked,
}

impl ApiDenial {
    /// The `DAERR-` code of the 401 body that comes with this denial
    /// (see [`codes`](super::codes)).
    pub fn code(self) -> &'static str {
        match self {
            Self::NoToken => codes::MISSING_TOKEN,
            Self::Unknown => codes::INVALID_TOKEN,
            Self::Expired => codes::EXPIRED_TOKEN,
            Self::Revoked => codes::REVOKED_TOKEN,
        }
    }

    pub(super) fn message(self) -> &'static str {
        match self {
            Self::NoToken => "no bearer token",
            Self::Unknown => "invalid bearer token",
            Self::Expired => "expired bearer token",
            Self::Revoked => "revoked bearer token",
        }
    }
}

impl fmt::Display for ApiDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl StdError for ApiDenial {}

// === Shared state ===

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) token_lifetime: Duration,
    pub(super) rotation: bool,
    pub(super) reuse_protection: bool,
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

/// Everything a connection needs: the fixed settings and the state.
pub(super) struct Shared {
    pub(super) config: Config,
    state: Mutex<State>,
}

impl Shared {
    pub(super) fn new(config: Config, credentials: Credentials) -> Self {
        Self {
            config,
            state: Mutex::new(State::new(credentials)),
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
            .finish_non_exhaustive()
    }
}

/// Who a token was issued to. Reuse protection revokes by login.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Login {
    client_id: String,
    username: String,
}

#[derive(Debug)]
struct AccessEntry {
    login: Login,
    expires_at: Instant,
    revoked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefreshStatus {
    Live,
    /// Used by a refresh that rotated it; presenting it again is reuse.
    Spent,
    Revoked,
}

#[derive(Debug)]
struct RefreshEntry {
    login: Login,
    status: RefreshStatus,
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
    },
    Refused(Refusal),
}

/// What an `Authorization` header presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presented<'a> {
    Nothing,
    Bearer(&'a str),
    /// Something that cannot be a token we issued: not text, or several headers.
    Garbage,
}

impl<'a> Presented<'a> {
    /// Reads one `Authorization` header value (RFC 6750 §2.1: the scheme is
    /// case-insensitive, then one or more spaces, then the token).
    pub(super) fn from_header(value: Option<&'a str>) -> Self {
        let Some(value) = value else {
            return Self::Nothing;
        };
        let Some((scheme, rest)) = value.split_once(' ') else {
            return Self::Nothing;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Self::Nothing;
        }
        match rest.trim_start_matches(' ') {
            "" => Self::Nothing,
            token => Self::Bearer(token),
        }
    }
}

/// The server's memory. Every method is a short critical section: the HTTP
/// side never holds the guard across an `.await`.
#[derive(Debug)]
pub(super) struct State {
    credentials: Credentials,
    access: HashMap<String, AccessEntry>,
    refresh: HashMap<String, RefreshEntry>,
    grant_faults: VecDeque<Fault>,
    api_faults: VecDeque<StatusCode>,
    counters: MockCounters,
    grant_log: Vec<RecordedGrant>,
    tokens: TokenSource,
}

impl State {
    fn new(credentials: Credentials) -> Self {
        Self {
            credentials,
            access: HashMap::new(),
            refresh: HashMap::new(),
            grant_faults: VecDeque::new(),
            api_faults: VecDeque::new(),
            counters: MockCounters::default(),
            grant_log: Vec::new(),
            tokens: TokenSource::new(),
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
        let reply = self.decide_grant(config, input, now);
        if let GrantReply::Refused(refusal) = &reply
            && (refusal.status == StatusCode::BAD_REQUEST
                || refusal.status == StatusCode::PAYLOAD_TOO_LARGE)
        {
            self.counters.bad_requests += 1;
        }
        reply
    }

    fn decide_grant(
        &mut self,
        config: &Config,
        input: &GrantInput<'_>,
        now: Instant,
    ) -> GrantReply {
        if input.method != Method::POST {
            return GrantReply::Refused(Refusal::bad_request("the token endpoint takes POST only"));
        }
        if !input.content_type.is_some_and(is_form_content_type) {
            return GrantReply::Refused(Refusal::bad_request(
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let Some(body) = input.body else {
            return GrantReply::Refused(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::TOKEN_REQUEST_TOO_LARGE,
                "the request body is too large",
            ));
        };
        let Some(form) = parse_form(body) else {
            return GrantReply::Refused(Refusal::bad_request(
                "the body is not a form, or repeats a parameter",
            ));
        };
        match form.get("grant_type").map(String::as_str) {
            None => GrantReply::Refused(Refusal::bad_request("grant_type is required")),
            Some("password") => self.password_grant(config, &form, now),
            Some("refresh_token") => self.refresh_grant(config, &form, now),
            Some(_) => GrantReply::Refused(Refusal::new(
                StatusCode::BAD_REQUEST,
                codes::UNSUPPORTED_GRANT_TYPE,
                "grant_type must be password or refresh_token",
            )),
        }
    }

    fn client_matches(&self, form: &HashMap<String, String>) -> bool {
        form["client_id"] == self.credentials.client_id()
            && form["client_secret"] == self.credentials.client_secret().expose_secret()
    }

    fn password_grant(
        &mut self,
        config: &Config,
        form: &HashMap<String, String>,
        now: Instant,
    ) -> GrantReply {
        let required = ["client_id", "client_secret", "username", "password"];
        if !required.iter().all(|name| form.contains_key(*name)) {
            return GrantReply::Refused(Refusal::bad_request(
                "the password grant needs client_id, client_secret, username and password",
            ));
        }
        let refusal = if !self.client_matches(form) {
            Some(Refusal::unauthorized(
                codes::INVALID_CLIENT,
                "invalid client credentials",
            ))
        } else if form["username"] != self.credentials.username()
            || form["password"] != self.credentials.password().expose_secret()
        {
            Some(Refusal::unauthorized(
                codes::INVALID_CREDENTIALS,
                "invalid username or password",
            ))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.counters.password_rejected += 1;
            return GrantReply::Refused(refusal);
        }
        self.counters.password_ok += 1;
        let login = Login {
            client_id: form["client_id"].clone(),
            username: form["username"].clone(),
        };
        let refresh_token = self.issue_refresh(login.clone());
        let access_token = self.issue_access(config, login, now);
        GrantReply::Issued {
            access_token,
            refresh_token,
            expires_in: config.expires_in(),
        }
    }

    fn refresh_grant(
        &mut self,
        config: &Config,
        form: &HashMap<String, String>,
        now: Instant,
    ) -> GrantReply {
        let required = ["client_id", "client_secret", "refresh_token"];
        if !required.iter().all(|name| form.contains_key(*name)) {
            return GrantReply::Refused(Refusal::bad_request(
                "the refresh grant needs client_id, client_secret and refresh_token",
            ));
        }
        if !self.client_matches(form) {
            self.counters.refresh_rejected += 1;
            return GrantReply::Refused(Refusal::unauthorized(
                codes::INVALID_CLIENT,
                "invalid client credentials",
            ));
        }
        let presented = form["refresh_token"].as_str();
        let invalid = Refusal::unauthorized(codes::INVALID_REFRESH_TOKEN, "invalid refresh token");
        let Some(entry) = self.refresh.get_mut(presented) else {
            self.counters.refresh_rejected += 1;
            return GrantReply::Refused(invalid);
        };
        if entry.login.client_id != form["client_id"] {
            self.counters.refresh_rejected += 1;
            return GrantReply::Refused(invalid);
        }
        match entry.status {
            RefreshStatus::Revoked => {
                self.counters.refresh_rejected += 1;
                GrantReply::Refused(invalid)
            }
            RefreshStatus::Spent => {
                let login = entry.login.clone();
                self.counters.refresh_rejected += 1;
                self.counters.refresh_reuse += 1;
                if config.reuse_protection {
                    // Either the client or a thief holds a newer token of the
                    // same chain; the server cannot tell which, so nobody keeps one.
                    self.revoke_login(&login);
                }
                GrantReply::Refused(Refusal::unauthorized(
                    codes::REFRESH_TOKEN_REUSED,
                    "refresh token already used",
                ))
            }
            RefreshStatus::Live => {
                let login = entry.login.clone();
                let refresh_token = if config.rotation {
                    entry.status = RefreshStatus::Spent;
                    self.issue_refresh(login.clone())
                } else {
                    presented.to_owned()
                };
                self.counters.refresh_ok += 1;
                let access_token = self.issue_access(config, login, now);
                GrantReply::Issued {
                    access_token,
                    refresh_token,
                    expires_in: config.expires_in(),
                }
            }
        }
    }

    fn issue_access(&mut self, config: &Config, login: Login, now: Instant) -> String {
        let token = self.tokens.next();
        let expires_at = now + config.token_lifetime;
        self.access.insert(
            token.clone(),
            AccessEntry {
                login,
                expires_at,
                revoked: false,
            },
        );
        token
    }

    fn issue_refresh(&mut self, login: Login) -> String {
        let token = self.tokens.next();
        self.refresh.insert(
            token.clone(),
            RefreshEntry {
                login,
                status: RefreshStatus::Live,
            },
        );
        token
    }

    fn revoke_login(&mut self, login: &Login) {
        for entry in self.access.values_mut().filter(|e| e.login == *login) {
            entry.revoked = true;
        }
        for entry in self.refresh.values_mut().filter(|e| e.login == *login) {
            // Spent stays spent, so that presenting it again is still reuse.
            if entry.status == RefreshStatus::Live {
                entry.status = RefreshStatus::Revoked;
            }
        }
    }

    pub(super) fn revoke(&mut self, access_token: &str) -> bool {
        match self.access.get_mut(access_token) {
            Some(entry) if !entry.revoked => {
                entry.revoked = true;
                true
            }
            _ => false,
        }
    }

    pub(super) fn revoke_all(&mut self) {
        for entry in self.access.values_mut() {
            entry.revoked = true;
        }
        for entry in self.refresh.values_mut() {
            if entry.status == RefreshStatus::Live {
                entry.status = RefreshStatus::Revoked;
            }
        }
    }

    pub(super) fn expire_all(&mut self, now: Instant) {
        for entry in self.access.values_mut() {
            entry.expires_at = entry.expires_at.min(now);
        }
    }

    /// Takes the next queued API status, if any, and counts the request.
    pub(super) fn begin_api(&mut self) -> Option<StatusCode> {
        let status = self.api_faults.pop_front();
        if status.is_some() {
            self.counters.api_requests += 1;
            self.counters.api_injected += 1;
        }
        status
    }

    pub(super) fn count_api_too_large(&mut self) {
        self.counters.api_requests += 1;
        self.counters.api_too_large += 1;
    }

    pub(super) fn count_not_found(&mut self) {
        self.counters.not_found += 1;
    }

    /// Checks a presented token and counts the outcome.
    pub(super) fn check(
        &mut self,
        presented: Presented<'_>,
        now: Instant,
    ) -> Result<(), ApiDenial> {
        let outcome = match presented {
            Presented::Nothing => Err(ApiDenial::NoToken),
            Presented::Garbage => Err(ApiDenial::Unknown),
            Presented::Bearer(token) => match self.access.get(token) {
                None => Err(ApiDenial::Unknown),
                Some(entry) if entry.revoked => Err(ApiDenial::Revoked),
                Some(entry) if now >= entry.expires_at => Err(ApiDenial::Expired),
                Some(_) => Ok(()),
            },
        };
        let counters = &mut self.counters;
        counters.api_requests += 1;
        *match outcome {
            Ok(()) => &mut counters.api_ok,
            Err(ApiDenial::NoToken) => &mut counters.api_no_token,
            Err(ApiDenial::Unknown) => &mut counters.api_unknown,
            Err(ApiDenial::Expired) => &mut counters.api_expired,
            Err(ApiDenial::Revoked) => &mut counters.api_revoked,
        } += 1;
        outcome
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
    let mut seen = std::collections::HashSet::with_capacity(pairs.len());
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

/// Unguessable tokens without a new dependency: SipHash keyed by a
/// `RandomState` (128 random bits from the OS) over a counter is a
/// pseudo-random function, and four words make 256 bits. Hex is a valid
/// RFC 6750 `b64token` and URL-safe.
struct TokenSource {
    keys: RandomState,
    counter: u64,
}

impl TokenSource {
    fn new() -> Self {
        Self {
            keys: RandomState::new(),
            counter: 0,
        }
    }

    fn next(&mut self) -> String {
        self.counter += 1;
        let mut token = String::with_capacity(64);
        for word in 0..4u64 {
            let mut hasher = self.keys.build_hasher();
            hasher.write_u64(self.counter);
            hasher.write_u64(word);
            // Writing to a String cannot fail.
            let _ = write!(token, "{:016x}", hasher.finish());
        }
        token
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            token_lifetime: Duration::from_secs(3600),
            rotation: true,
            reuse_protection: false,
            grant_latency: Duration::ZERO,
        }
    }

    fn state() -> State {
        State::new(Credentials::new("cid", "csecret", "user", "pass"))
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

    fn issued(reply: GrantReply) -> (String, String) {
        match reply {
            GrantReply::Issued {
                access_token,
                refresh_token,
                ..
            } => (access_token, refresh_token),
            GrantReply::Refused(refusal) => panic!("refused: {refusal:?}"),
        }
    }

    fn refused(reply: GrantReply) -> Refusal {
        match reply {
            GrantReply::Refused(refusal) => refusal,
            GrantReply::Issued { .. } => panic!("issued"),
        }
    }

    fn refresh_body(token: &str) -> String {
        format!(
            "grant_type=refresh_token&client_id=cid&client_secret=csecret&refresh_token={token}"
        )
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
    fn tokens_are_distinct_hex() {
        let mut source = TokenSource::new();
        let a = source.next();
        let b = source.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(TokenSource::new().next(), TokenSource::new().next());
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
    fn bad_requests_are_counted_once() {
        let mut s = state();
        let now = Instant::now();
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
        let statuses: Vec<_> = cases
            .iter()
            .map(|input| refused(s.grant(&config(), input, now)).status)
            .collect();
        assert_eq!(statuses[3], StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            statuses
                .iter()
                .enumerate()
                .all(|(i, st)| i == 3 || *st == StatusCode::BAD_REQUEST)
        );
        assert_eq!(s.counters().bad_requests, cases.len() as u64);
        assert_eq!(s.counters().password_rejected, 0);
    }

    #[test]
    fn password_grant_checks_client_and_user() {
        let mut s = state();
        let now = Instant::now();
        let wrong_client = PASSWORD.replace("csecret", "nope");
        let wrong_user = PASSWORD.replace("password=pass", "password=nope");
        assert_eq!(
            refused(s.grant(&config(), &form_input(&wrong_client), now)).code,
            codes::INVALID_CLIENT
        );
        assert_eq!(
            refused(s.grant(&config(), &form_input(&wrong_user), now)).code,
            codes::INVALID_CREDENTIALS
        );
        let (access, _) = issued(s.grant(&config(), &form_input(PASSWORD), now));
        assert_eq!(s.check(Presented::Bearer(&access), now), Ok(()));
        let c = s.counters();
        assert_eq!((c.password_rejected, c.password_ok, c.api_ok), (2, 1, 1));
    }

    #[test]
    fn rotation_spends_and_reuse_is_detected() {
        let mut s = state();
        let now = Instant::now();
        let (_, first) = issued(s.grant(&config(), &form_input(PASSWORD), now));
        let (_, second) = issued(s.grant(&config(), &form_input(&refresh_body(&first)), now));
        assert_ne!(first, second);
        let again = refused(s.grant(&config(), &form_input(&refresh_body(&first)), now));
        assert_eq!(again.code, codes::REFRESH_TOKEN_REUSED);
        // Without reuse protection the newer token still works.
        issued(s.grant(&config(), &form_input(&refresh_body(&second)), now));
        let c = s.counters();
        assert_eq!(
            (c.refresh_ok, c.refresh_rejected, c.refresh_reuse),
            (2, 1, 1)
        );
    }

    #[test]
    fn reuse_protection_revokes_the_login() {
        let mut s = state();
        let cfg = Config {
            reuse_protection: true,
            ..config()
        };
        let now = Instant::now();
        let (access, first) = issued(s.grant(&cfg, &form_input(PASSWORD), now));
        let (access2, second) = issued(s.grant(&cfg, &form_input(&refresh_body(&first)), now));
        refused(s.grant(&cfg, &form_input(&refresh_body(&first)), now));
        assert_eq!(
            s.check(Presented::Bearer(&access), now),
            Err(ApiDenial::Revoked)
        );
        assert_eq!(
            s.check(Presented::Bearer(&access2), now),
            Err(ApiDenial::Revoked)
        );
        let r = refused(s.grant(&cfg, &form_input(&refresh_body(&second)), now));
        assert_eq!(r.code, codes::INVALID_REFRESH_TOKEN);
        assert_eq!(s.counters().refresh_reuse, 1);
    }

    #[test]
    fn no_rotation_keeps_the_refresh_token() {
        let mut s = state();
        let cfg = Config {
            rotation: false,
            ..config()
        };
        let now = Instant::now();
        let (_, first) = issued(s.grant(&cfg, &form_input(PASSWORD), now));
        let (_, same) = issued(s.grant(&cfg, &form_input(&refresh_body(&first)), now));
        assert_eq!(first, same);
        issued(s.grant(&cfg, &form_input(&refresh_body(&first)), now));
        assert_eq!(s.counters().refresh_reuse, 0);
    }

    #[test]
    fn expiry_uses_the_exact_lifetime() {
        let mut s = state();
        let cfg = Config {
            token_lifetime: Duration::from_millis(1500),
            ..config()
        };
        let now = Instant::now();
        let (access, _) = issued(s.grant(&cfg, &form_input(PASSWORD), now));
        let token = Presented::Bearer(&access);
        assert_eq!(s.check(token, now + Duration::from_millis(1499)), Ok(()));
        assert_eq!(
            s.check(token, now + Duration::from_millis(1500)),
            Err(ApiDenial::Expired)
        );
        assert!(s.revoke(&access));
        assert!(!s.revoke(&access), "already revoked");
        assert_eq!(s.check(token, now), Err(ApiDenial::Revoked));
    }

    #[test]
    fn authorization_header_parsing() {
        assert_eq!(Presented::from_header(None), Presented::Nothing);
        assert_eq!(
            Presented::from_header(Some("Basic abc")),
            Presented::Nothing
        );
        assert_eq!(Presented::from_header(Some("Bearer")), Presented::Nothing);
        assert_eq!(Presented::from_header(Some("Bearer ")), Presented::Nothing);
        assert_eq!(
            Presented::from_header(Some("bearer  abc")),
            Presented::Bearer("abc")
        );
        assert_eq!(
            Presented::from_header(Some("BEARER abc")),
            Presented::Bearer("abc")
        );
    }
}
