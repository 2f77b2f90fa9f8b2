//! The token cache: one per [`AuthLayer`](crate::AuthLayer), shared by every
//! service it makes. Readers see the current state through an `ArcSwap`
//! without a lock; every change of state (a commit, a failure, a token going
//! stale or expiring) is made under one mutex, published to the `ArcSwap`, and
//! only then announced to the waiters. Grants run in a spawned task, one at a
//! time, so that no caller's cancellation can stop them.

use std::{
    fmt,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use http::HeaderValue;
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tower::util::rng::{HasherRng, Rng};
use tracing::Instrument;

use crate::{
    credentials::Credentials,
    error::{Kind, TokenError},
    fetcher::{DynFetcher, GrantRequest, GrantType},
    stats::{Counters, Stats},
    token::{AccessToken, RefreshToken, TokenPair},
};

/// Timing settings of a cache.
#[derive(Debug, Clone)]
pub(crate) struct CacheConfig {
    pub(crate) refresh_margin: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) rejected_cooldown: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            refresh_margin: Duration::from_secs(60),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            rejected_cooldown: Duration::from_secs(300),
        }
    }
}

/// A token as requests carry it: the header value, and the id that tells
/// tokens apart when the API answers 401.
#[derive(Clone)]
pub(crate) struct Slot {
    pub(crate) id: u64,
    pub(crate) header: HeaderValue,
}

/// What readers see.
pub(crate) enum State {
    /// No token and no failure to report: the next caller starts a grant.
    Empty,
    /// A token well before its refresh time.
    Fresh(Slot),
    /// A token inside its refresh margin, no grant running: the first caller
    /// that sees it starts one in the background.
    Stale(Slot),
    /// A token still valid while a grant runs or backs off.
    Refreshing(Slot),
    /// No valid token; a grant runs: wait for it.
    Waiting,
    /// No valid token and the last grant failed: fail fast until the backoff or
    /// the cool-down ends.
    Failed(TokenError),
}

impl State {
    /// The token to attach, if one is valid.
    pub(crate) fn slot(&self) -> Option<&Slot> {
        match self {
            Self::Fresh(slot) | Self::Stale(slot) | Self::Refreshing(slot) => Some(slot),
            Self::Empty | Self::Waiting | Self::Failed(_) => None,
        }
    }
}

/// The single-flight state of grants.
enum Flight {
    Idle,
    Running,
    /// The last grant failed; the task sleeps until it may try again.
    Backoff(TokenError),
}

struct Current {
    slot: Slot,
    stale: bool,
    expired: bool,
}

/// The truth, under the mutex. [`State`] is derived from it.
struct Control {
    current: Option<Current>,
    refresh_token: Option<RefreshToken>,
    credentials: Arc<Credentials>,
    flight: Flight,
    /// A rejected password grant: no new attempt until the credentials change
    /// or the cool-down ends.
    terminal: Option<TokenError>,
    attempt: u32,
    next_id: u64,
    rng: HasherRng,
    task: Option<JoinHandle<()>>,
    timer: Option<JoinHandle<()>>,
    cooldown: Option<JoinHandle<()>>,
    closed: bool,
}

pub(crate) struct Shared {
    state: ArcSwap<State>,
    control: Mutex<Control>,
    published: watch::Sender<u64>,
    fetcher: Arc<dyn DynFetcher>,
    config: CacheConfig,
    pub(crate) counters: Counters,
    waiters: AtomicU64,
}

