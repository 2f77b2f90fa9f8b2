//! The load run itself, apart from the command line so that `tests/load.rs`
//! can drive it in-process: concurrent GETs through `AuthLayer` over a hyper
//! client, against a real server or the embedded Daxium-compatible one, with
//! a progress bar; what it saw comes back as a [`Summary`]. With several
//! replicas, each is a layer with its own token cache and clients, as a
//! process of its own would be, and they share the login through a token
//! store.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{
    AuthLayer, AuthLayerBuilder, AuthService, Credentials, HttpFetcher, MemoryStore, Refusal,
    ReplayBody, Stats, TokenError, TokenStore,
    mock::MockServer,
    store::{AnyStore, LoginKey},
};
use futures_util::future::join_all;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::{ExposeSecret, SecretString};
use tokio::{task::JoinSet, time::Instant};
use tower::ServiceExt;

use crate::summary::{Latency, ReplicaSummary, Summary, Target, group};

/// How long the login may take before the run gives up.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one grant request may take.
const GRANT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one API request may take, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A run in which nothing succeeds for this long stops.
const STALL: Duration = Duration::from_secs(15);
/// How often the run checks its clock and counters.
const TICK: Duration = Duration::from_millis(10);
/// How often the progress bar is redrawn.
const DRAW: Duration = Duration::from_millis(100);
/// How long after a refresh no request can still carry the token it replaced.
const SETTLED: Duration = Duration::from_millis(100);
/// How long the first look at the token store may take before the run warns
/// that the replicas go on alone.
const STORE_CHECK: Duration = Duration::from_secs(2);

/// When the run ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Stop {
    /// After this many requests.
    Requests(u64),
    /// After this long; requests in flight then are finished.
    Duration(Duration),
}

/// The embedded server's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Embedded {
    /// Access token lifetime: short, so that the run shows refreshes.
    pub(crate) token_lifetime: Duration,
    /// Revoke every token half-way through, so that the run shows the 401
    /// replay.
    pub(crate) revoke_halfway: bool,
    /// The probability that a valid token presented is revoked on the spot.
    pub(crate) revoke_rate: f64,
    /// Each refresh revokes the access token of the pair it replaces.
    pub(crate) revoke_on_refresh: bool,
    /// A fraction of the API's answers held back.
    pub(crate) slow_api: Option<SlowApi>,
    /// When the API refuses every token.
    pub(crate) refuse_all: Option<Window>,
    /// Refusals the gRPC way (200, `grpc-status: 16`, no body).
    pub(crate) grpc_refusals: bool,
}

impl Default for Embedded {
    fn default() -> Self {
        Self {
            token_lifetime: Duration::from_secs(4),
            revoke_halfway: true,
            revoke_rate: 0.0,
            revoke_on_refresh: false,
            slow_api: None,
            refuse_all: None,
            grpc_refusals: false,
        }
    }
}

/// `--slow-api`: this fraction of the answers, held back this long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SlowApi {
    pub(crate) fraction: f64,
    pub(crate) latency: Duration,
}

/// `--refuse-all`: from `at` into the load, for `length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) at: Duration,
    pub(crate) length: Duration,
}

impl Window {
    fn contains(&self, elapsed: Duration) -> bool {
        elapsed >= self.at && elapsed - self.at < self.length
    }
}

