//! How grants are made. [`TokenFetcher`] is the one thing the token cache needs:
//! turn a [`GrantRequest`] into a [`TokenPair`]. Implement it with one async fn,
//! wrap a closure with [`from_fn`], wrap any tower `Service` with
//! [`from_service`] (so tower's timeout, rate limit and tracing layers compose
//! onto the token endpoint), or use [`HttpFetcher`] for the Daxium endpoint.

use std::{fmt, future::Future, pin::Pin};

use ::http::Uri;
use tower::{Service, ServiceExt};

use crate::{
    error::{BoxError, TokenError},
    token::TokenPair,
};

mod classify;
mod client;
mod http;

#[cfg(feature = "rustls")]
pub use self::client::HttpsClient;
pub use self::{client::HttpService, http::HttpFetcher};
pub use crate::grant::{GrantRequest, GrantType};

/// Makes grants for the token cache.
///
/// One async fn is enough:
///
/// ```
/// use daxium_auth::{GrantRequest, TokenError, TokenFetcher, TokenPair, AccessToken};
/// use std::time::Duration;
///
/// struct Fixed;
///
/// impl TokenFetcher for Fixed {
///     async fn fetch(&self, _grant: GrantRequest) -> Result<TokenPair, TokenError> {
///         let access = AccessToken::new("static-token")?;
///         Ok(TokenPair::new(access, None, Duration::from_secs(3600)))
///     }
/// }
/// ```
///
/// The cache runs each grant in a task of its own, so a fetch is never
/// cancelled by a caller going away. A fetcher should classify its failures
/// (see [`TokenError::connect`], [`TokenError::transport`],
/// [`TokenError::rejected`]): the cache keeps a refresh token only when the
/// request carrying it was never sent.
///
/// A fetcher that knows where its grants go says so with
/// [`endpoint`](Self::endpoint), as [`HttpFetcher`] does: a layer with a
/// [token store](crate::store) files its login under that endpoint. One that
/// does not (the default) leaves it to
/// [`AuthLayerBuilder::token_url`](crate::AuthLayerBuilder::token_url), which
/// a layer with a store then requires.
pub trait TokenFetcher: Send + Sync + 'static {
    /// Makes one grant.
    fn fetch(
        &self,
        grant: GrantRequest,
    ) -> impl Future<Output = Result<TokenPair, TokenError>> + Send;

    /// The token endpoint that grants go to, if the fetcher knows it; `None`
    /// by default. A token store keeps the tokens of each endpoint apart
    /// ([`LoginKey::with_endpoint`](crate::store::LoginKey::with_endpoint)),
    /// so a fetcher that names an endpoint must name the one its grants
    /// reach.
    fn endpoint(&self) -> Option<&Uri> {
        None
    }
}

/// A boxed grant future.
pub(crate) type FetchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<TokenPair, TokenError>> + Send + 'a>>;

/// The object-safe face of [`TokenFetcher`], so the cache is not generic.
pub(crate) trait DynFetcher: Send + Sync + 'static {
    fn fetch_boxed(&self, grant: GrantRequest) -> FetchFuture<'_>;
    fn endpoint_dyn(&self) -> Option<&Uri>;
}

impl<F: TokenFetcher> DynFetcher for F {
    fn fetch_boxed(&self, grant: GrantRequest) -> FetchFuture<'_> {
        Box::pin(self.fetch(grant))
    }

    fn endpoint_dyn(&self) -> Option<&Uri> {
        self.endpoint()
    }
}

/// A [`TokenFetcher`] made of a closure; see [`from_fn`].
#[derive(Clone)]
pub struct FnFetcher<F> {
    f: F,
}

impl<F> fmt::Debug for FnFetcher<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnFetcher").finish_non_exhaustive()
    }
}

