//! Edge cases of the token cache and the service: the last handle dropped
//! mid-replay, credentials changed mid-grant, a panicking fetcher, a call
//! outside a runtime, an unusable answer that rotated the refresh token, a
//! change of login, and clone-per-request allocations. Public API only, with a
//! scripted token fetcher, an API written as a tower service, and paused time.

use std::{
    collections::HashSet,
    convert::Infallible,
    future::Future,
    hint::black_box,
    pin::pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{
    AccessToken, AuthLayer, Credentials, ErrorBody, GrantRequest, GrantType, HttpFetcher,
    RefreshToken, ReplayBody, TokenError, TokenPair, fetcher,
};
use http::{Request, Response, StatusCode, header::AUTHORIZATION};
use http_body_util::{BodyExt, Empty, Full};
use tower::{Layer, Service, ServiceExt};

const API: &str = "http://127.0.0.1:9/api/items";

// === harness ===

/// The protected API: 200 for a token it knows, 401 otherwise.
#[derive(Default)]
struct Api {
    valid: Mutex<HashSet<String>>,
    attempts: AtomicUsize,
}

type Inner = tower::util::BoxCloneSyncService<
    Request<ReplayBody<Full<Bytes>>>,
    Response<Full<Bytes>>,
    Infallible,
>;

fn api_service(api: &Arc<Api>) -> Inner {
    let api = Arc::clone(api);
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |req: Request<ReplayBody<Full<Bytes>>>| {
            let api = Arc::clone(&api);
            async move {
                api.attempts.fetch_add(1, SeqCst);
                let ok = req
                    .headers()
                    .get(AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .is_some_and(|t| api.valid.lock().unwrap().contains(t));
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let status = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                };
                Ok(Response::builder()
                    .status(status)
                    .body(Full::new(body))
                    .unwrap())
            }
        },
    ))
}

/// A token endpoint in memory. `reject_passwords` names passwords it refuses.
struct Endpoint {
    api: Arc<Api>,
    issued: AtomicUsize,
    latency: Mutex<Duration>,
    lifetime: Mutex<Duration>,
    reject_passwords: Mutex<Vec<String>>,
    log: Mutex<Vec<String>>,
}

