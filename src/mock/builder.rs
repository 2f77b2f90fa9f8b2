//! [`MockServerBuilder`]: the login, token lifetimes and behaviours of a
//! [`MockServer`], set before it starts.

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};

use super::{
    MockServer,
    api::{ApiConfig, SlowApi},
    dice::Dice,
    grant::Config,
    server,
    state::Shared,
};
use crate::Credentials;

/// Settings of a [`MockServer`], from [`MockServer::builder`].
///
/// `Debug` shows the client id and username, never the secret or the password.
#[derive(Debug, Clone)]
pub struct MockServerBuilder {
    credentials: Credentials,
    /// The endpoint's settings; the defaults are the grant tests' too.
    pub(super) config: Config,
    api: ApiConfig,
    seed: Option<u64>,
}

impl MockServerBuilder {
    pub(super) fn new() -> Self {
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
    /// presents it is refused (401,
    /// [`codes::EXPIRED_REFRESH_TOKEN`](super::codes::EXPIRED_REFRESH_TOKEN))
    /// and counted in `refresh_expired`. Default: refresh tokens do not expire.
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
    /// [`codes::REFRESH_TOKEN_REUSED`](super::codes::REFRESH_TOKEN_REUSED)) and
    /// counted in `refresh_reuse`.
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
    /// [`codes::REVOKED_TOKEN`](super::codes::REVOKED_TOKEN)), and the token
    /// stays revoked; its refresh token is untouched. Real servers revoke tokens in use when a session
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
    /// `DAERR-` code and the reason, as in [`codes`](super::codes)) in the
    /// headers, and an empty body: a trailers-only response, on HTTP/2 one HEADERS frame
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
