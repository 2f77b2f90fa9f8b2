//! The refusal path under load, against the crate's Daxium-compatible server
//! on 127.0.0.1 through hyper-util's legacy client. An API that revokes a
//! random 1% of the tokens presented is never taken for one that refuses
//! every token: no caller is turned away, and a request fails only when all
//! five of its sends were refused (a refusal of a token that had worked is
//! a revocation, resent without using the request's replay). An API that
//! revokes the old access token on every refresh, with a slow tail, fails no
//! request: the refusals of tokens the layer had replaced itself, or that
//! had worked before the refresh revoked them, are resent without using the
//! request's replay.
//! An API that refuses every token gets a bounded, slowing series of grants,
//! and every caller a prompt answer; once it recovers, requests succeed
//! again and a revocation is handled as usual. No request is sent more than
//! five times, which a counter beneath the layer checks.
//!
//! These run in real time (the server is real), each bounded in requests and
//! time, the whole file within a minute on two cores. Run with `--nocapture`
//! for the measured figures.
#![cfg(all(feature = "mock", feature = "rustls"))]

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{AuthLayer, AuthService, ReplayBody, Stats, mock::MockServer};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::{task::JoinSet, time::Instant};
use tower::{Layer, ServiceExt, util::MapRequest};

use crate::support;

type Body = ReplayBody<Empty<Bytes>>;
type Http = Client<HttpConnector, Body>;
type Counted = MapRequest<Http, fn(Request<Body>) -> Request<Body>>;
type Svc = AuthService<Counted>;

/// The most sends of one request: the first, and up to four resends, one of
/// which may be its replay.
const MOST: usize = 5;

/// How many times one request went to the wire: the layer keeps a request's
/// extensions on every send, so each send bumps the one counter.
#[derive(Clone, Default)]
struct Sends(Arc<AtomicU8>);

fn count_send(req: Request<Body>) -> Request<Body> {
    if let Some(sends) = req.extensions().get::<Sends>() {
        sends.0.fetch_add(1, Relaxed);
    }
    req
}

/// The layer over hyper's client, with the send counter beneath it.
fn service(layer: &AuthLayer) -> Svc {
    let client = Client::builder(TokioExecutor::new()).build_http();
    layer.layer(MapRequest::new(client, count_send as fn(_) -> _))
}

// === the load ===

/// When a load stops.
#[derive(Clone, Copy)]
enum Stop {
    Requests(u64),
    After(Duration),
}

/// How the requests of a load ended.
#[derive(Debug, Default)]
struct Tally {
    /// 2xx.
    ok: u64,
    /// The API's refusal (401), handed back by the layer.
    refused: u64,
    /// `TokenError::is_refused()`: turned away without being sent, while the
    /// API refuses every new token.
    turned_away: u64,
    /// Anything else (another status, another error, no answer in time),
    /// by kind.
    other: BTreeMap<String, u64>,
    /// Every send of every request, as the counter beneath the layer saw it.
    sends: u64,
    /// The requests that did not succeed, by how many times they were sent.
    failed_after: [u64; MOST + 1],
    /// The requests that succeeded, by how many times they were sent.
    ok_after: [u64; MOST + 1],
    most_sends: u8,
    slowest: Duration,
}

impl Tally {
    fn requests(&self) -> u64 {
        self.ok + self.refused + self.turned_away + self.other.values().sum::<u64>()
    }

    fn failed(&self) -> u64 {
        self.requests() - self.ok
    }

    fn other(&mut self, kind: String) {
        *self.other.entry(kind).or_default() += 1;
    }

    fn merge(&mut self, other: Self) {
        self.ok += other.ok;
        self.refused += other.refused;
        self.turned_away += other.turned_away;
        for (kind, n) in other.other {
            *self.other.entry(kind).or_default() += n;
        }
        self.sends += other.sends;
        for (mine, theirs) in self.failed_after.iter_mut().zip(other.failed_after) {
            *mine += theirs;
        }
        for (mine, theirs) in self.ok_after.iter_mut().zip(other.ok_after) {
            *mine += theirs;
        }
        self.most_sends = self.most_sends.max(other.most_sends);
        self.slowest = self.slowest.max(other.slowest);
    }
}