impl Endpoint {
    fn new(api: &Arc<Api>) -> Arc<Self> {
        Arc::new(Self {
            api: Arc::clone(api),
            issued: AtomicUsize::new(0),
            latency: Mutex::new(Duration::from_millis(20)),
            lifetime: Mutex::new(Duration::from_secs(3600)),
            reject_passwords: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
        })
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    async fn grant(&self, grant: GrantRequest) -> Result<TokenPair, TokenError> {
        let form: Vec<(String, String)> = serde_urlencoded_pairs(&grant.form_body());
        let get = |k: &str| {
            form.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let entry = match grant.grant_type() {
            GrantType::Password => format!("password:{}", get("username")),
            _ => format!("refresh:{}", get("refresh_token")),
        };
        self.log.lock().unwrap().push(entry);
        let latency = *self.latency.lock().unwrap();
        tokio::time::sleep(latency).await;
        if grant.grant_type() == GrantType::Password
            && self
                .reject_passwords
                .lock()
                .unwrap()
                .contains(&get("password"))
        {
            let body =
                ErrorBody::parse(br#"{"code":"DAERR-0401","message":"Invalid credentials"}"#);
            return Err(TokenError::rejected(StatusCode::UNAUTHORIZED, body));
        }
        let n = self.issued.fetch_add(1, SeqCst) + 1;
        let access = format!("access-{n}");
        self.api.valid.lock().unwrap().insert(access.clone());
        Ok(TokenPair::new(
            AccessToken::new(&access)?,
            Some(RefreshToken::new(&format!("refresh-{n}"))?),
            *self.lifetime.lock().unwrap(),
        ))
    }
}

/// `a=b&c=d` into pairs (the crate's form bodies are plain urlencoded).
fn serde_urlencoded_pairs(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%40", "@")))
        .collect()
}

fn creds(user: &str, password: &str) -> Credentials {
    Credentials::new("client", "client-secret", user, password)
}

fn layer_with(
    endpoint: &Arc<Endpoint>,
    configure: impl FnOnce(daxium_auth::AuthLayerBuilder) -> daxium_auth::AuthLayerBuilder,
) -> AuthLayer {
    let endpoint = Arc::clone(endpoint);
    let builder = AuthLayer::builder()
        .credentials(creds("alice", "password"))
        .api_origin("http://127.0.0.1:9")
        .fetcher(fetcher::from_fn(move |grant| {
            let endpoint = Arc::clone(&endpoint);
            async move { endpoint.grant(grant).await }
        }));
    configure(builder).build().unwrap()
}

fn get() -> Request<Full<Bytes>> {
    Request::get(API).body(Full::default()).unwrap()
}

// === 1. a replay can hang forever ===

/// The 401 path moves the future to `Reacquire`, which keeps only an
/// `Arc<Shared>`: when the future held the last handle on the layer (the
/// service went into `oneshot`, the layer was dropped), dropping `Sent` drops
/// the `Handle`, which aborts the refresh it just started and publishes
/// nothing. The waiter then waits on a `watch` that nobody will ever send.
#[tokio::test(start_paused = true)]
async fn replay_does_not_hang_when_the_future_holds_the_last_handle() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let layer = layer_with(&endpoint, |b| b);
    layer.cache().access_token().await.unwrap();
    api.valid.lock().unwrap().clear(); // the API revokes the token
    let svc = layer.layer(api_service(&api));
    drop(layer); // common: `let svc = AuthLayer::new(..)?.layer(client);`
    let res = tokio::time::timeout(Duration::from_secs(600), svc.oneshot(get())).await;
    let res = res.expect("the request hung: a waiter that nobody will wake");
    assert_eq!(res.unwrap().status(), StatusCode::OK);
}

// === 2. a rejection of old credentials blocks the new ones ===

/// `set_credentials` while the password grant with the old (wrong) password is
/// in flight: the rejection lands after the change, is recorded as terminal,
/// and its cool-down task is bound to the *new* credentials, so the corrected
/// password is not tried for `rejected_cooldown` (5 min), and calling
/// `set_credentials` again with it is a no-op (`same_as`).
#[tokio::test(start_paused = true)]
async fn a_rejection_of_old_credentials_does_not_block_new_ones() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    endpoint
        .reject_passwords
        .lock()
        .unwrap()
        .push("wrong".into());
    *endpoint.latency.lock().unwrap() = Duration::from_secs(1);
    let layer = layer_with(&endpoint, |b| b.credentials(creds("alice", "wrong")));
    let svc = layer.layer(api_service(&api));
    let first = tokio::spawn(svc.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(100)).await; // the grant is in flight
    layer.set_credentials(creds("alice", "right"));
    // Either outcome is fine for the call that raced the change.
    let _ = first.await.unwrap();

    layer.set_credentials(creds("alice", "right")); // the user insists: no-op
    let res = svc.clone().oneshot(get()).await;
    assert_eq!(
        endpoint.log(),
        ["password:alice", "password:alice"],
        "the corrected password must be tried"
    );
    assert_eq!(res.unwrap().status(), StatusCode::OK);
}

// === 3. a panicking fetcher is retried in a tight loop ===

/// A fetcher that panics (a bug, or a parser panic on a strange body) kills the
/// grant task; `FlightGuard` resets the flight to `Idle` and publishes `Empty`;
/// every waiter wakes and starts the next grant at once: no backoff, the token
/// endpoint is hit in a loop for as long as anyone waits.
#[tokio::test(start_paused = true)]
async fn a_panicking_fetcher_is_not_retried_in_a_tight_loop() {
    let calls = Arc::new(AtomicUsize::new(0));
    let calls2 = Arc::clone(&calls);
    let layer = AuthLayer::builder()
        .credentials(creds("alice", "password"))
        .api_origin("http://127.0.0.1:9")
        .fetcher(fetcher::from_fn(move |_grant| {
            let n = calls2.fetch_add(1, SeqCst) + 1;
            async move {
                // Bounded so that the test ends even with the defect.
                if n <= 50 {
                    panic!("fetcher bug #{n}");
                }
                Ok(TokenPair::new(
                    AccessToken::new("tok")?,
                    None,
                    Duration::from_secs(3600),
                ))
            }
        }))
        .build()
        .unwrap();
    // The caller waits through the backoff (500 ms, doubling, jittered down to
    // half): at most three attempts start within one second.
    let res = tokio::time::timeout(Duration::from_secs(1), layer.cache().access_token()).await;
    assert!(
        calls.load(SeqCst) <= 3,
        "{} grant attempts in no time, with no backoff (result: {res:?})",
        calls.load(SeqCst)
    );
}

// === 4. one call outside a tokio runtime poisons the cache for good ===

/// `start_locked` without a runtime publishes `Failed(Closed)` and sets the
/// flight back to `Idle` *without publishing again*: the `ArcSwap` keeps
/// `Failed` and nothing ever replaces it, so every later call, inside a
/// runtime too, fails fast with "closed".
#[test]
fn a_call_outside_a_runtime_does_not_poison_the_cache() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let layer = layer_with(&endpoint, |b| b);
    {
        // Polled by a non-tokio executor (futures::executor, smol, a sync test).
        let mut fut = pin!(layer.cache().access_token());
        let mut cx = Context::from_waker(Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Err(e)) => eprintln!("outside a runtime: {e}"),
            other => eprintln!("outside a runtime: pending={}", other.is_pending()),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let token = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), layer.cache().access_token()).await
    });
    let token = token.expect("no hang");
    assert!(
        token.is_ok(),
        "inside a runtime, the cache must recover: {token:?}"
    );
}

// === 5. the rotated refresh token is lost when the rest of the answer is unusable ===

