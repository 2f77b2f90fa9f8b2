//! [`AuthLayerBuilder`]: every setting of a layer, its default and why,
//! checked when the layer is built.

use std::{fmt, sync::Arc, time::Duration};

use super::{
    AuthLayer, LayerConfig,
    origin::{Origin, ShownUrl, check_url},
    refusal::Refusal,
};
use crate::{
    cache::{CacheConfig, CacheNumber, TokenCache},
    credentials::Credentials,
    error::BuildError,
    fetcher::{DynFetcher, TokenFetcher},
    store::{AnyStore, TokenStore},
};

/// The default cap on a request body kept for a replay: 64 KiB.
pub const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;

/// Builds an [`AuthLayer`]; every setting is checked by [`build`](Self::build).
#[must_use]
pub struct AuthLayerBuilder {
    token_url: Option<String>,
    credentials: Option<Credentials>,
    fetcher: Option<Arc<dyn DynFetcher>>,
    origins: Vec<String>,
    any_origin: bool,
    cache: CacheConfig,
    store: Option<AnyStore>,
    replay: bool,
    replay_limit: usize,
    refusal: Refusal,
    keep_authorization: bool,
}

impl Default for AuthLayerBuilder {
    fn default() -> Self {
        Self {
            token_url: None,
            credentials: None,
            fetcher: None,
            origins: Vec::new(),
            any_origin: false,
            cache: CacheConfig::default(),
            store: None,
            replay: true,
            replay_limit: DEFAULT_REPLAY_LIMIT,
            refusal: Refusal::unauthorized(),
            keep_authorization: false,
        }
    }
}

impl fmt::Debug for AuthLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayerBuilder")
            .field("token_url", &self.token_url.as_deref().map(ShownUrl))
            .field("credentials", &self.credentials)
            .field("custom_fetcher", &self.fetcher.is_some())
            .field(
                "origins",
                &self.origins.iter().map(|o| ShownUrl(o)).collect::<Vec<_>>(),
            )
            .field("any_origin", &self.any_origin)
            .field("cache", &self.cache)
            .field("store", &self.store.is_some())
            .field("replay", &self.replay)
            .field("replay_limit", &self.replay_limit)
            .field("refusal", &self.refusal)
            .field("keep_authorization", &self.keep_authorization)
            .finish()
    }
}

impl AuthLayerBuilder {
    /// The token endpoint, `https://…/oauth/v2/token` (`http://` for loopback
    /// hosts only). Without a custom [`fetcher`](Self::fetcher), grants go there
    /// through the default HTTPS transport; its origin is the default API origin.
    ///
    /// With a [`store`](Self::store), the login is filed under this endpoint,
    /// unless the fetcher names its own ([`TokenFetcher::endpoint`], as
    /// [`HttpFetcher`](crate::HttpFetcher) does): a custom fetcher that names
    /// none needs it then, and it must be the endpoint its grants reach.
    pub fn token_url(mut self, url: impl Into<String>) -> Self {
        self.token_url = Some(url.into());
        self
    }

    /// The login for the password grant. Required.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// A custom fetcher: any [`TokenFetcher`], such as an
    /// [`HttpFetcher`](crate::HttpFetcher) over another transport, or
    /// [`fetcher::from_service`](crate::fetcher::from_service) over a tower stack.
    pub fn fetcher(mut self, fetcher: impl TokenFetcher) -> Self {
        self.fetcher = Some(Arc::new(fetcher));
        self
    }

    /// Adds an API origin (scheme, host and port of the URL) that gets the
    /// token. Requests with an authority elsewhere are sent without it. By
    /// default the only origin is the token endpoint's.
    pub fn api_origin(mut self, url: impl Into<String>) -> Self {
        self.origins.push(url.into());
        self
    }

    /// Sends the token to whatever origin a request names. Only for inner
    /// services that fix the destination themselves.
    pub fn any_origin(mut self) -> Self {
        self.any_origin = true;
        self
    }