/// A load's tally and how long it took.
#[derive(Debug)]
struct Run {
    tally: Tally,
    elapsed: Duration,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.tally.requests() as f64 / self.elapsed.as_secs_f64()
    }
}

/// GETs `uri` through `svc` from `concurrency` workers until `stop`, each
/// request bounded by `timeout` (one that runs out counts as "timeout").
async fn drive(svc: &Svc, uri: &Uri, concurrency: usize, stop: Stop, timeout: Duration) -> Run {
    let claimed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (svc, uri, claimed) = (svc.clone(), uri.clone(), Arc::clone(&claimed));
        workers.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let more = match stop {
                    Stop::Requests(n) => claimed.fetch_add(1, Relaxed) < n,
                    Stop::After(d) => started.elapsed() < d,
                };
                if !more {
                    return tally;
                }
                if !one(&svc, &uri, timeout, &mut tally).await {
                    // Turned away before it was sent (the API refuses every
                    // token): a caller would not spin on that, and a loop
                    // that never waits would starve the runtime.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
    }
    let mut tally = Tally::default();
    while let Some(done) = workers.join_next().await {
        tally.merge(done.expect("a load worker panicked"));
    }
    Run {
        tally,
        elapsed: started.elapsed(),
    }
}

/// One GET, counted in `tally`; whether it was sent.
async fn one(svc: &Svc, uri: &Uri, timeout: Duration, tally: &mut Tally) -> bool {
    let sends = Sends::default();
    let mut req = Request::get(uri.clone()).body(Empty::new()).unwrap();
    req.extensions_mut().insert(sends.clone());
    let started = Instant::now();
    let answer = tokio::time::timeout(timeout, async {
        let res = svc.clone().oneshot(req).await?;
        let status = res.status();
        // Read to the end, so that the connection goes back to the pool.
        let _ = res.into_body().collect().await;
        Ok::<_, daxium_auth::Error<hyper_util::client::legacy::Error>>(status)
    })
    .await;
    tally.slowest = tally.slowest.max(started.elapsed());
    let sent = sends.0.load(Relaxed);
    tally.sends += u64::from(sent);
    tally.most_sends = tally.most_sends.max(sent);
    if matches!(answer, Ok(Ok(status)) if status.is_success()) {
        tally.ok_after[usize::from(sent).min(MOST)] += 1;
    } else {
        tally.failed_after[usize::from(sent).min(MOST)] += 1;
    }
    match answer {
        Ok(Ok(status)) if status.is_success() => tally.ok += 1,
        Ok(Ok(StatusCode::UNAUTHORIZED)) => tally.refused += 1,
        Ok(Err(err)) if err.token_error().is_some_and(|e| e.is_refused()) => {
            tally.turned_away += 1;
        }
        Ok(Ok(status)) => tally.other(format!("status {status}")),
        Ok(Err(err)) => tally.other(format!("error: {err}")),
        Err(_) => tally.other("timeout".to_owned()),
    }
    sent > 0
}

/// The difference of two snapshots of a layer's counters, for one phase.
fn since(before: &Stats, after: &Stats) -> (u64, u64, u64) {
    (
        after.grants() - before.grants(),
        after.replays - before.replays,
        after.resends - before.resends,
    )
}

/// A layer over hyper's client for `server`, logged in: one request
/// answered 200 before the load starts, so that the token was accepted.
async fn logged_in(server: &MockServer) -> (AuthLayer, Svc, Uri) {
    let layer = support::layer(server);
    let svc = service(&layer);
    let uri: Uri = server.api_url("items").parse().unwrap();
    let mut first = Tally::default();
    one(&svc, &uri, Duration::from_secs(5), &mut first).await;
    assert_eq!(first.ok, 1, "the first request: {first:?}");
    (layer, svc, uri)
}

// === revocations ===

/// Requests per measured round of the revocation test, and rounds per
/// variant: 20,000 requests with revocations, as many without.
const ROUND: u64 = 2_500;
const ROUNDS: usize = 8;

