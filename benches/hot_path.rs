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
//!   through `AuthLayer` with replay on.
//!
//! Before the criterion group, the same variants run in alternation (short
//! rounds, one after the other, the order turning every round) and the
//! medians and the medians of the ratios within a round are printed: on a
//! shared machine, a change of load then hits every variant alike.
//!
//! `cargo bench --bench hot_path` (`BENCH_PAIRED_ONLY=1` runs only the
//! alternating rounds; `BENCH_NO_PAIRED=1` skips them). Instructions per
//! request come from the `instructions` bench.

use std::{
    convert::Infallible,
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

use support::{Inner, Reference, TOKEN, auth_layer, drive, request, request_no_replay};

/// Nanoseconds per request over `n` requests through `svc`.
fn round<S>(svc: &mut S, n: u32, no_replay: bool) -> f64
where
    S: Service<Request<Empty<Bytes>>>,
    S::Error: fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..n {
        let req = if no_replay {
            request_no_replay()
        } else {
            request()
        };
        black_box(drive(svc, req));
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// The variants in alternation: short rounds, one after the other, in an
/// order that turns every round, so that a change in the machine's load hits
/// all of them alike. Prints the median of each, and the medians of the
/// ratios taken within each round (the paired ratios the targets are about).
fn paired<A, B, C, D, E, F>(
    bare: &mut A,
    floor: &mut B,
    reference: &mut C,
    replay_on: &mut D,
    replay_off: &mut E,
    no_replay_ext: &mut F,
) where
    A: Service<Request<Empty<Bytes>>, Error = Infallible>,
    B: Service<Request<Empty<Bytes>>, Error = Infallible>,
    C: Service<Request<Empty<Bytes>>, Error = Infallible>,
    D: Service<Request<Empty<Bytes>>>,
    D::Error: fmt::Debug,
    E: Service<Request<Empty<Bytes>>>,
    E::Error: fmt::Debug,
    F: Service<Request<Empty<Bytes>>>,
    F::Error: fmt::Debug,
{
    const ROUNDS: usize = 101;
    const N: u32 = 10_000;
    let mut times: [Vec<f64>; 7] = Default::default();
    {
        let floor = std::cell::RefCell::new(floor);
        let mut variants: [Box<dyn FnMut() -> f64 + '_>; 7] = [
            Box::new(|| round(bare, N, false)),
            Box::new(|| round(&mut **floor.borrow_mut(), N, false)),
            Box::new(|| round(reference, N, false)),
            Box::new(|| round(replay_on, N, false)),
            Box::new(|| round(replay_off, N, false)),
            Box::new(|| round(&mut **floor.borrow_mut(), N, true)),
            Box::new(|| round(no_replay_ext, N, true)),
        ];
        for r in 0..ROUNDS {
            for k in 0..variants.len() {
                let i = (r + k) % variants.len();
                times[i].push(variants[i]());
            }
        }
    }
    let ratio =
        |a: usize, b: usize| median(times[a].iter().zip(&times[b]).map(|(x, y)| x / y).collect());
    let (off_floor, on_reference, on_floor, ext_floor) =
        (ratio(4, 1), ratio(3, 2), ratio(3, 1), ratio(6, 5));
    let [bare, floor, reference, on, off, floor_ext, ext] = times.map(median);
    println!(
        "hot_path paired ({ROUNDS} alternating rounds of {N} requests, medians): bare {bare:.1} ns, \
         floor {floor:.1} ns, reference {reference:.1} ns, auth_replay_on {on:.1} ns, \
         auth_replay_off {off:.1} ns, floor_ext {floor_ext:.1} ns, auth_no_replay_ext {ext:.1} ns; \
         medians of the ratios within a round: replay off / floor {off_floor:.3}, \
         replay on / reference {on_reference:.3}, replay on / floor {on_floor:.3}, \
         NoReplay / floor_ext {ext_floor:.3}",
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
    let mut reference = Reference::new(TOKEN).layer(Inner);
    let mut replay_on = auth_layer(&rt, true).layer(Inner);
    let mut replay_off = auth_layer(&rt, false).layer(Inner);
    let mut no_replay_ext = auth_layer(&rt, true).layer(Inner);

    // Every variant answers 200, and the layers send the same header.
    for res in [
        drive(&mut bare, request()),
        drive(&mut floor, request()),
        drive(&mut reference, request()),
        drive(&mut replay_on, request()),
        drive(&mut replay_off, request()),
        drive(&mut no_replay_ext, request_no_replay()),
    ] {
        assert_eq!(res.status(), StatusCode::OK);
    }

    // Skipped under a profiler (`BENCH_NO_PAIRED=1`), where it would dominate.
    if std::env::var_os("BENCH_NO_PAIRED").is_none() {
        paired(
            &mut bare,
            &mut floor,
            &mut reference,
            &mut replay_on,
            &mut replay_off,
            &mut no_replay_ext,
        );
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
        b.iter(|| drive(&mut floor, request_no_replay()))
    });
    group.bench_function("auth_no_replay_ext", |b| {
        b.iter(|| drive(&mut no_replay_ext, request_no_replay()))
    });
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