/// A handle on a token cache. Clones share the cache; when the last handle
/// goes, its background work (a grant in flight, the expiry timer) stops.
#[derive(Clone)]
pub struct TokenCache {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut ctl = self.shared.lock();
        ctl.closed = true;
        for task in [ctl.task.take(), ctl.timer.take(), ctl.cooldown.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        // Waiters must learn that no grant will come.
        ctl.flight = Flight::Idle;
        self.shared.publish(&ctl);
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &**self.handle.shared.state.load() {
            State::Empty => "empty",
            State::Fresh(_) => "fresh",
            State::Stale(_) => "stale",
            State::Refreshing(_) => "refreshing",
            State::Waiting => "waiting",
            State::Failed(_) => "failed",
        };
        f.debug_struct("TokenCache")
            .field("state", &state)
            .field("config", &self.handle.shared.config)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    pub(crate) fn new(
        fetcher: Arc<dyn DynFetcher>,
        credentials: Credentials,
        config: CacheConfig,
    ) -> Self {
        let (published, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: ArcSwap::from_pointee(State::Empty),
            control: Mutex::new(Control {
                current: None,
                refresh_token: None,
                credentials: Arc::new(credentials),
                flight: Flight::Idle,
                terminal: None,
                attempt: 0,
                next_id: 1,
                rng: HasherRng::new(),
                task: None,
                timer: None,
                cooldown: None,
                closed: false,
            }),
            published,
            fetcher,
            config,
            counters: Counters::default(),
            waiters: AtomicU64::new(0),
        });
        Self {
            handle: Arc::new(Handle { shared }),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The current access token, waiting for a grant if none is valid. Starts
    /// a background refresh when the token is inside its refresh margin.
    pub async fn access_token(&self) -> Result<AccessToken, TokenError> {
        let slot = self.handle.shared.acquire(None).await?;
        Ok(AccessToken::from_header_value(slot.header))
    }

    /// Tells the cache that the API refused `token` (answered 401). When it is
    /// still the current token, it is dropped and one refresh starts; when it
    /// was already replaced, nothing happens.
    pub fn token_rejected(&self, token: &AccessToken) {
        let shared = &self.handle.shared;
        let id = shared
            .state
            .load()
            .slot()
            .filter(|slot| slot.header == token.header_value())
            .map(|slot| slot.id);
        if let Some(id) = id {
            shared.invalidate(id);
        }
    }

    /// Replaces the login used by the password grant. A rejected password
    /// stops password grants until this is called with other credentials (or
    /// the cool-down passes). A new password or client secret for the same
    /// login keeps the tokens already held; another username or client id
    /// ends the session, and the next request logs in anew.
    pub fn set_credentials(&self, credentials: Credentials) {
        let shared = &self.handle.shared;
        let mut ctl = shared.lock();
        if ctl.credentials.same_as(&credentials) {
            return;
        }
        let other_login = ctl.credentials.client_id() != credentials.client_id()
            || ctl.credentials.username() != credentials.username();
        ctl.credentials = Arc::new(credentials);
        ctl.attempt = 0;
        ctl.terminal = None;
        if other_login {
            // The session belongs to the previous login: end it, so the next
            // request logs in as the new one.
            ctl.refresh_token = None;
            if let Some(current) = ctl.current.as_mut() {
                current.expired = true;
            }
        }
        shared.publish(&ctl);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.handle.shared.counters.snapshot()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Control> {
        // A panic while holding the lock cannot leave `Control` half-updated in a
        // way that matters more than losing the cache would.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock-free view.
    pub(crate) fn state(&self) -> &ArcSwap<State> {
        &self.state
    }

    fn derive(&self, ctl: &Control) -> State {
        let valid = ctl.current.as_ref().filter(|c| !c.expired);
        match (valid, &ctl.flight) {
            (Some(c), Flight::Running | Flight::Backoff(_)) => State::Refreshing(c.slot.clone()),
            (Some(c), Flight::Idle) if c.stale && ctl.terminal.is_none() && !ctl.closed => {
                State::Stale(c.slot.clone())
            }
            (Some(c), Flight::Idle) => State::Fresh(c.slot.clone()),
            (None, _) if ctl.closed => State::Failed(TokenError::new(Kind::Closed)),
            (None, _) if ctl.terminal.is_some() => {
                State::Failed(ctl.terminal.clone().expect("checked"))
            }
            (None, Flight::Backoff(err)) => State::Failed(err.clone()),
            (None, Flight::Running) => State::Waiting,
            (None, Flight::Idle) => State::Empty,
        }
    }

    /// Publishes the state derived from `ctl`, then wakes the waiters: the new
    /// state is in place before anyone resumes.
    fn publish(&self, ctl: &Control) {
        self.state.store(Arc::new(self.derive(ctl)));
        self.published.send_modify(|generation| *generation += 1);
    }

    /// Starts a grant unless one runs, backs off, or a rejection holds.
    ///
    /// Without a tokio runtime the grant cannot run: the caller gets the error,
    /// and the cache is left as it was for callers that have one.
    pub(crate) fn start_refresh(self: &Arc<Self>) -> Result<(), TokenError> {
        let mut ctl = self.lock();
        self.start_locked(&mut ctl)
    }

    fn start_locked(self: &Arc<Self>, ctl: &mut Control) -> Result<(), TokenError> {
        if ctl.closed || ctl.terminal.is_some() || !matches!(ctl.flight, Flight::Idle) {
            return Ok(());
        }
        // The caller decided on a view read without the lock: a grant may have
        // landed since, and a fresh token needs no refresh.
        if ctl.current.as_ref().is_some_and(|c| !c.stale && !c.expired) {
            return Ok(());
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(
                TokenError::new(Kind::Closed).with_detail("no tokio runtime to run the grant")
            );
        };
        ctl.flight = Flight::Running;
        self.waiters.store(0, Ordering::Relaxed);
        let task = runtime.spawn(Arc::clone(self).run_grants());
        if let Some(old) = ctl.task.replace(task) {
            // The old task has finished: only a finished task sets `Idle`.
            drop(old);
        }
        self.publish(ctl);
        Ok(())
    }

    /// Drops the token `id` after the API refused it, if it is still current,
    /// and starts a refresh.
    pub(crate) fn invalidate(self: &Arc<Self>, id: u64) {
        let mut ctl = self.lock();
        let Some(current) = ctl
            .current
            .as_mut()
            .filter(|c| c.slot.id == id && !c.expired)
        else {
            return;
        };
        current.expired = true;
        tracing::debug!(target: "daxium_auth", "access token refused by the API; refreshing");
        self.publish(&ctl);
        // Without a runtime, the next caller that has one starts the grant.
        let _ = self.start_locked(&mut ctl);
    }

    /// A valid token other than `not`, waiting for a grant when needed.
    pub(crate) async fn acquire(self: &Arc<Self>, not: Option<u64>) -> Result<Slot, TokenError> {
        let mut counted = false;
        loop {
            let mut changed = self.published.subscribe();
            {
                let state = self.state.load();
                match &**state {
                    State::Fresh(slot) | State::Refreshing(slot) if Some(slot.id) != not => {
                        return Ok(slot.clone());
                    }
                    State::Stale(slot) if Some(slot.id) != not => {
                        let slot = slot.clone();
                        drop(state);
                        // The token is still valid: a failure to start is for later.
                        let _ = self.start_refresh();
                        return Ok(slot);
                    }
                    State::Failed(err) => return Err(err.clone()),
                    State::Fresh(slot) | State::Stale(slot) | State::Refreshing(slot) => {
                        let id = slot.id;
                        drop(state);
                        self.invalidate(id);
                    }
                    State::Empty => {
                        drop(state);
                        self.start_refresh()?;
                    }
                    State::Waiting => {}
                }
            }
            if !counted {
                counted = true;
                self.counters.waited.fetch_add(1, Ordering::Relaxed);
                self.waiters.fetch_add(1, Ordering::Relaxed);
            }
            if changed.changed().await.is_err() {
                return Err(TokenError::new(Kind::Closed));
            }
        }
    }

    /// The grant ladder, run in its own task: refresh grant, then the password
    /// grant when the refresh token is refused or spent; backoff on transient
    /// failures. The lock is only taken in the synchronous steps.
    async fn run_grants(self: Arc<Self>) {
        // If this task dies unfinished (its runtime shut down), the next caller
        // must be able to start another grant instead of waiting forever.
        let mut guard = FlightGuard {
            shared: Arc::clone(&self),
            finished: false,
        };
        self.ladder().await;
        guard.finished = true;
    }

    async fn ladder(self: &Arc<Self>) {
        loop {
            let Some((grant, used)) = self.next_grant() else {
                return;
            };
            let grant_type = grant.grant_type();
            let sent_refresh = grant.refresh_token().cloned();
            let span = tracing::info_span!(
                target: "daxium_auth",
                "daxium_auth.grant",
                grant_type = grant_type.as_str(),
                outcome = tracing::field::Empty,
                latency_ms = tracing::field::Empty,
                waiters = tracing::field::Empty,
            );
            let sent_at = Instant::now();
            // A panicking fetcher is a failed grant like any other: backoff, not a
            // tight loop of new attempts.
            let result = match std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.fetcher.fetch_boxed(grant)
            })) {
                Ok(fetch) => AssertUnwindSafe(fetch)
                    .catch_unwind()
                    .instrument(span.clone())
                    .await
                    .unwrap_or_else(|_| Err(fetcher_panicked())),
                Err(_) => Err(fetcher_panicked()),
            };
            span.record("latency_ms", sent_at.elapsed().as_millis() as u64);
            span.record("waiters", self.waiters.load(Ordering::Relaxed));
            let _entered = span.enter();
            let next = self.settle(result, grant_type, sent_refresh, &used, sent_at, &span);
            drop(_entered);
            match next {
                Next::Done => return,
                Next::Again => {}
                Next::Sleep(delay) => {
                    tokio::time::sleep(delay).await;
                    if !self.after_backoff() {
                        return;
                    }
                }
            }
        }
    }

    /// The grant to make next. A refresh token is spent the moment it is sent,
    /// so it is taken out of the cache here.
    fn next_grant(&self) -> Option<(GrantRequest, Arc<Credentials>)> {
        let mut ctl = self.lock();
        if ctl.closed {
            return None;
        }
        let credentials = Arc::clone(&ctl.credentials);
        let grant = match ctl.refresh_token.take() {
            Some(refresh) => GrantRequest::refresh(Arc::clone(&credentials), refresh),
            None => GrantRequest::password(Arc::clone(&credentials)),
        };
        Some((grant, credentials))
    }

    /// Records the outcome of a grant and says what the task does next.
    fn settle(
        self: &Arc<Self>,
        result: Result<TokenPair, TokenError>,
        grant_type: GrantType,
        sent_refresh: Option<RefreshToken>,
        used: &Arc<Credentials>,
        sent_at: Instant,
        span: &tracing::Span,
    ) -> Next {
        let mut ctl = self.lock();
        if ctl.closed {
            return Next::Done;
        }
        let err = match result {
            Ok(pair) => {
                span.record("outcome", "ok");
                self.counters.grant(grant_type, Outcome::Ok);
                tracing::info!(target: "daxium_auth", "grant succeeded");
                self.commit(&mut ctl, pair, sent_refresh, sent_at);
                return Next::Done;
            }
            Err(err) if err.grant_type().is_none() => err.with_grant(grant_type),
            Err(err) => err,
        };
        let mut err = err;
        let outcome = if err.is_grant_rejected() {
            Outcome::Rejected
        } else {
            Outcome::Failed
        };
        span.record("outcome", outcome.as_str());
        self.counters.grant(grant_type, outcome);
        tracing::warn!(target: "daxium_auth", error = %err, "grant failed");

        if let Some(rotated) = err.take_refresh_token() {
            // A 2xx whose access token was unusable still rotated the refresh
            // token: keep the new one, before anyone sees the error.
            ctl.refresh_token = Some(rotated);
        } else if !err.may_have_been_sent() {
            // It never left this machine: the refresh token is still good.
            ctl.refresh_token = ctl.refresh_token.take().or(sent_refresh);
        }
        if err.is_grant_rejected() {
            return match grant_type {
                // The refresh token is refused: the password grant, at once.
                GrantType::RefreshToken => Next::Again,
                // The login changed while this grant ran: try the new one now.
                GrantType::Password if !Arc::ptr_eq(&ctl.credentials, used) => Next::Again,
                GrantType::Password => {
                    self.reject(&mut ctl, err, Arc::clone(used));
                    Next::Done
                }
            };
        }
        // Transient: back off. While a token is valid, callers never see this.
        let delay = backoff(&self.config, ctl.attempt, err.retry_after(), &mut ctl.rng);
        ctl.attempt = ctl.attempt.saturating_add(1);
        ctl.flight = Flight::Backoff(err);
        self.publish(&ctl);
        Next::Sleep(delay)
    }

    /// After a backoff: try again while a token is still valid; otherwise let
    /// the next caller start the next attempt, so that a dead endpoint sees one
    /// attempt per backoff, not one per request.
    fn after_backoff(&self) -> bool {
        let mut ctl = self.lock();
        if ctl.closed {
            return false;
        }
        let valid = ctl.current.as_ref().is_some_and(|c| !c.expired);
        ctl.flight = if valid { Flight::Running } else { Flight::Idle };
        self.publish(&ctl);
        valid
    }

    fn commit(
        self: &Arc<Self>,
        ctl: &mut Control,
        pair: TokenPair,
        sent_refresh: Option<RefreshToken>,
        sent_at: Instant,
    ) {
        let (access, refresh, lifetime) = pair.into_parts();
        let id = ctl.next_id;
        ctl.next_id += 1;
        // A refresh answer without a refresh token keeps the one that was sent.
        ctl.refresh_token = refresh.or(sent_refresh);
        ctl.current = Some(Current {
            slot: Slot {
                id,
                header: access.into_header(),
            },
            stale: false,
            expired: false,
        });
        ctl.flight = Flight::Idle;
        ctl.terminal = None;
        ctl.attempt = 0;
        let jitter = ctl.rng.next_f64();
        let (stale_at, expires_at) =
            schedule(sent_at, lifetime, self.config.refresh_margin, jitter);
        let timer = tokio::spawn(expiry_timer(Arc::downgrade(self), id, stale_at, expires_at));
        if let Some(old) = ctl.timer.replace(timer) {
            old.abort();
        }
        self.publish(ctl);
    }

    fn reject(self: &Arc<Self>, ctl: &mut Control, err: TokenError, credentials: Arc<Credentials>) {
        tracing::error!(target: "daxium_auth", error = %err, "password grant rejected; no new attempt until the credentials change or the cool-down ends");
        ctl.terminal = Some(err);
        ctl.flight = Flight::Idle;
        self.publish(ctl);
        let cooldown = self.config.rejected_cooldown;
        let weak = Arc::downgrade(self);
        let lift = tokio::spawn(async move {
            tokio::time::sleep(cooldown).await;
            let Some(shared) = weak.upgrade() else { return };
            let mut ctl = shared.lock();
            // Only lift the rejection this task was started for.
            if Arc::ptr_eq(&ctl.credentials, &credentials) && ctl.terminal.take().is_some() {
                shared.publish(&ctl);
            }
        });
        if let Some(old) = ctl.cooldown.replace(lift) {
            old.abort();
        }
    }
}

fn fetcher_panicked() -> TokenError {
    TokenError::new(Kind::Transport).with_detail("the token fetcher panicked")
}

/// Resets the flight when the grant task is dropped before it finished.
struct FlightGuard {
    shared: Arc<Shared>,
    finished: bool,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut ctl = self.shared.lock();
        if ctl.closed {
            return;
        }
        ctl.flight = Flight::Idle;
        self.shared.publish(&ctl);
    }
}

