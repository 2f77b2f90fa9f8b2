//! The replayable body, case by case: empty and capped bodies, trailers,
//! failures, and bodies of known length, whether they keep to it or not.

use super::*;
use http_body_util::{BodyExt, Full, StreamBody};
use std::convert::Infallible;

async fn collect<B: Body<Data = Bytes>>(body: B) -> (Bytes, Option<HeaderMap>)
where
    B::Error: fmt::Debug,
{
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

/// "hello world" in two frames, then trailers; and the trailers.
fn hello_world_with_trailers() -> (Vec<Result<Frame<Bytes>, Infallible>>, HeaderMap) {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", "42".parse().unwrap());
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(b"hello "))),
        Ok(Frame::data(Bytes::from_static(b"world"))),
        Ok(Frame::trailers(trailers.clone())),
    ];
    (frames, trailers)
}

#[tokio::test]
async fn empty_body_replays_for_free() {
    let (body, mut replay) = ReplayBody::first(http_body_util::Empty::<Bytes>::new(), 64, None);
    assert!(matches!(replay, Replay::Empty));
    assert!(collect(body).await.0.is_empty());
    let again = replay.body().unwrap();
    assert!(again.is_end_stream());
    assert_eq!(again.size_hint().exact(), Some(0));
}

#[tokio::test]
async fn recorded_body_replays_byte_for_byte_with_trailers() {
    let (frames, trailers) = hello_world_with_trailers();
    let stream = StreamBody::new(futures_stream(frames));
    let (body, mut replay) = ReplayBody::first(stream, 64, None);
    assert!(replay.body().is_none(), "not complete yet");
    let (first, first_trailers) = collect(body).await;
    assert_eq!(first, "hello world");
    assert_eq!(first_trailers.as_ref(), Some(&trailers));
    let again = replay.body().unwrap();
    assert_eq!(again.size_hint().exact(), Some(11));
    let (second, second_trailers) = collect(again).await;
    assert_eq!(second, "hello world");
    assert_eq!(second_trailers, Some(trailers));
}

#[tokio::test]
async fn over_the_cap_is_not_replayed_and_frees_memory() {
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..10)
        .map(|_| Ok(Frame::data(Bytes::from(vec![7u8; 10]))))
        .collect();
    let (body, mut replay) = ReplayBody::first(StreamBody::new(futures_stream(frames)), 64, None);
    assert_eq!(collect(body).await.0.len(), 100);
    assert!(replay.body().is_none());
    if let Replay::Recorded(rec) = &replay {
        let rec = rec.lock().unwrap();
        assert_eq!(rec.state, Recording::Abandoned);
        assert_eq!(rec.chunks.capacity(), 0);
    } else {
        panic!("a streaming body is recorded");
    }
}

#[tokio::test]
async fn known_too_large_is_never_recorded() {
    let (body, replay) = ReplayBody::first(Full::new(Bytes::from(vec![1u8; 65])), 64, None);
    assert!(matches!(replay, Replay::Never));
    assert_eq!(collect(body).await.0.len(), 65);
}

#[tokio::test]
async fn full_body_at_the_cap_is_replayed() {
    let (body, mut replay) = ReplayBody::first(Full::new(Bytes::from(vec![1u8; 64])), 64, None);
    assert_eq!(collect(body).await.0.len(), 64);
    let again = replay.body().unwrap();
    assert_eq!(collect(again).await.0, Bytes::from(vec![1u8; 64]));
}

#[tokio::test]
async fn failed_body_is_not_replayed() {
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
        Ok(Frame::data(Bytes::from_static(b"part"))),
        Err(std::io::Error::other("broken")),
    ];
    let (body, mut replay) = ReplayBody::first(StreamBody::new(futures_stream(frames)), 64, None);
    assert!(body.collect().await.is_err());
    assert!(replay.body().is_none());
}

fn futures_stream<T>(items: Vec<T>) -> futures_util::stream::Iter<std::vec::IntoIter<T>> {
    futures_util::stream::iter(items)
}

type Stream = StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
>;

/// `hello world` in two frames, a stream that never says it has ended.
fn hello_world() -> Stream {
    let frames =
        ["hello ", "world"].map(|part| Ok(Frame::data(Bytes::from_static(part.as_bytes()))));
    StreamBody::new(futures_stream(frames.into()))
}

/// A stream that says it is `len` bytes long, truly or not.
struct Sized(Stream, u64);

impl Body for Sized {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.1)
    }
}

/// Polls `n` frames, as a client that stops once it has sent the length.
async fn send_frames<B: Body<Data = Bytes> + Unpin>(body: &mut ReplayBody<B>, n: usize)
where
    B::Error: fmt::Debug,
{
    for _ in 0..n {
        body.frame().await.expect("a frame").unwrap();
    }
}

#[tokio::test]
async fn a_body_of_known_length_is_complete_once_that_length_is_sent() {
    let (mut body, mut replay) = ReplayBody::first(Sized(hello_world(), 11), 64, None);
    send_frames(&mut body, 1).await;
    assert!(replay.body().is_none(), "6 of 11 bytes sent");
    // The 11th byte is out: the client drops the body without polling its end.
    send_frames(&mut body, 1).await;
    drop(body);
    let again = replay.body().expect("complete");
    assert_eq!(again.size_hint().exact(), Some(11));
    assert_eq!(collect(again).await.0, "hello world");
}

