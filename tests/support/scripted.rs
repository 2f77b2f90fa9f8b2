//! A scripted token endpoint and a protected API, in memory, for the tests of
//! the layer's logic: the endpoint counts and logs grants, follows a script of
//! failures, refuses the passwords it is told to, issues `access-N` /
//! `refresh-N` (after a prefix, if set) and registers each access token with
//! the API; the API answers 200 with the body echoed for a valid token and 401
//! otherwise.

use std::{
    collections::{HashSet, VecDeque},
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{
    AccessToken, AuthLayer, AuthLayerBuilder, AuthService, BuildError, Credentials, ErrorBody,
    GrantRequest, GrantType, RefreshToken, ReplayBody, TokenError, TokenFetcher, TokenPair,
    fetcher,
};
use http::{HeaderValue, Request, Response, StatusCode, header::AUTHORIZATION};
use http_body_util::{BodyExt, Full};
use secrecy::ExposeSecret;
use tower::{Layer, ServiceExt};

pub(crate) const API: &str = "http://127.0.0.1:9/api/items";

/// Where the scripted endpoint stands, for the layers that share a store: it
/// names the login's record. No request goes there.
pub(crate) const TOKEN_URL: &str = "http://127.0.0.1:9/oauth/v2/token";

/// What the endpoint answers next, before its default of a new token pair.
#[derive(Clone)]
pub(crate) enum Step {
    /// A Daxium refusal: 401 `DAERR-0401`.
    Reject,
    /// A transient failure: a 503 from the test endpoint.
    Fail,
    /// This error, as it is.
    Error(TokenError),
}

/// The refusal of [`Step::Reject`] and of a refused password.
fn refusal() -> TokenError {
    let body = ErrorBody::parse(br#"{"code":"DAERR-0401","message":"Invalid credentials"}"#);
    TokenError::rejected(StatusCode::UNAUTHORIZED, body)
}

/// A token endpoint in memory: counts grants, logs each as
/// `password:<username>` or `refresh:<refresh token>`, issues
/// `<prefix>access-N`/`<prefix>refresh-N`, and registers each access token
/// with the API.
pub(crate) struct Endpoint {
    pub(crate) password: AtomicUsize,
    pub(crate) refresh: AtomicUsize,
    pub(crate) issued: AtomicUsize,
    pub(crate) refresh_seen: Mutex<Vec<String>>,
    pub(crate) log: Mutex<Vec<String>>,
    pub(crate) script: Mutex<VecDeque<Step>>,
    /// Passwords that the password grant refuses, whatever the script says.
    pub(crate) refused_passwords: Mutex<Vec<String>>,
    pub(crate) latency: Mutex<Duration>,
    pub(crate) lifetime: Mutex<Duration>,
    /// Put before every token issued.
    pub(crate) prefix: Mutex<String>,
    pub(crate) api: Arc<Api>,
}

impl Endpoint {
    pub(crate) fn new(api: &Arc<Api>) -> Arc<Self> {
        Arc::new(Self {
            password: AtomicUsize::new(0),
            refresh: AtomicUsize::new(0),
            issued: AtomicUsize::new(0),
            refresh_seen: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            refused_passwords: Mutex::new(Vec::new()),
            latency: Mutex::new(Duration::from_millis(20)),
            lifetime: Mutex::new(Duration::from_secs(3600)),
            prefix: Mutex::new(String::new()),
            api: Arc::clone(api),
        })
    }

    pub(crate) fn grants(&self) -> usize {
        self.password.load(SeqCst) + self.refresh.load(SeqCst)
    }

    /// Fails if a refresh token reached the endpoint twice.
    pub(crate) fn assert_no_refresh_token_sent_twice(&self) {
        let sent = self.refresh_seen.lock().unwrap();
        let unique: HashSet<_> = sent.iter().collect();
        assert_eq!(
            unique.len(),
            sent.len(),
            "a refresh token sent twice: {sent:?}"
        );
    }

    pub(crate) fn push(&self, step: Step) {
        self.script.lock().unwrap().push_back(step);
    }

    /// `step` for each of the next `n` grants.
    pub(crate) fn push_n(&self, n: usize, step: Step) {
        let mut script = self.script.lock().unwrap();
        script.extend(std::iter::repeat_n(step, n));
    }

    /// The grants made, in order: `password:<username>` or
    /// `refresh:<refresh token>`.
    pub(crate) fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Every token issued, in order: the access token, then the refresh
    /// token, of each grant.
    pub(crate) fn issued_tokens(&self) -> Vec<String> {
        let prefix = self.prefix.lock().unwrap().clone();
        (1..=self.issued.load(SeqCst))
            .flat_map(|n| {
                [
                    format!("{prefix}access-{n}"),
                    format!("{prefix}refresh-{n}"),
                ]
            })
            .collect()
    }

    /// A fetcher that makes its grants here.
    pub(crate) fn fetcher(self: &Arc<Self>) -> impl TokenFetcher + use<> {
        let endpoint = Arc::clone(self);
        fetcher::from_fn(move |grant| {
            let endpoint = Arc::clone(&endpoint);
            async move { endpoint.grant(grant).await }
        })
    }

    pub(crate) async fn grant(&self, grant: GrantRequest) -> Result<TokenPair, TokenError> {
        let entry = match grant.grant_type() {
            GrantType::Password => {
                self.password.fetch_add(1, SeqCst);
                format!("password:{}", grant.credentials().username())
            }
            _ => {
                let token = grant.refresh_token().unwrap().expose_secret().to_owned();
                self.refresh_seen.lock().unwrap().push(token.clone());
                self.refresh.fetch_add(1, SeqCst);
                format!("refresh:{token}")
            }
        };
        self.log.lock().unwrap().push(entry);
        let latency = *self.latency.lock().unwrap();
        tokio::time::sleep(latency).await;
        let step = self.script.lock().unwrap().pop_front();
        match step {
            Some(Step::Reject) => return Err(refusal()),
            Some(Step::Fail) => {
                return Err(TokenError::transport(std::io::Error::other(
                    "503 from the test endpoint",
                )));
            }
            Some(Step::Error(err)) => return Err(err),
            None => {}
        }
        let password = grant.credentials().password().expose_secret();
        if grant.grant_type() == GrantType::Password
            && self
                .refused_passwords
                .lock()
                .unwrap()
                .iter()
                .any(|refused| refused == password)
        {
            return Err(refusal());
        }
        let n = self.issued.fetch_add(1, SeqCst) + 1;
        let prefix = self.prefix.lock().unwrap().clone();
        let access = format!("{prefix}access-{n}");
        self.api.valid.lock().unwrap().insert(access.clone());
        let lifetime = *self.lifetime.lock().unwrap();
        pair(&access, &format!("{prefix}refresh-{n}"), lifetime)
    }
}

/// The protected API: 200 with the request body echoed for a valid token, 401
/// otherwise. Counts every attempt and keeps the tokens it saw.
#[derive(Default)]
pub(crate) struct Api {
    pub(crate) valid: Mutex<HashSet<String>>,
    pub(crate) attempts: AtomicUsize,
    pub(crate) seen: Mutex<Vec<Option<HeaderValue>>>,
    pub(crate) latency: Mutex<Duration>,
}

impl Api {
    pub(crate) fn revoke_all(&self) {
        self.valid.lock().unwrap().clear();
    }

    pub(crate) fn revoke(&self, token: &str) {
        self.valid.lock().unwrap().remove(token);
    }
}

/// The API's answer: 200 with `body` for a valid token, 401 (with `body` as
/// well) otherwise.
pub(crate) fn answer(valid: bool, body: Bytes) -> Response<Full<Bytes>> {
    let status = if valid {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    Response::builder()
        .status(status)
        .body(Full::new(body))
        .unwrap()
}

/// The scripted API as the layer's inner service, for request bodies `B`
/// (a `Full<Bytes>` unless told otherwise).
pub(crate) type Inner<B = Full<Bytes>> =
    tower::util::BoxCloneSyncService<Request<ReplayBody<B>>, Response<Full<Bytes>>, Infallible>;

/// A pair of `access` and `refresh` tokens, the access token for `lifetime`.
pub(crate) fn pair(
    access: &str,
    refresh: &str,
    lifetime: Duration,
) -> Result<TokenPair, TokenError> {
    Ok(TokenPair::new(
        AccessToken::new(access)?,
        Some(RefreshToken::new(refresh)?),
        lifetime,
    ))
}

/// An API written as a function of each request.
pub(crate) fn api_fn<F, Fut>(f: F) -> Inner
where
    F: Fn(Request<ReplayBody<Full<Bytes>>>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    tower::util::BoxCloneSyncService::new(tower::service_fn(f))
}

/// An API written as a function of each request and of `state`.
pub(crate) fn api_with<T, F, Fut>(state: &Arc<T>, f: F) -> Inner
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>, Request<ReplayBody<Full<Bytes>>>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let state = Arc::clone(state);
    api_fn(move |req| f(Arc::clone(&state), req))
}

pub(crate) fn api_service<B>(api: &Arc<Api>) -> Inner<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    let api = Arc::clone(api);
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request<ReplayBody<B>>| {
        let api = Arc::clone(&api);
        async move {
            let latency = *api.latency.lock().unwrap();
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            api.attempts.fetch_add(1, SeqCst);
            let auth = req.headers().get(AUTHORIZATION).cloned();
            api.seen.lock().unwrap().push(auth.clone());
            let ok = auth
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| api.valid.lock().unwrap().contains(t));
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Ok(answer(ok, body))
        }
    }))
}

