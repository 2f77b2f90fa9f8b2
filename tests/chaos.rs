//! A chaos soak over loopback: `AuthLayer` over hyper-util's client against
//! the crate's Daxium-compatible server, with 2 s tokens, rotation and reuse
//! protection on, while a seeded controller breaks the token endpoint (500,
//! 429 with `Retry-After`, resets, slow and too-slow answers, malformed and
//! HTML bodies, an oversized body, redirects) and revokes tokens under the
//! requests' feet (`revoke_all`, injected API 401s).
//!
//! Bounded: at most `CHAOS_SECS` seconds of load (default 20, at most 60) and
//! 20,000 requests, each under a 10 s timeout. `CHAOS_SEED` picks the fault
//! schedule (the interleaving with the requests is the scheduler's). Run with
//! `--nocapture` to see the numbers.
#![cfg(all(feature = "mock", feature = "rustls"))]

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{
    AuthLayer, GrantRequest, HttpFetcher, ReplayBody, TokenError, TokenFetcher, TokenPair,
    mock::{Fault, MockServer},
};
use http::{HeaderValue, Request, StatusCode, header::AUTHORIZATION};
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::time::Instant;
use tower::{Layer, ServiceBuilder, ServiceExt};

/// Token lifetime at the server. Whole seconds, so that the `expires_in` the
/// client reads is the exact lifetime the server enforces.
const LIFETIME: Duration = Duration::from_secs(2);
/// The fetcher's timeout: a `Fault::Delay` longer than this is a grant that
/// reached the server (and spent its refresh token) but timed out at the client.
const FETCH_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_REQUESTS: u64 = 20_000;
const CONCURRENCY: usize = 16;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const ID_HEADER: &str = "x-chaos-id";

type Body = ReplayBody<Empty<Bytes>>;

// === a seeded RNG ===

/// xorshift64*: reproducible fault schedules without a dependency.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n` for a test.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// === a fetcher with a liveness probe ===

/// The default HTTP fetcher, holding a probe: while anything (a grant task, a
/// service, the layer) keeps the token cache alive, the probe is alive.
struct ProbedFetcher {
    inner: HttpFetcher,
    _probe: Arc<()>,
}

impl TokenFetcher for ProbedFetcher {
    async fn fetch(&self, grant: GrantRequest) -> Result<TokenPair, TokenError> {
        self.inner.fetch(grant).await
    }
}

// === what the soak records ===

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    unauthorized: AtomicU64,
    other_status: AtomicU64,
    inner_errors: AtomicU64,
    hung: AtomicU64,
    token_errors: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn token_errors(&self) -> u64 {
        self.token_errors.lock().unwrap().values().sum()
    }
}

fn token_error_kind(err: &TokenError) -> String {
    type Is = fn(&TokenError) -> bool;
    let kinds: [(Is, &str); 7] = [
        (TokenError::is_grant_rejected, "rejected"),
        (TokenError::is_closed, "closed"),
        (TokenError::is_timeout, "timeout"),
        (TokenError::is_redirect, "redirect"),
        (TokenError::is_body_too_large, "body_too_large"),
        (TokenError::is_invalid_response, "invalid_response"),
        (TokenError::is_connect, "connect"),
    ];
    let kind = match kinds.iter().find(|(is, _)| is(err)) {
        Some((_, kind)) => (*kind).to_owned(),
        None => match err.status() {
            Some(status) => format!("status_{}", status.as_u16()),
            None => "transport".to_owned(),
        },
    };
    let grant = err.grant_type().map_or("none", |g| g.as_str());
    format!("{grant}/{kind}")
}

/// Attempts per request as the client stack under `AuthLayer` sees them.
struct Attempts {
    per_request: Vec<AtomicU8>,
    total: AtomicU64,
    without_token: AtomicU64,
    not_sensitive: AtomicU64,
}

/// What the controller did.
#[derive(Debug, Default)]
struct Chaos {
    grant_faults_queued: u64,
    revocations: u64,
    api_401s_queued: u64,
    by_fault: BTreeMap<&'static str, u64>,
}