#[tokio::test]
async fn a_body_longer_than_it_said_is_not_replayed() {
    // 6: the length is reached by the first frame, the second is extra;
    // 8: the second frame crosses it.
    for said in [6, 8] {
        let (body, mut replay) = ReplayBody::first(Sized(hello_world(), said), 64, None);
        assert_eq!(collect(body).await.0, "hello world");
        assert!(replay.body().is_none(), "said {said}");
        let Replay::Recorded(rec) = &replay else {
            panic!("a streaming body is recorded");
        };
        assert_eq!(rec.lock().unwrap().state, Recording::Abandoned);
    }
}

#[tokio::test]
async fn a_body_shorter_than_it_said_is_not_replayed() {
    let (body, mut replay) = ReplayBody::first(Sized(hello_world(), 20), 64, None);
    assert_eq!(collect(body).await.0, "hello world");
    assert!(replay.body().is_none());
}

#[tokio::test]
async fn a_declared_length_stands_in_for_the_size_hint() {
    let (mut body, mut replay) = ReplayBody::first(hello_world(), 64, Some(11));
    send_frames(&mut body, 2).await;
    let again = replay.body().expect("complete at 11 bytes");
    assert_eq!(collect(again).await.0, "hello world");

    let (body, mut replay) = ReplayBody::first(hello_world(), 64, Some(12));
    assert_eq!(collect(body).await.0.len(), 11);
    assert!(replay.body().is_none(), "one byte short");

    let (_, replay) = ReplayBody::first(hello_world(), 10, Some(11));
    assert!(matches!(replay, Replay::Never), "declared over the cap");
    let (_, replay) = ReplayBody::first(Full::new(Bytes::new()), 64, Some(3));
    assert!(matches!(replay, Replay::Never), "empty, yet said 3 bytes");
}

/// A frame of `text` whose bytes count themselves alive in `live`.
fn counted(text: &'static str, live: &Arc<std::sync::atomic::AtomicUsize>) -> Bytes {
    struct Owner(&'static [u8], Arc<std::sync::atomic::AtomicUsize>);
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            self.0
        }
    }
    impl Drop for Owner {
        fn drop(&mut self) {
            self.1.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Bytes::from_owner(Owner(text.as_bytes(), Arc::clone(live)))
}

#[tokio::test]
async fn trailers_end_the_recording_though_the_body_never_says_it_ended() {
    let (frames, trailers) = hello_world_with_trailers();
    let (mut body, mut replay) =
        ReplayBody::first(StreamBody::new(futures_stream(frames)), 64, None);
    // As hyper does: three frames, and no poll after the trailers.
    send_frames(&mut body, 3).await;
    assert!(replay.is_replayable(), "the trailers ended it");
    drop(body);
    let (again, again_trailers) = collect(replay.body().expect("complete")).await;
    assert_eq!(again, "hello world");
    assert_eq!(again_trailers, Some(trailers));
}

#[tokio::test]
async fn a_body_let_go_of_before_its_end_is_read_on_by_the_replay_and_again() {
    let (mut body, mut replay) = ReplayBody::first(hello_world(), 64, None);
    send_frames(&mut body, 1).await;
    // The inner service drops the body half-read (a refusal came first).
    drop(body);
    assert!(replay.is_replayable());
    let mut second = replay.body().expect("read on from where it was left");
    assert_eq!(
        second.frame().await.unwrap().unwrap().into_data().unwrap(),
        "hello "
    );
    // The second send is dropped before its end too, its prefix half-sent.
    drop(second);
    let third = replay.body().expect("read on again");
    assert_eq!(collect(third).await.0, "hello world");
    assert!(replay.is_replayable(), "complete now");
    assert_eq!(collect(replay.body().unwrap()).await.0, "hello world");

    // Unread from the start: the replay sends it whole.
    let (body, mut replay) = ReplayBody::first(hello_world(), 64, None);
    drop(body);
    assert_eq!(collect(replay.body().unwrap()).await.0, "hello world");
}

#[tokio::test]
async fn a_recording_stops_and_frees_its_chunks_once_no_replay_can_come() {
    let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..4)
        .map(|_| Ok(Frame::data(counted("chunk", &live))))
        .collect();
    let (mut body, replay) = ReplayBody::first(StreamBody::new(futures_stream(frames)), 64, None);
    send_frames(&mut body, 2).await;
    // Two sent and recorded, two still in the stream: four alive.
    assert_eq!(live.load(std::sync::atomic::Ordering::SeqCst), 4);
    // The answer was no refusal: the request's future, and its handle on
    // the recording, go. The two recorded chunks are freed at once.
    drop(replay);
    assert_eq!(live.load(std::sync::atomic::Ordering::SeqCst), 2);
    // The body streams on, recording nothing.
    send_frames(&mut body, 2).await;
    assert!(body.frame().await.is_none());
    drop(body);
    assert_eq!(live.load(std::sync::atomic::Ordering::SeqCst), 0);
}
