//! The driver of the token cache: it feeds events to the pure core under one
//! mutex and carries out the actions it returns. Publication to the `ArcSwap`
//! happens under the lock, so readers see states in the core's order; waking
//! waiters, spawning the grant and the timer happen after it is released, so
//! that nothing running from there can find the lock taken.

use std::{
    collections::HashMap,
    pin::pin,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use arc_swap::ArcSwap;
use http::{HeaderValue, Uri};
use tokio::{
    sync::{Notify, oneshot, watch},
    task::AbortHandle,
    time::Instant,
};

mod store;
mod tasks;
mod waiters;

use self::tasks::Lost;

pub(crate) use self::waiters::{Resend, Ticket};

use super::core::{
    Action, Answer, CacheConfig, Core, Event, FlightId, Grant, Login, Payload, Phase, Reason, Slot,
    StoreCall, Time, View, WaiterId, Why,
};
use crate::{
    credentials::Credentials,
    error::{Kind, TokenError},
    fetcher::{DynFetcher, GrantRequest},
    login::{LoginState, LoginStatus},
    stats::Counters,
    store::AnyStore,
    token::RefreshToken,
};

/// The payload types of the live cache.
pub(crate) enum Live {}

impl Payload for Live {
    type Access = HeaderValue;
    type Refresh = RefreshToken;
    type Error = TokenError;

    fn error(why: Why) -> TokenError {
        match why {
            Why::Budget => {
                TokenError::new(Kind::Timeout).with_detail("no token within the wait budget")
            }
            Why::Closed => TokenError::new(Kind::Closed),
            Why::Lost => TokenError::new(Kind::Transport)
                .with_detail("the grant's task ended with its runtime before it answered"),
            Why::Expired => TokenError::new(Kind::InvalidResponse)
                .with_detail("the token had expired by the time it arrived"),
            Why::Refused => TokenError::new(Kind::Refused)
                .with_detail("several new tokens in a row were refused on first use"),
        }
    }
}

/// A slot of the live cache: token id and header value.
pub(crate) type LiveSlot = Slot<HeaderValue>;

/// How often a waiter asks again after its wake-up was lost with a runtime.
const MAX_ROUNDS: usize = 8;

/// A cache's shared part: what readers load, and the driver under its lock.
pub(crate) struct Shared {
    view: ArcSwap<View<Live>>,
    /// The login's state, for the application's subscribers: sent under the
    /// lock, as the view is published, so that they see states in order.
    login: watch::Sender<LoginState>,
    driver: Mutex<Driver>,
    fetcher: Arc<dyn DynFetcher>,
    origin: Instant,
    budget: Duration,
    grant_timeout: Duration,
    /// Told whenever store tasks join the driver's list.
    store_spawned: Notify,
    /// Held by a clean close while it runs: a second close waits for the
    /// first to be done with the store, instead of returning at once.
    closing: tokio::sync::Mutex<()>,
    pub(crate) counters: Counters,
}

struct Driver {
    core: Core<Live>,
    credentials: Arc<Credentials>,
    waiters: HashMap<WaiterId, oneshot::Sender<Answer<Live>>>,
    next_waiter: u64,
    grant: Option<(FlightId, AbortHandle)>,
    /// The grant the core has in flight, as far as the driver knows.
    flight: Option<FlightId>,
    /// The deadline of the live timer task, if there is one.
    timer: Option<watch::Sender<Option<Instant>>>,
    /// The token store shared with other replicas, if any.
    fleet: Option<store::Fleet>,
    /// The store calls running, for a clean close to wait for.
    store_tasks: Vec<store::StoreTask>,
    /// Store calls the core asked for whose tasks are not in `store_tasks`
    /// yet: they are spawned once the lock is released.
    unspawned: usize,
    actions: Vec<Action<Live>>,
}

/// What to do once the lock is released.
#[derive(Default)]
struct After {
    answers: Vec<(oneshot::Sender<Answer<Live>>, Answer<Live>)>,
    grant: Option<(FlightId, GrantRequest, Reason)>,
    timer: Option<watch::Receiver<Option<Instant>>>,
    abort: Option<AbortHandle>,
    store: Vec<(FlightId, StoreCall<Live>, store::Fleet)>,
}

impl Shared {
    pub(crate) fn new(
        fetcher: Arc<dyn DynFetcher>,
        credentials: Credentials,
        mut config: CacheConfig,
        store: Option<(AnyStore, Uri)>,
    ) -> Self {
        config.shared = store.is_some();
        let fleet = store
            .map(|(store, endpoint)| store::Fleet::new(store, endpoint, &credentials, &config));
        Self {
            view: ArcSwap::from_pointee(View::Empty),
            login: watch::Sender::new(LoginState::new(0, LoginStatus::LoggedOut, None)),
            budget: config.wait_budget,
            grant_timeout: config.grant_timeout,
            driver: Mutex::new(Driver {
                core: Core::new(config),
                credentials: Arc::new(credentials),
                waiters: HashMap::new(),
                next_waiter: 1,
                grant: None,
                flight: None,
                timer: None,
                fleet,
                store_tasks: Vec::new(),
                unspawned: 0,
                actions: Vec::new(),
            }),
            fetcher,
            store_spawned: Notify::new(),
            closing: tokio::sync::Mutex::new(()),
            origin: Instant::now(),
            counters: Counters::default(),
        }
    }

    /// What readers see.
    pub(crate) fn view(&self) -> &ArcSwap<View<Live>> {
        &self.view
    }

    /// A receiver of the login's state.
    pub(crate) fn subscribe(&self) -> watch::Receiver<LoginState> {
        self.login.subscribe()
    }

    /// Whether requests get a valid token now, without waiting: one load.
    /// A token whose timer was lost with its runtime (rare) may be past its
    /// expiry, which only the core can tell: it is asked then, and re-arms
    /// the timer.
    pub(crate) fn is_ready(self: &Arc<Self>) -> bool {
        match &**self.view.load() {
            View::Token(_, Phase::Fresh | Phase::Stale | Phase::Refreshing) => true,
            View::Token(_, Phase::Unchecked) => self.recheck(),
            View::Empty | View::Failed(_) => false,
        }
    }

    /// The token to send with now, from the view alone (one load, no lock),
    /// as the layer's hot path takes it: a stale token starts its refresh.
    /// `None` when only the core can answer (no token, or one whose timer
    /// was lost): ask it then.
    #[cfg(feature = "reqwest")]
    pub(crate) fn current(self: &Arc<Self>) -> Option<Result<LiveSlot, TokenError>> {
        match &**self.view.load() {
            View::Token(slot, Phase::Fresh | Phase::Refreshing) => Some(Ok(slot.clone())),
            View::Token(slot, Phase::Stale) => {
                self.kick();
                Some(Ok(slot.clone()))
            }
            View::Failed(err) => Some(Err(err.clone())),
            View::Token(_, Phase::Unchecked) | View::Empty => None,
        }
    }

    #[cold]
    fn recheck(self: &Arc<Self>) -> bool {
        self.run(Event::Tick);
        matches!(&**self.view.load(), View::Token(..))
    }

    pub(crate) fn config(&self) -> CacheConfig {
        self.lock().core.config().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Driver> {
        // The core is only changed by `handle`, which does not panic midway; a
        // poisoned lock holds a consistent state.
        self.driver.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn time(&self, at: Instant) -> Time {
        at.saturating_duration_since(self.origin)
    }

    /// The instant of core time `t`; one far away for a time no clock reaches.
    fn instant(&self, t: Time) -> Instant {
        const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);
        (self.origin.checked_add(t)).unwrap_or_else(|| self.origin + FAR)
    }

    /// Runs one event; returns how many waiters it answered.
    pub(crate) fn run(self: &Arc<Self>, event: Event<Live>) -> usize {
        self.run_with(|_| Some(event))
    }

    /// Runs the event that `f` makes under the lock, if any.
    fn run_with(self: &Arc<Self>, f: impl FnOnce(&mut Driver) -> Option<Event<Live>>) -> usize {
        let mut after = After::default();
        let answered = {
            let mut driver = self.lock();
            match f(&mut driver) {
                Some(event) => self.handle(&mut driver, event, &mut after),
                None => 0,
            }
        };
        self.finish(after);
        answered
    }

    fn handle(&self, driver: &mut Driver, event: Event<Live>, after: &mut After) -> usize {
        if let Event::TimerLost = event {
            // The next deadline gets a timer task of its own.
            driver.timer = None;
        }
        let mut actions = std::mem::take(&mut driver.actions);
        let now = self.time(Instant::now());
        driver.core.handle(now, event, &mut actions);
        let mut answered = 0;
        for action in actions.drain(..) {
            answered += self.execute(driver, action, after);
        }
        driver.actions = actions;
        answered
    }

    fn execute(&self, driver: &mut Driver, action: Action<Live>, after: &mut After) -> usize {
        match action {
            Action::Publish(view) => self.view.store(Arc::new(view)),
            Action::Login(login) => {
                self.login.send_replace(self.login_state(login));
            }
            Action::Answer { waiters, answer } => {
                let answered = waiters.len();
                for id in waiters {
                    if let Some(tx) = driver.waiters.remove(&id) {
                        after.answers.push((tx, answer.clone()));
                    }
                }
                return answered;
            }
            Action::Start {
                flight,
                grant,
                reason,
            } => {
                driver.flight = Some(flight);
                let credentials = Arc::clone(&driver.credentials);
                let request = match grant {
                    Grant::Password => GrantRequest::password(credentials),
                    Grant::Refresh(refresh) => GrantRequest::refresh(credentials, refresh),
                };
                after.grant = Some((flight, request, reason));
            }
            Action::Abort { flight } => {
                if driver.flight == Some(flight) {
                    driver.flight = None;
                }
                if driver.grant.as_ref().is_some_and(|(id, _)| *id == flight) {
                    after.abort = driver.grant.take().map(|(_, task)| task);
                }
            }
            Action::Store { flight, call } => {
                if let Some(fleet) = &mut driver.fleet {
                    let fleet = fleet.for_call(&call);
                    after.store.push((flight, call, fleet));
                    driver.unspawned += 1;
                }
            }
            Action::Arm(at) => {
                let at = at.map(|t| self.instant(t));
                match &driver.timer {
                    Some(timer) if !timer.is_closed() => {
                        timer.send_replace(at);
                    }
                    _ if at.is_none() => driver.timer = None,
                    _ => {
                        let (timer, deadline) = watch::channel(at);
                        driver.timer = Some(timer);
                        after.timer = Some(deadline);
                    }
                }
            }
        }
        0
    }

    /// The work that must not hold the lock.
    fn finish(self: &Arc<Self>, after: After) {
        if let Some(task) = after.abort {
            task.abort();
        }
        for (tx, answer) in after.answers {
            // A waiter that went away needs no answer.
            let _ = tx.send(answer);
        }
        // Each task gets its guard before it is spawned: a task dropped unpolled
        // (its runtime shutting down, or no runtime at all) reports itself lost.
        let runtime = tokio::runtime::Handle::try_current().ok();
        if let Some(deadline) = after.timer {
            let lost = Lost::new_weak(Arc::downgrade(self), Event::TimerLost);
            if let Some(runtime) = &runtime {
                drop(runtime.spawn(tasks::timer(Arc::downgrade(self), deadline, lost)));
            }
        }
        let (calls, mut store_tasks) = (after.store.len(), Vec::new());
        for (flight, call, fleet) in after.store {
            let lost = Lost::new(self, Event::GrantLost { flight });
            if let Some(runtime) = &runtime {
                let ends = store::Ends::of(&call);
                let task = runtime.spawn(Arc::clone(self).store_call(flight, call, fleet, lost));
                store_tasks.push(store::StoreTask { ends, task });
            }
        }
        if calls > 0 {
            let mut driver = self.lock();
            driver.store_tasks.retain(|t| !t.task.is_finished());
            driver.store_tasks.append(&mut store_tasks);
            driver.unspawned = driver.unspawned.saturating_sub(calls);
            drop(driver);
            self.store_spawned.notify_waiters();
        }
        if let Some((flight, request, reason)) = after.grant {
            let lost = Lost::new(self, Event::GrantLost { flight });
            let Some(runtime) = &runtime else {
                return;
            };
            let task = runtime.spawn(Arc::clone(self).grant(flight, request, reason, lost));
            // Kept to abort the grant when its login is replaced; an abort that
            // came while it was being spawned is carried out now.
            let mut driver = self.lock();
            if driver.flight == Some(flight) {
                driver.grant = Some((flight, task.abort_handle()));
            } else {
                task.abort();
            }
        }
    }

    /// A caller saw a stale token.
    pub(crate) fn kick(self: &Arc<Self>) {
        self.run(Event::Kick);
    }

    /// Replaces the credentials; returns whether they changed.
    pub(crate) fn set_credentials(self: &Arc<Self>, credentials: Credentials) {
        self.run_with(|driver| {
            if driver.credentials.same_as(&credentials) {
                return None;
            }
            let other_login = driver.credentials.client_id() != credentials.client_id()
                || driver.credentials.username() != credentials.username();
            if let Some(fleet) = driver.fleet.as_mut().filter(|_| other_login) {
                fleet.rekey(&credentials);
            }
            driver.credentials = Arc::new(credentials);
            Some(Event::CredentialsChanged { other_login })
        });
    }

    /// The cache's last handle went away.
    pub(crate) fn close(self: &Arc<Self>) {
        self.run(Event::Close);
        // Ends the timer task.
        self.lock().timer = None;
    }

    /// The API answered a request carrying token `id` without refusing it.
    /// Only answers until the current token is known to work reach the core:
    /// the first one for that token, and those for earlier tokens, which may
    /// show that a token refused before its answers came had worked (the
    /// core ends a streak of tokens refused on first use then, and the
    /// refusals still to come of a refused one count as revocations). Once
    /// the published view says the current token works, no request with
    /// that token asks again.
    #[cold]
    pub(crate) fn accepted(self: &Arc<Self>, id: u64) {
        let unconfirmed =
            (self.view.load().slot()).is_none_or(|slot| !slot.accepted || slot.id != id);
        if unconfirmed {
            self.run(Event::Accepted { id });
        }
    }

    /// Closes the cache as [`close`](Self::close) does, and finishes with the
    /// store: the calls that change it (a lease asked for, a record being
    /// written) run to their end, bounded by the store timeout, and the lease
    /// is released after them, so that the release cannot overtake the write.
    /// Reads and waits, whose answers no one needs now, are stopped.
    pub(crate) async fn close_cleanly(self: &Arc<Self>) {
        // Another close may have taken the store calls to wait for already:
        // this one returns when that one is done.
        let _closing = self.closing.lock().await;
        let mut after = After::default();
        let (release, timeout) = {
            let mut driver = self.lock();
            self.handle(&mut driver, Event::Close, &mut after);
            // Ends the timer task.
            driver.timer = None;
            let release = (after.store.iter())
                .find(|(_, call, _)| matches!(call, StoreCall::Release))
                .map(|(_, _, fleet)| fleet.clone().uncounted());
            driver.unspawned = driver.unspawned.saturating_sub(after.store.len());
            after.store.clear();
            (release, driver.fleet.as_ref().map(|fleet| fleet.timeout))
        };
        self.finish(after);
        let Some(timeout) = timeout else {
            return;
        };
        // The core is closed and asks for no store call; only the calls of
        // events handled just before the close may still join the list, from
        // the threads that handled them, a moment from now.
        for _ in 0..MAX_ROUNDS {
            let mut spawned = pin!(self.store_spawned.notified());
            spawned.as_mut().enable();
            let (tasks, unspawned) = {
                let mut driver = self.lock();
                (std::mem::take(&mut driver.store_tasks), driver.unspawned)
            };
            if tasks.is_empty() && unspawned == 0 {
                break;
            }
            store::settle(tasks).await;
            if unspawned > 0 {
                let _ = tokio::time::timeout(timeout, spawned).await;
            }
        }
        if let Some(fleet) = release {
            self.release(fleet).await;
        }
    }

    /// The core's login in the application's terms: its expiry as an instant.
    fn login_state(&self, login: Login) -> LoginState {
        let token = (login.token).map(|(expires_at, source)| (self.instant(expires_at), source));
        LoginState::new(login.version, login.status, token)
    }

    /// The id of `header` if it is the token readers see now, else 0 (no
    /// token has that id).
    pub(crate) fn id_of(&self, header: &HeaderValue) -> u64 {
        (self.view.load().slot())
            .filter(|slot| slot.access == header)
            .map_or(0, |slot| slot.id)
    }
}
