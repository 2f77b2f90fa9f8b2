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

use std::{fmt, sync::Arc};

use ::reqwest::{Request, Response};
use http::{Extensions, HeaderValue, Uri, header::AUTHORIZATION};
use reqwest_middleware::{Middleware, Next};

use crate::{
    AuthLayer, NoReplay, TokenCache, TokenError,
    cache::{Answer, LiveSlot, Resend, Shared},
    layer::{future::MAX_SENDS, link::failure, refusal::accepts},
};

/// A [`reqwest_middleware::Middleware`] that adds `Authorization: Bearer …`
/// (marked sensitive) to each request for the layer's API origins, and
/// replays a request once when the API answers 401.
///
/// It shares the [`TokenCache`] of the [`AuthLayer`] it was made from, so a
/// hyper or tonic stack built from the same layer uses the same tokens, and
/// [`AuthLayer::stats`] counts the grants and replays of both.
///
/// - The token comes from the cache as for the layer's own requests:
///   fresh tokens are used as they are, a token inside its refresh margin
///   starts a background refresh, and a request without a valid token waits
///   for the one grant in flight.
/// - Refusals follow the layer's rule
///   ([`refused_when`](crate::AuthLayerBuilder::refused_when)) and its
///   rules: a refusal of the current token drops it (one refresh, shared by
///   every request that carried it), and the request is sent again with the
///   next token; a refusal of a token replaced while the request was in
///   flight, or of one the API had accepted before (revoked), is a resend;
///   a refusal of a token that never worked is the request's one replay; no
///   request is sent more than five times. A refusal that is not followed
///   by a resend is returned as it is.
/// - A request is replayed only if reqwest can clone it
///   ([`reqwest::Request::try_clone`]: not for streaming bodies), its body is
///   within the layer's [`replay_limit`](crate::AuthLayerBuilder::replay_limit),
///   replay is on for the layer ([`replay`](crate::AuthLayerBuilder::replay)),
///   and the request does not carry the [`NoReplay`] extension
///   (`client.post(url).with_extension(NoReplay)`). Otherwise the 401 goes
///   back to the caller.
/// - A request that carries its own `Authorization` header is sent as it is
///   when the layer says so
///   ([`keep_authorization`](crate::AuthLayerBuilder::keep_authorization));
///   otherwise its header is replaced by the token.
/// - When no token can be had, the request fails with
///   [`reqwest_middleware::Error::Middleware`] wrapping the
///   [`TokenError`]; find it with
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

    /// The token to send with: the current one, as the layer takes it, or
    /// the one the cache hands to a waiting caller.
    async fn slot(&self) -> Result<LiveSlot, TokenError> {
        let shared = self.layer.cache().shared();
        if let Some(now) = shared.current() {
            return now;
        }
        let answer = match shared.ask(None) {
            Ok(answer) => answer,
            Err(ticket) => Arc::clone(shared).wait(ticket).await,
        };
        match answer {
            Answer::Token(slot) => Ok(slot),
            answer => Err(failure(answer)),
        }
    }
}

impl fmt::Debug for AuthMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthMiddleware")
            .field("layer", &self.layer)
            .finish()
    }
}

fn authorize(req: &mut Request, header: &HeaderValue) {
    let mut header = header.clone();
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
        let own =
            self.layer.config().keep_authorization && req.headers().contains_key(AUTHORIZATION);
        if own || !self.attaches(req.url()) {
            return next.run(req, extensions).await;
        }
        let mut slot = self
            .slot()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        // Cloned before the token goes in: a resend gets the token it is due.
        let template = if self.may_replay(&req, extensions) {
            req.try_clone()
        } else {
            None
        };
        authorize(&mut req, &slot.access);
        let mut res = next.clone().run(req, extensions).await?;
        let shared: &Arc<Shared> = self.layer.cache().shared();
        let refusal = self.layer.config().refusal;
        // `replayed`: the token whose refusal the one replay was spent on.
        let (mut sends, mut replayed) = (1u8, None);
        // Bounded: each pass sends once more, and `refused` says no once the
        // request has had `MAX_SENDS`.
        loop {
            if !refusal.refuses(res.status(), res.headers()) {
                if !slot.accepted && accepts(res.status()) {
                    shared.accepted(slot.id);
                }
                return Ok(res);
            }
            let Some(template) = &template else {
                // Not sent again, but the cache drops the token if it is current.
                shared.run(crate::cache::Event::Refused {
                    id: slot.id,
                    waiter: None,
                });
                shared.counters.replay_skipped();
                return Ok(res);
            };
            let more = sends < MAX_SENDS;
            let (replay, answer) = match shared.refused(slot.id, replayed, more) {
                Resend::Send { replay, answer } => (replay, answer),
                Resend::No => {
                    shared.counters.replay_skipped();
                    return Ok(res);
                }
            };
            if replay {
                replayed = Some(slot.id);
            }
            let answer = match answer {
                Ok(answer) => answer,
                Err(ticket) => Arc::clone(shared).wait(ticket).await,
            };
            slot = match answer {
                Answer::Token(slot) => slot,
                Answer::NoReplay | Answer::Retry => {
                    shared.counters.replay_skipped();
                    return Ok(res);
                }
                Answer::Failed(err) => return Err(reqwest_middleware::Error::middleware(err)),
            };
            let Some(mut again) = template.try_clone() else {
                shared.counters.replay_skipped();
                return Ok(res);
            };
            shared.counters.sent_again(replay, again.method());
            // The refused answer is not needed any more; dropping it frees its
            // connection before the resend asks for one.
            drop(res);
            authorize(&mut again, &slot.access);
            res = next.clone().run(again, extensions).await?;
            sends += 1;
        }
    }
}