/// What to run. Secrets are kept as `SecretString` and never printed.
pub(crate) struct Config {
    /// The token endpoint; `None` starts the embedded server.
    pub(crate) token_url: Option<String>,
    /// The protected URL to GET; required with `token_url`.
    pub(crate) api_url: Option<String>,
    pub(crate) client_id: Option<String>,
    pub(crate) client_secret: Option<SecretString>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<SecretString>,
    pub(crate) concurrency: usize,
    pub(crate) stop: Stop,
    /// The token store's URL (it may hold a Redis password); `None`: an
    /// in-process store when there are several replicas, none for one.
    pub(crate) store: Option<SecretString>,
    /// Independent layers sharing the store; the concurrency is split
    /// between them.
    pub(crate) replicas: usize,
    /// The progress bar, from [`progress_bar`]; hidden by default.
    pub(crate) progress: ProgressBar,
    pub(crate) embedded: Embedded,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            token_url: None,
            api_url: None,
            client_id: None,
            client_secret: None,
            username: None,
            password: None,
            concurrency: 64,
            stop: Stop::Duration(Duration::from_secs(12)),
            store: None,
            replicas: 1,
            progress: ProgressBar::hidden(),
            embedded: Embedded::default(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("token_url", &self.token_url)
            .field("api_url", &self.api_url)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("concurrency", &self.concurrency)
            .field("stop", &self.stop)
            .field(
                "store",
                &self
                    .store
                    .as_ref()
                    .map(|url| scheme_of(url.expose_secret())),
            )
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

/// Why the run could not start, or stopped early. `Display` is one line,
/// without a secret.
#[derive(Debug)]
pub(crate) enum Fatal {
    /// A bad or missing setting.
    Usage(String),
    /// No token: refused login, unreachable token endpoint, timeout.
    Login(TokenError),
    /// The login took longer than [`LOGIN_TIMEOUT`].
    LoginTimeout,
    /// The first API request failed or was not a 2xx.
    Api(String),
    /// The embedded server could not start.
    Server(std::io::Error),
    /// The token store could not be opened, or refused its credentials; the
    /// message holds nothing of its URL's password.
    Store(String),
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(msg) => f.write_str(msg),
            Self::Login(err) if err.is_grant_rejected() => {
                write!(f, "login refused by the token endpoint: {err}")
            }
            Self::Login(err) => write!(f, "login failed: {}", chain(err)),
            Self::LoginTimeout => write!(
                f,
                "login failed: no token within {} s",
                LOGIN_TIMEOUT.as_secs()
            ),
            Self::Api(msg) => f.write_str(msg),
            Self::Server(err) => write!(f, "could not start the embedded server: {err}"),
            Self::Store(msg) => f.write_str(msg),
        }
    }
}

impl Fatal {
    /// The `kind` of the `--json` error object.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Usage(_) => "usage",
            Self::Login(err) if err.is_grant_rejected() => "login_refused",
            Self::Login(err) if err.is_connect() => "connect",
            Self::Login(err) if err.is_timeout() => "timeout",
            Self::Login(_) => "login_failed",
            Self::LoginTimeout => "timeout",
            Self::Api(_) => "api",
            Self::Server(_) => "server",
            Self::Store(_) => "store",
        }
    }

    /// 2 for a bad setting, as for a bad command line; 1 otherwise.
    pub(crate) fn exit_status(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// An error and its causes on one line. The crate's errors and hyper's hold
/// no secret.
fn chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !line.ends_with(&cause_text) {
            line.push_str(": ");
            line.push_str(&cause_text);
        }
        source = cause.source();
    }
    line
}

type Https = HttpsConnector<HttpConnector>;
type Api = AuthService<Client<Https, ReplayBody<Empty<Bytes>>>>;

/// Counters the workers share with the progress bar.
#[derive(Default)]
struct Live {
    issued: AtomicU64,
    completed: AtomicU64,
    ok: AtomicU64,
    stop: AtomicBool,
    /// Latencies of answered requests: one histogram, whatever the
    /// concurrency. Locked for one record, never across an `.await`.
    latency: Mutex<Latency>,
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    status: BTreeMap<u16, u64>,
    /// 2xx answers that carried a gRPC status other than OK, by code.
    grpc: BTreeMap<u32, u64>,
    errors: BTreeMap<&'static str, u64>,
}

