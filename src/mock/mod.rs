//! A Daxium-compatible HTTP server on 127.0.0.1, for tests and examples: the
//! token endpoint (password and refresh grants, rotation, reuse detection) and
//! a protected resource under `/api/` that checks bearer tokens and echoes the
//! request body. Tests steer it from code: queue faults, revoke tokens, change
//! the accepted login, and read counters and the log of grant requests.
//!
//! ```
//! use std::time::Duration;
//!
//! use daxium_auth::mock::{ApiDenial, Fault, MockServer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let server = MockServer::builder()
//!     .token_lifetime(Duration::from_secs(5))
//!     .start()
//!     .await?;
//! assert!(server.token_url().starts_with("http://127.0.0.1:"));
//!
//! // Point an `AuthLayer` at `server.token_url()` with `server.credentials()`;
//! // its first token request will meet a 500.
//! server.fail_next_grants(1, Fault::ServerError);
//!
//! assert_eq!(server.check_access_token("made-up"), Err(ApiDenial::Unknown));
//! assert_eq!(server.counters().api_unknown, 1);
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Protocol
//!
//! - `POST /oauth/v2/token` as in the Daxium contract: a form with
//!   `grant_type=password` (`client_id`, `client_secret`, `username`,
//!   `password`) or `grant_type=refresh_token` (`client_id`, `client_secret`,
//!   `refresh_token`); 200 with `access_token`, `refresh_token`, `expires_in`,
//!   `token_type: "bearer"` and `scope`. A wrong login or refresh token is a
//!   401, a malformed request a 400, a body over 64 KiB a 413, each with a
//!   Daxium error body (`code`, `message`, `url`, `api_version`, `infos`,
//!   `server_time`) whose code is one of [`codes`]. Parameters follow RFC 6749
//!   §3.1: an empty one is as if omitted, a repeated one is a 400, unknown ones
//!   are ignored.
//! - Any method on `/api` or `/api/...`: the body is read (up to 1 MiB, over
//!   it a 413), then `Authorization: Bearer <token>` is checked. A missing,
//!   unknown, expired or revoked token is a 401 with
//!   `WWW-Authenticate: Bearer realm="daxium"` (plus `error="invalid_token"`
//!   when a token was sent) and a Daxium error body, or a gRPC refusal with
//!   [`MockServerBuilder::grpc_refusals`]. A valid one gets a 200
//!   whose body is the request body byte for byte, with the request's
//!   `Content-Type`, and `x-echo-method` and `x-echo-uri` headers.
//! - Anything else: 404.
//!
//! Access tokens expire after the configured lifetime, measured on
//! `tokio::time::Instant` (so paused test time applies); refresh tokens do not
//! expire unless [`MockServerBuilder::refresh_token_lifetime`] says. A refresh leaves earlier access tokens valid until they expire
//! (unless [`MockServerBuilder::revoke_on_refresh`]).
//! Changing the credentials leaves issued tokens valid: call
//! [`MockServer::revoke_all`] too to force a new password grant.
//!
//! # What real servers do
//!
//! Off by default, each set on the builder: revoking tokens in use at a
//! rate ([`MockServerBuilder::revoke_presented`]), revoking the access token
//! of the pair a refresh replaces ([`MockServerBuilder::revoke_on_refresh`]),
//! holding back some answers ([`MockServerBuilder::slow_api`]), refusing
//! the gRPC way ([`MockServerBuilder::grpc_refusals`]). At any
//! time, [`MockServer::refuse_every_token`] makes the API refuse every token
//! until told to stop.
//! The random decisions
//! come from one generator that [`MockServerBuilder::seed`] makes
//! reproducible.

mod api;
mod books;
pub mod codes;
mod counters;
mod dice;
mod fault;
mod grant;
mod response;
mod server;
mod state;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle, time::Instant};

use self::{
    api::{ApiConfig, SlowApi},
    books::Presented,
    dice::Dice,
    grant::Config,
    state::Shared,
};
pub use self::{
    books::ApiDenial,
    counters::{MockCounters, RecordedGrant},
    fault::Fault,
};
use crate::Credentials;

// === impl MockServer ===

/// A running Daxium-compatible server on 127.0.0.1 (see the [module docs](self)).
///
/// Dropping it shuts it down: the listener closes and every connection ends.
/// [`shutdown`](Self::shutdown) does the same and waits until it is done.
/// It must be started inside a tokio runtime. `Debug` shows the address and
/// the settings, never a secret.
pub struct MockServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Dropping it tells every task to stop.
    shutdown: Option<watch::Sender<()>>,
    accept: Option<JoinHandle<()>>,
}

