//! Requests per second over loopback: a hyper server on 127.0.0.1 (hyper-util's
//! auto server, answering 200 to a request without an `Authorization` header or
//! with the expected one, 401 to any other) and hyper-util's legacy client, 64
//! requests in flight, three ways: bare; under tower-http's `AddAuthorization`
//! (the same header bytes on the wire: the floor for the layer's own cost); and
//! under `AuthLayer`. The server and the client each run on their own
//! single-worker runtime; each sample sends a fixed number of requests
//! (`iter_custom`), and criterion reports requests per second. Before the
//! criterion group, the three run in alternation (short rounds) and the medians
//! and ratios are printed: on a shared machine, a change of load then hits all
//! of them alike (`BENCH_NO_PAIRED=1` skips those rounds, e.g. under a
//! profiler; `BENCH_PAIRED_ONLY=1` runs only them).
//!
//! `cargo bench --bench loopback`

use std::{
    convert::Infallible,
    fmt,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use daxium_auth::{ReplayBody, fetcher};
use http::{HeaderValue, Request, Response, StatusCode, header::AUTHORIZATION};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tower::{Layer, Service, ServiceExt};
use tower_http::auth::AddAuthorization;

mod support;

use support::TOKEN;

const IN_FLIGHT: usize = 64;

/// What the server saw.
#[derive(Default)]
struct Seen {
    authorized: AtomicU64,
    anonymous: AtomicU64,
    refused: AtomicU64,
}

/// Starts the server on its own runtime; it runs until the runtime is dropped.
fn server(rt: &tokio::runtime::Runtime, seen: &Arc<Seen>) -> SocketAddr {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("address");
    let expected = HeaderValue::try_from(format!("Bearer {TOKEN}")).expect("header");
    let seen = Arc::clone(seen);
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let expected = expected.clone();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let answer = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let status = match req.headers().get(AUTHORIZATION) {
                        None => {
                            seen.anonymous.fetch_add(1, Ordering::Relaxed);
                            StatusCode::OK
                        }
                        Some(value) if *value == expected => {
                            seen.authorized.fetch_add(1, Ordering::Relaxed);
                            StatusCode::OK
                        }
                        Some(_) => {
                            seen.refused.fetch_add(1, Ordering::Relaxed);
                            StatusCode::UNAUTHORIZED
                        }
                    };
                    let mut res = Response::new(Full::new(Bytes::from_static(b"ok")));
                    *res.status_mut() = status;
                    std::future::ready(Ok::<_, Infallible>(res))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), answer)
                    .await;
            });
        }
    });
    addr
}

/// Sends `total` GETs to `url` with `IN_FLIGHT` tasks and returns the wall
/// time; every answer must be 200.
fn run<S, B>(rt: &tokio::runtime::Runtime, service: &S, url: &str, total: u64) -> Duration
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: fmt::Debug,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: fmt::Debug,
{
    let next = Arc::new(AtomicU64::new(0));
    let url: Arc<str> = Arc::from(url);
    rt.block_on(async {
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..IN_FLIGHT {
            let mut service = service.clone();
            let next = Arc::clone(&next);
            let url = Arc::clone(&url);
            tasks.spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let req = Request::get(&*url).body(Empty::new()).expect("request");
                    let res = service
                        .ready()
                        .await
                        .expect("ready")
                        .call(req)
                        .await
                        .expect("a response");
                    assert_eq!(res.status(), StatusCode::OK);
                    res.into_body().collect().await.expect("the body");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a client task");
        }
        start.elapsed()
    })
}