/// Runs the load and returns its summary. Fails before sending any load when
/// the settings are incomplete, the login fails, or the first API request
/// does not get a 2xx.
pub(crate) async fn run(config: Config) -> Result<Summary, Fatal> {
    if config.concurrency == 0 {
        return Err(Fatal::Usage("--concurrency must be at least 1".into()));
    }
    if config.replicas == 0 {
        return Err(Fatal::Usage("--replicas must be at least 1".into()));
    }
    if config.concurrency < config.replicas {
        return Err(Fatal::Usage(
            "--concurrency must be at least --replicas: each replica drives one request or more"
                .into(),
        ));
    }
    match config.stop {
        Stop::Requests(0) => return Err(Fatal::Usage("--requests must be at least 1".into())),
        Stop::Duration(d) if d.is_zero() => {
            return Err(Fatal::Usage("--duration must be above zero".into()));
        }
        _ => {}
    }
    check_embedded(&config)?;
    let sharing = open_store(&config)?;
    let (server, token_url, api_url, credentials) = prepare(&config).await?;
    if let Some(sharing) = &sharing {
        check_store(&config, sharing, &token_url, &credentials).await?;
    }

    let api_uri: Uri = api_url
        .parse()
        .map_err(|_| Fatal::Usage("--api-url does not parse as a URL".into()))?;
    let mut replicas = Vec::with_capacity(config.replicas);
    for _ in 0..config.replicas {
        let fetcher = HttpFetcher::new(&token_url)
            .map_err(|err| Fatal::Usage(format!("--token-url: {err}")))?
            .timeout(GRANT_TIMEOUT);
        let mut builder = AuthLayer::builder()
            .fetcher(fetcher)
            .credentials(credentials.clone())
            .api_origin(api_url.clone());
        if let Some(sharing) = &sharing {
            builder = builder.store(sharing.store.clone());
        }
        let layer = refusal_rule(builder, &config.embedded)
            .build()
            .map_err(|err| Fatal::Usage(format!("--api-url: {err}")))?;
        let api = AuthService::new(http_client(), layer.clone());
        replicas.push(Replica { layer, api });
    }

    let scheme = sharing.as_ref().map(|s| s.scheme);
    let outcome = load(
        &config,
        &replicas,
        server.as_ref(),
        scheme,
        api_url,
        &api_uri,
    )
    .await;
    // A clean close, however the run ended: each replica's last pair is in
    // the store and its lease released before the process exits, so that
    // the next run adopts the pair at once.
    join_all(replicas.iter().map(|r| r.layer.close())).await;
    outcome
}

