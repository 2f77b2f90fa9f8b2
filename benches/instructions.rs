//! Instructions per request, counted by callgrind: the stable figure on a
//! shared machine, where wall-clock time moves with the neighbours' load.
//!
//! The same request as the `hot_path` bench (a bodiless GET to an absolute
//! URI, built for each request, through `poll_ready` + `call`, one poll of the
//! response future with a no-op waker, and the response dropped), for each
//! variant:
//! - `bare`: the inner service alone;
//! - `floor`: tower-http's `AddAuthorization` (a constant header);
//! - `floor_ext`: the same, with requests that carry the `NoReplay` extension;
//! - `auth_replay_off`: `AuthLayer` with `.replay(false)`;
//! - `auth_no_replay`: `AuthLayer` with its defaults, requests carrying
//!   `NoReplay` (the per-request opt-out, measured against `floor_ext`);
//! - `reference`: a layer that does the job the plain way (`RwLock` token, a
//!   copy of the request kept for the retry);
//! - `auth_replay_on`: `AuthLayer` with its defaults;
//! - with the `redis` feature, `auth_replay_off_redis` / `auth_replay_on_redis`:
//!   the two `AuthLayer` variants sharing their login through a `RedisStore`
//!   on a real `redis-server`, which the parent starts on 127.0.0.1; and
//!   `auth_replay_off_cluster` / `auth_replay_on_cluster`: the same through a
//!   Redis Cluster of three primaries that the parent starts there too.
//!
//! Run as a bench (`cargo bench --bench instructions`), the binary runs itself
//! under `valgrind --tool=callgrind` once per variant and per request count,
//! collecting only inside the loop that sends the requests
//! (`--toggle-collect`), and takes the difference between a long and a short
//! run: what the first requests cost (a header copied once, caches warming)
//! and the loop's own setup cancel out, and what is left is the cost of one
//! request. The figures are exact for a build; they change with the compiler
//! and the dependencies' versions, not with the machine's load.
//!
//! `VALGRIND` names the valgrind binary (default `valgrind` from `PATH`);
//! `INSTRUCTIONS_KEEP=DIR` keeps the callgrind files there, for
//! `callgrind_annotate --inclusive=yes DIR/<variant>.long.out`.
//! `scripts/instructions.sh` installs valgrind first if it is missing.

