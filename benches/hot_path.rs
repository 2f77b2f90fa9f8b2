//! The per-request cost of the layer with a fresh token: a bodiless GET to an
//! absolute URI, built for each iteration, through `poll_ready` + `call` and one
//! poll of the response future with a no-op waker, against an inner service that
//! answers at once. No runtime runs the requests, so what is measured is the
//! layer's own work.
//!
//! The variants share one criterion group, so that their medians come from the
//! same run:
//! - `bare`: the inner service alone;
//! - `floor`: tower-http's `AddAuthorization` (a constant header);
//! - `reference`: a layer written here that does the job the plain way (the
//!   token under an `RwLock`, a copy of the request and a clone of the inner
//!   service kept for the retry);
//! - `auth_replay_on`: `AuthLayer` with its defaults;
//! - `auth_replay_off`: `AuthLayer` with `.replay(false)`;
//! - `floor_ext` / `auth_no_replay_ext`: the same requests carrying the
//!   `NoReplay` extension (the per-request opt-out), through the floor and
//!   through `AuthLayer` with replay on;
//! - with the `redis` feature, `auth_replay_on_redis` / `auth_replay_off_redis`:
//!   the two `AuthLayer` variants sharing their login through a `RedisStore`
//!   on a real `redis-server` that the bench starts on 127.0.0.1 (and installs
//!   when it is missing), to show that the store costs nothing per request.
//!
//! Before the criterion group, the same variants run in alternation (short
//! rounds, one after the other, the order turning every round) and the
//! medians and the medians of the ratios within a round are printed: on a
//! shared machine, a change of load then hits every variant alike.
//!
//! `cargo bench --bench hot_path` (`--features redis` adds the store variants;
//! `BENCH_PAIRED_ONLY=1` runs only the alternating rounds; `BENCH_NO_PAIRED=1`
//! skips them). Instructions per request come from the `instructions` bench.

use std::{
    fmt,
    hint::black_box,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, StatusCode};
use http_body_util::Empty;
use tower::{Layer, Service};
use tower_http::auth::AddAuthorization;

mod support;

use support::{
    Inner, Reference, TOKEN, auth_layer, drive, request, request_no_replay, request_with,
};

/// Nanoseconds per request over `n` requests through `svc`.
fn round<S>(svc: &mut S, n: u32, no_replay: bool) -> f64
where
    S: Service<Request<Empty<Bytes>>>,
    S::Error: fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..n {
        black_box(drive(svc, request_with(no_replay)));
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// One variant of the alternating rounds: its name, and a round of `n`
/// requests through it that answers nanoseconds per request.
struct Variant<'a> {
    name: &'static str,
    round: Box<dyn FnMut(u32) -> f64 + 'a>,
}

impl<'a> Variant<'a> {
    fn new<S>(name: &'static str, svc: &'a mut S, no_replay: bool) -> Self
    where
        S: Service<Request<Empty<Bytes>>>,
        S::Error: fmt::Debug,
    {
        Self {
            name,
            round: Box::new(move |n| round(svc, n, no_replay)),
        }
    }
}

/// The ratios printed, numerator over denominator, when both ran.
const RATIOS: [(&str, &str); 6] = [
    ("auth_replay_off", "floor"),
    ("auth_replay_on", "reference"),
    ("auth_replay_on", "floor"),
    ("auth_no_replay_ext", "floor_ext"),
    ("auth_replay_off_redis", "auth_replay_off"),
    ("auth_replay_on_redis", "auth_replay_on"),
];