/// The login, the first requests and the load of a run whose replicas are
/// built; stops early on Ctrl-C.
async fn load(
    config: &Config,
    replicas: &[Replica],
    server: Option<&MockServer>,
    store: Option<&'static str>,
    api_url: String,
    api_uri: &Uri,
) -> Result<Summary, Fatal> {
    // The login of every replica at once, bounded: a refused password or a
    // dead endpoint is an error here, before any load. With a store, one of
    // them logs in and the others adopt its token.
    let logins = replicas
        .iter()
        .map(|r| tokio::time::timeout(LOGIN_TIMEOUT, r.layer.login()));
    for login in join_all(logins).await {
        match login {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(Fatal::Login(err)),
            Err(_) => return Err(Fatal::LoginTimeout),
        }
    }
    let firsts = replicas.iter().map(|r| one_request(r.api.clone(), api_uri));
    for first in join_all(firsts).await {
        match first {
            Ok(answer) if answer.is_ok() => {}
            // The embedded server's API is at the right URL; a refusal there
            // is one it was told to make (--revoke-rate, say), which the load
            // is to show, not a reason not to start.
            Ok(_) if server.is_some() => {}
            Ok(answer) => {
                return Err(Fatal::Api(format!(
                    "the API answered {answer} to GET {api_url}"
                )));
            }
            Err((kind, detail)) => {
                return Err(Fatal::Api(format!(
                    "GET {api_url} failed ({kind}): {detail}"
                )));
            }
        }
    }

    let live = Arc::new(Live::default());
    let started = Instant::now();
    let deadline = match config.stop {
        Stop::Duration(d) => Some(started + d),
        Stop::Requests(_) => None,
    };
    let limit = match config.stop {
        Stop::Requests(n) => Some(n),
        Stop::Duration(_) => None,
    };
    let mut workers = JoinSet::new();
    for i in 0..config.concurrency {
        let replica = i % replicas.len();
        workers.spawn(worker(
            replica,
            replicas[replica].api.clone(),
            api_uri.clone(),
            Arc::clone(&live),
            deadline,
            limit,
        ));
    }

    let bar = config.progress.clone();
    // The bar counts from the start of the load, not from the login.
    bar.reset();
    let mut tally = Tally::default();
    let mut per_replica: Vec<Tally> = replicas.iter().map(|_| Tally::default()).collect();
    let mut tick = tokio::time::interval(TICK);
    let mut revoked_at = None;
    let mut aborted = None;
    let (mut last_ok, mut last_ok_at) = (0, Instant::now());
    // The login has no previous token to race with: quiet from the start.
    let (mut last_grants, mut last_grant_at) = (fleet_stats(replicas).grants(), started - SETTLED);
    let mut halfway_at = None;
    let mut refusing = false;
    let mut last_draw = started - DRAW;
    // Without a signal handler (none can be installed), no interruption.
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            () = &mut interrupted, if aborted.is_none() => {
                // The workers finish the requests in flight, and the replicas
                // are closed before the summary.
                aborted = Some("interrupted (Ctrl-C)".to_owned());
                live.stop.store(true, Relaxed);
                bar.println("interrupted: finishing the requests in flight");
            }
            joined = workers.join_next() => match joined {
                Some(done) => {
                    let (replica, seen) = done.expect("a load worker panicked");
                    merge(&mut tally, &seen);
                    merge(&mut per_replica[replica], &seen);
                }
                None => break,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                let completed = live.completed.load(Relaxed);
                let ok = live.ok.load(Relaxed);
                let elapsed = now - started;
                let stats = fleet_stats(replicas);
                if now - last_draw >= DRAW {
                    last_draw = now;
                    update_bar(&bar, config, elapsed, completed, ok, &stats);
                }
                let grants = stats.grants();
                if grants != last_grants {
                    (last_grants, last_grant_at) = (grants, now);
                }
                if let (Some(server), None) = (&server, revoked_at) {
                    let halfway = match config.stop {
                        Stop::Duration(d) => elapsed >= d / 2,
                        Stop::Requests(n) => completed >= n / 2,
                    };
                    let lifetime = config.embedded.token_lifetime;
                    // Revoking while a refresh lands would send some replays
                    // with the new token, revoked too: a second 401. Revoke
                    // once no request can still carry the previous token and
                    // before the next refresh, as a server-side revocation
                    // between refreshes would.
                    let since_grant = now - last_grant_at;
                    let quiet = since_grant >= SETTLED && since_grant <= lifetime.mul_f64(0.3);
                    let overdue = halfway_at.is_some_and(|at| now - at >= lifetime);
                    if halfway && halfway_at.is_none() {
                        halfway_at = Some(now);
                    }
                    if config.embedded.revoke_halfway && halfway && (quiet || overdue) {
                        server.revoke_all();
                        revoked_at = Some(elapsed);
                        bar.println(format!(
                            "{:>6.2} s: the embedded server revoked every token",
                            elapsed.as_secs_f64()
                        ));
                    }
                }
                if let (Some(server), Some(window)) = (&server, config.embedded.refuse_all)
                    && window.contains(elapsed) != refusing
                {
                    refusing = !refusing;
                    server.refuse_every_token(refusing);
                    bar.println(format!(
                        "{:>6.2} s: the embedded server {} every token",
                        elapsed.as_secs_f64(),
                        if refusing { "refuses" } else { "accepts again" }
                    ));
                }
                // No success is expected while the server refuses on purpose:
                // the stall is counted from the end of the window.
                if ok != last_ok || refusing {
                    (last_ok, last_ok_at) = (ok, now);
                } else if now - last_ok_at >= STALL && aborted.is_none() {
                    aborted = Some(format!("no successful answer for {} s", STALL.as_secs()));
                    live.stop.store(true, Relaxed);
                }
            }
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    let (requests, ok) = tally.counts();
    let target = match &server {
        Some(server) => Target::Embedded {
            base_url: server.base_url(),
            settings: config.embedded,
            revoked_at,
            counters: server.counters(),
        },
        None => Target::Remote { api_url },
    };
    let per_replica = replicas
        .iter()
        .zip(&per_replica)
        .map(|(replica, seen)| {
            let (requests, ok) = seen.counts();
            ReplicaSummary {
                requests,
                ok,
                stats: replica.layer.stats(),
            }
        })
        .collect();
    Ok(Summary {
        target,
        concurrency: config.concurrency,
        requests,
        ok,
        status: tally.status,
        grpc: tally.grpc,
        errors: tally.errors,
        stats: fleet_stats(replicas),
        store,
        replicas: per_replica,
        latency: live
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
        elapsed,
        aborted,
    })
}