impl MockServer {
    /// A builder to set the login, token lifetime and behaviour before starting.
    pub fn builder() -> MockServerBuilder {
        MockServerBuilder::new()
    }

    /// Starts a server with the defaults of [`MockServerBuilder`].
    ///
    /// # Errors
    ///
    /// When no port can be bound on 127.0.0.1.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        Self::builder().start().await
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint: `http://127.0.0.1:PORT/oauth/v2/token`.
    pub fn token_url(&self) -> String {
        format!("{}{}", self.base_url(), server::TOKEN_PATH)
    }

    /// A protected resource URL: `http://127.0.0.1:PORT/api/<path>` (a leading
    /// `/` on `path` is dropped).
    pub fn api_url(&self, path: &str) -> String {
        format!("{}/api/{}", self.base_url(), path.trim_start_matches('/'))
    }

    /// The login the password grant accepts now.
    pub fn credentials(&self) -> Credentials {
        self.shared.lock().credentials().clone()
    }

    /// Changes the accepted login: from now on the password grant refuses the
    /// old one, and refresh grants need the new client id and secret. Tokens
    /// already issued stay valid.
    pub fn set_credentials(&self, credentials: Credentials) {
        self.shared.lock().set_credentials(credentials);
    }

    /// Queues `fault` for the next `n` requests to the token endpoint (after
    /// those already queued).
    pub fn fail_next_grants(&self, n: usize, fault: Fault) {
        self.shared.lock().queue_grant_faults(n, fault);
    }

    /// Makes the next `n` protected resource requests (after those already
    /// queued) answer `status` whatever their token, with a Daxium error body
    /// ([`codes::INJECTED`]). A 401 is exactly what an invalid token gets:
    /// [`codes::INVALID_TOKEN`] and `WWW-Authenticate: Bearer ... error="invalid_token"`.
    /// The token itself stays valid.
    pub fn fail_next_api(&self, n: usize, status: http::StatusCode) {
        self.shared.lock().queue_api_faults(n, status);
    }

    /// Revokes one access token. Returns whether it was issued by this server
    /// and not revoked already.
    pub fn revoke(&self, access_token: &str) -> bool {
        self.shared.lock().revoke(access_token)
    }

    /// While on, the protected resource refuses every request as it refuses
    /// an invalid token (401, `WWW-Authenticate: Bearer realm="daxium",
    /// error="invalid_token"`, [`codes::INVALID_TOKEN`]), whatever token it
    /// carries, none included; off (the default), it checks tokens again.
    ///
    /// No token is revoked: the valid ones work again once it is off. This is
    /// an API in trouble rather than a token that was revoked: a gateway
    /// that lost its signing keys, a permissions problem behind a bare 401.
    /// A client that answers each such 401 with a new grant would hammer the
    /// token endpoint for nothing. Each request refused so counts in
    /// `api_refused_all`; [`check_access_token`](Self::check_access_token)
    /// refuses too, with [`ApiDenial::Unknown`].
    pub fn refuse_every_token(&self, on: bool) {
        self.shared.lock().refuse_every_token(on);
    }

    /// Revokes every access token and every refresh token not yet spent.
    pub fn revoke_all(&self) {
        self.shared.lock().revoke_all();
    }

