//! [`AuthMiddleware`]: the token cache of an [`AuthLayer`] as a
//! [`reqwest_middleware::Middleware`], for applications built on reqwest. It
//! is not a second implementation: the token, its refresh, the origin rule,
//! the replay switch and cap, and the counters are the layer's.
//!
//! ```no_run
//! use daxium_auth::{AuthLayer, Credentials, reqwest::AuthMiddleware};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let layer = AuthLayer::new(
//!     "https://api.daxium-air.com/oauth/v2/token",
//!     Credentials::new("client-id", "client-secret", "me@example.com", "password"),
//! )?;
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(AuthMiddleware::new(&layer))
//!     .build();
//!
//! let response = client
//!     .get("https://api.daxium-air.com/api/v1/structures")
//!     .send()
//!     .await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```

use std::fmt;

use ::reqwest::{Request, Response};
use http::{Extensions, StatusCode, Uri, header::AUTHORIZATION};
use reqwest_middleware::{Middleware, Next};

use crate::{AccessToken, AuthLayer, NoReplay, TokenCache, future::refuses_token};

/// A [`reqwest_middleware::Middleware`] that adds `Authorization: Bearer …`
/// (marked sensitive) to each request for the layer's API origins, and
/// replays a request once when the API answers 401.
///
/// It shares the [`TokenCache`] of the [`AuthLayer`] it was made from, so a
/// hyper or tonic stack built from the same layer uses the same tokens, and
/// [`AuthLayer::stats`] counts the grants and replays of both.
///
/// - The token comes from [`TokenCache::access_token`]: fresh tokens are
///   used as they are, a token inside its refresh margin starts a background
///   refresh, and a request without a valid token waits for the one grant in
///   flight.
/// - On a 401, [`TokenCache::token_rejected`] drops the refused token (one
///   refresh, shared by every request that carried it) and the request is sent
///   once more with the next token. A second 401 is returned as it is.
/// - A request is replayed only if reqwest can clone it
///   ([`reqwest::Request::try_clone`]: not for streaming bodies), its body is
///   within the layer's [`replay_limit`](crate::AuthLayerBuilder::replay_limit),
///   replay is on for the layer ([`replay`](crate::AuthLayerBuilder::replay)),
///   and the request does not carry the [`NoReplay`] extension
///   (`client.post(url).with_extension(NoReplay)`). Otherwise the 401 goes
///   back to the caller.
/// - When no token can be had, the request fails with
///   [`reqwest_middleware::Error::Middleware`] wrapping the
///   [`TokenError`](crate::TokenError); find it with
///   `anyhow::Error::downcast_ref::<TokenError>()`.
#[derive(Clone)]
pub struct AuthMiddleware {
    layer: AuthLayer,
}

impl AuthMiddleware {
    /// A middleware on the token cache and settings of `layer`.
    pub fn new(layer: &AuthLayer) -> Self {
        Self {
            layer: layer.clone(),
        }
    }

    /// The layer whose token cache and settings this middleware uses.
    pub fn layer(&self) -> &AuthLayer {
        &self.layer
    }

    /// The token cache.
    pub fn cache(&self) -> &TokenCache {
        self.layer.cache()
    }

    /// Whether requests for `url` get the token: the same origin rule as
    /// [`AuthService`](crate::AuthService).
    fn attaches(&self, url: &::reqwest::Url) -> bool {
        let Some(origins) = &self.layer.config().origins else {
            return true;
        };
        // A URL reqwest accepted always parses as an absolute URI; if one ever
        // did not, sending it without the token is the safe side.
        Uri::try_from(url.as_str()).is_ok_and(|uri| origins.iter().any(|o| o.matches(&uri)))
    }

    /// Whether a 401 answer to `req` may be replayed, before trying to clone it.
    fn may_replay(&self, req: &Request, extensions: &Extensions) -> bool {
        let config = self.layer.config();
        config.replay
            && extensions.get::<NoReplay>().is_none()
            && req
                .body()
                .and_then(::reqwest::Body::as_bytes)
                .is_none_or(|bytes| bytes.len() <= config.replay_limit)
    }

    async fn token(&self) -> reqwest_middleware::Result<AccessToken> {
        self.layer
            .cache()
            .access_token()
            .await
            .map_err(reqwest_middleware::Error::middleware)
    }
}

impl fmt::Debug for AuthMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthMiddleware")
            .field("layer", &self.layer)
            .finish()
    }
}

fn authorize(req: &mut Request, token: &AccessToken) {
    let mut header = token.header_value().clone();
    header.set_sensitive(true);
    req.headers_mut().insert(AUTHORIZATION, header);
}

#[async_trait::async_trait]
impl Middleware for AuthMiddleware {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        if !self.attaches(req.url()) {
            return next.run(req, extensions).await;
        }
        let token = self.token().await?;
        // Cloned before the token goes in: the replay gets the next one.
        let retry = if self.may_replay(&req, extensions) {
            req.try_clone()
        } else {
            None
        };
        authorize(&mut req, &token);
        let res = next.clone().run(req, extensions).await?;
        if res.status() != StatusCode::UNAUTHORIZED || !refuses_token(res.headers()) {
            return Ok(res);
        }

        let cache = self.layer.cache();
        let counters = &cache.shared().counters;
        let Some(mut retry) = retry else {
            // No replay, but the cache still refreshes if this token is current.
            cache.token_rejected(&token);
            counters.replay_skipped();
            return Ok(res);
        };
        // The replay waits for a refresh in flight, and carries the newest token.
        let Some(token) = cache
            .replacement_for(&token)
            .await
            .map_err(reqwest_middleware::Error::middleware)?
        else {
            counters.replay_skipped();
            return Ok(res);
        };
        counters.replayed();
        tracing::debug!(target: "daxium_auth", method = %retry.method(), "401: replaying the request once with a new token");
        // The refused answer is not needed any more; dropping it frees its
        // connection before the replay asks for one.
        drop(res);
        authorize(&mut retry, &token);
        let res = next.run(retry, extensions).await?;
        if res.status() == StatusCode::UNAUTHORIZED && refuses_token(res.headers()) {
            cache.replay_rejected(&token);
        }
        Ok(res)
    }
}