/// Tells the layer how the API refuses a token, where that is not the 401
/// about the token that the layer knows by default: with `--grpc-refusals`
/// the embedded server refuses as a gRPC server does (HTTP 200,
/// `grpc-status: 16`, no body), which `Refusal::grpc` recognises.
fn refusal_rule(builder: AuthLayerBuilder, embedded: &Embedded) -> AuthLayerBuilder {
    if embedded.grpc_refusals {
        builder.refused_when(Refusal::grpc())
    } else {
        builder
    }
}

/// One replica: a layer with its own token cache, and its own API client.
struct Replica {
    layer: AuthLayer,
    api: Api,
}

/// The fleet's counters: the sum of its replicas'.
fn fleet_stats(replicas: &[Replica]) -> Stats {
    let mut sum = Stats::default();
    for stats in replicas.iter().map(|r| r.layer.stats()) {
        sum.password_ok += stats.password_ok;
        sum.password_rejected += stats.password_rejected;
        sum.password_failed += stats.password_failed;
        sum.refresh_ok += stats.refresh_ok;
        sum.refresh_rejected += stats.refresh_rejected;
        sum.refresh_failed += stats.refresh_failed;
        sum.replays += stats.replays;
        sum.replays_skipped += stats.replays_skipped;
        sum.resends += stats.resends;
        sum.waited += stats.waited;
        sum.store_errors += stats.store_errors;
    }
    sum
}

/// The token store the replicas share, and its URL's scheme (all the
/// summary shows of it).
struct Sharing {
    store: AnyStore,
    scheme: &'static str,
}

/// The store `--store` names; without one, an in-process store for several
/// replicas and none for one. A URL the store refuses is a usage error; a
/// store that cannot be opened (a directory that cannot be made) stops the
/// run. No message holds the URL's password.
fn open_store(config: &Config) -> Result<Option<Sharing>, Fatal> {
    let Some(url) = &config.store else {
        return Ok((config.replicas > 1).then(|| Sharing {
            store: AnyStore::new(MemoryStore::new()),
            scheme: "memory",
        }));
    };
    let url = url.expose_secret();
    let store = AnyStore::from_url(url).map_err(|err| {
        let message = redact(&format!("--store: {}", chain(&err)), url);
        if err.is_config() {
            Fatal::Usage(message)
        } else {
            Fatal::Store(message)
        }
    })?;
    Ok(Some(Sharing {
        store,
        scheme: scheme_of(url),
    }))
}

/// One read of the login's record before the load: a store that refuses its
/// credentials stops the run; one that does not answer is only a warning, as
/// the replicas then go on alone until it does.
async fn check_store(
    config: &Config,
    sharing: &Sharing,
    token_url: &str,
    credentials: &Credentials,
) -> Result<(), Fatal> {
    let url = config.store.as_ref().map_or("", |url| url.expose_secret());
    // The replicas' key; a token URL that does not parse fails their build
    // next, with its own message.
    let key = LoginKey::from_credentials(credentials);
    let key = match token_url.parse() {
        Ok(endpoint) => key.with_endpoint(&endpoint),
        Err(_) => key,
    };
    let warning = match tokio::time::timeout(STORE_CHECK, sharing.store.read(&key)).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(err)) if err.is_auth_failed() => {
            let message = format!("the token store refused its credentials: {}", chain(&err));
            return Err(Fatal::Store(redact(&message, url)));
        }
        Ok(Err(err)) => redact(&chain(&err), url),
        Err(_) => format!(
            "the token store did not answer within {} s",
            STORE_CHECK.as_secs()
        ),
    };
    config.progress.suspend(|| {
        eprintln!("warning: {warning}; each replica goes on alone until it answers");
    });
    Ok(())
}