    /// Makes every access token issued so far expired, as if its lifetime had
    /// passed; refresh tokens are untouched.
    pub fn expire_all(&self) {
        self.shared.lock().expire_all(Instant::now());
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> MockCounters {
        self.shared.lock().counters()
    }

    /// Every request the token endpoint received, in order of arrival.
    pub fn grant_log(&self) -> Vec<RecordedGrant> {
        self.shared.lock().grant_log()
    }

    /// Checks an access token (the bare token, without `Bearer `) as the
    /// protected resource would, and counts the outcome like an API request.
    /// Made for tonic interceptors in tests. An empty token is
    /// [`ApiDenial::NoToken`].
    pub fn check_access_token(&self, token: &str) -> Result<(), ApiDenial> {
        let presented = if token.is_empty() {
            Presented::Nothing
        } else {
            Presented::Bearer(token)
        };
        self.shared
            .lock()
            .check(&self.shared.api, presented, Instant::now())
    }

    /// Checks an `Authorization` header value (`Bearer <token>`, scheme in any
    /// case) as the protected resource would, and counts the outcome like an
    /// API request. `None`, or another scheme, is [`ApiDenial::NoToken`].
    pub fn check_authorization(&self, authorization: Option<&str>) -> Result<(), ApiDenial> {
        self.shared.lock().check(
            &self.shared.api,
            Presented::from_header(authorization),
            Instant::now(),
        )
    }

    /// Shuts the server down and waits until the listener is closed and every
    /// connection has ended.
    pub async fn shutdown(mut self) {
        drop(self.shutdown.take());
        if let Some(accept) = self.accept.take() {
            // The loop only ends by itself; an error means it panicked or was
            // aborted, and either way it is gone.
            let _ = accept.await;
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // Aborting drops the loop's future, whose `JoinSet`s abort every
        // connection and stream task; the sender, dropped next, stops any of
        // them already running.
        if let Some(accept) = &self.accept {
            accept.abort();
        }
    }
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("config", &self.shared.config)
            .field("api", &self.shared.api)
            .finish_non_exhaustive()
    }
}

// === impl MockServerBuilder ===

/// Settings of a [`MockServer`], from [`MockServer::builder`].
///
/// `Debug` shows the client id and username, never the secret or the password.
#[derive(Debug, Clone)]
pub struct MockServerBuilder {
    credentials: Credentials,
    config: Config,
    api: ApiConfig,
    seed: Option<u64>,
}

impl MockServerBuilder {
    fn new() -> Self {
        Self {
            credentials: Credentials::new(
                "daxium-client",
                "daxium-client-secret",
                "user@example.com",
                "correct horse battery staple",
            ),
            config: Config {
                token_lifetime: Duration::from_secs(3600),
                refresh_lifetime: None,
                rotation: true,
                reuse_protection: false,
                revoke_on_refresh: false,
                grant_latency: Duration::ZERO,
            },
            api: ApiConfig {
                revoke_presented: 0.0,
                slow: None,
                grpc_refusals: false,
            },
            seed: None,
        }
    }

    /// The login that the password grant accepts. Default:
    /// `daxium-client` / `daxium-client-secret`, `user@example.com` /
    /// `correct horse battery staple`.
    #[must_use]
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// How long an access token is valid. Default: one hour.
    ///
    /// `expires_in` is sent in whole seconds rounded up, at least 1; the
    /// server enforces the exact duration. Zero makes every token expired
    /// from birth.
    #[must_use]
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.token_lifetime = lifetime;
        self
    }