use std::{
    env,
    ffi::OsString,
    fmt,
    hint::black_box,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use tower::{Layer, Service};
use tower_http::auth::AddAuthorization;

mod support;

use support::{
    Inner, Reference, TOKEN, auth_layer, drive, request, request_no_replay, request_with,
};

/// The variants, in the order of the table.
const VARIANTS: [&str; 7] = [
    "bare",
    "floor",
    "floor_ext",
    "auth_replay_off",
    "auth_no_replay",
    "reference",
    "auth_replay_on",
];

/// With the `redis` feature: the two `AuthLayer` variants sharing their login
/// through a `RedisStore` on one server, and on a Redis Cluster.
#[cfg(feature = "redis")]
const REDIS_VARIANTS: [&str; 4] = [
    "auth_replay_off_redis",
    "auth_replay_on_redis",
    "auth_replay_off_cluster",
    "auth_replay_on_cluster",
];
#[cfg(not(feature = "redis"))]
const REDIS_VARIANTS: [&str; 0] = [];

/// Requests before the counted loop, and in its short and long runs.
const WARM_UP: u32 = 100;
const SHORT: u32 = 1_000;
const LONG: u32 = 11_000;

/// The environment variables that make the binary a child run: the variant,
/// and how many requests the counted loop sends.
const VARIANT_VAR: &str = "INSTRUCTIONS_VARIANT";
const REQUESTS_VAR: &str = "INSTRUCTIONS_REQUESTS";
/// The URL of the Redis the store variants share their login through.
const REDIS_VAR: &str = "INSTRUCTIONS_REDIS";

/// The loop callgrind counts (`--toggle-collect=*counted_requests*`): never
/// inlined, so that its name is in the profile.
#[inline(never)]
fn counted_requests<S>(svc: &mut S, n: u32, no_replay: bool)
where
    S: Service<Request<Empty<Bytes>>>,
    S::Error: fmt::Debug,
{
    for _ in 0..n {
        black_box(drive(svc, request_with(no_replay)));
    }
}

fn run<S>(svc: &mut S, n: u32, no_replay: bool)
where
    S: Service<Request<Empty<Bytes>>, Response = http::Response<Empty<Bytes>>>,
    S::Error: fmt::Debug,
{
    let make = if no_replay {
        request_no_replay
    } else {
        request
    };
    assert_eq!(drive(svc, make()).status(), StatusCode::OK);
    for _ in 0..WARM_UP {
        black_box(drive(svc, make()));
    }
    counted_requests(svc, n, no_replay);
}

/// A child run: one variant, `n` counted requests.
fn child(variant: &str, n: u32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    match variant {
        "bare" => run(&mut Inner, n, false),
        "floor" | "floor_ext" => run(
            &mut AddAuthorization::bearer(Inner, TOKEN).as_sensitive(true),
            n,
            variant == "floor_ext",
        ),
        "auth_replay_off" => run(&mut auth_layer(&rt, false).layer(Inner), n, false),
        "auth_no_replay" => run(&mut auth_layer(&rt, true).layer(Inner), n, true),
        "reference" => run(&mut Reference::new(TOKEN).layer(Inner), n, false),
        "auth_replay_on" => run(&mut auth_layer(&rt, true).layer(Inner), n, false),
        #[cfg(feature = "redis")]
        "auth_replay_off_redis"
        | "auth_replay_on_redis"
        | "auth_replay_off_cluster"
        | "auth_replay_on_cluster" => {
            let url = env::var(REDIS_VAR).expect("the Redis URL");
            let replay = variant.starts_with("auth_replay_on");
            let layer = support::auth_layer_redis(&rt, replay, &url);
            run(&mut layer.layer(Inner), n, false)
        }
        other => panic!("unknown variant {other}"),
    }
}

/// The instructions callgrind counted in one child run.
fn count(
    valgrind: &OsString,
    dir: &Path,
    redis: Option<&str>,
    variant: &str,
    n: u32,
    tag: &str,
) -> Result<u64, String> {
    let out = dir.join(format!("{variant}.{tag}.out"));
    let exe = env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let status = Command::new(valgrind)
        .arg("--tool=callgrind")
        .arg("--toggle-collect=*counted_requests*")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--quiet")
        .arg(&exe)
        .env(VARIANT_VAR, variant)
        .env(REQUESTS_VAR, n.to_string())
        .env(REDIS_VAR, redis.unwrap_or_default())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", valgrind.to_string_lossy()))?;
    if !status.success() {
        return Err(format!("callgrind run of {variant} failed: {status}"));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    // `summary:` holds the total of the events collected (instructions first).
    text.lines()
        .find_map(|line| line.strip_prefix("summary:"))
        .or_else(|| text.lines().find_map(|line| line.strip_prefix("totals:")))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("{}: no instruction total", out.display()))
}

fn parent() -> Result<(), String> {
    let valgrind = env::var_os("VALGRIND").unwrap_or_else(|| "valgrind".into());
    let kept = env::var_os("INSTRUCTIONS_KEEP").map(PathBuf::from);
    let dir = match &kept {
        Some(dir) => dir.clone(),
        None => env::temp_dir().join(format!("daxium-auth-instructions-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    #[cfg(feature = "redis")]
    let server = support::redis::RedisServer::start();
    #[cfg(feature = "redis")]
    let cluster = support::redis::RedisCluster::start(3, 0);
    #[cfg(feature = "redis")]
    let (redis, cluster) = (Some(server.url()), Some(cluster.url()));
    #[cfg(not(feature = "redis"))]
    let (redis, cluster): (Option<String>, Option<String>) = (None, None);
    let mut per_request = Vec::new();
    for variant in VARIANTS.into_iter().chain(REDIS_VARIANTS) {
        let redis = if variant.ends_with("_cluster") {
            &cluster
        } else {
            &redis
        };
        let short = count(&valgrind, &dir, redis.as_deref(), variant, SHORT, "short")?;
        let long = count(&valgrind, &dir, redis.as_deref(), variant, LONG, "long")?;
        let per = long.saturating_sub(short) as f64 / f64::from(LONG - SHORT);
        eprintln!(
            "instructions/{variant}: {per:.1} a request ({short} for {SHORT}, {long} for {LONG})"
        );
        per_request.push((variant, per));
    }
    if kept.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let of = |name: &str| {
        (per_request.iter())
            .find(|(variant, _)| *variant == name)
            .map_or(f64::NAN, |(_, per)| *per)
    };
    println!(
        "instructions a request (callgrind, {} - {} requests):",
        LONG, SHORT
    );
    for (variant, per) in &per_request {
        println!("  {variant:<22} {per:>8.1}");
    }
    println!(
        "  replay off / floor {:.3}, NoReplay / floor_ext {:.3}, replay on / reference {:.3}, \
         replay on / floor {:.3}",
        of("auth_replay_off") / of("floor"),
        of("auth_no_replay") / of("floor_ext"),
        of("auth_replay_on") / of("reference"),
        of("auth_replay_on") / of("floor"),
    );
    if !REDIS_VARIANTS.is_empty() {
        println!(
            "  with a RedisStore: replay off {:.3}, replay on {:.3}; on a cluster: replay off \
             {:.3}, replay on {:.3} (against the same without)",
            of("auth_replay_off_redis") / of("auth_replay_off"),
            of("auth_replay_on_redis") / of("auth_replay_on"),
            of("auth_replay_off_cluster") / of("auth_replay_off"),
            of("auth_replay_on_cluster") / of("auth_replay_on"),
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Some(variant) = env::var_os(VARIANT_VAR) {
        let n = env::var(REQUESTS_VAR)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(SHORT);
        child(&variant.to_string_lossy(), n);
        return ExitCode::SUCCESS;
    }
    // `cargo test --benches` runs the binary without `--bench`: nothing to do.
    if !env::args().any(|arg| arg == "--bench") {
        return ExitCode::SUCCESS;
    }
    match parent() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("instructions: {err}");
            ExitCode::FAILURE
        }
    }
}
