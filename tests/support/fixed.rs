//! A token fetcher that answers every grant with one fixed access token, for
//! the tests that need a token but no endpoint: the allocation counts, the
//! origin rules, the redirects. It counts its grants, and its clones share
//! the count.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use daxium_auth::{AccessToken, GrantRequest, TokenError, TokenFetcher, TokenPair};

/// Issues `token` (without a refresh token) for `lifetime`, one hour unless
/// told otherwise.
#[derive(Debug, Clone)]
pub(crate) struct FixedToken {
    token: &'static str,
    lifetime: Duration,
    grants: Arc<AtomicUsize>,
}

impl FixedToken {
    pub(crate) fn new(token: &'static str) -> Self {
        Self {
            token,
            lifetime: Duration::from_secs(3600),
            grants: Arc::default(),
        }
    }

    pub(crate) fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The grants this fetcher and its clones made.
    pub(crate) fn grants(&self) -> usize {
        self.grants.load(SeqCst)
    }
}

impl TokenFetcher for FixedToken {
    fn fetch(
        &self,
        _grant: GrantRequest,
    ) -> impl Future<Output = Result<TokenPair, TokenError>> + Send {
        self.grants.fetch_add(1, SeqCst);
        let (token, lifetime) = (self.token, self.lifetime);
        async move { Ok(TokenPair::new(AccessToken::new(token)?, None, lifetime)) }
    }
}