/// The scheme of a store URL, for the summary: one of the known ones.
pub(crate) fn scheme_of(url: &str) -> &'static str {
    let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
    [
        "memory",
        "redis",
        "rediss",
        "redis+cluster",
        "rediss+cluster",
        "redis+sentinel",
        "rediss+sentinel",
        "file",
    ]
    .into_iter()
    .find(|known| scheme.eq_ignore_ascii_case(known))
    .unwrap_or("unknown")
}

/// `message` without the password of `url`'s user info, should a cause
/// ever quote it.
fn redact(message: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .map(|(userinfo, _)| userinfo.split_once(':').map_or(userinfo, |(_, p)| p))
        .filter(|password| !password.is_empty());
    match password {
        Some(password) => message.replace(password, "****"),
        None => message.to_owned(),
    }
}

/// The embedded server's settings: only for the embedded server, and
/// probabilities within 0 to 1 (the server's builder would panic).
fn check_embedded(config: &Config) -> Result<(), Fatal> {
    let embedded = &config.embedded;
    if config.token_url.is_some() && *embedded != Embedded::default() {
        return Err(Fatal::Usage(
            "the embedded server's settings (--token-lifetime, --revoke-rate, \
             --revoke-on-refresh, --slow-api, --refuse-all, --grpc-refusals) need it: \
             not with --token-url"
                .into(),
        ));
    }
    let fractions = [
        ("--revoke-rate", embedded.revoke_rate),
        (
            "--slow-api",
            embedded.slow_api.map_or(0.0, |slow| slow.fraction),
        ),
    ];
    for (flag, p) in fractions {
        if !(0.0..=1.0).contains(&p) {
            return Err(Fatal::Usage(format!(
                "{flag}: a probability from 0 to 1 wanted"
            )));
        }
    }
    Ok(())
}

/// The server (embedded or not), token URL, API URL and login of a run.
async fn prepare(
    config: &Config,
) -> Result<(Option<MockServer>, String, String, Credentials), Fatal> {
    let missing = |flag: &str, env: &str| Fatal::Usage(format!("missing --{flag} (or {env})"));
    match &config.token_url {
        Some(token_url) => {
            let api_url = config
                .api_url
                .clone()
                .ok_or_else(|| missing("api-url", "DAXIUM_API_URL"))?;
            let credentials = Credentials::new(
                config
                    .client_id
                    .as_deref()
                    .ok_or_else(|| missing("client-id", "DAXIUM_CLIENT_ID"))?,
                config
                    .client_secret
                    .as_ref()
                    .ok_or_else(|| missing("client-secret", "DAXIUM_CLIENT_SECRET"))?
                    .expose_secret(),
                config
                    .username
                    .as_deref()
                    .ok_or_else(|| missing("username", "DAXIUM_USERNAME"))?,
                config
                    .password
                    .as_ref()
                    .ok_or_else(|| missing("password", "DAXIUM_PASSWORD"))?
                    .expose_secret(),
            );
            Ok((None, token_url.clone(), api_url, credentials))
        }
        None => {
            if config.api_url.is_some() {
                return Err(Fatal::Usage(
                    "--api-url needs --token-url: the embedded server serves its own API".into(),
                ));
            }
            let embedded = &config.embedded;
            let mut builder = MockServer::builder()
                .token_lifetime(embedded.token_lifetime)
                .rotation(true)
                .revoke_presented(embedded.revoke_rate)
                .revoke_on_refresh(embedded.revoke_on_refresh)
                .grpc_refusals(embedded.grpc_refusals);
            if let Some(slow) = embedded.slow_api {
                builder = builder.slow_api(slow.fraction, slow.latency);
            }
            let server = builder.start().await.map_err(Fatal::Server)?;
            if config.store.is_some() {
                // A login of this run's own: a store kept from an earlier run
                // holds tokens of another embedded server, that this one never
                // issued, under the same login otherwise.
                let known = server.credentials();
                server.set_credentials(Credentials::new(
                    format!("{}-{}", known.client_id(), run_id()),
                    known.client_secret().expose_secret(),
                    known.username(),
                    known.password().expose_secret(),
                ));
            }
            // The server's login, where the command line gives none.
            let known = server.credentials();
            let credentials = Credentials::new(
                config.client_id.as_deref().unwrap_or(known.client_id()),
                config
                    .client_secret
                    .as_ref()
                    .unwrap_or(known.client_secret())
                    .expose_secret(),
                config.username.as_deref().unwrap_or(known.username()),
                config
                    .password
                    .as_ref()
                    .unwrap_or(known.password())
                    .expose_secret(),
            );
            let (token_url, api_url) = (server.token_url(), server.api_url("v1/structures"));
            Ok((Some(server), token_url, api_url, credentials))
        }
    }
}