pub(crate) fn credentials() -> Credentials {
    credentials_for("user@example.com", "password")
}

/// The test client's credentials for `user` with `password`.
pub(crate) fn credentials_for(user: &str, password: &str) -> Credentials {
    Credentials::new("client", "client-secret", user, password)
}

/// A builder for the API at 127.0.0.1:9 with the test credentials and the
/// scripted endpoint's [`TOKEN_URL`], still without a fetcher.
pub(crate) fn builder() -> AuthLayerBuilder {
    AuthLayer::builder()
        .credentials(credentials())
        .token_url(TOKEN_URL)
        .api_origin("http://127.0.0.1:9")
}

/// A layer for the API at 127.0.0.1:9 whose grants go to `endpoint`, then
/// `configure`d.
pub(crate) fn layer_with(
    endpoint: &Arc<Endpoint>,
    configure: impl FnOnce(AuthLayerBuilder) -> AuthLayerBuilder,
) -> AuthLayer {
    configure(builder().fetcher(endpoint.fetcher()))
        .build()
        .unwrap()
}

pub(crate) struct Setup {
    pub(crate) api: Arc<Api>,
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) layer: AuthLayer,
}

pub(crate) fn setup() -> Setup {
    setup_with(|b| b)
}

pub(crate) fn setup_with(configure: impl FnOnce(AuthLayerBuilder) -> AuthLayerBuilder) -> Setup {
    try_setup_with(configure).unwrap()
}

