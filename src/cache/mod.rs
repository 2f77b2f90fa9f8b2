//! The token cache: one per [`AuthLayer`](crate::AuthLayer), shared by every
//! service it makes. Its decisions live in a pure state machine (`core`),
//! proven over arbitrary interleavings of events by a property test; a thin
//! driver (`driver`) runs it: the lock-free publication readers load, the
//! grant task, the timer and the waiters.

use std::{fmt, future::Future, sync::Arc};

mod core;
mod driver;

pub(crate) use self::core::{Answer, CacheConfig, Event, Phase, View};
pub(crate) use self::driver::{Live, LiveSlot, Resend, Shared, Ticket};
use crate::{
    credentials::Credentials,
    error::{Kind, TokenError},
    fetcher::DynFetcher,
    stats::Stats,
    store::AnyStore,
    token::AccessToken,
};

/// A handle on a token cache. Clones share the cache; when the last handle
/// goes, its background work (a grant in flight, the timer) stops and every
/// waiter learns that the cache was shut down. [`close`](Self::close) does
/// the same at once, and finishes with the token store first.
#[derive(Clone)]
pub struct TokenCache {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &**self.handle.shared.view().load() {
            View::Token(_, Phase::Fresh) => "fresh",
            View::Token(_, Phase::Stale) => "stale",
            View::Token(_, Phase::Refreshing) => "refreshing",
            View::Token(_, Phase::Unchecked) => "unchecked",
            View::Empty => "empty",
            View::Failed(_) => "failed",
        };
        f.debug_struct("TokenCache")
            .field("state", &state)
            .field("config", &self.handle.shared.config())
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    pub(crate) fn new(
        fetcher: Arc<dyn DynFetcher>,
        credentials: Credentials,
        config: CacheConfig,
        store: Option<(AnyStore, http::Uri)>,
    ) -> Self {
        let shared = Arc::new(Shared::new(fetcher, credentials, config, store));
        Self {
            handle: Arc::new(Handle { shared }),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The current access token, waiting for a grant if none is valid (for as
    /// long as the wait budget allows). Starts a background refresh when the
    /// token is inside its refresh margin.
    pub async fn access_token(&self) -> Result<AccessToken, TokenError> {
        match into_result(self.ask(None).await)? {
            Some(token) => Ok(token),
            None => Err(TokenError::new(Kind::Closed)),
        }
    }

    /// Tells the cache that the API refused `token`. When it is still the
    /// current token, it is dropped at once, so that no request that starts
    /// afterwards carries it, and a refresh starts: at once for a token the
    /// API had accepted before (it was revoked), and after a pause that grows
    /// with the streak once several new tokens in a row were refused on
    /// first use (see [`TokenError::is_refused`]). When it was already
    /// replaced, nothing happens.
    pub fn token_rejected(&self, token: &AccessToken) {
        let shared = &self.handle.shared;
        let id = shared.id_of(token.header_value());
        shared.run(core::Event::Refused { id, waiter: None });
    }

    /// Tells the cache that the API accepted `token` (answered a request that
    /// carried it without refusing it). A token that worked and is refused
    /// later was revoked, and is replaced at once; one refused before it ever
    /// worked counts towards the streak that slows grants down. Cheap when
    /// the cache knows already: one load, no lock.
    pub fn token_accepted(&self, token: &AccessToken) {
        let shared = &self.handle.shared;
        let id = shared.id_of(token.header_value());
        if id != 0 {
            shared.accepted(id);
        }
    }

    /// Tells the cache that the API refused `token`, as
    /// [`token_rejected`](Self::token_rejected) does, and returns the token to
    /// send the request again with: the newest one, waiting for a refresh in
    /// flight (servers revoke the previous token when they process one).
    /// `None` when no token could help: the API refuses every new token for
    /// now, and the refusal should go back to the caller.
    pub async fn replacement_for(
        &self,
        token: &AccessToken,
    ) -> Result<Option<AccessToken>, TokenError> {
        let id = self.handle.shared.id_of(token.header_value());
        into_result(self.ask(Some(id)).await)
    }

    /// Tells the cache that the replay carrying `token` was refused too. A
    /// refused replay is a refusal like any other: this is
    /// [`token_rejected`](Self::token_rejected).
    #[deprecated(
        since = "0.2.0",
        note = "a refused replay is a refusal like any other: use `token_rejected`"
    )]
    pub fn replay_rejected(&self, token: &AccessToken) {
        self.token_rejected(token);
    }

    /// Replaces the login used by the password grant. A rejected password
    /// stops password grants until this is called with other credentials (or
    /// the cool-down passes). A new password or client secret for the same
    /// login keeps the tokens already held; another username or client id
    /// ends the session: a grant in flight for the previous login is dropped
    /// whole, and the next request logs in anew.
    pub fn set_credentials(&self, credentials: Credentials) {
        self.handle.shared.set_credentials(credentials);
    }

    async fn ask(&self, refused: Option<u64>) -> Answer<Live> {
        let shared = &self.handle.shared;
        match shared.ask(refused) {
            Ok(answer) => answer,
            Err(ticket) => Arc::clone(shared).wait(ticket).await,
        }
    }

    /// Starts a refresh now, however fresh the token: the new token replaces
    /// it when the grant answers. Must be called within a tokio runtime. For
    /// benches, which replace the token while requests run.
    #[doc(hidden)]
    pub fn refresh_now(&self) {
        self.handle.shared.run(core::Event::Refresh);
    }

    /// Closes the cache, for a process about to stop, and returns once it has
    /// finished with the token store.
    ///
    /// From the moment it is called, every request of every service sharing
    /// the cache, and every caller waiting for a token, gets a
    /// [closed](TokenError::is_closed) error; a grant in flight is stopped and
    /// the timer ends, as when the last handle is dropped. With a
    /// [store](crate::AuthLayerBuilder::store), it then lets the store calls
    /// that change the record or the lease run to their end (the new pair's
    /// write above all), and releases the lease if this cache holds it, after
    /// them: the next replica adopts the pair instead of logging in, and takes
    /// the lease at once instead of after its time to live. Each of those
    /// calls is bounded by the [store
    /// timeout](crate::AuthLayerBuilder::store_timeout), so the close takes
    /// about twice that at most; without a store, it returns at once.
    ///
    /// Closing again does nothing. Dropping the last handle without closing
    /// stays safe: nothing is left that a replica would use wrongly, but the
    /// runtime may stop before the pair's write (the next replica logs in)
    /// and the lease is then held until its time to live.
    ///
    /// The future owns what it needs: it can be spawned, or raced against a
    /// deadline.
    pub fn close(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = Arc::clone(&self.handle.shared);
        async move { shared.close_cleanly().await }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.handle.shared.counters.snapshot()
    }
}

/// A waiter's answer as a result: `Ok(None)` for "no replay".
pub(crate) fn into_result(answer: Answer<Live>) -> Result<Option<AccessToken>, TokenError> {
    match answer {
        Answer::Token(slot) => Ok(Some(AccessToken::from_header_value(slot.access))),
        Answer::Failed(err) => Err(err),
        Answer::NoReplay | Answer::Retry => Ok(None),
    }
}
