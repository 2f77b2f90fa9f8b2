//! Edge cases of the refusal path and the body replay, through the public API:
//! futures dropped at every state, bodies let go of, stalled, failed and read
//! on over three and five sends, requests sent five times against tokens
//! revoked after one use, inner services that are not ready for a resend,
//! refusals that race acceptances, and the reqwest middleware under an API
//! that refuses every token.
//!
//! Logic runs under paused time against the scripted endpoint; what needs
//! HTTP runs against the crate's server on 127.0.0.1.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{Refusal, ReplayBody};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header::AUTHORIZATION};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};

use crate::support;

use support::scripted::{self, API, Setup, bearer, in_time, setup, setup_with};

// === helpers ===

/// Counts the `Bytes` alive that were made by [`counted`].
#[derive(Clone, Default)]
struct Live(Arc<AtomicUsize>);

struct Owner {
    data: Vec<u8>,
    live: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.live.fetch_sub(1, SeqCst);
    }
}

impl Live {
    fn chunk(&self, data: &[u8]) -> Bytes {
        self.0.fetch_add(1, SeqCst);
        Bytes::from_owner(Owner {
            data: data.to_vec(),
            live: Arc::clone(&self.0),
        })
    }

    fn count(&self) -> usize {
        self.0.load(SeqCst)
    }
}

/// What a [`Script`] body does next.
enum Act {
    Data(Bytes),
    Trailers(HeaderMap),
    Fail,
    /// Pending forever.
    Stall,
}

/// A request body that plays a script of frames, then ends; it says nothing
/// of its size, and counts how often it was dropped.
struct Script {
    acts: VecDeque<Act>,
    dropped: Arc<AtomicUsize>,
}

impl Script {
    fn new(acts: impl IntoIterator<Item = Act>, dropped: &Arc<AtomicUsize>) -> Self {
        Self {
            acts: acts.into_iter().collect(),
            dropped: Arc::clone(dropped),
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, SeqCst);
    }
}