/// DESIGN §2: "a rotated refresh token is never lost, also when the rest of the
/// response fails to parse". A refresh answered 200 with a new refresh token
/// but an unusable access token drops the new refresh token: the next grant is
/// a password grant.
#[tokio::test(start_paused = true)]
async fn a_rotated_refresh_token_survives_an_unusable_answer() {
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let log2 = Arc::clone(&log);
    let client = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let log = Arc::clone(&log2);
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let form = serde_urlencoded_pairs(std::str::from_utf8(&body).unwrap());
            let grant = form
                .iter()
                .find(|(k, _)| k == "grant_type")
                .unwrap()
                .1
                .clone();
            let refresh = form
                .iter()
                .find(|(k, _)| k == "refresh_token")
                .map(|kv| kv.1.clone());
            let n = {
                let mut log = log.lock().unwrap();
                log.push(format!("{grant}:{}", refresh.unwrap_or_default()));
                log.len()
            };
            let json = match n {
                1 => {
                    r#"{"access_token":"a1","refresh_token":"r1","expires_in":60,"token_type":"bearer"}"#
                }
                // The refresh is honoured (r1 is spent, r2 issued) but the access
                // token is unusable.
                2 => {
                    r#"{"access_token":"not a b64token","refresh_token":"r2","expires_in":60,"token_type":"bearer"}"#
                }
                _ => {
                    r#"{"access_token":"a3","refresh_token":"r3","expires_in":60,"token_type":"bearer"}"#
                }
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(json.as_bytes())))
                    .unwrap(),
            )
        }
    });
    let fetcher = HttpFetcher::with_client("http://127.0.0.1:9/oauth/v2/token", client).unwrap();
    let layer = AuthLayer::builder()
        .credentials(creds("alice", "password"))
        .api_origin("http://127.0.0.1:9")
        .backoff(Duration::from_millis(100), Duration::from_millis(100))
        .fetcher(fetcher)
        .build()
        .unwrap();
    layer.cache().access_token().await.unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    // The caller waits through the unusable answer; the next attempt sends r2.
    let token = layer.cache().access_token().await.unwrap();
    assert_eq!(token.expose_secret(), "a3");
    assert_eq!(
        log.lock().unwrap().as_slice(),
        ["password:", "refresh_token:r1", "refresh_token:r2"]
    );
}

// === 6. a change of user keeps refreshing the old user's session ===

/// `set_credentials` with another username keeps the old login's refresh
/// token: the session of the previous user is refreshed forever and the new
/// user never logs in (while the refresh token rotates).
#[tokio::test(start_paused = true)]
async fn set_credentials_for_another_user_ends_the_old_session() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.lifetime.lock().unwrap() = Duration::from_secs(60);
    let layer = layer_with(&endpoint, |b| b);
    layer.cache().access_token().await.unwrap();
    layer.set_credentials(creds("bob", "password"));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(61)).await;
        layer.cache().access_token().await.unwrap();
    }
    let log = endpoint.log();
    assert!(
        log.iter().any(|g| g == "password:bob"),
        "bob never logged in: {log:?}"
    );
}

// === 7. clone-per-request allocates a header copy on every request ===

#[derive(Debug, Clone, Copy)]
struct Bare;

impl<B> Service<Request<B>> for Bare {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        assert!(req.headers().contains_key(AUTHORIZATION));
        drop(black_box(req));
        std::future::ready(Ok(Response::new(Empty::new())))
    }
}

fn drive_clone<S>(parent: &S) -> u64
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Empty<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    allocation_counter::measure(|| {
        let mut svc = parent.clone();
        let req = Request::get(API).body(Empty::<Bytes>::new()).unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        let fut = pin!(svc.call(req));
        match fut.poll(&mut cx) {
            Poll::Ready(Ok(res)) => drop(black_box(res)),
            _ => panic!("no response after one poll"),
        }
    })
    .count_total
}

/// The per-service copy of the header (`own_copy`) is made by the service
/// that calls; a clone made per request (hyper, axum, `svc.clone().oneshot`)
/// starts from its parent's cached copy, which is absent or stale once the
/// token rotated, so every request copies the header: two allocations (the
/// `Bytes` vec, and its promotion to shared on the first clone), against the
/// design's zero with replay off.
#[test]
fn clone_per_request_adds_no_allocation() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let layer = AuthLayer::builder()
        .credentials(creds("alice", "password"))
        .api_origin("http://127.0.0.1:9")
        .replay(false)
        .fetcher(fetcher::from_fn(|_grant| async {
            Ok(TokenPair::new(
                AccessToken::new("tok")?,
                None,
                Duration::from_secs(3600),
            ))
        }))
        .build()
        .unwrap();
    rt.block_on(layer.cache().access_token()).unwrap();
    let floor_parent = tower_http::auth::AddAuthorization::bearer(Bare, "tok").as_sensitive(true);
    let parent = layer.layer(Bare);
    for _ in 0..2 {
        drive_clone(&floor_parent);
        drive_clone(&parent);
    }
    let floor = (0..5).map(|_| drive_clone(&floor_parent)).max().unwrap();
    let auth = (0..5).map(|_| drive_clone(&parent)).max().unwrap();
    assert_eq!(
        auth, floor,
        "clone-per-request: {auth} allocations against {floor}"
    );
}
