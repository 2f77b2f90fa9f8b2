//! The stampede: 10,000 requests at once on a cache without a token, with a
//! token endpoint that takes a fixed 20 ms (real time, multi-thread runtime).
//!
//! Each stampede: 10,000 tasks wait at a gate; the gate opens; each task sends
//! its request and notes when its response came. The figure is the time from
//! the grant's answer (the end of the token endpoint's delay, noted inside the
//! fetcher) to the last response: how long the 10,000 waiters take to get the
//! token. Two variants, in alternation within one run (the order turning each
//! round), and the median of the ratios within a round:
//! - `reference`: the plain way of sharing one fetch (the first request starts
//!   it; every request waits on a `tokio::sync::watch` for the header): what
//!   the runtime itself costs to wake 10,000 waiters;
//! - `auth`: `AuthLayer`; each stampede must make exactly one grant.
//!
//! `cargo bench --bench stampede`

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use daxium_auth::{AuthLayer, AuthService, fetcher};
use http::{HeaderValue, Request, Response, StatusCode, header::AUTHORIZATION};
use http_body_util::Empty;
use tokio::sync::{Notify, watch};
use tower::{Layer, ServiceExt};

const WAITERS: usize = 10_000;
const GRANT_DELAY: Duration = Duration::from_millis(20);

mod support;

use support::{Inner, ORIGIN, TOKEN, bearer, request};

/// The token endpoint: a fixed delay; it notes how long each grant took and
/// when the last one ended.
#[derive(Default)]
struct Endpoint {
    grants: AtomicU64,
    last: Mutex<Option<(Duration, Instant)>>,
    /// Requests that are waiting for the token (polled once).
    waiting: AtomicUsize,
    all_waiting: Notify,
}

impl Endpoint {
    /// A request has been polled once: it waits for the token.
    fn one_more_waiting(&self) {
        if self.waiting.fetch_add(1, Ordering::AcqRel) + 1 == WAITERS {
            self.all_waiting.notify_one();
        }
    }

    /// Answers after the delay, and not before every request waits: the
    /// fan-out then starts from 10,000 waiters.
    async fn grant(&self) -> HeaderValue {
        self.grants.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::sleep(GRANT_DELAY).await;
        if self.waiting.load(Ordering::Acquire) < WAITERS {
            self.all_waiting.notified().await;
        }
        let header = bearer(TOKEN);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((started.elapsed(), Instant::now()));
        header
    }
}

/// The plain way of sharing one fetch: the first request starts it, and every
/// request waits on a watch channel for the header.
struct Reference {
    endpoint: Arc<Endpoint>,
    started: AtomicBool,
    token: watch::Sender<Option<HeaderValue>>,
}

impl Reference {
    async fn call(self: Arc<Self>, mut req: Request<Empty<Bytes>>) -> Response<Empty<Bytes>> {
        let mut token = self.token.subscribe();
        if !self.started.swap(true, Ordering::AcqRel) {
            let this = Arc::clone(&self);
            tokio::spawn(async move {
                let header = this.endpoint.grant().await;
                this.token.send_replace(Some(header));
            });
        }
        let header = token
            .wait_for(Option::is_some)
            .await
            .expect("the fetch ends")
            .clone()
            .expect("a token");
        req.headers_mut().insert(AUTHORIZATION, header);
        Inner.oneshot(req).await.expect("infallible")
    }
}

#[derive(Clone)]
enum Client {
    Reference(Arc<Reference>),
    Auth(AuthService<Inner>),
}

impl Client {
    fn new(auth: bool, endpoint: &Arc<Endpoint>) -> (Self, Option<AuthLayer>) {
        if !auth {
            let reference = Reference {
                endpoint: Arc::clone(endpoint),
                started: AtomicBool::new(false),
                token: watch::channel(None).0,
            };
            return (Self::Reference(Arc::new(reference)), None);
        }
        let endpoint = Arc::clone(endpoint);
        let layer = support::builder()
            .fetcher(fetcher::from_fn(move |_grant| {
                let endpoint = Arc::clone(&endpoint);
                async move {
                    let header = endpoint.grant().await;
                    let token = header.to_str().expect("ascii");
                    support::hour_pair(token.trim_start_matches("Bearer "))
                }
            }))
            .api_origin(ORIGIN)
            .build()
            .expect("valid layer");
        (Self::Auth(layer.layer(Inner)), Some(layer))
    }

    async fn call(self, req: Request<Empty<Bytes>>) -> Response<Empty<Bytes>> {
        match self {
            Self::Reference(reference) => reference.call(req).await,
            Self::Auth(service) => service.oneshot(req).await.expect("a response"),
        }
    }
}

/// What one stampede showed.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    grants: u64,
    /// How long the grant took, inside the fetcher.
    grant: Duration,
    /// The longest wait of any request, from its call to its response.
    longest: Duration,
    /// From the release of the requests to the last response.
    wall: Duration,
    /// From the release to the first response.
    first: Duration,
    /// From the release to the last request's call.
    last_call: Duration,
    /// From the release to the end of the grant.
    grant_end: Duration,
}

impl Outcome {
    /// From the grant's answer to the last request holding its token (its
    /// response follows at once).
    fn fan_out(&self) -> Duration {
        self.wall.saturating_sub(self.grant_end)
    }

    /// From the grant's answer to the first response.
    fn first_out(&self) -> Duration {
        self.first.saturating_sub(self.grant_end)
    }
}