/// [`setup_with`], for settings that the build may refuse.
pub(crate) fn try_setup_with(
    configure: impl FnOnce(AuthLayerBuilder) -> AuthLayerBuilder,
) -> Result<Setup, BuildError> {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let layer = configure(builder().fetcher(endpoint.fetcher())).build()?;
    Ok(Setup {
        api,
        endpoint,
        layer,
    })
}

impl Setup {
    pub(crate) fn service(&self) -> AuthService<Inner<Full<Bytes>>> {
        self.layer.layer(api_service(&self.api))
    }
}

/// The bearer token of an API request.
pub(crate) fn bearer<B>(req: &Request<B>) -> Option<String> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::to_owned)
}

/// A current-thread runtime with paused time, for tests that change runtimes.
pub(crate) fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

pub(crate) fn get() -> Request<Full<Bytes>> {
    Request::get(API).body(Full::default()).unwrap()
}

pub(crate) async fn send(
    svc: &AuthService<Inner<Full<Bytes>>>,
    req: Request<Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, daxium_auth::Error<Infallible>> {
    svc.clone().oneshot(req).await
}

pub(crate) async fn assert_rejected(svc: &AuthService<Inner<Full<Bytes>>>) {
    let err = send(svc, get()).await.unwrap_err();
    assert!(err.token_error().unwrap().is_grant_rejected(), "{err:?}");
}

/// How long a test waits for anything: a hang is a failure, not a stuck run.
pub(crate) const BOUND: Duration = Duration::from_secs(60);

/// `fut`'s output, or a failure naming `what` when it takes over [`BOUND`].
pub(crate) async fn in_time<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: no answer within {BOUND:?}"),
    }
}

/// The `Authorization` header of each request the API saw, in order (empty
/// for none).
pub(crate) fn seen_tokens(s: &Setup) -> Vec<String> {
    (s.api.seen.lock().unwrap().iter())
        .map(|v| {
            v.as_ref()
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        })
        .collect()
}

/// The bearer token the API saw last.
pub(crate) fn last_token(api: &Api) -> Option<String> {
    let seen = api.seen.lock().unwrap();
    let value = seen.last()?.as_ref()?;
    value
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}
