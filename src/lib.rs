//! Authenticated Daxium Air API clients from any tower HTTP stack.
//!
//! Add one [`AuthLayer`] to a hyper, tonic or reqwest-middleware client and the
//! application never handles a token again: the layer logs in with the password
//! grant, keeps the token pair fresh with the refresh grant before it expires,
//! collapses concurrent refreshes into one, replays a request once when the API
//! answers 401, and rides out token endpoint outages with backoff.
//!
//! ```no_run
//! use bytes::Bytes;
//! use daxium_auth::{AuthLayer, Credentials};
//! use http_body_util::Empty;
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
//!     .build();
//! let client = Client::builder(TokioExecutor::new())
//!     .build::<_, daxium_auth::ReplayBody<Empty<Bytes>>>(https);
//! let service = ServiceBuilder::new().layer(auth).service(client);
//!
//! let request = http::Request::get("https://api.daxium-air.com/api/v1/structures")
//!     .body(Empty::<Bytes>::new())?;
//! let response = service.oneshot(request).await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```
//!
//! See the README for the behaviour in detail, the integrations and the
//! configuration.
//!
//! # The application's handle on its login
//!
//! Besides [`login`](AuthLayer::login) and [`is_ready`](AuthLayer::is_ready),
//! the layer tells where its login stands ([`AuthLayer::subscribe`]: a
//! [`LoginState`] with no secret in it, for logs, status pages and metrics),
//! replaces its token on demand within the limits that keep the token
//! endpoint safe ([`AuthLayer::refresh`]), and lets requests that carry an
//! `Authorization` of their own through untouched when told to
//! ([`AuthLayerBuilder::keep_authorization`]).
//!
//! # Metrics
//!
//! [`AuthLayer::stats`] reads the counters of one token cache. With the
//! `metrics` feature, the same counts also go to the
//! [`metrics`](https://docs.rs/metrics/0.24) facade, so that the exporter the
//! application installs (Prometheus, OpenTelemetry, ...) picks them up:
//!
//! | Name | Kind | Labels | What |
//! |---|---|---|---|
//! | `daxium_auth_grants_total` | counter | `grant_type`, `outcome` | grants made at the token endpoint |
//! | `daxium_auth_grant_duration_seconds` | histogram | `grant_type`, `outcome` | time from a grant's request to its answer, in seconds |
//! | `daxium_auth_replays_total` | counter | | requests replayed once after the API refused a token it had never accepted |
//! | `daxium_auth_resends_total` | counter | | requests sent again after a refusal of a token replaced while they were in flight or revoked after it worked |
//! | `daxium_auth_replays_skipped_total` | counter | | refusals not followed by a resend: replay off, body over the cap, sends used up, or every new token refused |
//! | `daxium_auth_waited_total` | counter | | requests that waited for a grant, having no valid token |
//! | `daxium_auth_store_errors_total` | counter | | calls to the token store that failed (down, timed out, refused) |
//!
//! `grant_type` is `password` or `refresh_token`; `outcome` is `ok`,
//! `rejected` (the endpoint refused the grant) or `failed` (a 5xx, a network
//! error, a timeout, an unusable answer). No label ever holds a secret, a URL
//! or a user name. Every layer of the process adds to the same series. Each
//! token cache describes the metrics (unit and help text) to the recorder in
//! place when it is made, so install the recorder before building the
//! layer. Only the rare paths record anything: a grant's end, a replay, a
//! wait, a failed store call; a request with a fresh token touches no
//! metric, and without the feature no metric code is compiled in.
// The lints are set once, in Cargo.toml's `[lints]`.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod answer;
mod body;
mod cache;
mod credentials;
mod error;
pub mod fetcher;
mod future;
mod grant;
mod layer;
mod login;
mod origin;
mod refusal;
mod service;
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
    body::{NoReplay, ReplayBody},
    cache::TokenCache,
    credentials::Credentials,
    error::{BoxError, BuildError, Error, ErrorBody, TokenError},
    fetcher::{HttpFetcher, TokenFetcher},
    future::ResponseFuture,
    grant::{GrantRequest, GrantType},
    layer::{AuthLayer, AuthLayerBuilder},
    login::{LoginState, LoginStatus, TokenSource},
    refusal::Refusal,
    service::AuthService,
    stats::Stats,
    store::{MemoryStore, StoreError, TokenStore},
    token::{
        AccessToken, DEFAULT_LIFETIME, MAX_LIFETIME, MAX_REFRESH_LIFETIME, MAX_TOKEN_LEN,
        MIN_LIFETIME, RefreshToken, TokenPair,
    },
};