fn stampede(rt: &tokio::runtime::Runtime, auth: bool) -> Outcome {
    let endpoint = Arc::new(Endpoint::default());
    let (client, layer) = Client::new(auth, &endpoint);
    let longest = Arc::new(AtomicU64::new(0));
    let arrived = Arc::new(AtomicU64::new(0));
    let last_call = Arc::new(AtomicU64::new(0));
    let last_done = Arc::new(AtomicU64::new(0));
    let first_done = Arc::new(AtomicU64::new(u64::MAX));
    let remaining = Arc::new(AtomicUsize::new(WAITERS));
    let all_done = Arc::new(Notify::new());
    let origin = Instant::now();

    let released = rt.block_on(async {
        let (open, gate) = watch::channel(false);
        // Detached tasks: the last one to finish says so. (A `JoinSet` would
        // add its own bookkeeping per task to the drain being measured.)
        for _ in 0..WAITERS {
            let client = client.clone();
            let mut gate = gate.clone();
            let longest = Arc::clone(&longest);
            let arrived = Arc::clone(&arrived);
            let last_call = Arc::clone(&last_call);
            let last_done = Arc::clone(&last_done);
            let first_done = Arc::clone(&first_done);
            let remaining = Arc::clone(&remaining);
            let all_done = Arc::clone(&all_done);
            let endpoint = Arc::clone(&endpoint);
            tokio::spawn(async move {
                arrived.fetch_add(1, Ordering::Relaxed);
                gate.wait_for(|open| *open).await.expect("gate");
                let request = request();
                let start = Instant::now();
                let at = start.saturating_duration_since(origin).as_nanos() as u64;
                last_call.fetch_max(at, Ordering::Relaxed);
                let mut call = std::pin::pin!(client.call(request));
                let mut first = true;
                let response = std::future::poll_fn(|cx| {
                    let poll = call.as_mut().poll(cx);
                    if std::mem::take(&mut first) {
                        endpoint.one_more_waiting();
                    }
                    poll
                })
                .await;
                let waited = start.elapsed();
                assert_eq!(response.status(), StatusCode::OK);
                longest.fetch_max(waited.as_nanos() as u64, Ordering::Relaxed);
                let done = origin.elapsed().as_nanos() as u64;
                last_done.fetch_max(done, Ordering::Relaxed);
                first_done.fetch_min(done, Ordering::Relaxed);
                if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    all_done.notify_one();
                }
            });
        }
        // Every request waits at the gate before it opens (bounded: 10 s).
        for _ in 0..10_000 {
            if arrived.load(Ordering::Relaxed) == WAITERS as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            arrived.load(Ordering::Relaxed),
            WAITERS as u64,
            "all at the gate"
        );
        let released = Instant::now();
        open.send_replace(true);
        // A request task that panicked never finishes: bounded wait.
        tokio::time::timeout(Duration::from_secs(30), all_done.notified())
            .await
            .expect("every request answered");
        released
    });

    let grants = match &layer {
        Some(layer) => layer.stats().grants(),
        None => endpoint.grants.load(Ordering::Relaxed),
    };
    let (grant, grant_end) = endpoint
        .last
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .expect("a grant was made");
    let since_release =
        |nanos: u64| (origin + Duration::from_nanos(nanos)).saturating_duration_since(released);
    Outcome {
        grants,
        grant,
        longest: Duration::from_nanos(longest.load(Ordering::Relaxed)),
        wall: since_release(last_done.load(Ordering::Relaxed)),
        first: since_release(first_done.load(Ordering::Relaxed)),
        last_call: since_release(last_call.load(Ordering::Relaxed)),
        grant_end: grant_end.saturating_duration_since(released),
    }
}

/// How many stampedes of each variant, in alternation.
const ROUNDS: usize = 15;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    // `cargo test --benches` runs the binary without `--bench`: nothing to do.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // One of each first: the runtime's threads and the allocator warm up.
    stampede(&rt, false);
    stampede(&rt, true);
    let mut fan_out: [Vec<f64>; 2] = Default::default();
    let mut first_out: [Vec<f64>; 2] = Default::default();
    let mut worst: [Option<Outcome>; 2] = [None, None];
    // `STAMPEDE_ONLY=auth` (or `reference`): one variant, for a profiler.
    let only = std::env::var("STAMPEDE_ONLY").ok();
    for round in 0..ROUNDS {
        // Alternating which goes first, so that neither always follows the other.
        for k in 0..2 {
            let auth = (round + k) % 2 == 1;
            if only
                .as_deref()
                .is_some_and(|only| only != ["reference", "auth"][usize::from(auth)])
            {
                continue;
            }
            let outcome = stampede(&rt, auth);
            assert_eq!(outcome.grants, 1, "one grant for {WAITERS} waiters");
            let i = usize::from(auth);
            fan_out[i].push(ms(outcome.fan_out()));
            first_out[i].push(ms(outcome.first_out()));
            if worst[i].is_none_or(|w| outcome.fan_out() > w.fan_out()) {
                worst[i] = Some(outcome);
            }
        }
    }
    let ratios = fan_out[1]
        .iter()
        .zip(&fan_out[0])
        .map(|(a, r)| a / r)
        .collect();
    let ratio = median(ratios);
    for (i, name) in ["reference", "auth"].into_iter().enumerate() {
        let Some(worst) = worst[i] else { continue };
        println!(
            "stampede/{name}: {ROUNDS} stampedes of {WAITERS} requests, 1 grant each; from the \
             grant's answer to the last response: median {:.2} ms (to the first: {:.2} ms); worst: \
             {:.2} ms (grant {:.1} ms, longest wait {:.1} ms, last call {:.1} ms after the release)",
            median(fan_out[i].clone()),
            median(first_out[i].clone()),
            ms(worst.fan_out()),
            ms(worst.grant),
            ms(worst.longest),
            ms(worst.last_call),
        );
    }
    println!("stampede: auth / watch fan-out, median of the ratios within a round: {ratio:.3}");
}