fn pick_fault(rng: &mut XorShift, server: &MockServer) -> (&'static str, Fault) {
    match rng.below(10) {
        0 => ("500", Fault::ServerError),
        1 => ("429", Fault::TooManyRequests { retry_after: 1 }),
        2 => ("reset", Fault::Reset),
        3 => ("slow", Fault::Delay(Duration::from_millis(300))),
        4 => ("too_slow", Fault::Delay(Duration::from_millis(1500))),
        5 => ("malformed", Fault::MalformedJson),
        6 => ("html", Fault::Html),
        7 => ("oversized", Fault::Oversized),
        8 => ("redirect", Fault::Redirect(server.token_url())),
        _ => (
            "truncated_200",
            Fault::Respond {
                status: StatusCode::OK,
                content_type: "application/json".into(),
                body: Bytes::from_static(br#"{"access_token":"abc","expires_in":"#),
                retry_after: None,
            },
        ),
    }
}

fn soak_duration() -> Duration {
    let secs = std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(20)
        .clamp(1, 60);
    Duration::from_secs(secs)
}

fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0x5EED_DA11_0A17_u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_keeps_every_promise() {
    let seed = seed();
    let soak = soak_duration();
    let server = Arc::new(
        MockServer::builder()
            .token_lifetime(LIFETIME)
            .rotation(true)
            .reuse_protection(true)
            .start()
            .await
            .unwrap(),
    );

    let probe = Arc::new(());
    let alive = Arc::downgrade(&probe);
    let fetcher = ProbedFetcher {
        inner: HttpFetcher::new(&server.token_url())
            .unwrap()
            .timeout(FETCH_TIMEOUT),
        _probe: probe,
    };
    let layer = AuthLayer::builder()
        .token_url(server.token_url())
        .credentials(server.credentials())
        .fetcher(fetcher)
        .refresh_margin(Duration::from_secs(1))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build()
        .unwrap();

    // Under the layer: count attempts per request id, and check the header.
    let attempts = Arc::new(Attempts {
        per_request: (0..MAX_REQUESTS).map(|_| AtomicU8::new(0)).collect(),
        total: AtomicU64::new(0),
        without_token: AtomicU64::new(0),
        not_sensitive: AtomicU64::new(0),
    });
    let counting = {
        let attempts = Arc::clone(&attempts);
        move |req: Request<Body>| {
            attempts.total.fetch_add(1, SeqCst);
            match req.headers().get(AUTHORIZATION) {
                None => {
                    attempts.without_token.fetch_add(1, SeqCst);
                }
                Some(value) if !value.is_sensitive() => {
                    attempts.not_sensitive.fetch_add(1, SeqCst);
                }
                Some(_) => {}
            }
            let id = req
                .headers()
                .get(ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .expect("every request has an id");
            attempts.per_request[id].fetch_add(1, SeqCst);
            req
        }
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .map_request(counting)
        .service(client);

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let next_id = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Tally::default());

    // The chaos controller.
    let controller = {
        let server = Arc::clone(&server);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut rng = XorShift::new(seed);
            let mut chaos = Chaos::default();
            // Bounded: at most one step per 50 ms over at most 60 s.
            for _ in 0..1200 {
                if stop.load(SeqCst) {
                    break;
                }
                match rng.below(100) {
                    // A grant fault, when the queue is empty: a queue that
                    // grows would only make one long outage.
                    0..45 if server.counters().faults_injected == chaos.grant_faults_queued => {
                        let (name, fault) = pick_fault(&mut rng, &server);
                        server.fail_next_grants(1, fault);
                        chaos.grant_faults_queued += 1;
                        *chaos.by_fault.entry(name).or_default() += 1;
                    }
                    45..55 => {
                        server.revoke_all();
                        chaos.revocations += 1;
                    }
                    55..70 => {
                        server.fail_next_api(1, StatusCode::UNAUTHORIZED);
                        chaos.api_401s_queued += 1;
                    }
                    _ => {}
                }
                let pause = 50 + rng.below(200);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            chaos
        })
    };

    // The load.
    // Paced: each worker sends at most one request per `interval`, so that
    // 20,000 requests spread over the soak, and a burst of fail-fast errors
    // during an outage does not use them all up at once.
    let interval = soak.mul_f64(CONCURRENCY as f64 / MAX_REQUESTS as f64);
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let svc = svc.clone();
            let server = Arc::clone(&server);
            let next_id = Arc::clone(&next_id);
            let tally = Arc::clone(&tally);
            tokio::spawn(async move {
                let mut next_send = started;
                loop {
                    tokio::time::sleep_until(next_send).await;
                    next_send = Instant::now().max(next_send + interval);
                    if started.elapsed() >= soak {
                        break;
                    }
                    let id = next_id.fetch_add(1, SeqCst);
                    if id >= MAX_REQUESTS {
                        break;
                    }
                    let req = Request::get(server.api_url("chaos"))
                        .header(ID_HEADER, HeaderValue::from(id))
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    match tokio::time::timeout(REQUEST_TIMEOUT, svc.clone().oneshot(req)).await {
                        Err(_elapsed) => {
                            tally.hung.fetch_add(1, SeqCst);
                        }
                        Ok(Ok(res)) => {
                            let status = res.status();
                            // Read the body so that the connection goes back to the pool.
                            let _ = res.into_body().collect().await;
                            let counter = match status {
                                StatusCode::OK => &tally.ok,
                                StatusCode::UNAUTHORIZED => &tally.unauthorized,
                                _ => &tally.other_status,
                            };
                            counter.fetch_add(1, SeqCst);
                        }
                        Ok(Err(err)) => match err.token_error() {
                            Some(token) => {
                                *tally
                                    .token_errors
                                    .lock()
                                    .unwrap()
                                    .entry(token_error_kind(token))
                                    .or_default() += 1;
                            }
                            None => {
                                tally.inner_errors.fetch_add(1, SeqCst);
                            }
                        },
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    stop.store(true, SeqCst);
    let chaos = controller.await.unwrap();
    // A background refresh may still be in flight: the server counts it on
    // arrival, the layer once it is settled. Bounded wait for them to agree.
    for _ in 0..100 {
        if layer.stats().grants() == server.counters().grant_requests {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let c = server.counters();
    let stats = layer.stats();
    let sent = next_id.load(SeqCst).min(MAX_REQUESTS);

    let ok = tally.ok.load(SeqCst);
    let unauthorized = tally.unauthorized.load(SeqCst);
    let other_status = tally.other_status.load(SeqCst);
    let inner_errors = tally.inner_errors.load(SeqCst);
    let hung = tally.hung.load(SeqCst);
    let token_errors = tally.token_errors();
    let api_at_server =
        c.api_ok + c.api_no_token + c.api_unknown + c.api_expired + c.api_revoked + c.api_injected;
    println!(
        "chaos seed={seed:#x} elapsed={:.1}s requests={sent} ok={ok} status_401={unauthorized} \
         other_status={other_status} token_errors={token_errors} {:?} inner_errors={inner_errors} \
         hung={hung}",
        elapsed.as_secs_f64(),
        tally.token_errors.lock().unwrap(),
    );
    println!(
        "chaos grants: server requests={} password_ok={} refresh_ok={} refresh_rejected={} \
         faults_injected={} refresh_reuse={} | layer {stats:?}",
        c.grant_requests,
        c.password_ok,
        c.refresh_ok,
        c.refresh_rejected,
        c.faults_injected,
        c.refresh_reuse,
    );
    println!(
        "chaos faults: {:?} revocations={} api_401_queued={} api_injected={} | api at server: \
         {api_at_server} (ok={} expired={} revoked={} unknown={} no_token={}) attempts={}",
        chaos.by_fault,
        chaos.revocations,
        chaos.api_401s_queued,
        c.api_injected,
        c.api_ok,
        c.api_expired,
        c.api_revoked,
        c.api_unknown,
        c.api_no_token,
        attempts.total.load(SeqCst),
    );

    // Every request ends, in a response or a typed error, and the counts add up.
    assert_eq!(hung, 0, "a request hung for 10 s");
    assert_eq!(
        ok + unauthorized + other_status + token_errors + inner_errors,
        sent
    );
    assert_eq!(other_status, 0, "only 200 and 401 are ever answered");
    // The soak did something.
    assert!(sent >= 1000, "too few requests: {sent}");
    assert!(ok * 2 >= sent, "most requests succeed: {ok} of {sent}");
    assert!(c.faults_injected >= 5, "too few faults met: {c:?}");
    // A 401 is sent again as a resend (its token had worked, or had been
    // replaced) or as the replay (it never worked): either shows.
    assert!(
        stats.replays + stats.resends >= 1,
        "no 401 was ever sent again: {stats:?}"
    );

    // No token error is a refusal: credentials never change, and a refused
    // refresh token falls back to the password grant inside the same grant run.
    let errors = tally.token_errors.lock().unwrap().clone();
    assert!(
        errors
            .keys()
            .all(|k| !k.ends_with("/rejected") && !k.ends_with("/closed")),
        "{errors:?}"
    );

    // No API request without a token, at the server and under the layer.
    assert_eq!(c.api_no_token, 0);
    assert_eq!(attempts.without_token.load(SeqCst), 0);
    assert_eq!(attempts.not_sensitive.load(SeqCst), 0);

    // At most five API attempts per request: the first, and four more
    // (resends after a token replaced in flight or revoked, and at most one
    // replay).
    let most = attempts
        .per_request
        .iter()
        .take(sent as usize)
        .map(|a| a.load(SeqCst))
        .max()
        .unwrap_or(0);
    assert!(most <= 5, "a request was attempted {most} times");
    let total_attempts = attempts.total.load(SeqCst);
    assert!(total_attempts <= 5 * sent);
    assert!(
        api_at_server <= total_attempts,
        "{api_at_server} > {total_attempts}"
    );
    assert!(api_at_server <= 3 * sent);
    // Each request makes one attempt unless no token could be had first, plus
    // one per replay and per resend (both only follow a refusal).
    assert!(
        total_attempts >= sent - token_errors,
        "{total_attempts} < {sent} - {token_errors}"
    );
    assert!(
        total_attempts <= sent + stats.replays + stats.resends,
        "{total_attempts} > {sent} + {} + {}",
        stats.replays,
        stats.resends
    );

    // A spent refresh token is never sent again.
    assert_eq!(c.refresh_reuse, 0, "{c:?}");
    assert_eq!(c.password_rejected, 0);

    // Grants are bounded by the expiries, the faults and the revocations:
    // - the background refresh: a token goes stale at 40-50% of its lifetime
    //   after its grant was sent, so successive timer-driven refreshes are at
    //   least 0.4 L apart: at most elapsed / (0.4 L) + 1 of them, + 1 first login;
    // - a fault costs its own grant request, plus at most one retry run that a
    //   caller starts after the backoff (when no token was valid): 2 per fault;
    // - `revoke_all` costs the refused refresh and the password grant, twice
    //   if a grant was in flight when it struck (its new token is revoked too):
    //   4 per revocation;
    // - an injected 401 for the current token costs one refresh.
    let timer_driven = elapsed.as_secs_f64() / (0.4 * LIFETIME.as_secs_f64());
    let bound = timer_driven.ceil() as u64
        + 2
        + 2 * c.faults_injected
        + 4 * chaos.revocations
        + c.api_injected;
    assert!(
        c.grant_requests <= bound,
        "grants {} > bound {bound} (timer {timer_driven:.1}, faults {}, revocations {}, api 401s {})",
        c.grant_requests,
        c.faults_injected,
        chaos.revocations,
        c.api_injected
    );
    // The layer counts every grant request the server saw.
    assert_eq!(stats.grants(), c.grant_requests, "{stats:?} vs {c:?}");

    // The background work ends with the layer. First, make the grant task
    // loop with a valid token: a fresh grant now, a stale token in about a
    // second, then every attempt fails.
    let svc_probe = layer.layer(Client::builder(TokioExecutor::new()).build_http::<Body>());
    let mut fresh = false;
    for _ in 0..50 {
        let t0 = Instant::now();
        server.fail_next_api(1, StatusCode::UNAUTHORIZED);
        let req = Request::get(server.api_url("probe"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = tokio::time::timeout(REQUEST_TIMEOUT, svc_probe.clone().oneshot(req)).await;
        if matches!(&res, Ok(Ok(r)) if r.status() == StatusCode::OK) && t0.elapsed() < LIFETIME / 10
        {
            // The token in hand was granted after `t0`, within 200 ms: it is
            // stale by `t0` + 1.2 s and still valid until `t0` + 2 s.
            fresh = true;
            tokio::time::sleep_until(t0 + Duration::from_millis(1250)).await;
            break;
        }
        // Refusals start at most one grant a second: probe past that bound.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(fresh, "no fresh token after the soak");
    let before = server.counters().grant_requests;
    server.fail_next_grants(10_000, Fault::ServerError);
    let req = Request::get(server.api_url("probe"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = svc_probe.clone().oneshot(req).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the stale token is still used"
    );
    // Bounded wait until the background refresh has failed at least twice.
    let mut looping = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if server.counters().grant_requests >= before + 2 {
            looping = true;
            break;
        }
    }
    assert!(looping, "the background refresh was not retrying");

    drop((svc, svc_probe, layer));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        alive.upgrade().is_none(),
        "the token cache outlived its layer and services"
    );
    let after_drop = server.counters().grant_requests;
    tokio::time::sleep(LIFETIME + Duration::from_millis(500)).await;
    assert_eq!(
        server.counters().grant_requests,
        after_drop,
        "a grant was made after the layer was dropped"
    );
}