/// A name for this run: the process id and the start time.
fn run_id() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("run-{}-{}", std::process::id(), since_epoch.as_millis())
}

/// hyper-util's client over rustls (HTTPS, and HTTP for loopback tests),
/// HTTP/1 and HTTP/2, with a connect timeout.
fn http_client() -> Client<Https, ReplayBody<Empty<Bytes>>> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .expect("ring supports TLS 1.2 and 1.3")
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .build(https)
}

/// What one request was answered.
#[derive(Debug, Clone, Copy)]
struct Answer {
    status: StatusCode,
    /// A gRPC status other than OK, from the headers (a trailers-only
    /// answer) or the trailers.
    grpc: Option<u32>,
}

impl Answer {
    fn is_ok(&self) -> bool {
        self.status.is_success() && self.grpc.is_none()
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.grpc {
            Some(code) => write!(f, "{} with gRPC status {code}", self.status),
            None => write!(f, "{}", self.status),
        }
    }
}

/// A `grpc-status` other than 0 (OK) in `headers`.
fn grpc_failure(headers: &HeaderMap) -> Option<u32> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    (code != 0).then_some(code)
}

/// One GET, body read, within [`REQUEST_TIMEOUT`]: the answer, or the kind of
/// failure and its one-line description.
async fn one_request(api: Api, uri: &Uri) -> Result<Answer, (&'static str, String)> {
    let request = Request::get(uri.clone())
        .body(Empty::<Bytes>::new())
        .expect("a GET with a valid URI");
    let exchange = async move {
        let response = api.oneshot(request).await.map_err(|err| {
            let kind = match &err {
                daxium_auth::Error::Token(_) => "token",
                daxium_auth::Error::Inner(inner) if inner.is_connect() => "connect",
                _ => "transport",
            };
            (kind, chain(&err))
        })?;
        let status = response.status();
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.map_err(|err| ("body", chain(&err)))?;
        let grpc =
            grpc_failure(&parts.headers).or_else(|| collected.trailers().and_then(grpc_failure));
        Ok(Answer { status, grpc })
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err((
            "timeout",
            format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
        )),
    }
}

