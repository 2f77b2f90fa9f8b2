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
mod builder;
pub mod codes;
mod counters;
mod dice;
mod fault;
mod grant;
mod response;
mod server;
mod state;

use std::{fmt, net::SocketAddr, sync::Arc};

use tokio::{sync::watch, task::JoinHandle, time::Instant};

pub use self::{
    books::ApiDenial,
    builder::MockServerBuilder,
    counters::{MockCounters, RecordedGrant},
    fault::Fault,
};
use self::{books::Presented, state::Shared};
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