    /// How long a refresh token is taken: from then on a refresh grant that
    /// presents it is refused (401, [`codes::EXPIRED_REFRESH_TOKEN`]) and
    /// counted in `refresh_expired`. Default: refresh tokens do not expire.
    ///
    /// Every token answer then carries `refresh_expires_in`: the refresh
    /// token's remaining life, in whole seconds rounded down (at least 1),
    /// as Keycloak and other servers send it. A refresh without
    /// [`rotation`](Self::rotation) keeps the token's expiry, and states
    /// what is left of it.
    #[must_use]
    pub fn refresh_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.refresh_lifetime = Some(lifetime);
        self
    }

    /// Whether each refresh issues a new refresh token and spends the one
    /// presented. Default: on, as Daxium does. Off, the refresh response
    /// carries the same refresh token, which stays valid.
    #[must_use]
    pub fn rotation(mut self, on: bool) -> Self {
        self.config.rotation = on;
        self
    }

    /// Whether presenting a spent refresh token revokes every token (access
    /// and refresh) issued to that login, that is the same client id and
    /// username. Default: off. Either way the reuse is refused (401,
    /// [`codes::REFRESH_TOKEN_REUSED`]) and counted in `refresh_reuse`.
    #[must_use]
    pub fn reuse_protection(mut self, on: bool) -> Self {
        self.config.reuse_protection = on;
        self
    }

    /// Whether a successful refresh grant revokes the access token that was
    /// issued together with the refresh token presented. Default: off, as
    /// Daxium does: earlier access tokens live until they expire.
    ///
    /// On, a refresh replaces the pair presented whole, as django-oauth-toolkit,
    /// node-oauth2-server and others do: a request still in flight with the
    /// old access token meets a 401 once the refresh is processed, which is
    /// why the layer makes a replay wait for the refresh in flight. Without
    /// [`rotation`](Self::rotation) the refresh token comes back, and its
    /// next refresh revokes the access token of this one. Each token revoked
    /// (not already revoked) counts in `refresh_revoked_access`.
    #[must_use]
    pub fn revoke_on_refresh(mut self, on: bool) -> Self {
        self.config.revoke_on_refresh = on;
        self
    }

    /// How long every token endpoint answer is held back, faults included.
    /// Default: zero. The grant itself takes effect when the request arrives.
    #[must_use]
    pub fn grant_latency(mut self, latency: Duration) -> Self {
        self.config.grant_latency = latency;
        self
    }

    /// The probability that a protected resource request presenting a valid
    /// access token revokes that token on the spot. Default: 0.0, never.
    ///
    /// The request is answered exactly as a revoked token is (401,
    /// `WWW-Authenticate: Bearer realm="daxium", error="invalid_token"`,
    /// [`codes::REVOKED_TOKEN`]), and the token stays revoked; its refresh
    /// token is untouched. Real servers revoke tokens in use when a session
    /// is ended elsewhere: a password change, an administrator's logout, a
    /// security event (Keycloak's session revocation, Auth0's and Okta's
    /// user logouts), at times nobody can predict. Each one counts in
    /// `api_revoked` and in `api_revoked_in_use`. The draws come from the
    /// server's one generator: see [`seed`](Self::seed).
    ///
    /// # Panics
    ///
    /// When `rate` is not within 0.0..=1.0 (NaN included): a test that asks
    /// for an impossible rate has a bug, which clamping would hide.
    #[must_use]
    pub fn revoke_presented(mut self, rate: f64) -> Self {
        self.api.revoke_presented = probability("revoke_presented", rate);
        self
    }

    /// Holds back `fraction` of the protected resource's answers for
    /// `latency` each (chosen at random, from the generator of
    /// [`seed`](Self::seed)). Default: none.
    ///
    /// The draw is made once the token is checked, for every answer of the
    /// check, refusals included (not for the queued answers of
    /// [`MockServer::fail_next_api`] nor for a 413); the decision itself,
    /// a revocation too, takes effect when the request arrives, and only the
    /// answer waits, as behind a slow backend or a saturated gateway, the
    /// long tail of every real API. So a 401 held back can reach the client
    /// after its token was replaced. Measured with `tokio::time`: paused
    /// test time applies. Each answer held back counts in `api_slowed`.
    ///
    /// # Panics
    ///
    /// When `fraction` is not within 0.0..=1.0 (NaN included).
    #[must_use]
    pub fn slow_api(mut self, fraction: f64, latency: Duration) -> Self {
        let fraction = probability("slow_api", fraction);
        self.api.slow = Some(SlowApi { fraction, latency });
        self
    }

    /// Whether every refusal of the protected resource is answered as a gRPC
    /// server refuses a call: HTTP 200, `Content-Type: application/grpc`,
    /// `grpc-status: 16` (UNAUTHENTICATED) and a `grpc-message` (the
    /// `DAERR-` code and the reason, as in [`codes`]) in the headers, and an
    /// empty body: a trailers-only response, on HTTP/2 one HEADERS frame
    /// that ends the stream. Default: off, a Daxium 401.
    ///
    /// Every refusal means a missing, unknown, expired or revoked token,
    /// those of [`revoke_presented`](Self::revoke_presented) and
    /// [`MockServer::refuse_every_token`], and a 401 queued with
    /// [`MockServer::fail_next_api`]; other queued statuses and successful
    /// answers stay as they are. gRPC servers (tonic, grpc-go, grpc-java)
    /// refuse a token this way, never with a 401, and so do proxies that
    /// answer a gRPC call themselves (Envoy turns its own 401 into
    /// UNAUTHENTICATED): a client that only looks for 401s passes each
    /// refusal to its caller. The counters are the same either way.
    #[must_use]
    pub fn grpc_refusals(mut self, on: bool) -> Self {
        self.api.grpc_refusals = on;
        self
    }

    /// Seeds the generator that decides every random behaviour
    /// ([`revoke_presented`](Self::revoke_presented),
    /// [`slow_api`](Self::slow_api)), so that a test that sends its requests
    /// one after the other sees the same decisions on every run. Default: seeded from
    /// the operating system, different on each start. The tokens do not come
    /// from it: they stay unguessable whatever the seed.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Binds an ephemeral port on 127.0.0.1 and starts serving.
    ///
    /// # Errors
    ///
    /// When no port can be bound.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start(self) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let dice = self.seed.map_or_else(Dice::unseeded, Dice::seeded);
        let shared = Arc::new(Shared::new(self.config, self.api, self.credentials, dice));
        let (shutdown, watcher) = watch::channel(());
        let accept = tokio::spawn(server::accept_loop(listener, Arc::clone(&shared), watcher));
        Ok(MockServer {
            shared,
            addr,
            shutdown: Some(shutdown),
            accept: Some(accept),
        })
    }
}

impl Default for MockServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// `p`, if it is a probability; a panic that names the setter otherwise.
#[track_caller]
fn probability(setter: &str, p: f64) -> f64 {
    assert!(
        (0.0..=1.0).contains(&p),
        "MockServerBuilder::{setter}: {p} is not a probability within 0.0..=1.0"
    );
    p
}
