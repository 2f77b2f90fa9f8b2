//! The tower middleware. [`AuthLayer`] holds one token cache and the settings
//! of the services that share it, made by [`AuthLayerBuilder`] (`builder`);
//! [`AuthService`] (`service`) attaches the token to each request, and its
//! [`ResponseFuture`] (`future`) waits for a grant and sends a refused request
//! again. `link` is what the two share, `body` records a request body for a
//! replay, `origin` says which requests get the token, and `refusal` which
//! answers refuse it.
//!
//! Beside the layer's own type, the modules form no cycle, as in tower's
//! `buffer`: `link` is the leaf, `future` uses it with `body` and `refusal`,
//! `service` uses those and `future`, and only this module uses `service`.

pub(crate) mod body;
mod builder;
pub(crate) mod future;
pub(crate) mod link;
pub(crate) mod origin;
pub(crate) mod refusal;
pub(crate) mod service;

pub use self::{
    body::{NoReplay, ReplayBody},
    builder::{AuthLayerBuilder, DEFAULT_REPLAY_LIMIT},
    future::ResponseFuture,
    refusal::Refusal,
    service::AuthService,
};

use std::{fmt, future::Future, sync::Arc};

use tokio::sync::watch;
use tower_layer::Layer;

use self::origin::Origin;
use crate::{
    cache::{CacheNumber, TokenCache},
    credentials::Credentials,
    error::TokenError,
    login::LoginState,
    stats::Stats,
};

/// Settings the services read on every request.
#[derive(Debug)]
pub(crate) struct LayerConfig {
    /// Where the futures find the cache when a 401 comes.
    pub(crate) cache: CacheNumber,
    pub(crate) replay: bool,
    pub(crate) replay_limit: usize,
    /// `None`: every origin gets the token.
    pub(crate) origins: Option<Vec<Origin>>,
    /// Which answers refuse the token.
    pub(crate) refusal: Refusal,
    /// Whether a request that carries its own `Authorization` is sent as it is.
    pub(crate) keep_authorization: bool,
}

/// A tower [`Layer`] that authenticates every request to the Daxium Air API.
///
/// Cheap to clone: every [`AuthService`] it makes, and every clone of those,
/// shares one [`TokenCache`].
///
/// ```
/// use daxium_auth::{AuthLayer, Credentials};
///
/// let layer = AuthLayer::new(
///     "https://api.daxium-air.com/oauth/v2/token",
///     Credentials::new("client-id", "client-secret", "me@example.com", "password"),
/// )?;
/// # Ok::<_, daxium_auth::BuildError>(())
/// ```
#[derive(Clone)]
pub struct AuthLayer {
    cache: TokenCache,
    config: Arc<LayerConfig>,
}

impl AuthLayer {
    /// A layer with the default settings and the default HTTPS transport.
    /// Tokens go to the token endpoint's origin only.
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn new(token_url: &str, credentials: Credentials) -> Result<Self, crate::BuildError> {
        Self::builder()
            .token_url(token_url)
            .credentials(credentials)
            .build()
    }

    /// A builder for every setting.
    pub fn builder() -> AuthLayerBuilder {
        AuthLayerBuilder::default()
    }

    /// The token cache the services share.
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// A snapshot of the counters: grants, replays, requests that waited.
    pub fn stats(&self) -> Stats {
        self.cache.stats()
    }

    /// Closes the token cache that every service of the layer shares, once
    /// the store is done with; see [`TokenCache::close`]. Call it before the
    /// process stops (on exit, on a signal): later requests get a
    /// [closed](crate::TokenError::is_closed) error.
    ///
    /// ```
    /// use daxium_auth::{AuthLayer, Credentials, MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), daxium_auth::BuildError> {
    /// let layer = AuthLayer::builder()
    ///     .token_url("https://api.daxium-air.com/oauth/v2/token")
    ///     .credentials(Credentials::new("id", "secret", "me@example.com", "pw"))
    ///     .store(MemoryStore::new())
    ///     .build()?;
    /// // ... the service runs, until it is told to stop:
    /// layer.close().await;
    /// assert!(layer.cache().access_token().await.unwrap_err().is_closed());
    /// # Ok(())
    /// # }
    /// ```
    pub fn close(&self) -> impl Future<Output = ()> + Send + 'static {
        self.cache.close()
    }

    /// Replaces the login; see [`TokenCache::set_credentials`].
    pub fn set_credentials(&self, credentials: Credentials) {
        self.cache.set_credentials(credentials);
    }

    /// Logs in now, rather than at the first request; see
    /// [`TokenCache::login`].
    pub async fn login(&self) -> Result<(), TokenError> {
        self.cache.login().await
    }

    /// Whether requests get a valid token now without waiting, for readiness
    /// probes; see [`TokenCache::is_ready`].
    pub fn is_ready(&self) -> bool {
        self.cache.is_ready()
    }

    /// Replaces the token now, within the cache's rules; see
    /// [`TokenCache::refresh`].
    pub async fn refresh(&self) -> Result<(), TokenError> {
        self.cache.refresh().await
    }

    /// The login's state, now and as it changes; see
    /// [`TokenCache::subscribe`].
    pub fn subscribe(&self) -> watch::Receiver<LoginState> {
        self.cache.subscribe()
    }

    pub(crate) fn config(&self) -> &Arc<LayerConfig> {
        &self.config
    }
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("cache", &self.cache)
            .field("config", &self.config)
            .finish()
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService::new(inner, self.clone())
    }
}