/// Marks token `id` stale at `stale_at` and expired at `expires_at`, so that
/// readers never need to read the clock.
async fn expiry_timer(shared: Weak<Shared>, id: u64, stale_at: Instant, expires_at: Instant) {
    for (at, expire) in [(stale_at, false), (expires_at, true)] {
        tokio::time::sleep_until(at).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut ctl = shared.lock();
        match ctl.current.as_mut() {
            Some(current) if current.slot.id == id => {
                if expire {
                    current.expired = true;
                } else {
                    current.stale = true;
                }
            }
            _ => return,
        }
        shared.publish(&ctl);
    }
}

enum Next {
    Done,
    Again,
    Sleep(Duration),
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Ok,
    Rejected,
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }
}

/// When a token goes stale and when it expires. The margin is the configured
/// one, or half the lifetime for short-lived tokens; up to a fifth of it is
/// added at random (`jitter` in 0..1) so that replicas do not refresh in
/// lockstep.
fn schedule(
    sent_at: Instant,
    lifetime: Duration,
    margin: Duration,
    jitter: f64,
) -> (Instant, Instant) {
    let expires_at = sent_at + lifetime;
    let margin = margin.min(lifetime / 2);
    let margin = margin + margin.mul_f64(jitter.clamp(0.0, 1.0) / 5.0);
    (expires_at - margin, expires_at)
}

