//! Throughput with two threads calling while a third changes the token every
//! millisecond: each caller thread has its own service, and each sample runs a
//! fixed number of requests per thread (`iter_custom`); criterion reports
//! requests per second for both threads together.
//!
//! - `bare`: the inner service alone (the ceiling);
//! - `floor`: tower-http's `AddAuthorization`, two clones of one service, so
//!   they share the header's reference count; its header never changes;
//! - `reference`: the token under an `RwLock`, written every millisecond;
//! - `auth_replay_on` / `auth_replay_off`: `AuthLayer`, one service per thread
//!   made by `layer.layer(inner)`; every millisecond the third thread reports
//!   the current token as refused (`token_rejected`), so the cache drops it and
//!   a fetcher answering at once commits a new one: a real swap, with the short
//!   wait for the new token that it brings.
//!
//! `cargo bench --bench contended`

use std::{
    fmt,
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
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use daxium_auth::{AccessToken, AuthLayer, Credentials, TokenPair, fetcher};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use tower::{Layer, Service};
use tower_http::auth::AddAuthorization;

mod support;

use support::{Inner, ORIGIN, Reference, TOKEN, bearer, request};

const SWAP_EVERY: Duration = Duration::from_millis(1);

/// Wakes the calling thread: a request that must wait for a new token parks
/// until the cache publishes it.
struct Unpark(thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// One request to completion. A fresh token answers on the first poll; the
/// rare request that meets a swap parks until the new token lands.
fn drive<S, B>(svc: &mut S, req: Request<B>, cx: &mut Context<'_>) -> S::Response
where
    S: Service<Request<B>>,
    S::Error: fmt::Debug,
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

/// Runs `iters` requests on each of two threads, each with its own service,
/// and returns the wall time from the common start to the last finish.
fn run_pair<S>(rt: &tokio::runtime::Handle, services: &mut [S; 2], iters: u64) -> Duration
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Empty<Bytes>>> + Send,
    S::Error: fmt::Debug,
{
    let start = Barrier::new(3);
    let [a, b] = services;
    thread::scope(|scope| {
        for svc in [a, b] {
            let start = &start;
            scope.spawn(move || {
                // A caller that finds no token may have to start the grant.
                let _runtime = rt.enter();
                let waker = Waker::from(Arc::new(Unpark(thread::current())));
                let mut cx = Context::from_waker(&waker);
                start.wait();
                for _ in 0..iters {
                    let res = drive(svc, request(), &mut cx);
                    debug_assert_eq!(res.status(), StatusCode::OK);
                    black_box(res);
                }
            });
        }
        start.wait();
        let began = Instant::now();
        // The scope joins both callers before it returns.
        began
    })
    .elapsed()
}

/// A thread that calls `swap` every millisecond until dropped.
struct Swapper {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<u64>>,
}

impl Swapper {
    fn start(mut swap: impl FnMut() + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let mut swaps = 0;
            while !flag.load(Ordering::Relaxed) {
                thread::sleep(SWAP_EVERY);
                swap();
                swaps += 1;
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

/// A layer whose fetcher answers at once with a new token each time.
fn auth_layer(rt: &tokio::runtime::Runtime, replay: bool) -> (AuthLayer, Arc<AtomicU64>) {
    let issued = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&issued);
    let layer = AuthLayer::builder()
        .credentials(Credentials::new(
            "client-id",
            "client-secret",
            "user",
            "password",
        ))
        .fetcher(fetcher::from_fn(move |_grant| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            async move {
                let token = AccessToken::new(&format!("{TOKEN}{n}"))?;
                Ok(TokenPair::new(token, None, Duration::from_secs(3600)))
            }
        }))
        .api_origin(ORIGIN)
        .replay(replay)
        .build()
        .expect("valid layer");
    rt.block_on(layer.cache().access_token()).expect("a token");
    (layer, issued)
}

/// Every millisecond: the current token is refused, and the cache swaps it.
fn auth_swapper(rt: &tokio::runtime::Runtime, layer: &AuthLayer) -> Swapper {
    let handle = rt.handle().clone();
    let layer = layer.clone();
    Swapper::start(move || {
        let token = handle
            .block_on(layer.cache().access_token())
            .expect("a token");
        // The refresh that follows is spawned on the current runtime.
        let _runtime = handle.enter();
        layer.cache().token_rejected(&token);
    })
}

fn contended(c: &mut Criterion) {
    // One worker runs the grants; the callers and the swapper are plain threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let handle = rt.handle().clone();

    let mut group = c.benchmark_group("contended");
    group.throughput(Throughput::Elements(2));

    let mut bare = [Inner, Inner];
    group.bench_function("bare", |b| {
        b.iter_custom(|iters| run_pair(&handle, &mut bare, iters))
    });

    let floor = AddAuthorization::bearer(Inner, TOKEN).as_sensitive(true);
    let mut floor = [floor.clone(), floor];
    group.bench_function("floor", |b| {
        b.iter_custom(|iters| run_pair(&handle, &mut floor, iters))
    });

    let reference = Reference {
        token: Arc::new(RwLock::new(bearer(TOKEN))),
    };
    let mut services = [reference.layer(Inner), reference.layer(Inner)];
    let lock = Arc::clone(&reference.token);
    let mut n = 0u64;
    let swapper = Swapper::start(move || {
        n += 1;
        let header = bearer(&format!("{TOKEN}{n}"));
        *lock.write().unwrap_or_else(|e| e.into_inner()) = header;
    });
    group.bench_function("reference", |b| {
        b.iter_custom(|iters| run_pair(&handle, &mut services, iters))
    });
    let swaps = swapper.stop();
    if swaps > 0 {
        eprintln!("contended/reference: {swaps} token swaps");
    }

    for (name, replay) in [("auth_replay_on", true), ("auth_replay_off", false)] {
        let (layer, issued) = auth_layer(&rt, replay);
        let mut services = [layer.layer(Inner), layer.layer(Inner)];
        let swapper = auth_swapper(&rt, &layer);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| run_pair(&handle, &mut services, iters))
        });
        let swaps = swapper.stop();
        let stats = layer.stats();
        if swaps == 0 {
            continue;
        }
        eprintln!(
            "contended/{name}: {swaps} token swaps, {} tokens issued, {} requests waited for a token; {stats:?}",
            issued.load(Ordering::Relaxed),
            stats.waited,
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = contended
}
criterion_main!(benches);