/// What a revocation of one token in a hundred costs at 32 in flight. Each
/// revocation meets the other requests in flight with that token: about a
/// fifth of the first sends are refused (~21 refusals a revocation). The
/// token had worked, so each is resent (not its replay) with the next
/// token, which goes out to all of them at once; the API revokes that token
/// within such a burst of ~25 presentations about one time in five, and the
/// sends behind the revoking one are refused again: 15-20% of the later
/// sends. With three sends, 0.22 x 0.18 x 0.18, some 0.7% of the requests
/// failed (99.22-99.49% succeeded in six runs); with five, 0.22 x 0.18^4,
/// some 0.02%, so the 99.9% that an API revoking 1% of the tokens in use
/// calls for holds with a margin.
///
/// Requests per second are bounded by the sends the API refuses whatever
/// the client does: ~22% of the first sends are in flight when their token
/// is revoked, so each request takes ~1.27 sends, and at the same cost per
/// send the ratio to the run without revocations is ~0.79 at best. The
/// layer's own cost shows in the sends per second, which stay within 0.8
/// of the run without revocations; the requests per second are asserted at
/// 0.6, with a margin for a shared machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_one_token_in_a_hundred_fails_under_one_request_in_a_thousand() {
    let plain = MockServer::builder().seed(7).start().await.unwrap();
    let revoking = (MockServer::builder().seed(7))
        .revoke_presented(0.01)
        .start()
        .await
        .unwrap();
    let (_plain_layer, plain_svc, plain_uri) = logged_in(&plain).await;
    let (layer, svc, uri) = logged_in(&revoking).await;

    // The variants alternate, so that whatever else the machine does in the
    // meantime slows both alike.
    let timeout = Duration::from_secs(10);
    let (mut base, mut revoked) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        base.push(drive(&plain_svc, &plain_uri, 32, Stop::Requests(ROUND), timeout).await);
        revoked.push(drive(&svc, &uri, 32, Stop::Requests(ROUND), timeout).await);
    }
    let merged = |runs: Vec<Run>| {
        let mut tally = Tally::default();
        let secs: f64 = runs.iter().map(|r| r.elapsed.as_secs_f64()).sum();
        let rounds: Vec<f64> = runs.iter().map(|r| r.per_second().round()).collect();
        for run in runs {
            tally.merge(run.tally);
        }
        (tally, secs, rounds)
    };
    let (base, base_secs, base_rounds) = merged(base);
    let (tally, secs, rounds) = merged(revoked);
    let ratio = (tally.requests() as f64 / secs) / (base.requests() as f64 / base_secs);
    let sends_ratio = (tally.sends as f64 / secs) / (base.sends as f64 / base_secs);
    let success = tally.ok as f64 / tally.requests() as f64;
    // The share of the k-th sends that the API refused, for k = 1..=MOST:
    // of the requests sent k times or more, those not answered 2xx on the
    // k-th send.
    let (ok, failed) = (tally.ok_after, tally.failed_after);
    let refused_shares: Vec<String> = (1..=MOST)
        .map(|k| {
            let reached: u64 = (k..=MOST).map(|n| ok[n] + failed[n]).sum();
            let share = (reached - ok[k]) as f64 / reached.max(1) as f64;
            format!("{:.1}% of {reached}", share * 100.0)
        })
        .collect();
    let (stats, c) = (layer.stats(), revoking.counters());
    eprintln!(
        "revocations: {} requests at 32 in flight, {:.3}% ok, {} failed (by sends {:?}; other {:?}); \
         ok by sends {:?}; refused, by send: {refused_shares:?}; \
         {:.0} req/s vs {:.0} req/s without revocations: ratio {ratio:.3} \
         (rounds {rounds:?} vs {base_rounds:?}), sends per second ratio {sends_ratio:.3}; \
         {} tokens revoked in use, {} grants, {} sends, {} replays, {} resends, \
         at most {} sends, slowest {:?}",
        tally.requests(),
        success * 100.0,
        tally.failed(),
        tally.failed_after,
        tally.other,
        tally.ok_after,
        tally.requests() as f64 / secs,
        base.requests() as f64 / base_secs,
        c.api_revoked_in_use,
        stats.grants(),
        tally.sends,
        stats.replays,
        stats.resends,
        tally.most_sends,
        tally.slowest,
    );
    assert!(tally.requests() >= ROUND * ROUNDS as u64);
    assert_eq!(base.ok, base.requests(), "{base:?}");
    assert!(c.api_revoked_in_use > 0, "{c:?}");
    assert!(stats.resends > 0, "{stats:?}");
    // Never taken for an API that refuses every token: no caller turned
    // away, and each failure is a request refused on every send it had: a
    // revoked token is resent, so no request fails before its last send.
    assert_eq!(tally.turned_away, 0, "{tally:?}");
    assert!(tally.other.is_empty(), "{tally:?}");
    assert_eq!(tally.failed_after[..MOST], [0; MOST], "{tally:?}");
    assert!(success >= 0.999, "{:.4}% ok: {tally:?}", success * 100.0);
    // The layer's own cost (refreshes, waits) is bounded per send; the
    // requests per second follow from the API's refusals (0.79 at best).
    assert!(
        sends_ratio >= 0.8,
        "sends per second ratio {sends_ratio:.3}"
    );
    assert!(ratio >= 0.6, "requests per second ratio {ratio:.3}");
    // No request sent more than MOST times, and no send beyond the first
    // ones, the replays and the resends (the login's request is the 1).
    assert!(usize::from(tally.most_sends) <= MOST, "{tally:?}");
    assert_eq!(
        tally.sends + 1,
        c.api_requests,
        "every send reached the API"
    );
    assert!(tally.sends <= tally.requests() + stats.replays + stats.resends);
}

