//! The token cache: one per [`AuthLayer`](crate::AuthLayer), shared by every
//! service it makes. Its decisions live in a pure state machine (`core`),
//! proven over arbitrary interleavings of events by a property test; a thin
//! driver (`driver`) runs it: the lock-free publication readers load, the
//! grant task, the timer and the waiters. A process-wide registry
//! (`registry`) numbers the caches, so that a request's future finds its
//! cache when an answer refuses its token.

use std::{fmt, future::Future, sync::Arc};

use tokio::sync::watch;

mod core;
mod driver;
mod registry;

pub(crate) use self::core::{Answer, CacheConfig, Event, Phase, View};
pub(crate) use self::driver::{Live, LiveSlot, Resend, Shared, Ticket};
pub(crate) use self::registry::CacheNumber;
use crate::{
    credentials::Credentials,
    error::{Kind, TokenError},
    fetcher::DynFetcher,
    login::LoginState,
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
        wait(shared, shared.ask(refused)).await
    }

    /// Logs in now, rather than at the first request: returns once the cache
    /// holds a valid token (from a password grant, or adopted from the
    /// [store](crate::AuthLayerBuilder::store)'s record of another replica),
    /// or with the error that stopped it. It waits as a request would: through
    /// the retries of a failing endpoint as long as the next attempt starts
    /// within the [wait budget](crate::AuthLayerBuilder::wait_budget), and no
    /// longer. With a valid token held already, it returns at once.
    ///
    /// Call it at start-up to fail fast on wrong credentials, and before
    /// [`is_ready`](Self::is_ready) may say yes. The grant goes on in the
    /// background if this future is dropped.
    pub async fn login(&self) -> Result<(), TokenError> {
        let shared = &self.handle.shared;
        into_result(wait(shared, shared.ask_to_login()).await)?
            .map(drop)
            .ok_or_else(TokenError::closed)
    }

    /// Whether requests get a valid token now without waiting: for readiness
    /// probes. One atomic load, no lock; no grant starts.
    pub fn is_ready(&self) -> bool {
        self.handle.shared.is_ready()
    }

    /// Replaces the token now, however fresh it is, and returns once the new
    /// one is in use (or with the error that stopped it): after a change of
    /// the account's rights, say, that only a new token carries.
    ///
    /// It can never make the endpoint see more grants than the cache would
    /// make on its own, so a loop that calls it is safe:
    ///
    /// - a token younger than 5 seconds (and not yet due for its refresh) is
    ///   the new token already: the call returns at once, without a grant;
    /// - a grant in flight is joined: a thousand concurrent calls make one;
    /// - during a backoff after failed grants, it waits for the next attempt
    ///   if that starts within the [wait
    ///   budget](crate::AuthLayerBuilder::wait_budget), and fails at once with
    ///   the last error otherwise; a [refused
    ///   password](TokenError::is_grant_rejected) and an API that [refuses
    ///   every token](TokenError::is_refused) fail it at once;
    /// - with a [store](crate::AuthLayerBuilder::store), the grant follows the
    ///   fleet's protocol: a newer record of another replica is adopted
    ///   instead of a grant.
    ///
    /// Without a token, it logs in, as [`login`](Self::login) does. The grant
    /// goes on in the background if this future is dropped.
    pub async fn refresh(&self) -> Result<(), TokenError> {
        let shared = &self.handle.shared;
        into_result(wait(shared, shared.ask_to_refresh()).await)?
            .map(drop)
            .ok_or_else(TokenError::closed)
    }

    /// The login's state, now and as it changes: logged in or not, backing
    /// off, refused, rejected or closed, how many tokens came so far, when
    /// the current one expires and where it came from. No secret in it. The
    /// cache updates it as its state changes, never on a request's common
    /// path (a fresh token); see
    /// [`LoginState`], and its module for keeping a rotated pair across
    /// restarts and replicas.
    ///
    /// ```
    /// # use daxium_auth::{AuthLayer, Credentials, LoginStatus};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), daxium_auth::BuildError> {
    /// # let layer = AuthLayer::builder()
    /// #     .token_url("https://api.daxium-air.com/oauth/v2/token")
    /// #     .credentials(Credentials::new("id", "secret", "me@example.com", "pw"))
    /// #     .build()?;
    /// let mut login = layer.subscribe();
    /// assert_eq!(login.borrow().status(), LoginStatus::LoggedOut);
    /// tokio::spawn(async move {
    ///     while login.changed().await.is_ok() {
    ///         let state = *login.borrow_and_update();
    ///         tracing::info!(%state, "login changed");
    ///     }
    /// });
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Do not hold a [`borrow`](watch::Receiver::borrow) across an `.await`
    /// or for long: the cache waits for it to publish the next state.
    pub fn subscribe(&self) -> watch::Receiver<LoginState> {
        self.handle.shared.subscribe()
    }

    /// Starts a refresh now, however fresh the token, without waiting, and
    /// outside the rules of [`refresh`](Self::refresh): the new token replaces
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

/// The answer of `asked`, waiting for it if it did not come at once.
async fn wait(shared: &Arc<Shared>, asked: Result<Answer<Live>, Ticket>) -> Answer<Live> {
    match asked {
        Ok(answer) => answer,
        Err(ticket) => Arc::clone(shared).wait(ticket).await,
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