/// A fetcher from a closure that returns a future.
///
/// ```
/// use daxium_auth::{fetcher, AccessToken, TokenPair};
/// use std::time::Duration;
///
/// let fetcher = fetcher::from_fn(|_grant| async {
///     Ok(TokenPair::new(AccessToken::new("tok")?, None, Duration::from_secs(60)))
/// });
/// # let _ = fetcher;
/// ```
pub fn from_fn<F, Fut>(f: F) -> FnFetcher<F>
where
    F: Fn(GrantRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<TokenPair, TokenError>> + Send,
{
    FnFetcher { f }
}

impl<F, Fut> TokenFetcher for FnFetcher<F>
where
    F: Fn(GrantRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<TokenPair, TokenError>> + Send,
{
    fn fetch(
        &self,
        grant: GrantRequest,
    ) -> impl Future<Output = Result<TokenPair, TokenError>> + Send {
        (self.f)(grant)
    }
}

/// A [`TokenFetcher`] made of a tower `Service`; see [`from_service`].
#[derive(Clone, Debug)]
pub struct ServiceFetcher<S> {
    service: S,
}

/// A fetcher from a tower `Service<GrantRequest, Response = TokenPair>`.
///
/// The service is cloned for each grant and driven ready first. Its error may
/// be a [`TokenError`] (kept as it is), tower's timeout `Elapsed` (a
/// [timeout](TokenError::is_timeout)), or anything else (a transient failure
/// that may have reached the endpoint).
///
/// ```
/// use daxium_auth::{fetcher, AccessToken, GrantRequest, TokenError, TokenPair};
/// use std::time::Duration;
/// use tower::{ServiceBuilder, service_fn};
///
/// let grants = service_fn(|_grant: GrantRequest| async {
///     Ok::<_, TokenError>(TokenPair::new(AccessToken::new("tok")?, None, Duration::from_secs(60)))
/// });
/// let fetcher = fetcher::from_service(
///     ServiceBuilder::new().timeout(Duration::from_secs(10)).service(grants),
/// );
/// # let _ = fetcher;
/// ```
pub fn from_service<S>(service: S) -> ServiceFetcher<S>
where
    S: Service<GrantRequest, Response = TokenPair> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    ServiceFetcher { service }
}

impl<S> TokenFetcher for ServiceFetcher<S>
where
    S: Service<GrantRequest, Response = TokenPair> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    async fn fetch(&self, grant: GrantRequest) -> Result<TokenPair, TokenError> {
        let grant_type = grant.grant_type();
        self.service
            .clone()
            .oneshot(grant)
            .await
            .map_err(|e| service_error(e.into()).with_grant(grant_type))
    }
}

fn service_error(err: BoxError) -> TokenError {
    let err = match err.downcast::<TokenError>() {
        Ok(token) => return *token,
        Err(err) => err,
    };
    if err.is::<tower::timeout::error::Elapsed>() {
        return TokenError::timeout();
    }
    TokenError::transport(err)
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::{credentials::Credentials, token::AccessToken};

    fn password() -> GrantRequest {
        let credentials = Credentials::new("cid", "secret", "me@example.com", "pw");
        GrantRequest::password(Arc::new(credentials))
    }

    #[tokio::test]
    async fn service_errors_are_classified() {
        let elapsed = tower::service_fn(|_: GrantRequest| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<TokenPair, TokenError>(TokenPair::new(
                AccessToken::new("x")?,
                None,
                Duration::ZERO,
            ))
        });
        tokio::time::pause();
        let fetcher = from_service(
            tower::ServiceBuilder::new()
                .timeout(Duration::from_secs(1))
                .service(elapsed),
        );
        let err = fetcher.fetch(password()).await.unwrap_err();
        assert!(err.is_timeout());
        assert_eq!(err.grant_type(), Some(GrantType::Password));

        let rejecting = from_service(tower::service_fn(|_: GrantRequest| async {
            Err::<TokenPair, _>(TokenError::rejected(::http::StatusCode::UNAUTHORIZED, None))
        }));
        let err = rejecting.fetch(password()).await.unwrap_err();
        assert!(err.is_grant_rejected());

        let other = from_service(tower::service_fn(|_: GrantRequest| async {
            Err::<TokenPair, BoxError>("boom".into())
        }));
        let err = other.fetch(password()).await.unwrap_err();
        assert!(err.is_transient() && err.may_have_been_sent());
    }
}