/// The variants in alternation: short rounds, one after the other, in an
/// order that turns every round, so that a change in the machine's load hits
/// all of them alike. Prints the median of each, and the medians of the
/// ratios taken within each round (the paired ratios the targets are about).
fn paired(variants: &mut [Variant<'_>]) {
    const ROUNDS: usize = 101;
    const N: u32 = 10_000;
    let mut times = vec![Vec::with_capacity(ROUNDS); variants.len()];
    for r in 0..ROUNDS {
        for k in 0..variants.len() {
            let i = (r + k) % variants.len();
            times[i].push((variants[i].round)(N));
        }
    }
    let index = |name: &str| variants.iter().position(|v| v.name == name);
    let medians: Vec<String> = (variants.iter().zip(&times))
        .map(|(v, t)| format!("{} {:.1} ns", v.name, median(t.clone())))
        .collect();
    let ratios: Vec<String> = (RATIOS.iter())
        .filter_map(|&(a, b)| {
            let (i, j) = (index(a)?, index(b)?);
            let within = times[i].iter().zip(&times[j]).map(|(x, y)| x / y);
            Some(format!("{a} / {b} {:.3}", median(within.collect())))
        })
        .collect();
    println!(
        "hot_path paired ({ROUNDS} alternating rounds of {N} requests, medians): {}; \
         medians of the ratios within a round: {}",
        medians.join(", "),
        ratios.join(", "),
    );
}

fn hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();

    let mut bare = Inner;
    let mut floor = AddAuthorization::bearer(Inner, TOKEN).as_sensitive(true);
    let mut floor_ext = floor.clone();
    let mut reference = Reference::new(TOKEN).layer(Inner);
    let mut replay_on = auth_layer(&rt, true).layer(Inner);
    let mut replay_off = auth_layer(&rt, false).layer(Inner);
    let mut no_replay_ext = auth_layer(&rt, true).layer(Inner);
    // The same layers sharing their login through a real Redis: the store is
    // on the slow path only, so a request costs what it costs without one.
    #[cfg(feature = "redis")]
    let redis = support::redis::RedisServer::start();
    #[cfg(feature = "redis")]
    let (mut redis_on, mut redis_off) = (
        support::auth_layer_redis(&rt, true, &redis.url()).layer(Inner),
        support::auth_layer_redis(&rt, false, &redis.url()).layer(Inner),
    );

    // Every variant answers 200.
    for res in [
        drive(&mut bare, request()),
        drive(&mut floor, request()),
        drive(&mut floor_ext, request_no_replay()),
        drive(&mut reference, request()),
        drive(&mut replay_on, request()),
        drive(&mut replay_off, request()),
        drive(&mut no_replay_ext, request_no_replay()),
    ] {
        assert_eq!(res.status(), StatusCode::OK);
    }
    #[cfg(feature = "redis")]
    for res in [
        drive(&mut redis_on, request()),
        drive(&mut redis_off, request()),
    ] {
        assert_eq!(res.status(), StatusCode::OK);
    }

    // Skipped under a profiler (`BENCH_NO_PAIRED=1`), where it would dominate.
    if std::env::var_os("BENCH_NO_PAIRED").is_none() {
        #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
        let mut variants = vec![
            Variant::new("bare", &mut bare, false),
            Variant::new("floor", &mut floor, false),
            Variant::new("reference", &mut reference, false),
            Variant::new("auth_replay_on", &mut replay_on, false),
            Variant::new("auth_replay_off", &mut replay_off, false),
            Variant::new("floor_ext", &mut floor_ext, true),
            Variant::new("auth_no_replay_ext", &mut no_replay_ext, true),
        ];
        #[cfg(feature = "redis")]
        variants.extend([
            Variant::new("auth_replay_on_redis", &mut redis_on, false),
            Variant::new("auth_replay_off_redis", &mut redis_off, false),
        ]);
        paired(&mut variants);
    }
    // `BENCH_PAIRED_ONLY=1`: the alternating rounds, not the criterion group.
    if std::env::var_os("BENCH_PAIRED_ONLY").is_some() {
        return;
    }

    let mut group = c.benchmark_group("hot_path");
    group.bench_function("bare", |b| b.iter(|| drive(&mut bare, request())));
    group.bench_function("floor", |b| b.iter(|| drive(&mut floor, request())));
    group.bench_function("reference", |b| b.iter(|| drive(&mut reference, request())));
    group.bench_function("auth_replay_on", |b| {
        b.iter(|| drive(&mut replay_on, request()))
    });
    group.bench_function("auth_replay_off", |b| {
        b.iter(|| drive(&mut replay_off, request()))
    });
    group.bench_function("floor_ext", |b| {
        b.iter(|| drive(&mut floor_ext, request_no_replay()))
    });
    group.bench_function("auth_no_replay_ext", |b| {
        b.iter(|| drive(&mut no_replay_ext, request_no_replay()))
    });
    #[cfg(feature = "redis")]
    {
        group.bench_function("auth_replay_on_redis", |b| {
            b.iter(|| drive(&mut redis_on, request()))
        });
        group.bench_function("auth_replay_off_redis", |b| {
            b.iter(|| drive(&mut redis_off, request()))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(60)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = hot_path
}
criterion_main!(benches);