async fn worker(
    replica: usize,
    api: Api,
    uri: Uri,
    live: Arc<Live>,
    deadline: Option<Instant>,
    limit: Option<u64>,
) -> (usize, Tally) {
    let mut tally = Tally::default();
    loop {
        if live.stop.load(Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Some(limit) = limit
            && live.issued.fetch_add(1, Relaxed) >= limit
        {
            break;
        }
        let started = Instant::now();
        match one_request(api.clone(), &uri).await {
            Ok(answer) => {
                let latency = started.elapsed();
                live.latency
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(latency);
                *tally.status.entry(answer.status.as_u16()).or_default() += 1;
                if let (true, Some(code)) = (answer.status.is_success(), answer.grpc) {
                    *tally.grpc.entry(code).or_default() += 1;
                }
                if answer.is_ok() {
                    live.ok.fetch_add(1, Relaxed);
                }
            }
            Err((kind, _)) => {
                *tally.errors.entry(kind).or_default() += 1;
                // An error can come without a wait (a layer that turns
                // callers away while the API refuses every token): without
                // a yield this loop would keep its thread from the requests
                // in flight, the server and the ticker until the run ends.
                tokio::task::yield_now().await;
            }
        }
        live.completed.fetch_add(1, Relaxed);
    }
    (replica, tally)
}

fn merge(into: &mut Tally, from: &Tally) {
    for (code, n) in &from.status {
        *into.status.entry(*code).or_default() += n;
    }
    for (kind, n) in &from.errors {
        *into.errors.entry(kind).or_default() += n;
    }
    for (code, n) in &from.grpc {
        *into.grpc.entry(*code).or_default() += n;
    }
}

impl Tally {
    /// Requests that got an answer or failed, and answers with a 2xx that
    /// carried no gRPC failure.
    fn counts(&self) -> (u64, u64) {
        let requests = self.status.values().sum::<u64>() + self.errors.values().sum::<u64>();
        let success: u64 = (self.status.iter())
            .filter(|(code, _)| (200..300).contains(*code))
            .map(|(_, n)| n)
            .sum();
        (requests, success - self.grpc.values().sum::<u64>())
    }
}

/// The progress bar of a run that stops at `stop`, drawn on stderr when it
/// is a terminal.
pub(crate) fn progress_bar(stop: Stop) -> ProgressBar {
    let (len, template) = match stop {
        Stop::Requests(n) => (
            n,
            "{spinner} {elapsed:>4} [{bar:32}] {pos}/{len} requests  {msg}",
        ),
        Stop::Duration(d) => (
            d.as_millis() as u64,
            "{spinner} {elapsed:>4} [{bar:32}] {msg}",
        ),
    };
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn update_bar(
    bar: &ProgressBar,
    config: &Config,
    elapsed: Duration,
    completed: u64,
    ok: u64,
    stats: &Stats,
) {
    if bar.is_hidden() {
        return;
    }
    let position = match config.stop {
        Stop::Requests(_) => completed,
        Stop::Duration(d) => elapsed.min(d).as_millis() as u64,
    };
    bar.set_position(position);
    let rate = completed as f64 / elapsed.as_secs_f64().max(1e-3);
    bar.set_message(format!(
        "{} req ({} ok), {} req/s, grants {}, 401 replays {}",
        group(completed),
        group(ok),
        group(rate.round() as u64),
        stats.grants(),
        stats.replays
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_url_shows_its_scheme_only() {
        assert_eq!(scheme_of("redis://user:secret@127.0.0.1:6379/0"), "redis");
        assert_eq!(scheme_of("REDISS://h:1/"), "rediss");
        assert_eq!(
            scheme_of("redis+cluster://:secret@h1:7000,h2:7000/"),
            "redis+cluster"
        );
        assert_eq!(scheme_of("rediss+sentinel://s1,s2/m"), "rediss+sentinel");
        assert_eq!(scheme_of("file:///var/lib/tokens"), "file");
        assert_eq!(scheme_of("memory:"), "memory");
        assert_eq!(scheme_of("secret-without-scheme"), "unknown");
    }

    #[test]
    fn the_password_of_a_store_url_is_redacted() {
        let url = "redis://user:hunter2-sentinel@127.0.0.1:6379/0";
        let said = redact("could not log in as user with hunter2-sentinel", url);
        assert_eq!(said, "could not log in as user with ****");
        assert_eq!(
            redact("no hunter2 here", "redis://:hunter2@h/"),
            "no **** here"
        );
        assert_eq!(
            redact(
                "no hunter2 here",
                "redis+cluster://u:hunter2@h1:7000,h2:7000/"
            ),
            "no **** here"
        );
        assert_eq!(redact("as it was", "redis://127.0.0.1:6379/"), "as it was");
        assert_eq!(redact("as it was", "file:///tmp/x"), "as it was");
    }

    #[test]
    fn a_fleet_needs_a_request_in_flight_per_replica() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = Config {
            concurrency: 2,
            replicas: 3,
            ..Config::default()
        };
        let err = runtime.block_on(run(config)).unwrap_err();
        assert!(matches!(err, Fatal::Usage(_)), "{err:?}");
        assert!(err.to_string().contains("--replicas"), "{err}");
    }
}
