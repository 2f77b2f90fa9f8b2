//! Replicas of one service for the fleet tests, against the crate's
//! Daxium-compatible server on 127.0.0.1: each replica is an `AuthLayer` with
//! its own cache, its own store handle and its own HTTP clients, as a process
//! of its own would have. Their fetcher keeps every token pair the server
//! issued (so that a test can look for them where they must not be), and can
//! be told to hang once a refresh grant has been answered (as a replica that
//! dies mid-grant would) or to do something first (freeze the store). Callers
//! drive the replicas for a bounded time, and watch which tokens the store
//! held.

use std::{
    collections::HashSet,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{
    AuthLayer, AuthLayerBuilder, AuthService, GrantRequest, GrantType, HttpFetcher, ReplayBody,
    TokenFetcher, fetcher,
    mock::{MockCounters, MockServer},
    store::{AnyStore, LoginKey, StoredRecord, TokenStore},
};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::{
    sync::Notify,
    task::{JoinHandle, JoinSet},
    time::Instant,
};
use tower::{Layer, ServiceExt};

/// How long one request may take before the test counts it failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The Daxium-compatible server of the fleet tests: tokens of `lifetime`,
/// rotation on, and reuse protection on (a refresh token presented twice
/// revokes the login's every token, and counts in `refresh_reuse`).
pub(crate) async fn server(lifetime: Duration) -> MockServer {
    MockServer::builder()
        .token_lifetime(lifetime)
        .rotation(true)
        .reuse_protection(true)
        .start()
        .await
        .expect("bind 127.0.0.1")
}

/// The key that the replicas of `server` file its login under.
pub(crate) fn login_key(server: &MockServer) -> LoginKey {
    let endpoint = server.token_url().parse().expect("a valid URL");
    LoginKey::from_credentials(&server.credentials()).with_endpoint(&endpoint)
}

/// Every token pair the replicas' fetchers received: what the server issued.
#[derive(Default)]
pub(crate) struct Issued {
    tokens: Mutex<Vec<String>>,
    pairs: AtomicU64,
}

impl Issued {
    fn keep(&self, pair: &daxium_auth::TokenPair) {
        let mut tokens = self.tokens.lock().unwrap();
        tokens.push(pair.access_token().expose_secret().to_owned());
        if let Some(refresh) = pair.refresh_token() {
            tokens.push(refresh.expose_secret().to_owned());
        }
        self.pairs.fetch_add(1, SeqCst);
    }

    /// Every access and refresh token received.
    pub(crate) fn tokens(&self) -> Vec<String> {
        self.tokens.lock().unwrap().clone()
    }

    /// How many pairs were received.
    pub(crate) fn pairs(&self) -> u64 {
        self.pairs.load(SeqCst)
    }
}

/// What a replica's fetcher does, once, after the server has answered a
/// refresh grant and before the cache sees the answer.
pub(crate) enum Then {
    /// Hang: the refresh token is spent at the server, the new pair never
    /// reaches the cache, and the replica keeps the store's lease until its
    /// time to live (or until the layer is dropped, which aborts the grant).
    Hang,
    /// Run this first, then deliver the pair.
    Run(Box<dyn FnOnce() + Send>),
}

/// The [`Then`] a replica's next refresh answer meets, and whether it has.
#[derive(Default)]
pub(crate) struct AfterRefresh {
    then: Mutex<Option<Then>>,
    fired: AtomicBool,
    reached: Notify,
}

impl AfterRefresh {
    pub(crate) fn set(&self, then: Then) {
        *self.then.lock().unwrap() = Some(then);
    }

    /// Whether a refresh answer has met it.
    pub(crate) fn has_fired(&self) -> bool {
        self.fired.load(SeqCst)
    }

    /// Waits (at most `within`) until a refresh answer meets it; whether one
    /// did.
    pub(crate) async fn fired(&self, within: Duration) -> bool {
        let reached = self.reached.notified();
        tokio::pin!(reached);
        reached.as_mut().enable();
        if self.has_fired() {
            return true;
        }
        tokio::time::timeout(within, reached).await.is_ok() || self.has_fired()
    }

    async fn meet(&self) {
        let Some(then) = self.then.lock().unwrap().take() else {
            return;
        };
        let hang = match then {
            Then::Hang => true,
            Then::Run(f) => {
                f();
                false
            }
        };
        self.fired.store(true, SeqCst);
        self.reached.notify_waiters();
        if hang {
            std::future::pending::<()>().await;
        }
    }
}

type Inner = Client<HttpConnector, ReplayBody<Empty<Bytes>>>;

/// One replica: its layer and its API client.
pub(crate) struct Replica {
    pub(crate) layer: AuthLayer,
    pub(crate) api: AuthService<Inner>,
    pub(crate) after_refresh: Arc<AfterRefresh>,
}

/// A replica of `server`'s login sharing `store` (none: a replica alone),
/// with the settings `configure` adds.
pub(crate) fn replica(
    server: &MockServer,
    store: Option<AnyStore>,
    issued: &Arc<Issued>,
    configure: impl FnOnce(AuthLayerBuilder) -> AuthLayerBuilder,
) -> Replica {
    let http = HttpFetcher::new(&server.token_url()).expect("a loopback token URL");
    let after_refresh = Arc::new(AfterRefresh::default());
    let fetcher = {
        let (issued, after) = (Arc::clone(issued), Arc::clone(&after_refresh));
        fetcher::from_fn(move |grant: GrantRequest| {
            let (http, issued, after) = (http.clone(), Arc::clone(&issued), Arc::clone(&after));
            async move {
                let refresh = grant.grant_type() == GrantType::RefreshToken;
                let pair = http.fetch(grant).await?;
                issued.keep(&pair);
                if refresh {
                    after.meet().await;
                }
                Ok(pair)
            }
        })
    };
    // The token URL names the endpoint that the fetcher's grants go to: the
    // store files the login under it.
    let mut builder = AuthLayer::builder()
        .fetcher(fetcher)
        .token_url(server.token_url())
        .credentials(server.credentials())
        .api_origin(server.base_url());
    if let Some(store) = store {
        builder = builder.store(store);
    }
    let layer = configure(builder).build().expect("valid settings");
    let inner = Client::builder(TokioExecutor::new()).build_http();
    Replica {
        api: layer.layer(inner),
        layer,
        after_refresh,
    }
}

/// One replica alone, without a store, on a server of its own with tokens of
/// `lifetime`: what a fleet's grants are measured against.
pub(crate) async fn solo(lifetime: Duration) -> (MockServer, Vec<Arc<Replica>>) {
    let server = server(lifetime).await;
    let alone = replica(&server, None, &Arc::new(Issued::default()), |b| b);
    (server, vec![Arc::new(alone)])
}

impl Replica {
    /// One GET of `url`: its status, or what failed.
    pub(crate) async fn get(&self, url: &str) -> Result<StatusCode, String> {
        let request = Request::get(url)
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let exchange = async {
            let response = self
                .api
                .clone()
                .oneshot(request)
                .await
                .map_err(|e| format!("{e}"))?;
            let status = response.status();
            response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?;
            Ok(status)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")))
    }

    /// The access token the replica holds now (waiting for one if need be).
    pub(crate) async fn token(&self) -> String {
        let token = tokio::time::timeout(REQUEST_TIMEOUT, self.layer.cache().access_token())
            .await
            .expect("a token in time")
            .expect("a token");
        token.expose_secret().to_owned()
    }
}

/// What driving a fleet saw.
#[derive(Debug, Default)]
pub(crate) struct Driven {
    pub(crate) requests: u64,
    pub(crate) ok: u64,
    /// The first failures, with the replica and the time they happened.
    pub(crate) failures: Vec<String>,
}

impl Driven {
    pub(crate) fn assert_all_ok(&self) {
        assert!(self.requests > 0, "no request was made");
        assert_eq!(
            self.ok,
            self.requests,
            "{} of {} requests failed; first: {:?}",
            self.requests - self.ok,
            self.requests,
            self.failures
        );
    }

    fn merge(&mut self, other: Driven) {
        self.requests += other.requests;
        self.ok += other.ok;
        let room = 10usize.saturating_sub(self.failures.len());
        self.failures.extend(other.failures.into_iter().take(room));
    }
}

/// What a fleet run shows whatever befell its store: every request of the
/// fleet (`driven`) and of the replica alone (`alone`) answered, no refresh
/// token sent twice (the server's reuse detection would have revoked the
/// login), no grant refused, and at most `logins` password grants.
pub(crate) fn assert_sound(driven: &Driven, alone: &Driven, fleet: &MockCounters, logins: u64) {
    driven.assert_all_ok();
    alone.assert_all_ok();
    assert_eq!(fleet.refresh_reuse, 0, "{fleet:?}");
    assert_eq!(
        fleet.refresh_rejected + fleet.password_rejected,
        0,
        "{fleet:?}"
    );
    assert!(fleet.password_ok <= logins, "{fleet:?}");
}

/// Over one window of a run (`when`), the fleet made the grants of one
/// replica alone, `slack` more at the most, and the replica alone made at
/// least `at_least` (the comparison means something: it refreshed all along).
pub(crate) fn assert_grants_of_one(when: &str, fleet: u64, one: u64, at_least: u64, slack: u64) {
    assert!(
        one >= at_least,
        "{when}: one replica alone made {one} grants"
    );
    assert!(
        fleet <= one + slack,
        "{when}: the fleet made {fleet} grants, one replica alone {one}"
    );
}

/// A server's grants, for a test's log line.
pub(crate) fn grants(server: &MockCounters) -> String {
    format!(
        "{} grants (password {}, refresh {}), reuse {}",
        server.grant_requests, server.password_ok, server.refresh_ok, server.refresh_reuse
    )
}

/// `callers` tasks per replica, each sending a GET of `url` every `every`
/// until `until`, concurrently; what they saw.
pub(crate) async fn drive(
    replicas: &[Arc<Replica>],
    url: impl Into<String>,
    callers: usize,
    every: Duration,
    until: Instant,
) -> Driven {
    let url: String = url.into();
    let started = Instant::now();
    // Bounded in count as well as in time.
    let most = until.saturating_duration_since(started).as_millis() as u64
        / every.as_millis().max(1) as u64
        + 1;
    let mut tasks = JoinSet::new();
    for (index, replica) in replicas.iter().enumerate() {
        for _ in 0..callers {
            let (replica, url) = (Arc::clone(replica), url.clone());
            tasks.spawn(async move {
                let mut seen = Driven::default();
                for _ in 0..most {
                    if Instant::now() >= until {
                        break;
                    }
                    seen.requests += 1;
                    match replica.get(&url).await {
                        Ok(StatusCode::OK) => seen.ok += 1,
                        outcome => {
                            let at = started.elapsed().as_secs_f64();
                            seen.failures
                                .push(format!("replica {index} at {at:.2} s: {outcome:?}"));
                        }
                    }
                    tokio::time::sleep(every).await;
                }
                seen
            });
        }
    }
    let mut driven = Driven::default();
    while let Some(done) = tasks.join_next().await {
        driven.merge(done.expect("a caller panicked"));
    }
    driven
}

/// [`drive`] in a task of its own, for `server`'s API.
pub(crate) fn spawn_drive(
    replicas: &[Arc<Replica>],
    server: &MockServer,
    callers: usize,
    every: Duration,
    until: Instant,
) -> JoinHandle<Driven> {
    let (replicas, api) = (replicas.to_vec(), server.api_url("v1/items"));
    tokio::spawn(async move { drive(&replicas, &api, callers, every, until).await })
}

/// Runs `f` on tokio's blocking pool (for the `redis-server` harness, which
/// waits with the thread's clock).
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("the blocking task")
}

/// Waits until `done` holds, checking every 10 ms for at most `within`;
/// whether it held.
pub(crate) async fn eventually<F: Future<Output = bool>>(
    within: Duration,
    mut done: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + within;
    let turns = within.as_millis() / 10 + 1;
    for _ in 0..turns {
        if done().await {
            return true;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done().await
}

/// The access tokens that a login's record in a store held, read every
/// 20 ms from when the watch starts.
pub(crate) struct StoreWatch {
    seen: Arc<Mutex<HashSet<String>>>,
    task: JoinHandle<()>,
}

impl StoreWatch {
    /// Watches `key` in `store` for at most `within`.
    pub(crate) fn start(store: AnyStore, key: LoginKey, within: Duration) -> Self {
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let task = {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let turns = (within.as_millis() / 20) as usize;
                for _ in 0..turns {
                    if let Ok(Some(record)) = store.read(&key).await {
                        let access = record.record().access_token().expose_secret().to_owned();
                        seen.lock().unwrap().insert(access);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Self { seen, task }
    }

    /// Ends the watch with the record `store` holds now (which it must
    /// have), and checks that every replica holds a token the store held
    /// since `since` (the watch's start); the record.
    pub(crate) async fn assert_shared(
        self,
        replicas: &[Arc<Replica>],
        store: &AnyStore,
        key: &LoginKey,
        since: &str,
    ) -> StoredRecord {
        let mut held = Vec::new();
        for replica in replicas {
            held.push(replica.token().await);
        }
        self.task.abort();
        let last = store
            .read(key)
            .await
            .expect("the store answers")
            .expect("the fleet's record");
        let mut seen = self.seen.lock().unwrap();
        seen.insert(last.record().access_token().expose_secret().to_owned());
        for (i, token) in held.iter().enumerate() {
            assert!(
                seen.contains(token),
                "replica {i} holds a token the store never held after {since}"
            );
        }
        last
    }
}