// === rotation that revokes ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_revokes_the_old_token_fails_no_request() {
    // 2 s tokens, refreshed some 1.5 s in: a refusal of the token just replaced
    // follows every refresh. One answer in fifty takes 1.1 s, so that some
    // of those refusals arrive after the new token is in use.
    let server = (MockServer::builder().seed(11))
        .token_lifetime(Duration::from_secs(2))
        .revoke_on_refresh(true)
        .slow_api(0.02, Duration::from_millis(1100))
        .start()
        .await
        .unwrap();
    let (layer, svc, uri) = logged_in(&server).await;
    let timeout = Duration::from_secs(5);
    // 10 s: six refreshes or so, each revoking the token of the requests in
    // flight; whether their refusals come before or after the new token is
    // in use is a race, and one of them is enough.
    let run = drive(
        &svc,
        &uri,
        64,
        Stop::After(Duration::from_secs(10)),
        timeout,
    )
    .await;
    let (stats, c, tally) = (layer.stats(), server.counters(), &run.tally);
    eprintln!(
        "revoke on refresh: {} requests at 64 in flight in {:.2} s ({:.0} req/s), {} failed ({:?}); \
         {} refreshes revoked the token in use, {} API refusals, {} answers slowed; \
         {} grants, {} replays, {} resends, at most {} sends, slowest {:?}",
        tally.requests(),
        run.elapsed.as_secs_f64(),
        run.per_second(),
        tally.failed(),
        tally.other,
        c.refresh_revoked_access,
        c.api_revoked,
        c.api_slowed,
        stats.grants(),
        stats.replays,
        stats.resends,
        tally.most_sends,
        tally.slowest,
    );
    assert!(tally.requests() >= 10_000, "{tally:?}");
    assert_eq!(tally.failed(), 0, "{tally:?} {stats:?} {c:?}");
    assert!(c.refresh_revoked_access >= 2, "{c:?}");
    // Refusals of a token that had worked before the refresh revoked it,
    // whether they come before the new token is in (a revocation) or after
    // (a token the layer had replaced): sent again without using the
    // request's one replay, by construction.
    assert!(stats.resends > 0, "{stats:?}");
    assert_eq!((stats.replays, stats.resends), (0, c.api_revoked), "{c:?}");
    assert!(usize::from(tally.most_sends) <= MOST, "{tally:?}");
    assert_eq!(
        tally.sends + 1,
        c.api_requests,
        "every send reached the API"
    );
}