/// The three clients in alternation, in rounds of a fixed number of requests,
/// so that a change in the machine's load hits all of them alike. Prints the
/// medians and the ratios.
fn paired<A, B, C>(rt: &tokio::runtime::Runtime, bare: &A, floor: &B, auth: &C, url: &str)
where
    A: Service<Request<Empty<Bytes>>, Response = Response<Incoming>> + Clone + Send + 'static,
    A::Future: Send,
    A::Error: fmt::Debug,
    B: Service<Request<Empty<Bytes>>, Response = Response<Incoming>> + Clone + Send + 'static,
    B::Future: Send,
    B::Error: fmt::Debug,
    C: Service<Request<Empty<Bytes>>, Response = Response<Incoming>> + Clone + Send + 'static,
    C::Future: Send,
    C::Error: fmt::Debug,
{
    const ROUNDS: usize = 15;
    const PER_ROUND: u64 = 4_000;
    let rate = |d: Duration| PER_ROUND as f64 / d.as_secs_f64();
    run(rt, bare, url, PER_ROUND);
    run(rt, floor, url, PER_ROUND);
    run(rt, auth, url, PER_ROUND);
    let mut rates: [Vec<f64>; 3] = Default::default();
    for round in 0..ROUNDS {
        // The order turns every round.
        for k in 0..3 {
            let i = (round + k) % 3;
            let took = match i {
                0 => run(rt, bare, url, PER_ROUND),
                1 => run(rt, floor, url, PER_ROUND),
                _ => run(rt, auth, url, PER_ROUND),
            };
            rates[i].push(rate(took));
        }
    }
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let ratio =
        |a: usize, b: usize| median(rates[a].iter().zip(&rates[b]).map(|(x, y)| x / y).collect());
    let (auth_bare, floor_bare, auth_floor) = (ratio(2, 0), ratio(1, 0), ratio(2, 1));
    let [bare_rate, floor_rate, auth_rate] = rates.map(median);
    println!(
        "loopback paired ({ROUNDS} alternating rounds of {PER_ROUND} requests, {IN_FLIGHT} in \
         flight, medians): bare {bare_rate:.0} req/s, floor {floor_rate:.0} req/s, auth \
         {auth_rate:.0} req/s; medians of the ratios within a round: auth / bare {auth_bare:.3}, \
         floor / bare {floor_bare:.3}, auth / floor {auth_floor:.3}",
    );
}

fn loopback(c: &mut Criterion) {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    let _guard = client_rt.enter();

    let seen = Arc::new(Seen::default());
    let addr = server(&server_rt, &seen);
    let origin = format!("http://{addr}");
    let url = format!("{origin}/api/v1/items");

    let bare = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    // The same bytes on the wire as with `AuthLayer`: what a header costs the
    // client and the server, apart from the layer.
    let floor = AddAuthorization::bearer(
        Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>(),
        TOKEN,
    )
    .as_sensitive(true);
    let layer = support::builder()
        .fetcher(fetcher::from_fn(|_grant| async {
            support::hour_pair(TOKEN)
        }))
        .api_origin(origin.as_str())
        .build()
        .expect("valid layer");
    client_rt
        .block_on(layer.cache().access_token())
        .expect("a token");
    let auth =
        layer.layer(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Empty<Bytes>>>());

    // Skipped under a profiler (`BENCH_NO_PAIRED=1`), where it would dominate.
    if std::env::var_os("BENCH_NO_PAIRED").is_none() {
        paired(&client_rt, &bare, &floor, &auth, &url);
    }
    // `BENCH_PAIRED_ONLY=1`: the alternating rounds, not the criterion group.
    if std::env::var_os("BENCH_PAIRED_ONLY").is_some() {
        eprintln!(
            "loopback: server saw {} requests without a token, {} with the token, {} refused",
            seen.anonymous.load(Ordering::Relaxed),
            seen.authorized.load(Ordering::Relaxed),
            seen.refused.load(Ordering::Relaxed),
        );
        assert_eq!(seen.refused.load(Ordering::Relaxed), 0);
        return;
    }

    let mut group = c.benchmark_group("loopback");
    group.throughput(Throughput::Elements(1));
    group.bench_function("bare", |b| {
        b.iter_custom(|iters| run(&client_rt, &bare, &url, iters))
    });
    group.bench_function("floor", |b| {
        b.iter_custom(|iters| run(&client_rt, &floor, &url, iters))
    });
    group.bench_function("auth", |b| {
        b.iter_custom(|iters| run(&client_rt, &auth, &url, iters))
    });
    group.finish();

    eprintln!(
        "loopback: server saw {} requests without a token, {} with the token, {} refused; {} grant(s)",
        seen.anonymous.load(Ordering::Relaxed),
        seen.authorized.load(Ordering::Relaxed),
        seen.refused.load(Ordering::Relaxed),
        layer.stats().grants(),
    );
    assert_eq!(seen.refused.load(Ordering::Relaxed), 0);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    targets = loopback
}
criterion_main!(benches);