impl Body for Script {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.acts.pop_front() {
            None => Poll::Ready(None),
            Some(Act::Data(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(Act::Trailers(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Some(Act::Fail) => Poll::Ready(Some(Err(std::io::Error::other("body failed")))),
            Some(Act::Stall) => {
                self.acts.push_front(Act::Stall);
                Poll::Pending
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::new()
    }
}

type Inner = tower::util::BoxCloneSyncService<
    Request<ReplayBody<Script>>,
    Response<Full<Bytes>>,
    Infallible,
>;

type Hook = Box<dyn FnOnce() + Send>;

/// The token a send carried, and the bytes the API read of its body.
type Sent = (Option<String>, Vec<u8>);

/// How the test API treats one request: how many frames of the body it reads
/// before it answers (and drops the rest), and whether it refuses it.
#[derive(Clone, Default)]
struct Api {
    /// Frames read per send, in order; reads the whole body when empty.
    reads: Arc<Mutex<VecDeque<usize>>>,
    /// Whether each send is refused, in order; accepted when empty.
    refuse: Arc<Mutex<VecDeque<bool>>>,
    /// Before answering the send numbered by the key, run this.
    before: Arc<Mutex<HashMap<usize, Hook>>>,
    /// How long each send takes to answer after its hook, in order.
    delays: Arc<Mutex<VecDeque<Duration>>>,
    /// What each send carried: its token, and the bytes it read.
    sends: Arc<Mutex<Vec<Sent>>>,
    /// The trailers each send read, in order (`None` for none).
    trailers: Arc<Mutex<Vec<Option<HeaderMap>>>>,
    /// Whether each send's body is kept after the answer (as an HTTP/2
    /// upload goes on after the answer), in order; dropped when empty.
    hold: Arc<Mutex<VecDeque<bool>>>,
    /// The bodies kept.
    held: Arc<Mutex<Vec<ReplayBody<Script>>>>,
}

impl Api {
    fn service(&self) -> Inner {
        let api = self.clone();
        tower::util::BoxCloneSyncService::new(tower::service_fn(
            move |req: Request<ReplayBody<Script>>| {
                let api = api.clone();
                async move {
                    let n = api.sends.lock().unwrap().len();
                    let token = bearer(&req);
                    let reads = api.reads.lock().unwrap().pop_front();
                    let mut body = req.into_body();
                    let mut got = Vec::new();
                    let mut trailers = None;
                    let mut frames = 0;
                    while reads.is_none_or(|r| frames < r) {
                        match body.frame().await {
                            Some(Ok(frame)) => {
                                if let Some(data) = frame.data_ref() {
                                    got.extend_from_slice(data);
                                }
                                if let Some(t) = frame.trailers_ref() {
                                    trailers = Some(t.clone());
                                }
                                frames += 1;
                            }
                            Some(Err(_)) | None => break,
                        }
                    }
                    if api.hold.lock().unwrap().pop_front().unwrap_or(false) {
                        api.held.lock().unwrap().push(body);
                    } else {
                        drop(body);
                    }
                    api.sends.lock().unwrap().push((token, got.clone()));
                    api.trailers.lock().unwrap().push(trailers);
                    let hook = api.before.lock().unwrap().remove(&n);
                    if let Some(hook) = hook {
                        hook();
                    }
                    let delay = api.delays.lock().unwrap().pop_front();
                    tokio::time::sleep(delay.unwrap_or_default()).await;
                    let refuse = api.refuse.lock().unwrap().pop_front().unwrap_or(false);
                    let status = if refuse {
                        StatusCode::UNAUTHORIZED
                    } else {
                        StatusCode::OK
                    };
                    Ok(Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from(got)))
                        .unwrap())
                }
            },
        ))
    }
}

/// An API that reads `reads` frames of each send's body and refuses the
/// sends `refuse` says, a counter of the body's chunks, and of its drops.
fn scripted_api(reads: &[usize], refuse: &[bool]) -> (Api, Live, Arc<AtomicUsize>) {
    let api = Api::default();
    *api.reads.lock().unwrap() = reads.iter().copied().collect();
    *api.refuse.lock().unwrap() = refuse.iter().copied().collect();
    (api, Live::default(), Arc::new(AtomicUsize::new(0)))
}

fn post(body: Script) -> Request<Script> {
    Request::post(API).body(body).unwrap()
}

async fn warm(s: &Setup) {
    let res = scripted::send(&s.service(), scripted::get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

// === the body replay ===

/// A body the API lets go of after one frame, three sends in a row (a resend
/// after its token was replaced in flight, then its replay), arrives whole on
/// the third, each send reading on from the recorded part.
#[tokio::test(start_paused = true)]
async fn a_body_let_go_of_at_each_send_is_read_on_over_three_sends() {
    let s = setup();
    let (api, live, dropped) = scripted_api(&[1, 2], &[true, true, false]);
    // The first send's token is replaced while it is in flight: it answers
    // after the refresh (20 ms) is in.
    *api.delays.lock().unwrap() = [Duration::from_millis(100)].into();
    let cache = s.layer.cache().clone();
    api.before
        .lock()
        .unwrap()
        .insert(0, Box::new(move || cache.refresh_now()));
    let svc = s.layer.layer(api.service());
    let acts = (0..4).map(|i| Act::Data(live.chunk(format!("<{i}>").as_bytes())));
    let res = svc
        .oneshot(post(Script::new(acts, &dropped)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let sends = api.sends.lock().unwrap().clone();
    assert_eq!(sends.len(), 3, "{sends:?}");
    assert_eq!(sends[0].1, b"<0>");
    assert_eq!(sends[1].1, b"<0><1>");
    assert_eq!(sends[2].1, b"<0><1><2><3>");
    let stats = s.layer.stats();
    assert_eq!((stats.resends, stats.replays), (1, 1), "{stats:?}");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"<0><1><2><3>");
    drop(body);
    assert_eq!(live.count(), 0, "the body's chunks outlive the request");
    assert_eq!(dropped.load(SeqCst), 1);
}

/// Has the token of each of the first `n` sends replaced while it is in
/// flight: the send answers 100 ms later, after the refresh (20 ms) is in, so
/// that its refusal is a resend.
fn replaced_in_flight(api: &Api, s: &Setup, n: usize) {
    let mut before = api.before.lock().unwrap();
    for i in 0..n {
        let cache = s.layer.cache().clone();
        before.insert(i, Box::new(move || cache.refresh_now()));
    }
    *api.delays.lock().unwrap() = std::iter::repeat_n(Duration::from_millis(100), n).collect();
}

/// The number `N` of each token `access-N` the sends carried, in order.
fn token_numbers(api: &Api) -> Vec<usize> {
    (api.sends.lock().unwrap().iter())
        .map(|(token, _)| {
            let token = token.as_deref().expect("a send without a token");
            token.strip_prefix("access-").unwrap().parse().unwrap()
        })
        .collect()
}

/// A body the API lets go of at each of four sends, each refused with a
/// token replaced while it was in flight (four resends), is read on at each
/// and arrives whole on the fifth; every send carries a newer token, and the
/// recording and the body are freed once the answer is in.
#[tokio::test(start_paused = true)]
async fn a_body_let_go_of_at_each_of_four_sends_arrives_whole_on_the_fifth() {
    let s = setup();
    let (api, live, dropped) = scripted_api(&[1, 2, 3, 4], &[true, true, true, true, false]);
    replaced_in_flight(&api, &s, 4);
    let svc = s.layer.layer(api.service());
    let acts = (0..6).map(|i| Act::Data(live.chunk(format!("<{i}>").as_bytes())));
    let res = svc
        .oneshot(post(Script::new(acts, &dropped)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let read: Vec<_> = api
        .sends
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    let expected: Vec<Vec<u8>> = [1, 2, 3, 4, 6]
        .iter()
        .map(|&n| (0..n).flat_map(|i| format!("<{i}>").into_bytes()).collect())
        .collect();
    assert_eq!(read, expected);
    let tokens = token_numbers(&api);
    assert_eq!(tokens, [1, 2, 3, 4, 5]);
    let stats = s.layer.stats();
    assert_eq!((stats.resends, stats.replays), (4, 0), "{stats:?}");
    drop(res);
    assert_eq!(live.count(), 0, "the body's chunks outlive the request");
    assert_eq!(dropped.load(SeqCst), 1);
}

/// Five sends in a row refused, each with a token replaced while it was in
/// flight: the request is not sent a sixth time, the fifth refusal comes
/// back as the API gave it (its body is what the fifth send read), and the
/// recording of the body is freed with it.
#[tokio::test(start_paused = true)]
async fn the_fifth_refusal_goes_back_unchanged_and_frees_the_recording() {
    let s = setup();
    let (api, live, dropped) = scripted_api(&[1, 2, 3, 4], &[true; 6]);
    // The fifth send's token is replaced too: only the bound stops a sixth.
    replaced_in_flight(&api, &s, 5);
    let svc = s.layer.layer(api.service());
    let acts = (0..6).map(|i| Act::Data(live.chunk(format!("<{i}>").as_bytes())));
    let res = svc
        .oneshot(post(Script::new(acts, &dropped)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(token_numbers(&api), [1, 2, 3, 4, 5]);
    let stats = s.layer.stats();
    assert_eq!(
        (stats.resends, stats.replays, stats.replays_skipped),
        (4, 0, 1),
        "{stats:?}"
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"<0><1><2><3><4><5>", "not the fifth answer");
    assert_eq!(live.count(), 0, "the recording outlives the final answer");
    assert_eq!(dropped.load(SeqCst), 1);
    // The refused tokens are gone; the next token works.
    tokio::time::sleep(Duration::from_millis(200)).await;
    warm(&s).await;
}

/// A body with trailers, let go of at its first two sends and read whole
/// from the third on, keeps its trailers over five sends (a resend after
/// each of four tokens replaced in flight): the recorded body is replayed
/// with them, and arrives whole on the fifth.
#[tokio::test(start_paused = true)]
async fn a_body_with_trailers_keeps_them_over_five_sends() {
    let s = setup();
    let (api, live, dropped) = scripted_api(&[1, 2], &[true, true, true, true, false]);
    replaced_in_flight(&api, &s, 4);
    let svc = s.layer.layer(api.service());
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let acts = [
        Act::Data(live.chunk(b"a")),
        Act::Data(live.chunk(b"b")),
        Act::Data(live.chunk(b"c")),
        Act::Trailers(trailers.clone()),
    ];
    let res = svc
        .oneshot(post(Script::new(acts, &dropped)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let read: Vec<_> = api
        .sends
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(read, [&b"a"[..], b"ab", b"abc", b"abc", b"abc"]);
    let seen = api.trailers.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            None,
            None,
            Some(trailers.clone()),
            Some(trailers.clone()),
            Some(trailers)
        ]
    );
    assert_eq!(token_numbers(&api), [1, 2, 3, 4, 5]);
    drop(res);
    assert_eq!(live.count(), 0);
    assert_eq!(dropped.load(SeqCst), 1);
}

/// A body let go of after one frame at each of four sends (a resend after
/// each token replaced in flight), answered at the fifth while the inner
/// service still holds the body, whose rest stalls: the recording is freed
/// with the answer, though the body is not done, and the body with it when
/// the inner service lets go.
#[tokio::test(start_paused = true)]
async fn the_recording_is_freed_with_the_final_answer_while_the_body_is_held() {
    let s = setup();
    let (api, live, dropped) = scripted_api(&[1, 1, 1, 1, 2], &[true, true, true, true, false]);
    *api.hold.lock().unwrap() = [false, false, false, false, true].into();
    replaced_in_flight(&api, &s, 4);
    let svc = s.layer.layer(api.service());
    let acts = [
        Act::Data(live.chunk(b"a")),
        Act::Data(live.chunk(b"b")),
        Act::Stall,
    ];
    let res = svc
        .oneshot(post(Script::new(acts, &dropped)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(token_numbers(&api), [1, 2, 3, 4, 5]);
    let read: Vec<_> = api
        .sends
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(read, [&b"a"[..], b"a", b"a", b"a", b"ab"]);
    // The body is held, its rest unread: nothing of it is kept besides.
    assert_eq!(api.held.lock().unwrap().len(), 1);
    assert_eq!(dropped.load(SeqCst), 0);
    assert_eq!(live.count(), 0, "the recording outlives the final answer");
    api.held.lock().unwrap().clear();
    assert_eq!(dropped.load(SeqCst), 1);
}

/// A body that fails when it is read on after being let go of: the resend
/// fails with the body's error, nothing is kept, and the cache still answers.
#[tokio::test(start_paused = true)]
async fn a_parked_body_that_fails_when_read_on_frees_everything() {
    let s = setup();
    warm(&s).await;
    s.api.revoke_all();
    let (api, live, dropped) = scripted_api(&[1], &[true]);
    let svc = s.layer.layer(api.service());
    let acts = [Act::Data(live.chunk(b"a")), Act::Fail];
    let res = svc
        .oneshot(post(Script::new(acts, &dropped)))
        .await
        .unwrap();
    // The API's service_fn reads until the error and answers 200 with what it got.
    assert_eq!(res.status(), StatusCode::OK);
    let sends = api.sends.lock().unwrap().clone();
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[1].1, b"a");
    drop(res);
    assert_eq!(live.count(), 0);
    assert_eq!(dropped.load(SeqCst), 1);
    warm(&s).await;
}

/// Trailers, then more data: what went out is not what a replay would send,
/// so the refusal comes back as it is.
#[tokio::test(start_paused = true)]
async fn data_after_trailers_is_not_replayed() {
    let s = setup();
    warm(&s).await;
    let (api, live, dropped) = scripted_api(&[], &[true]);
    let svc = s.layer.layer(api.service());
    let acts = [
        Act::Data(live.chunk(b"a")),
        Act::Trailers(HeaderMap::new()),
        Act::Data(live.chunk(b"b")),
    ];
    let res = svc
        .oneshot(post(Script::new(acts, &dropped)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(api.sends.lock().unwrap().len(), 1);
    assert_eq!(s.layer.stats().replays_skipped, 1);
    drop(res);
    assert_eq!(live.count(), 0);
}

/// A body over the cap, let go of after its recording was abandoned: not
/// replayed, and nothing of it kept.
#[tokio::test(start_paused = true)]
async fn a_body_over_the_cap_let_go_of_is_not_replayed() {
    let s = setup_with(|b| b.replay_limit(4));
    warm(&s).await;
    let (api, live, dropped) = scripted_api(&[2], &[true]);
    let svc = s.layer.layer(api.service());
    let acts = (0..4).map(|_| Act::Data(live.chunk(b"xyz")));
    let res = svc
        .oneshot(post(Script::new(acts, &dropped)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(api.sends.lock().unwrap().len(), 1);
    drop(res);
    assert_eq!(dropped.load(SeqCst), 1);
    assert_eq!(live.count(), 0);
}

/// A refusal that comes while the inner service still holds the body, unread,
/// comes back after the settle limit (1 s), not never.
#[tokio::test(start_paused = true)]
async fn a_refusal_while_the_body_is_held_unread_comes_back_after_the_settle_limit() {
    let s = setup();
    warm(&s).await;
    let held = Arc::new(Mutex::new(Vec::new()));
    let inner = {
        let held = Arc::clone(&held);
        tower::service_fn(move |req: Request<ReplayBody<Script>>| {
            held.lock().unwrap().push(req);
            async {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(StatusCode::UNAUTHORIZED)
                        .body(Full::<Bytes>::default())
                        .unwrap(),
                )
            }
        })
    };
    let live = Live::default();
    let dropped = Arc::new(AtomicUsize::new(0));
    let svc = s.layer.layer(inner);
    let started = tokio::time::Instant::now();
    let acts = [Act::Data(live.chunk(b"a")), Act::Stall];
    let res = svc
        .oneshot(post(Script::new(acts, &dropped)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_millis(1100),
        "{waited:?}"
    );
    assert_eq!(held.lock().unwrap().len(), 1, "sent once");
    assert_eq!(s.layer.stats().replays_skipped, 1);
    held.lock().unwrap().clear();
    assert_eq!(dropped.load(SeqCst), 1);
    assert_eq!(live.count(), 0);
    // The refusal was told: the next request has a new token.
    warm(&s).await;
    assert_eq!(s.endpoint.grants(), 2);
}

/// A body dropped half-read that then stalls forever: the replay reads on and
/// stalls with it, as the request would have without the layer; dropping
/// the future frees it all, and the cache answers the next caller.
#[tokio::test(start_paused = true)]
async fn a_parked_body_that_stalls_is_freed_when_the_future_is_dropped() {
    let s = setup();
    warm(&s).await;
    s.api.revoke_all();
    let (api, live, dropped) = scripted_api(&[1], &[true]);
    let svc = s.layer.layer(api.service());
    let acts = [Act::Data(live.chunk(b"a")), Act::Stall];
    let fut = svc.oneshot(post(Script::new(acts, &dropped)));
    let out = tokio::time::timeout(Duration::from_secs(30), fut).await;
    assert!(out.is_err(), "the stalled body cannot finish");
    assert_eq!(dropped.load(SeqCst), 1);
    assert_eq!(live.count(), 0);
    warm(&s).await;
}

// === cancellation ===

/// An inner service that answers only when the test says, for stopping a
/// request's future at a chosen state.
#[derive(Clone)]
struct Gate {
    answers: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(StatusCode, usize)>>>,
    calls: Arc<AtomicUsize>,
    /// Bodies answered with 0 reads: kept, unread, as a server that answers
    /// on the request's head and has not let go of the stream yet.
    held: Arc<Mutex<Vec<ReplayBody<Script>>>>,
}

impl Gate {
    fn new() -> (
        Self,
        tokio::sync::mpsc::UnboundedSender<(StatusCode, usize)>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let gate = Self {
            answers: Arc::new(tokio::sync::Mutex::new(rx)),
            calls: Arc::default(),
            held: Arc::default(),
        };
        (gate, tx)
    }
}

impl Service<Request<ReplayBody<Script>>> for Gate {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody<Script>>) -> Self::Future {
        self.calls.fetch_add(1, SeqCst);
        let answers = Arc::clone(&self.answers);
        let held = Arc::clone(&self.held);
        Box::pin(async move {
            let mut body = req.into_body();
            let (status, reads) = answers.lock().await.recv().await.unwrap();
            if reads == 0 {
                held.lock().unwrap().push(body);
            } else {
                for _ in 0..reads {
                    if body.frame().await.is_none() {
                        break;
                    }
                }
                drop(body);
            }
            Ok(Response::builder()
                .status(status)
                .body(Full::default())
                .unwrap())
        })
    }
}

/// Dropping a request's future in each of its states (sent; refused and
/// waiting for the replay's token; refused while the body streams; during
/// the replay) panics nowhere, frees the body, leaves no waiter behind, and
/// the cache answers the next caller.
#[tokio::test(start_paused = true)]
async fn a_future_dropped_at_any_state_frees_the_body_and_leaves_no_waiter() {
    for stop in 0..4 {
        let s = setup();
        warm(&s).await;
        let (gate, answers) = Gate::new();
        let svc = s.layer.layer(gate.clone());
        let live = Live::default();
        let dropped = Arc::new(AtomicUsize::new(0));
        let acts = [
            Act::Data(live.chunk(b"a")),
            Act::Data(live.chunk(b"b")),
            Act::Stall,
        ];
        // The replay's grant takes 20 ms.
        let task = tokio::spawn(svc.oneshot(post(Script::new(acts, &dropped))));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(gate.calls.load(SeqCst), 1, "sent");
        match stop {
            // Sent, no answer.
            0 => {}
            // Refused after the body was let go of: waiting for the grant.
            1 => {
                answers.send((StatusCode::UNAUTHORIZED, 1)).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                assert_eq!(dropped.load(SeqCst), 0, "parked");
            }
            // Refused with the body still held: waiting for it to settle.
            // The gate holds the body while it waits for its next answer.
            2 => {
                answers.send((StatusCode::UNAUTHORIZED, 0)).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The replay sent, no answer.
            _ => {
                answers.send((StatusCode::UNAUTHORIZED, 1)).unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert_eq!(gate.calls.load(SeqCst), 2, "replayed");
            }
        }
        assert!(!task.is_finished(), "stop {stop}");
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        drop(answers);
        gate.held.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(live.count(), 0, "stop {stop}: chunks kept");
        assert_eq!(dropped.load(SeqCst), 1, "stop {stop}: body not dropped");
        // No waiter left: the cache answers the next caller at once.
        let next = tokio::time::timeout(
            Duration::from_secs(1),
            scripted::send(&s.service(), scripted::get()),
        )
        .await
        .expect("the cache answers")
        .unwrap();
        assert_eq!(next.status(), StatusCode::OK, "stop {stop}");
    }
}

/// A request refused three times with a token replaced while it was in
/// flight, dropped while its fourth send waits for its answer: the body and
/// its recording are freed, no waiter is left behind, and the cache answers
/// the next callers at once with the current token.
#[tokio::test(start_paused = true)]
async fn a_future_dropped_during_the_fourth_send_leaves_nothing_behind() {
    let s = setup();
    warm(&s).await;
    let (gate, answers) = Gate::new();
    let svc = s.layer.layer(gate.clone());
    let live = Live::default();
    let dropped = Arc::new(AtomicUsize::new(0));
    let acts = [
        Act::Data(live.chunk(b"a")),
        Act::Data(live.chunk(b"b")),
        Act::Data(live.chunk(b"c")),
    ];
    let task = tokio::spawn(svc.oneshot(post(Script::new(acts, &dropped))));
    tokio::time::sleep(Duration::from_millis(1)).await;
    for sent in 1..4 {
        assert_eq!(gate.calls.load(SeqCst), sent);
        // The token is replaced (20 ms) before the refusal comes, which
        // reads one frame and lets go of the body.
        s.layer.cache().refresh_now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        answers.send((StatusCode::UNAUTHORIZED, 1)).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gate.calls.load(SeqCst), 4, "the fourth send");
    assert!(!task.is_finished());
    let stats = s.layer.stats();
    assert_eq!((stats.resends, stats.replays), (3, 0), "{stats:?}");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(live.count(), 0, "chunks kept");
    assert_eq!(dropped.load(SeqCst), 1, "body not dropped");
    let grants = s.endpoint.grants();
    for _ in 0..3 {
        let next = tokio::time::timeout(
            Duration::from_millis(1),
            scripted::send(&s.service(), scripted::get()),
        )
        .await
        .expect("the cache answers at once")
        .unwrap();
        assert_eq!(next.status(), StatusCode::OK);
    }
    assert_eq!(s.endpoint.grants(), grants, "a grant for a dropped request");
    assert_eq!(scripted::last_token(&s.api).as_deref(), Some("access-4"));
    drop(answers);
}

// === the tower contract ===

/// A service whose clones (the spare a resend uses) fail in `poll_ready`:
/// the replay's failure comes back as the inner error, without a panic and
/// without `call` on a service that was not ready.
struct FailingClones {
    original: bool,
    inner: scripted::Inner<Full<Bytes>>,
}

impl Clone for FailingClones {
    fn clone(&self) -> Self {
        Self {
            original: false,
            inner: self.inner.clone(),
        }
    }
}

impl Service<Request<ReplayBody<Full<Bytes>>>> for FailingClones {
    type Response = Response<Full<Bytes>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.original {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(std::io::Error::other("not ready")))
        }
    }

    fn call(&mut self, req: Request<ReplayBody<Full<Bytes>>>) -> Self::Future {
        assert!(self.original, "called without being ready");
        let fut = self.inner.call(req);
        Box::pin(async move { Ok(fut.await.unwrap()) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_spare_service_that_fails_poll_ready_fails_the_replay_with_the_inner_error() {
    let s = setup();
    warm(&s).await;
    s.api.revoke_all();
    let svc = s.layer.layer(FailingClones {
        original: true,
        inner: scripted::api_service(&s.api),
    });
    let req = Request::post(API)
        .body(Full::new(Bytes::from("x")))
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();
    assert!(err.is_inner(), "{err:?}");
    assert_eq!(err.into_inner().unwrap().to_string(), "not ready");
    // The token had worked: the send that failed was a resend.
    let stats = s.layer.stats();
    assert_eq!((stats.replays, stats.resends), (0, 1));
    // The token was dropped and replaced all the same.
    warm(&s).await;
}

// === the refusal rules ===

type Plain = tower::util::BoxCloneSyncService<
    Request<ReplayBody<Full<Bytes>>>,
    Response<Full<Bytes>>,
    Infallible,
>;

/// An API whose answer to each request is `rule(token)`: a status, and how
/// long it takes.
fn api_fn(rule: impl Fn(Option<&str>) -> (StatusCode, Duration) + Send + Sync + 'static) -> Plain {
    let rule = Arc::new(rule);
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |req: Request<ReplayBody<Full<Bytes>>>| {
            let (status, after) = rule(bearer(&req).as_deref());
            async move {
                tokio::time::sleep(after).await;
                Ok(Response::builder()
                    .status(status)
                    .body(Full::default())
                    .unwrap())
            }
        },
    ))
}

fn ok_or_401(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}

/// 1,000 requests refused with the same token make one grant, and each is
/// sent again once with the new token: as a resend, since the token had
/// worked (the first refusal and the 999 that come after the token was
/// dropped alike).
#[tokio::test(start_paused = true)]
async fn a_thousand_refusals_of_one_token_make_one_grant() {
    let s = setup();
    warm(&s).await;
    s.api.revoke_all();
    // Every request is in flight with access-1 when the first refusal comes.
    *s.api.latency.lock().unwrap() = Duration::from_millis(10);
    let svc = s.service();
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            scripted::send(&svc, scripted::get()).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(s.endpoint.grants(), 2, "{:?}", s.endpoint.log());
    let stats = s.layer.stats();
    assert_eq!(
        (stats.replays, stats.resends, stats.replays_skipped),
        (0, 1000, 0)
    );
}

/// A refusal of an old token that arrives after its replacement was accepted
/// makes no grant, and is a resend, not a replay.
#[tokio::test(start_paused = true)]
async fn a_late_refusal_of_a_replaced_token_resends_without_a_grant() {
    let s = setup();
    warm(&s).await;
    // access-1 is refused from now on, slowly; access-2 comes meanwhile.
    let svc = s.layer.layer(api_fn(|token| match token {
        Some("access-1") => (StatusCode::UNAUTHORIZED, Duration::from_millis(500)),
        _ => (StatusCode::OK, Duration::ZERO),
    }));
    let slow = tokio::spawn(
        svc.clone()
            .oneshot(Request::get(API).body(Full::default()).unwrap()),
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    s.layer.cache().refresh_now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let res = svc
        .clone()
        .oneshot(Request::get(API).body(Full::default()).unwrap())
        .await;
    assert_eq!(res.unwrap().status(), StatusCode::OK, "access-2 accepted");
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(s.endpoint.grants(), 2);
    let stats = s.layer.stats();
    assert_eq!((stats.resends, stats.replays), (1, 0), "{stats:?}");
}

/// An API that accepts each token for one request and revokes it then, and
/// answers that request after the refusals of the others (it is slower): each
/// token worked, so its refusal is a revocation. The grants never pause and
/// no request is told that the API refuses every token. (The acceptance of
/// a token that was refused already used to be ignored: three such tokens in
/// a row paused the grants.)
#[tokio::test(start_paused = true)]
async fn tokens_revoked_after_one_slow_acceptance_never_pause_the_grants() {
    let s = setup();
    let api = Arc::clone(&s.api);
    let svc = s.layer.layer(api_fn(move |token| {
        let fresh = token.is_some_and(|t| api.valid.lock().unwrap().remove(t));
        if fresh {
            // Accepted, and revoked at once; the answer takes longer than
            // a grant (20 ms), so it comes after the refusals of the others.
            (StatusCode::OK, Duration::from_millis(30))
        } else {
            (StatusCode::UNAUTHORIZED, Duration::from_millis(1))
        }
    }));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (svc, refused) = (svc.clone(), Arc::clone(&refused));
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                let req = Request::get(API).body(Full::default()).unwrap();
                if let Err(err) = svc.clone().oneshot(req).await {
                    assert!(err.token_error().unwrap().is_refused(), "{err:?}");
                    refused.fetch_add(1, SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        refused.load(SeqCst),
        0,
        "requests told the API refuses every token: {:?}",
        s.layer.stats()
    );
}

/// Which request a send belongs to: the layer keeps a request's extensions
/// on every send.
#[derive(Clone, Copy)]
struct Tag(usize);

/// An API that accepts each token once and revokes it then, against seven
/// requests in flight together: at each round one is accepted and the
/// others are refused with a token that worked (revoked), and are resent
/// together with the next token. Each request is sent at most five times,
/// each send with a newer token than the last; the two requests refused at
/// their fifth send get that refusal back as the API gave it, and the grants
/// are one a round.
#[tokio::test(start_paused = true)]
async fn tokens_accepted_once_then_revoked_send_a_request_at_most_five_times() {
    accepted_once_then_revoked(false).await;
}

/// The same under [`Refusal::grpc`], whose refusals are gRPC's
/// UNAUTHENTICATED (status 16) in trailers-only answers: the same bound.
#[tokio::test(start_paused = true)]
async fn grpc_refusals_of_tokens_accepted_once_send_a_call_at_most_five_times() {
    accepted_once_then_revoked(true).await;
}

async fn accepted_once_then_revoked(grpc: bool) {
    let s = if grpc {
        setup_with(|b| b.refused_when(Refusal::grpc()))
    } else {
        setup()
    };
    let refused_status = if grpc {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    let api = Arc::clone(&s.api);
    let sends: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    let log = Arc::clone(&sends);
    let inner: Plain = tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |req: Request<ReplayBody<Full<Bytes>>>| {
            let token = bearer(&req).unwrap();
            let n: usize = token.strip_prefix("access-").unwrap().parse().unwrap();
            log.lock()
                .unwrap()
                .push((req.extensions().get::<Tag>().unwrap().0, n));
            // The acceptance comes before the refusals: each refused token
            // is known to have worked.
            let fresh = api.valid.lock().unwrap().remove(&token);
            let after = if fresh {
                Duration::ZERO
            } else {
                Duration::from_millis(5)
            };
            async move {
                tokio::time::sleep(after).await;
                let res = Response::builder().header("x-refused", token);
                let res = match (fresh, grpc) {
                    (true, _) => res.status(StatusCode::OK),
                    (false, false) => res.status(StatusCode::UNAUTHORIZED),
                    (false, true) => res
                        .status(StatusCode::OK)
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "16"),
                };
                Ok(res.body(Full::default()).unwrap())
            }
        },
    ));
    let svc = s.layer.layer(inner);
    let tasks: Vec<_> = (0..7)
        .map(|i| {
            let mut req = Request::get(API).body(Full::default()).unwrap();
            req.extensions_mut().insert(Tag(i));
            tokio::spawn(svc.clone().oneshot(req))
        })
        .collect();
    let mut refusals = Vec::new();
    for task in tasks {
        let answer = in_time("a request", task).await.unwrap().unwrap();
        let refused = answer.headers().contains_key("grpc-status") || !answer.status().is_success();
        if refused {
            assert_eq!(answer.status(), refused_status);
        }
        refusals.push(refused.then(|| answer.headers()["x-refused"].clone()));
    }
    assert_bound_of_tokens_accepted_once(&s, &sends.lock().unwrap(), &refusals);
}

/// The outcome of seven requests against an API that accepts each token once
/// and revokes it then: `sends` holds each send's request tag and token
/// number, `refusals` the `x-refused` header of each request's answer if it
/// was a refusal. Each request is sent at most five times, each send with a
/// newer token; the two refused at their fifth send get that refusal back as
/// the API gave it; the grants are one a round.
fn assert_bound_of_tokens_accepted_once(
    s: &Setup,
    sends: &[(usize, usize)],
    refusals: &[Option<HeaderValue>],
) {
    for (i, refusal) in refusals.iter().enumerate() {
        let tokens: Vec<usize> = (sends.iter())
            .filter(|(tag, _)| *tag == i)
            .map(|&(_, n)| n)
            .collect();
        assert!(tokens.len() <= 5, "request {i}: {tokens:?}");
        assert!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "request {i} sent a token that is not newer: {tokens:?}"
        );
        if let Some(refused) = refusal {
            assert_eq!(tokens.len(), 5, "request {i}: {tokens:?}");
            // The fifth refusal, as it was.
            assert_eq!(refused, "access-5");
        }
    }
    assert_eq!(refusals.iter().flatten().count(), 2, "{sends:?}");
    assert_eq!(sends.len(), 7 + 6 + 5 + 4 + 3, "{sends:?}");
    let stats = s.layer.stats();
    assert_eq!(
        (stats.resends, stats.replays, stats.replays_skipped),
        (6 + 5 + 4 + 3, 0, 2),
        "{stats:?}"
    );
    // One token a round, and the one that replaces the last revoked.
    assert_eq!(s.endpoint.grants(), 6, "{:?}", s.endpoint.log());
}

/// Exactly three new tokens refused on first use, then an API that accepts:
/// the third refusal pauses the grants (new requests learn it at once), and
/// after the pause the next grant works and the streak is over, so that a
/// revocation is refreshed at once.
#[tokio::test(start_paused = true)]
async fn three_first_use_refusals_pause_the_grants_until_an_acceptance() {
    let s = setup();
    let svc = s.layer.layer(api_fn(|token| {
        let refused = matches!(
            token,
            Some("access-1" | "access-2" | "access-3" | "access-5")
        );
        (ok_or_401(!refused), Duration::ZERO)
    }));
    let get = || Request::get(API).body(Full::default()).unwrap();
    // access-1 refused, replayed with access-2, refused: back to the caller.
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // access-3 refused: the third in a row; its replay gets the refusal.
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(s.endpoint.grants(), 3);
    let err = svc.clone().oneshot(get()).await.unwrap_err();
    assert!(err.token_error().unwrap().is_refused(), "{err:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "access-4 after the pause");
    assert_eq!(s.endpoint.grants(), 4);
    // access-5 refused on first use: one in a new streak, no pause; access-6 works.
    s.layer.cache().refresh_now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(s.endpoint.grants(), 6);
    assert_eq!(s.layer.stats().replays_skipped, 2);
}

/// A 401 to a request for another origin says nothing of the token: no
/// grant, no replay, and the request never carried the token.
#[tokio::test(start_paused = true)]
async fn a_refusal_from_another_origin_is_passed_through() {
    let s = setup();
    warm(&s).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let svc = {
        let seen = Arc::clone(&seen);
        s.layer.layer(api_fn(move |token| {
            seen.lock().unwrap().push(token.map(str::to_owned));
            (StatusCode::UNAUTHORIZED, Duration::ZERO)
        }))
    };
    let req = Request::get("https://elsewhere.example/x")
        .header(AUTHORIZATION, "Bearer theirs")
        .body(Full::default())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(*seen.lock().unwrap(), [Some("theirs".to_owned())]);
    assert_eq!(s.endpoint.grants(), 1);
    let stats = s.layer.stats();
    assert_eq!(
        (stats.replays, stats.resends, stats.replays_skipped),
        (0, 0, 0)
    );
    warm(&s).await;
    assert_eq!(s.endpoint.grants(), 1);
}

/// A 401 that names `insufficient_scope` is about the request's rights, not
/// the token: passed back, no grant.
#[tokio::test(start_paused = true)]
async fn a_401_for_insufficient_scope_keeps_the_token() {
    let s = setup();
    warm(&s).await;
    let svc = s
        .layer
        .layer(tower::util::BoxCloneSyncService::new(tower::service_fn(
            |_req: Request<ReplayBody<Full<Bytes>>>| async {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(StatusCode::UNAUTHORIZED)
                        .header("www-authenticate", r#"Bearer error="insufficient_scope""#)
                        .body(Full::<Bytes>::default())
                        .unwrap(),
                )
            },
        )));
    for _ in 0..5 {
        let res = svc
            .clone()
            .oneshot(Request::get(API).body(Full::default()).unwrap())
            .await;
        assert_eq!(res.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(s.endpoint.grants(), 1);
    assert_eq!(s.layer.stats().replays, 0);
}

/// A refusal that comes after the cache was closed: no panic, an answer at
/// once (the closed error), and no grant.
#[tokio::test(start_paused = true)]
async fn a_refusal_after_the_close_is_answered_at_once() {
    let s = setup();
    warm(&s).await;
    let layer = s.layer.clone();
    let svc = s.layer.layer(tower::service_fn(
        move |_req: Request<ReplayBody<Full<Bytes>>>| {
            let layer = layer.clone();
            async move {
                // The cache closes while the request is in flight.
                layer.close().await;
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(StatusCode::UNAUTHORIZED)
                        .body(Full::<Bytes>::default())
                        .unwrap(),
                )
            }
        },
    ));
    let req = Request::post(API)
        .body(Full::new(Bytes::from("x")))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(1), svc.oneshot(req));
    // Closed before the answer came: the request fails as closed, or gives
    // the refusal back; it never waits.
    match res.await.expect("answered at once") {
        Ok(res) => assert_eq!(res.status(), StatusCode::UNAUTHORIZED),
        Err(err) => assert!(err.token_error().unwrap().is_closed(), "{err:?}"),
    }
    assert_eq!(s.endpoint.grants(), 1);
}

/// A custom rule that panics fails that request's future only: nothing is
/// left locked, and the next request works.
#[tokio::test(start_paused = true)]
async fn a_panicking_refusal_rule_leaves_the_cache_usable() {
    fn panics(status: StatusCode, _: &HeaderMap) -> bool {
        assert!(status != StatusCode::IM_A_TEAPOT, "rule panicked");
        status == StatusCode::UNAUTHORIZED
    }
    let s = setup_with(|b| b.refused_when(Refusal::custom(panics)));
    warm(&s).await;
    let teapot = Arc::new(AtomicBool::new(true));
    let svc = {
        let teapot = Arc::clone(&teapot);
        s.layer.layer(api_fn(move |_| {
            let status = if teapot.swap(false, SeqCst) {
                StatusCode::IM_A_TEAPOT
            } else {
                StatusCode::OK
            };
            (status, Duration::ZERO)
        }))
    };
    let get = || Request::get(API).body(Full::default()).unwrap();
    let panicked = tokio::spawn(svc.clone().oneshot(get())).await;
    assert!(panicked.unwrap_err().is_panic());
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(s.endpoint.grants(), 1);
}

/// `set_credentials` for another login while a refused request waits for its
/// replay's token: the replay carries the new login's token, never the old.
#[tokio::test(start_paused = true)]
async fn a_replay_waiting_when_the_login_changes_carries_the_new_login() {
    let s = setup();
    warm(&s).await;
    *s.endpoint.latency.lock().unwrap() = Duration::from_millis(200);
    s.api.revoke_all();
    let svc = s.service();
    let req = Request::post(API)
        .body(Full::new(Bytes::from("x")))
        .unwrap();
    let pending = tokio::spawn(svc.clone().oneshot(req));
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.layer.set_credentials(daxium_auth::Credentials::new(
        "client",
        "client-secret",
        "other@example.com",
        "password",
    ));
    let res = pending.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let log = s.endpoint.log();
    assert_eq!(log.last().unwrap(), "password:other@example.com", "{log:?}");
    let last = s
        .api
        .seen
        .lock()
        .unwrap()
        .last()
        .cloned()
        .flatten()
        .unwrap();
    let n = s.endpoint.issued.load(SeqCst);
    assert_eq!(last.to_str().unwrap(), format!("Bearer access-{n}"));
}

// === the hot path ===

/// A token accepted once is reported once: a thousand requests with it make
/// no grant and no event the counters see.
#[tokio::test(start_paused = true)]
async fn an_accepted_token_makes_no_grant_over_many_requests() {
    let s = setup();
    warm(&s).await;
    let before = s.layer.stats();
    let svc = s.service();
    for _ in 0..1000 {
        let res = scripted::send(&svc, scripted::get()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(s.layer.stats(), before);
    assert_eq!(s.endpoint.grants(), 1);
}

// === secrets ===

#[tokio::test(start_paused = true)]
async fn no_token_in_the_debug_of_futures_rules_and_errors() {
    let s = setup();
    warm(&s).await;
    let svc = s.service();
    let fut = svc.clone().call(scripted::get());
    let shown = format!(
        "{fut:?} {:?} {:?} {:?}",
        Refusal::grpc(),
        s.layer,
        s.layer.cache()
    );
    assert!(!shown.contains("access-1"), "{shown}");
    drop(fut);
}

// === reqwest-middleware ===

/// reqwest-middleware against an API that refuses every token: no request
/// is sent more than five times, the replays are counted, and once the
/// streak pauses the grants, the request fails at once with the
/// middleware error `is_refused`.
#[cfg(feature = "reqwest")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_follows_the_layer_rules_against_an_api_refusing_every_token() {
    let server = support::server(Duration::from_secs(60)).await;
    let layer = support::layer(&server);
    let client = reqwest_middleware::ClientBuilder::new(
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
    )
    .with(daxium_auth::reqwest::AuthMiddleware::new(&layer))
    .build();
    let url = server.api_url("v1/items");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    server.refuse_every_token(true);
    let mut refused = 0;
    for _ in 0..5 {
        let before = server.counters().api_requests;
        match client.post(&url).body("x").send().await {
            Ok(res) => assert_eq!(res.status(), 401),
            Err(reqwest_middleware::Error::Middleware(err)) => {
                let err = err.downcast_ref::<daxium_auth::TokenError>().unwrap();
                assert!(err.is_refused(), "{err:?}");
                refused += 1;
            }
            Err(err) => panic!("{err:?}"),
        }
        let sends = server.counters().api_requests - before;
        assert!(sends <= 5, "{sends} sends");
    }
    assert!(refused >= 1, "{:?}", layer.stats());
    let stats = layer.stats();
    assert!(
        stats.replays >= 1 && stats.replays_skipped >= 1,
        "{stats:?}"
    );
    assert!(layer.stats().grants() <= 5, "{stats:?}");
}

/// The API of `tokens_accepted_once_then_revoked_send_a_request_at_most_five_times`
/// as the last middleware of a reqwest-middleware client: each token is
/// accepted once and revoked then; the refusals come 5 ms after the
/// acceptance. Logs each send's request tag and token number.
#[cfg(feature = "reqwest")]
struct AcceptedOnce {
    api: Arc<scripted::Api>,
    sends: Arc<Mutex<Vec<(usize, usize)>>>,
}

#[cfg(feature = "reqwest")]
#[async_trait::async_trait]
impl reqwest_middleware::Middleware for AcceptedOnce {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        _next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let value = req.headers()[AUTHORIZATION].to_str().unwrap();
        let token = value.strip_prefix("Bearer ").unwrap().to_owned();
        let n: usize = token.strip_prefix("access-").unwrap().parse().unwrap();
        let tag = extensions.get::<Tag>().unwrap().0;
        self.sends.lock().unwrap().push((tag, n));
        let fresh = self.api.valid.lock().unwrap().remove(&token);
        let status = if fresh {
            StatusCode::OK
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            StatusCode::UNAUTHORIZED
        };
        let res = Response::builder()
            .status(status)
            .header("x-refused", token)
            .body(String::new())
            .unwrap();
        Ok(reqwest::Response::from(res))
    }
}

/// reqwest-middleware against an API that accepts each token once and
/// revokes it then, seven requests in flight together: the same bound as
/// the layer's. Each request is sent at most five times, each send with a
/// newer token, and the two refused at their fifth send get that refusal.
#[cfg(feature = "reqwest")]
#[tokio::test(start_paused = true)]
async fn reqwest_sends_a_request_at_most_five_times_against_tokens_revoked_after_one_use() {
    let s = setup();
    let sends: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(daxium_auth::reqwest::AuthMiddleware::new(&s.layer))
        .with(AcceptedOnce {
            api: Arc::clone(&s.api),
            sends: Arc::clone(&sends),
        })
        .build();
    let tasks: Vec<_> = (0..7)
        .map(|i| {
            let req = client.get(API).with_extension(Tag(i));
            tokio::spawn(async move { req.send().await })
        })
        .collect();
    let mut refusals = Vec::new();
    for task in tasks {
        let answer = in_time("a request", task).await.unwrap().unwrap();
        let refused = answer.status() == StatusCode::UNAUTHORIZED;
        refusals.push(refused.then(|| answer.headers()["x-refused"].clone()));
    }
    assert_bound_of_tokens_accepted_once(&s, &sends.lock().unwrap(), &refusals);
}
