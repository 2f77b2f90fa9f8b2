//! Authenticated Daxium Air API clients from any tower HTTP stack.
//!
//! A tower layer that makes any tower HTTP client stack an authenticated Daxium
//! Air API client. The application builds its client (hyper, tonic,
//! reqwest-middleware), adds one [`AuthLayer`], and never touches a token again:
//! the layer logs in with the OAuth2 password grant, keeps the token pair fresh
//! with the refresh grant before it expires, collapses concurrent refreshes into
//! one, survives token endpoint outages with backoff, and sends again the
//! request that met a revoked token. Doing this by hand means a lock around the
//! token, a timer, a retry loop and a copy of every request body; done wrong it
//! means a stampede of logins when the token expires, a refresh token spent
//! twice, or an account locked by a client that retries a wrong password.
//!
//! # Quickstart
//!
//! ```toml
//! [dependencies]
//! daxium-auth = "0.1"
//! ```
//!
//! ```no_run
//! use bytes::Bytes;
//! use daxium_auth::{AuthLayer, Credentials, ReplayBody};
//! use http_body_util::Full;
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let credentials = Credentials::new("client-id", "client-secret", "me@example.com", "password");
//! let auth = AuthLayer::new("https://api.daxium-air.com/oauth/v2/token", credentials)?;
//! // Optional: log in now, so that wrong credentials fail at start-up rather
//! // than at the first request. `auth.is_ready()` says so to a probe.
//! auth.login().await?;
//!
//! let https = hyper_rustls::HttpsConnectorBuilder::new()
//!     .with_webpki_roots()
//!     .https_only()
//!     .enable_http1()
//!     .enable_http2()
//!     .build();
//! // The inner client sees `ReplayBody<B>`: the layer records the body as the
//! // client streams it, so that it can send it again after a 401.
//! let client = Client::builder(TokioExecutor::new()).build::<_, ReplayBody<Full<Bytes>>>(https);
//! let api = ServiceBuilder::new().layer(auth).service(client);
//!
//! let request = http::Request::post("https://api.daxium-air.com/api/v1/submissions")
//!     .header("content-type", "application/json")
//!     .body(Full::from(r#"{"structure_id":42}"#))?;
//! let response = api.clone().oneshot(request).await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```
//!
//! [`AuthLayer`] is cheap to clone; every service it makes shares one token
//! cache. Errors keep the two failures apart: [`Error::Token`] (no token could
//! be had: [`TokenError`], with predicates such as
//! [`is_grant_rejected()`](TokenError::is_grant_rejected) and
//! [`is_transient()`](TokenError::is_transient)) and [`Error::Inner`] (the
//! client's own error). To try it without a server, see
//! [`guide::without_a_server`].
//!
//! # What it does
//!
//! - **The first request logs in.** Requests made while the login is in flight
//!   wait for that one login; a thousand concurrent requests make one grant.
//! - **A token about to expire is refreshed in the background.** Inside the
//!   refresh margin (default 60 s; half the lifetime for short-lived tokens, plus
//!   up to a fifth at random so that replicas do not refresh in lockstep), the
//!   next request starts one refresh and goes on with the current token. No
//!   request waits for a refresh while the token is valid.
//! - **An expired token is never sent.** After a quiet period longer than the
//!   lifetime, the next request waits for the one refresh in flight.
//! - **A refused token is never sent again.** A refusal (an HTTP 401 about the
//!   token; with [`Refusal::grpc()`](Refusal::grpc), also gRPC's UNAUTHENTICATED in a
//!   trailers-only answer; or the application's own rule,
//!   [`AuthLayerBuilder::refused_when`]) of the current token drops it at once:
//!   no request that starts afterwards carries it, and requests wait for the
//!   next token. A token that had worked was revoked: one refresh starts at
//!   once, shared by every request that carried it, with no rate bound.
//! - **A refused request is sent again**, with the newest token (after the
//!   refresh in flight, if there is one: servers revoke the previous token
//!   when they process a refresh). A refusal of a token that had been replaced
//!   while the request was in flight (the layer's own refresh, a fleet's
//!   record, a new login, an expiry), or that had worked before (the API
//!   revoked it), is a resend; a refusal of a token that never worked uses the
//!   request's one replay. No request is sent more than five times; a refusal
//!   that is not followed by a resend goes back to the caller unchanged.
//! - **An API that refuses every token is not hammered.** Three or more new
//!   tokens in a row refused before they ever worked mean the API refuses every
//!   token (a permissions problem behind a bare 401, a gateway in trouble): the
//!   next grant waits 1 s, the pause doubling up to 30 s and reset by any answer
//!   that shows a token works; meanwhile new requests fail at once with
//!   [`TokenError::is_refused()`](TokenError::is_refused) and replays get the API's refusal back.
//! - **Bodies are replayed byte for byte.** They are recorded as they stream, up
//!   to a cap (64 KiB by default), trailers included: an empty body replays for
//!   free; a larger body is not replayed and the refusal goes back. A refusal
//!   that comes before the body is all sent (a gRPC interceptor answers on the
//!   request's head) keeps the body: the replay sends what was recorded and
//!   reads on. Once the answer is known not to be a refusal, the recording
//!   stops and frees what it holds.
//! - **A refresh token is used once.** It counts as spent the moment its request
//!   is sent; a refresh that failed after sending (an error status, a reset, a
//!   timeout) is followed by the password grant, never by the same refresh token.
//!   Only a failure before the request left (connection refused, DNS) keeps it.
//!   A refused refresh token also falls back to the password grant.
//! - **Outages are ridden out.** While a token is still valid, callers never see
//!   a token endpoint failure; the refresh is retried with exponential backoff
//!   and jitter, honouring `Retry-After`. When no token is valid, a request
//!   waits through the retries as long as the next attempt starts within its
//!   wait budget (10 s by default, [`AuthLayerBuilder::wait_budget`]), and gets
//!   the last error at once otherwise: a cold start that meets one 500 succeeds,
//!   and a dead endpoint sees one attempt per backoff step, not one per request.
//! - **A refused password is not retried.** No new password grant is made until
//!   the credentials change ([`AuthLayer::set_credentials`]) or a cool-down passes
//!   (5 minutes by default): servers lock accounts that retry wrong passwords.
//! - **One login at a time.** `set_credentials` with another client id or
//!   username ends the session: a grant in flight for the previous login is
//!   dropped whole, and no request sent afterwards carries its token.
//! - **Lifetimes are measured on the monotonic clock** (`tokio::time::Instant`)
//!   from the moment the grant request was sent. A missing, null, zero, negative
//!   or non-numeric `expires_in` means the documented 3600 s; a positive one is
//!   clamped to 1 s ..= 24 h. No value means "never expires", and none means
//!   "refresh on every request".
//! - **Secrets stay secret.** The client secret, password, refresh token and
//!   access token never appear in `Debug`, `Display`, errors, logs or URLs; the
//!   `Authorization` header is marked sensitive. The token goes only to the
//!   configured API origins (by default the token endpoint's: Daxium serves both
//!   from one host). `http://` URLs are refused except for loopback hosts. The
//!   token client never follows redirects and reads error bodies through a 1 MiB
//!   cap.
//! - **It can be watched.** `tracing` spans and events (target `daxium_auth`) for
//!   every grant (type, outcome, latency, coalesced waiters) and every replay,
//!   never with a secret; [`AuthLayer::stats()`](AuthLayer::stats) is a cheap snapshot of grants by
//!   type and outcome, replays, skipped replays and requests that waited.
//!
//! [The guarantees](guide::guarantees) name the test that checks each of these.
//!
//! # The guide
//!
//! - [`guide::configuration`]: every setting, custom fetchers and transports,
//!   and the application's handle on its login ([`AuthLayer::login`],
//!   [`AuthLayer::is_ready`], [`AuthLayer::subscribe`], [`AuthLayer::refresh`]).
//! - [`guide::integrations`]: hyper, tonic (with [`Refusal::grpc()`](Refusal::grpc))
//!   and reqwest-middleware.
//! - [`guide::fleet`]: many replicas, one login, through a token store; Redis on
//!   one server, a Cluster or Sentinel, and what each guarantees under failover.
//! - [`guide::without_a_server`]: the embedded Daxium-compatible server.
//! - [`guide::metrics`]: the counters and the tracing spans.
//! - [`guide::guarantees`], [`guide::benchmarks`] and [`guide::compared`].
//!
//! # Feature flags
//!
//! | Feature   | Default | What it adds |
//! |-----------|---------|--------------|
//! | `rustls`  | yes     | The default token client transport (hyper-util over rustls, webpki roots, HTTP/1 and HTTP/2), [`AuthLayer::new`] and `HttpFetcher::new`. Without it, give a fetcher ([`HttpFetcher::with_client`] or your own). |
//! | `mock`    | no      | `daxium_auth::mock`: the Daxium-compatible server for tests and examples. |
//! | `reqwest` | no      | `daxium_auth::reqwest::AuthMiddleware` for reqwest-middleware 0.5 (reqwest 0.13). |
//! | `redis`   | no      | `store::RedisStore`: a fleet's shared login in Redis (the `redis` crate 1.x, tokio, connection manager, TLS). |
//! | `file`    | no      | `store::FileStore`: the processes of one host share one login through a directory. |
//! | `sealed`  | no      | `store::SealKey`: records encrypted with XChaCha20-Poly1305 in any store. |
//! | `metrics` | no      | The counters of `Stats` through the `metrics` 0.24 facade, for any exporter (see [`guide::metrics`]). |
// The lints are set once, in Cargo.toml's `[lints]`.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod answer;
mod cache;
mod credentials;
mod error;
pub mod fetcher;
mod grant;
pub mod guide;
mod layer;
mod login;
mod stats;
pub mod store;
mod token;

pub use crate::layer::DEFAULT_REPLAY_LIMIT;

#[cfg(feature = "mock")]
#[cfg_attr(docsrs, doc(cfg(feature = "mock")))]
pub mod mock;

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use crate::{
    answer::parse_token_response,
    cache::TokenCache,
    credentials::Credentials,
    error::{BoxError, BuildError, Error, ErrorBody, TokenError},
    fetcher::{HttpFetcher, TokenFetcher},
    grant::{GrantRequest, GrantType},
    layer::{
        AuthLayer, AuthLayerBuilder, AuthService, NoReplay, Refusal, ReplayBody, ResponseFuture,
    },
    login::{LoginState, LoginStatus, TokenSource},
    stats::Stats,
    store::{MemoryStore, StoreError, TokenStore},
    token::{
        AccessToken, DEFAULT_LIFETIME, MAX_LIFETIME, MAX_REFRESH_LIFETIME, MAX_TOKEN_LEN,
        MIN_LIFETIME, RefreshToken, TokenPair,
    },
};