// === an API that refuses every token ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_refusing_every_token_gets_few_grants_and_prompt_answers() {
    let server = MockServer::start().await.unwrap();
    let (layer, svc, uri) = logged_in(&server).await;
    let before = layer.stats();
    server.refuse_every_token(true);
    // Each caller gives up after 1 s: every one must have its answer by then.
    let run = drive(
        &svc,
        &uri,
        16,
        Stop::After(Duration::from_secs(10)),
        Duration::from_secs(1),
    )
    .await;
    let (grants, replays, resends) = since(&before, &layer.stats());
    let tally = &run.tally;
    let secs = run.elapsed.as_secs_f64();
    // The revoked token and two new ones replaced at once, then one after
    // each pause of 1, 2, 4 s...
    let bound = 3 + (secs + 1.0).log2().floor() as u64;
    eprintln!(
        "refusing every token: {} requests at 16 in flight over {secs:.2} s: {} refused by the API, \
         {} turned away, other {:?}; {grants} grants (bound {bound}), {replays} replays, \
         {resends} resends, slowest {:?}",
        tally.requests(),
        tally.refused,
        tally.turned_away,
        tally.other,
        tally.slowest,
    );
    assert!(grants <= bound, "{grants} grants in {secs:.2} s");
    assert!(
        grants >= 3,
        "a revoked token is replaced at once, and so are two new ones"
    );
    assert!(
        tally.other.is_empty(),
        "every caller answered in time: {tally:?}"
    );
    assert_eq!(tally.ok, 0);
    assert!(tally.refused > 0 && tally.turned_away > 0, "{tally:?}");
    assert!(usize::from(tally.most_sends) <= MOST, "{tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_api_refusing_every_token_recovers_a_revocation_is_handled_as_usual() {
    let server = MockServer::start().await.unwrap();
    let (layer, svc, uri) = logged_in(&server).await;
    let timeout = Duration::from_secs(1);
    server.refuse_every_token(true);
    let refusing = drive(&svc, &uri, 8, Stop::After(Duration::from_secs(2)), timeout).await;
    assert_eq!(refusing.tally.ok, 0, "{:?}", refusing.tally);
    assert!(refusing.tally.other.is_empty(), "{:?}", refusing.tally);
    server.refuse_every_token(false);

    // The grants are paused (1 s, then 2 s): the first one after the pause
    // brings a token that works. Polled every 20 ms, for at most 10 s.
    let switched = Instant::now();
    let mut polls = Tally::default();
    while polls.ok == 0 && switched.elapsed() < Duration::from_secs(10) {
        one(&svc, &uri, timeout, &mut polls).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovery = switched.elapsed();
    assert_eq!(
        polls.ok, 1,
        "no success within 10 s of the recovery: {polls:?}"
    );
    assert!(recovery < Duration::from_secs(4), "{recovery:?}");
    assert!(polls.other.is_empty(), "{polls:?}");

    // A revocation of the token in use, halfway through 1.5 s of load: the
    // token had worked, so it is refreshed at once, whatever the streak of
    // refused tokens before, and the requests it met are resent, none
    // replayed.
    let token = layer.cache().access_token().await.unwrap();
    let before = layer.stats();
    let load = drive(
        &svc,
        &uri,
        16,
        Stop::After(Duration::from_millis(1500)),
        timeout,
    );
    let revoke = async {
        tokio::time::sleep(Duration::from_millis(750)).await;
        server.revoke(token.expose_secret())
    };
    let (run, revoked) = tokio::join!(load, revoke);
    assert!(revoked, "the token in use was revoked");
    let (grants, replays, resends) = since(&before, &layer.stats());
    eprintln!(
        "recovery: first success {recovery:?} after the API accepted tokens again ({} polls refused); \
         then {} requests across a revocation: {} failed, {grants} grant, {replays} replays, \
         {resends} resends, slowest {:?}",
        polls.refused + polls.turned_away,
        run.tally.requests(),
        run.tally.failed(),
        run.tally.slowest,
    );
    assert_eq!(run.tally.failed(), 0, "{:?}", run.tally);
    assert_eq!(grants, 1, "one refresh");
    assert!(resends > 0);
    assert_eq!(replays, 0);
}
