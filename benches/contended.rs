//! Throughput with several threads calling at once, each through its own clone
//! of one service, in paired rounds: every round runs each variant in turn
//! (all threads start together, each sends a fixed number of requests), so a
//! change of the machine's load hits all of them alike; the medians of the
//! rounds are printed, with the ratios to the floor.
//!
//! - `floor`: tower-http's `AddAuthorization`, clones of one service (a
//!   constant header);
//! - `reference`: the token under an `RwLock`, clones of one service;
//! - `auth_replay_off` / `auth_replay_on`: `AuthLayer`, clones of one service;
//! - the inner service alone, on one thread and on all: how far it scales
//!   tells whether both cores were free (near 2) or a neighbour held one.
//!
//! Two phases, each with 2 threads and then 4 (`CONTENDED_THREADS=2,4,8`
//! chooses): `steady`, the token never changes; `replaced`, a background
//! thread replaces the token every millisecond without any refusal. For the
//! layers that means a refresh (`TokenCache::refresh_now`): the fetcher hands
//! out a new token at once, and the cache publishes it while requests carry
//! the previous one; for the reference, a write under its lock. The floor's
//! header never changes, and it runs beside the same background thread.
//!
//! `cargo bench --bench contended`

use std::{
    env,
    future::Future,
    hint::black_box,
    pin::pin,
    sync::{
        Arc, Barrier, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use daxium_auth::{AuthLayer, fetcher};
use http::{Request, Response};
use http_body_util::Empty;
use tower::{Layer, Service};
use tower_http::auth::AddAuthorization;

mod support;

use support::{Inner, ORIGIN, Reference, TOKEN, bearer, request};

const SWAP_EVERY: Duration = Duration::from_millis(1);
const ROUNDS: usize = 15;
const PER_THREAD: u64 = 100_000;

/// Wakes the calling thread: a request that must wait parks until woken.
struct Unpark(thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// One request to completion; a fresh token answers on the first poll.
fn drive<S, B>(svc: &mut S, req: Request<B>, cx: &mut Context<'_>) -> S::Response
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    loop {
        match svc.poll_ready(cx) {
            Poll::Ready(Ok(())) => break,
            Poll::Ready(Err(err)) => panic!("the service failed: {err:?}"),
            Poll::Pending => thread::park(),
        }
    }
    let mut fut = pin!(svc.call(req));
    loop {
        match fut.as_mut().poll(cx) {
            Poll::Ready(Ok(res)) => return res,
            Poll::Ready(Err(err)) => panic!("the service failed: {err:?}"),
            Poll::Pending => thread::park(),
        }
    }
}

/// Requests per second (millions) of `threads` clones of `svc` sending
/// `PER_THREAD` requests each, from their common start to the last finish.
fn round<S>(rt: &tokio::runtime::Handle, svc: &S, threads: usize) -> f64
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Empty<Bytes>>> + Clone + Send,
    S::Error: std::fmt::Debug,
{
    let start = Barrier::new(threads + 1);
    let elapsed = thread::scope(|scope| {
        for _ in 0..threads {
            let mut svc = svc.clone();
            let start = &start;
            scope.spawn(move || {
                // A request that finds no token may have to start a grant.
                let _runtime = rt.enter();
                let waker = Waker::from(Arc::new(Unpark(thread::current())));
                let mut cx = Context::from_waker(&waker);
                // The clone's first requests make its own copies.
                for _ in 0..2 {
                    black_box(drive(&mut svc, request(), &mut cx));
                }
                start.wait();
                for _ in 0..PER_THREAD {
                    black_box(drive(&mut svc, request(), &mut cx));
                }
            });
        }
        start.wait();
        Instant::now()
    })
    .elapsed();
    (threads as u64 * PER_THREAD) as f64 / elapsed.as_secs_f64() / 1e6
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// A layer whose fetcher answers at once with a new token each time.
fn auth_layer(rt: &tokio::runtime::Runtime, replay: bool, issued: &Arc<AtomicU64>) -> AuthLayer {
    let counter = Arc::clone(issued);
    let layer = support::builder()
        .fetcher(fetcher::from_fn(move |_grant| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            async move { support::hour_pair(&format!("{TOKEN}{n}")) }
        }))
        .api_origin(ORIGIN)
        .replay(replay)
        .build()
        .expect("valid layer");
    rt.block_on(layer.cache().access_token()).expect("a token");
    layer
}

/// The background thread of the `replaced` phase: every millisecond, each
/// layer refreshes its token and the reference's lock is written.
struct Swapper {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<u64>>,
}

impl Swapper {
    fn start(
        rt: tokio::runtime::Handle,
        layers: Vec<AuthLayer>,
        lock: Arc<RwLock<http::HeaderValue>>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            // The refreshes are spawned on the runtime.
            let _runtime = rt.enter();
            let mut swaps = 0;
            while !flag.load(Ordering::Relaxed) {
                thread::sleep(SWAP_EVERY);
                swaps += 1;
                for layer in &layers {
                    layer.cache().refresh_now();
                }
                let header = bearer(&format!("{TOKEN}{swaps}"));
                *lock.write().unwrap_or_else(|e| e.into_inner()) = header;
            }
            swaps
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().map_or(0, |h| h.join().expect("swapper"))
    }
}

fn threads_to_run() -> Vec<usize> {
    env::var("CONTENDED_THREADS")
        .ok()
        .map(|list| {
            list.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .filter(|list: &Vec<usize>| !list.is_empty())
        .unwrap_or_else(|| vec![2, 4])
}

fn main() {
    // `cargo test --benches` runs the binary without `--bench`: nothing to do.
    if !env::args().any(|arg| arg == "--bench") {
        return;
    }
    // One worker runs the grants; the callers and the swapper are plain threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let handle = rt.handle().clone();
    let issued = Arc::new(AtomicU64::new(0));

    let floor = AddAuthorization::bearer(Inner, TOKEN).as_sensitive(true);
    let reference = Reference::new(TOKEN);
    let lock = Arc::clone(&reference.token);
    let reference = reference.layer(Inner);
    let off_layer = auth_layer(&rt, false, &issued);
    let on_layer = auth_layer(&rt, true, &issued);
    let off = off_layer.layer(Inner);
    let on = on_layer.layer(Inner);

    for phase in ["steady", "replaced"] {
        let swapper = (phase == "replaced").then(|| {
            Swapper::start(
                handle.clone(),
                vec![off_layer.clone(), on_layer.clone()],
                Arc::clone(&lock),
            )
        });
        let issued_before = issued.load(Ordering::Relaxed);
        let began = Instant::now();
        for threads in threads_to_run() {
            let mut rates: [Vec<f64>; 6] = Default::default();
            for _ in 0..ROUNDS {
                rates[0].push(round(&handle, &floor, threads));
                rates[1].push(round(&handle, &reference, threads));
                rates[2].push(round(&handle, &off, threads));
                rates[3].push(round(&handle, &on, threads));
                // How far the inner service alone scales from one thread: near
                // 2 when both cores are free, near 1 when a neighbour holds one.
                rates[4].push(round(&handle, &Inner, 1));
                rates[5].push(round(&handle, &Inner, threads));
            }
            let [floor, reference, off, on, bare_one, bare] = rates.map(median);
            println!(
                "contended {phase}, {threads} threads ({ROUNDS} paired rounds of {PER_THREAD} requests a \
                 thread, medians, million requests/s): floor {floor:.3}, reference {reference:.3}, \
                 auth_replay_off {off:.3}, auth_replay_on {on:.3}; replay off / floor {:.3}, \
                 replay on / floor {:.3}, reference / floor {:.3}; the inner service alone scales \
                 {:.2}x from 1 thread",
                off / floor,
                on / floor,
                reference / floor,
                bare / bare_one,
            );
        }
        if let Some(swapper) = swapper {
            let seconds = began.elapsed().as_secs_f64();
            let swaps = swapper.stop();
            let tokens = issued.load(Ordering::Relaxed) - issued_before;
            println!(
                "contended replaced: {swaps} refreshes asked in {seconds:.1} s, {tokens} new tokens \
                 issued for the two layers; waited for a token: replay off {}, replay on {}",
                off_layer.stats().waited,
                on_layer.stats().waited,
            );
        }
    }
}
