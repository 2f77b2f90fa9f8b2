//! The request body as the inner service sees it. [`ReplayBody`] records the
//! frames while the inner service streams them, up to a cap, so that a request
//! answered 401 can be sent again without a `B: Clone` bound and without an
//! unbounded buffer. An empty body replays for free; a body over the cap, or not
//! fully sent when the answer came, is not replayed.

use std::{
    fmt,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// A request extension that switches the 401 replay off for one request, for
/// requests that must never be sent twice.
///
/// ```
/// let mut request = http::Request::post("https://api.daxium-air.com/api/v1/submissions")
///     .body(String::from("{}"))
///     .unwrap();
/// request.extensions_mut().insert(daxium_auth::NoReplay);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoReplay;

pin_project! {
    /// The body that [`AuthService`](crate::AuthService) hands to the inner
    /// service: the caller's body, recorded on the way when a replay may be
    /// needed, or a replay of a recorded one. Its data frames are [`Bytes`]
    /// (zero-copy when the caller's are).
    pub struct ReplayBody<B> {
        #[pin]
        kind: KindBody<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum KindBody<B> {
        Plain { #[pin] body: B },
        Recording { #[pin] body: B, recorder: Arc<Mutex<Recorder>> },
        // Boxed: the body is moved many times on its way to the wire, and
        // this rare variant would otherwise set its size.
        Replay { replayed: Box<Replayed> },
        Empty,
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            KindBody::Plain { .. } => "plain",
            KindBody::Recording { .. } => "recording",
            KindBody::Replay { .. } => "replay",
            KindBody::Empty => "empty",
        };
        f.debug_struct("ReplayBody").field("kind", &kind).finish()
    }
}

impl<B> ReplayBody<B> {
    /// The caller's body, passed through as it is.
    pub fn new(body: B) -> Self {
        Self {
            kind: KindBody::Plain { body },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: KindBody::Empty,
        }
    }
}

/// An empty body, so that middleware needing `B: Default` (tower-http's
/// `FollowRedirect`) can sit below the layer.
impl<B> Default for ReplayBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B: Body> ReplayBody<B> {
    /// The body for the first attempt, and what will tell whether and how it can
    /// be replayed.
    pub(crate) fn first(body: B, limit: usize) -> (Self, Replay) {
        if body.is_end_stream() {
            return (Self::new(body), Replay::Empty);
        }
        if body.size_hint().lower() > limit as u64 {
            return (Self::new(body), Replay::Never);
        }
        let recorder = Arc::new(Mutex::new(Recorder {
            chunks: Vec::new(),
            len: 0,
            limit,
            state: Recording::Streaming,
            trailers: None,
        }));
        let body = Self {
            kind: KindBody::Recording {
                body,
                recorder: Arc::clone(&recorder),
            },
        };
        (body, Replay::Recorded(recorder))
    }
}

/// How the body of a request can be sent again.
pub(crate) enum Replay {
    /// No body: replayed for free.
    Empty,
    /// Recorded while streamed; usable if it was complete and under the cap.
    Recorded(Arc<Mutex<Recorder>>),
    /// Known too large from the start.
    Never,
}

impl Replay {
    /// The body for a replay, if the first attempt's can be replayed.
    pub(crate) fn body<B>(&self) -> Option<ReplayBody<B>> {
        match self {
            Self::Empty => Some(ReplayBody::empty()),
            Self::Never => None,
            Self::Recorded(recorder) => {
                let recorder = recorder.lock().unwrap_or_else(|e| e.into_inner());
                if recorder.state != Recording::Complete {
                    return None;
                }
                Some(ReplayBody {
                    kind: KindBody::Replay {
                        replayed: Box::new(Replayed {
                            chunks: recorder.chunks.clone().into_iter(),
                            remaining: recorder.len as u64,
                            trailers: recorder.trailers.clone(),
                        }),
                    },
                })
            }
        }
    }
}

/// A recorded body being sent again.
struct Replayed {
    chunks: std::vec::IntoIter<Bytes>,
    remaining: u64,
    trailers: Option<HeaderMap>,
}

pub(crate) struct Recorder {
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    state: Recording,
    trailers: Option<HeaderMap>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recording {
    Streaming,
    Complete,
    /// Over the cap or failed: dropped, never replayed.
    Abandoned,
}

impl Recorder {
    fn record(&mut self, frame: &Frame<Bytes>) {
        if self.state != Recording::Streaming {
            return;
        }
        if let Some(data) = frame.data_ref() {
            self.len += data.len();
            if self.len > self.limit {
                self.abandon();
                return;
            }
            self.chunks.push(data.clone());
        } else if let Some(trailers) = frame.trailers_ref() {
            self.trailers = Some(trailers.clone());
        }
    }

    fn abandon(&mut self) {
        self.state = Recording::Abandoned;
        // Free what was kept: memory stays bounded by the cap.
        self.chunks = Vec::new();
        self.trailers = None;
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Plain { body } => {
                let frame = ready!(body.poll_frame(cx));
                Poll::Ready(frame.map(|r| r.map(|f| f.map_data(to_bytes))))
            }
            KindProj::Recording { mut body, recorder } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                let mut rec = recorder.lock().unwrap_or_else(|e| e.into_inner());
                let frame = match frame {
                    None => {
                        if rec.state == Recording::Streaming {
                            rec.state = Recording::Complete;
                        }
                        return Poll::Ready(None);
                    }
                    Some(Err(err)) => {
                        rec.abandon();
                        return Poll::Ready(Some(Err(err)));
                    }
                    Some(Ok(frame)) => frame.map_data(to_bytes),
                };
                rec.record(&frame);
                if rec.state == Recording::Streaming && body.is_end_stream() {
                    rec.state = Recording::Complete;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            KindProj::Replay { replayed } => {
                if let Some(chunk) = replayed.chunks.next() {
                    replayed.remaining -= chunk.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Poll::Ready(replayed.trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            KindBody::Plain { body } | KindBody::Recording { body, .. } => body.is_end_stream(),
            KindBody::Replay { replayed } => {
                replayed.chunks.len() == 0 && replayed.trailers.is_none()
            }
            KindBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            KindBody::Plain { body } | KindBody::Recording { body, .. } => body.size_hint(),
            KindBody::Replay { replayed } => SizeHint::with_exact(replayed.remaining),
            KindBody::Empty => SizeHint::with_exact(0),
        }
    }
}

fn to_bytes<D: Buf>(mut data: D) -> Bytes {
    // Zero-copy for `Bytes`, a copy for other buffers.
    data.copy_to_bytes(data.remaining())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    async fn collect<B: Body<Data = Bytes>>(body: B) -> (Bytes, Option<HeaderMap>)
    where
        B::Error: fmt::Debug,
    {
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn empty_body_replays_for_free() {
        let (body, replay) = ReplayBody::first(http_body_util::Empty::<Bytes>::new(), 64);
        assert!(matches!(replay, Replay::Empty));
        assert!(collect(body).await.0.is_empty());
        let again: ReplayBody<Full<Bytes>> = replay.body().unwrap();
        assert!(again.is_end_stream());
        assert_eq!(again.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn recorded_body_replays_byte_for_byte_with_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "42".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let stream = StreamBody::new(futures_stream(frames));
        let (body, replay) = ReplayBody::first(stream, 64);
        assert!(replay.body::<Full<Bytes>>().is_none(), "not complete yet");
        let (first, first_trailers) = collect(body).await;
        assert_eq!(first, "hello world");
        assert_eq!(first_trailers.as_ref(), Some(&trailers));
        let again: ReplayBody<Full<Bytes>> = replay.body().unwrap();
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
        let (body, replay) = ReplayBody::first(StreamBody::new(futures_stream(frames)), 64);
        assert_eq!(collect(body).await.0.len(), 100);
        assert!(replay.body::<Full<Bytes>>().is_none());
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
        let (body, replay) = ReplayBody::first(Full::new(Bytes::from(vec![1u8; 65])), 64);
        assert!(matches!(replay, Replay::Never));
        assert_eq!(collect(body).await.0.len(), 65);
    }

    #[tokio::test]
    async fn full_body_at_the_cap_is_replayed() {
        let (body, replay) = ReplayBody::first(Full::new(Bytes::from(vec![1u8; 64])), 64);
        assert_eq!(collect(body).await.0.len(), 64);
        let again: ReplayBody<Full<Bytes>> = replay.body().unwrap();
        assert_eq!(collect(again).await.0, Bytes::from(vec![1u8; 64]));
    }

    #[tokio::test]
    async fn failed_body_is_not_replayed() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"part"))),
            Err(std::io::Error::other("broken")),
        ];
        let (body, replay) = ReplayBody::first(StreamBody::new(futures_stream(frames)), 64);
        assert!(body.collect().await.is_err());
        assert!(replay.body::<Full<Bytes>>().is_none());
    }

    fn futures_stream<T>(items: Vec<T>) -> futures_util::stream::Iter<std::vec::IntoIter<T>> {
        futures_util::stream::iter(items)
    }
}