    /// How long before expiry a token is refreshed in the background (default
    /// 60 s). Short-lived tokens are refreshed at half their lifetime instead,
    /// and up to a fifth more is added at random.
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.cache.refresh_margin = margin;
        self
    }

    /// Whether a request answered 401 is replayed once with a new token
    /// (default on). Per request, the [`NoReplay`](crate::NoReplay) extension
    /// switches it off.
    pub fn replay(mut self, on: bool) -> Self {
        self.replay = on;
        self
    }

    /// Which answers of the API refuse the token (default
    /// [`Refusal::unauthorized`]: an HTTP 401 about the token). Use
    /// [`Refusal::grpc`] for tonic and other gRPC clients, whose servers
    /// refuse a token with `grpc-status: 16` in an HTTP 200, and
    /// [`Refusal::custom`] for an API that says so otherwise.
    ///
    /// A refusal of the current token drops it at once: no request that
    /// starts afterwards carries it. A token that had worked was revoked and
    /// is replaced at once; new tokens refused on first use, three or more in
    /// a row, slow the grants down (see
    /// [`TokenError::is_refused`](crate::TokenError::is_refused)). The
    /// refused request is sent again with the next token. When its token had
    /// been replaced while it was in flight, or had worked before (the API
    /// revoked it), that is a resend, which does not count as its one
    /// replay; a refusal of a token that never worked uses the replay. No
    /// request is sent more than five times.
    pub fn refused_when(mut self, refusal: Refusal) -> Self {
        self.refusal = refusal;
        self
    }

    /// Whether a request that already carries an `Authorization` header is
    /// sent as it is (default off).
    ///
    /// On, such a request passes through untouched: no token is attached,
    /// its header is not replaced, it is never replayed, and its answer,
    /// refusal or not, says nothing to the token cache. For applications that
    /// make some calls with credentials of their own (another account's
    /// token, a signed URL's header) through the same client.
    ///
    /// Off, every request for an API origin gets the layer's token, whatever
    /// header it had: a stale header left by a caller can never reach the
    /// API in place of the current token. Off costs a request nothing (the
    /// headers are not looked at); on, one header lookup.
    pub fn keep_authorization(mut self, on: bool) -> Self {
        self.keep_authorization = on;
        self
    }

    /// The largest request body kept for a replay (default 64 KiB). A larger
    /// body is streamed through and not replayed.
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
    }

    /// The backoff after a failed grant: from `min` (default 500 ms), doubling
    /// up to `max` (default 30 s), with jitter, never shorter than `Retry-After`.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.cache.backoff_min = min;
        self.cache.backoff_max = max;
        self
    }

    /// How long a rejected password stops new password grants, unless the
    /// credentials change first (default 5 minutes).
    pub fn rejected_cooldown(mut self, cooldown: Duration) -> Self {
        self.cache.rejected_cooldown = cooldown;
        self
    }

    /// How long one grant may take before it counts as failed (default 60 s):
    /// a fetcher that does not answer by then is dropped, and the next attempt
    /// follows the backoff, with the password grant if it was a refresh (the
    /// refresh token may have been spent). [`HttpFetcher`](crate::HttpFetcher)
    /// bounds each exchange itself (30 s by default); this bounds any fetcher.
    pub fn grant_timeout(mut self, timeout: Duration) -> Self {
        self.cache.grant_timeout = timeout;
        self
    }

    /// How long a request with no valid token waits for one (default 10 s).
    /// It waits through the retries of a failing token endpoint as long as the
    /// next attempt starts within this budget, so that a cold start that meets
    /// one 500 succeeds a moment later; it gets the last error at once when the
    /// next attempt lies beyond it, when it runs out, or when the password is
    /// refused.
    pub fn wait_budget(mut self, budget: Duration) -> Self {
        self.cache.wait_budget = budget;
        self
    }

    /// Shares the login with other replicas through `store` ([the fleet](crate::guide::fleet)): a
    /// [`RedisStore`](crate::store) for a fleet, a `FileStore` for the
    /// processes of one host, or a [`MemoryStore`](crate::MemoryStore) for
    /// layers of one process. Grants then take the store's lease: the replica
    /// that holds it re-reads the record (and adopts a newer one), marks the
    /// refresh token spent before sending it, and writes the new pair; the
    /// others wait for it and adopt it. With the store down, each replica goes
    /// on alone with grants of its own, never with the shared refresh token.
    /// Without a store, the cache keeps its tokens to itself.
    ///
    /// The login is filed under its token endpoint, client id and username
    /// ([`LoginKey`](crate::store::LoginKey)): layers for a staging and a
    /// production endpoint can share one store and never take each other's
    /// tokens. The endpoint is the fetcher's ([`TokenFetcher::endpoint`]) or
    /// else the [`token_url`](Self::token_url); with neither, the build fails.
    pub fn store(mut self, store: impl TokenStore) -> Self {
        self.store = Some(AnyStore::new(store));
        self
    }

    /// How long a replica holds the store's lease at most while it makes a
    /// grant (default 5 s): a replica that dies holding it, or whose release
    /// was lost, delays the others by at most this long. Keep it below the
    /// [wait budget](Self::wait_budget), so that their callers get a token
    /// within their budget, and above the time a grant takes: a grant that
    /// outlives the lease is safe (its refresh token is marked spent before it
    /// is sent) but costs the next holder a password grant.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.cache.lease_ttl = ttl;
        self
    }

    /// How long one call of the [store](Self::store) may take before the
    /// store counts as down (default 2 s): the flight then goes on alone, as
    /// with a store that refused the call, and the call counts in
    /// [`Stats::store_errors`](crate::Stats::store_errors). A wait for another replica's
    /// record may take its own wait (at most the lease's time to live) plus
    /// this. The default is well above a round trip to Redis or a file lock,
    /// and above the stores' own timeouts (`RedisStore` 250 ms, `FileStore`
    /// 1 s by default), which it cuts short if they are longer; this one
    /// bounds any [`TokenStore`], custom ones included. Keep it below the [wait budget](Self::wait_budget), so that
    /// a caller's grant can start alone within its budget.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.cache.store_timeout = timeout;
        self
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<AuthLayer, BuildError> {
        let credentials = self.credentials.ok_or(BuildError::Missing("credentials"))?;
        let token_uri = self
            .token_url
            .as_deref()
            .map(|url| check_url(url, "token"))
            .transpose()?;
        if self.cache.backoff_min.is_zero() {
            return Err(BuildError::InvalidSetting {
                name: "backoff",
                reason: "the minimum must be above zero",
            });
        }
        if self.cache.rejected_cooldown.is_zero() {
            // Without it, a refused password would be tried on every request.
            return Err(BuildError::InvalidSetting {
                name: "rejected_cooldown",
                reason: "the cool-down must be above zero",
            });
        }
        if self.cache.grant_timeout.is_zero() {
            return Err(BuildError::InvalidSetting {
                name: "grant_timeout",
                reason: "the grant timeout must be above zero",
            });
        }
        if self.cache.lease_ttl.is_zero() {
            return Err(BuildError::InvalidSetting {
                name: "lease_ttl",
                reason: "the lease's time to live must be above zero",
            });
        }
        if self.cache.store_timeout.is_zero() {
            // Every store call would fail before it started.
            return Err(BuildError::InvalidSetting {
                name: "store_timeout",
                reason: "the store timeout must be above zero",
            });
        }
        if self.cache.backoff_min > self.cache.backoff_max {
            return Err(BuildError::InvalidSetting {
                name: "backoff",
                reason: "the minimum is above the maximum",
            });
        }
        let origins = if self.any_origin {
            None
        } else {
            let mut origins = Vec::with_capacity(self.origins.len().max(1));
            for url in &self.origins {
                let uri = check_url(url, "API origin")?;
                origins.extend(Origin::of(&uri));
            }
            if origins.is_empty() {
                let uri = token_uri.as_ref().ok_or(BuildError::Missing(
                    "api_origin (or token_url, whose origin is the default)",
                ))?;
                origins.extend(Origin::of(uri));
            }
            Some(origins)
        };
        let fetcher: Arc<dyn DynFetcher> = match (self.fetcher, &self.token_url) {
            (Some(fetcher), _) => fetcher,
            #[cfg(feature = "rustls")]
            (None, Some(url)) => Arc::new(crate::HttpFetcher::new(url)?),
            #[cfg(not(feature = "rustls"))]
            (None, Some(_)) => {
                return Err(BuildError::Missing(
                    "fetcher (the default transport needs the `rustls` feature)",
                ));
            }
            (None, None) => return Err(BuildError::Missing("token_url or fetcher")),
        };
        // Records are filed under the endpoint that grants go to: the
        // fetcher's own when it names one, the token URL's otherwise.
        let store = match self.store {
            Some(store) => {
                let endpoint =
                    (fetcher.endpoint_dyn().cloned())
                        .or(token_uri)
                        .ok_or(BuildError::Missing(
                            "token_url (a store files the login under its token endpoint, \
                         which the fetcher does not name)",
                        ))?;
                Some((store, endpoint))
            }
            None => None,
        };
        let cache = TokenCache::new(fetcher, credentials, self.cache, store);
        Ok(AuthLayer {
            config: Arc::new(LayerConfig {
                cache: CacheNumber::register(cache.shared()),
                replay: self.replay,
                replay_limit: self.replay_limit,
                origins,
                refusal: self.refusal,
                keep_authorization: self.keep_authorization,
            }),
            cache,
        })
    }
}