/// Exponential backoff with jitter: `min * 2^attempt`, capped at `max`, then
/// somewhere in its upper half; at least what `Retry-After` asked (itself capped
/// at an hour by the fetcher).
fn backoff(
    config: &CacheConfig,
    attempt: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Duration {
    let base = config
        .backoff_min
        .saturating_mul(1u32 << attempt.min(20))
        .min(config.backoff_max);
    let jittered = base / 2 + (base / 2).mul_f64(rng.next_f64());
    retry_after.map_or(jittered, |after| jittered.max(after))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(f64);
    impl Rng for Fixed {
        fn next_u64(&mut self) -> u64 {
            0
        }
        fn next_f64(&mut self) -> f64 {
            self.0
        }
    }

    #[test]
    fn schedule_uses_the_margin_for_long_tokens() {
        let now = Instant::now();
        let (stale, expires) =
            schedule(now, Duration::from_secs(3600), Duration::from_secs(60), 0.0);
        assert_eq!(expires - now, Duration::from_secs(3600));
        assert_eq!(expires - stale, Duration::from_secs(60));
        let (stale, _) = schedule(now, Duration::from_secs(3600), Duration::from_secs(60), 1.0);
        assert_eq!(expires - stale, Duration::from_secs(72));
    }

    #[test]
    fn schedule_halves_short_lifetimes() {
        let now = Instant::now();
        let (stale, expires) = schedule(now, Duration::from_secs(20), Duration::from_secs(60), 0.0);
        assert_eq!(stale - now, Duration::from_secs(10));
        assert_eq!(expires - now, Duration::from_secs(20));
        let (stale, _) = schedule(now, Duration::from_secs(20), Duration::from_secs(60), 1.0);
        assert_eq!(stale - now, Duration::from_secs(8));
    }

    #[test]
    fn backoff_grows_and_caps() {
        let config = CacheConfig::default();
        let top = |attempt| backoff(&config, attempt, None, &mut Fixed(1.0));
        let bottom = |attempt| backoff(&config, attempt, None, &mut Fixed(0.0));
        assert_eq!(top(0), Duration::from_millis(500));
        assert_eq!(bottom(0), Duration::from_millis(250));
        assert_eq!(top(1), Duration::from_secs(1));
        assert_eq!(top(3), Duration::from_secs(4));
        assert_eq!(top(10), Duration::from_secs(30));
        assert_eq!(top(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn backoff_honours_retry_after() {
        let config = CacheConfig::default();
        let d = backoff(&config, 0, Some(Duration::from_secs(7)), &mut Fixed(0.5));
        assert_eq!(d, Duration::from_secs(7));
        let d = backoff(&config, 10, Some(Duration::from_secs(1)), &mut Fixed(1.0));
        assert_eq!(d, Duration::from_secs(30));
    }
}
