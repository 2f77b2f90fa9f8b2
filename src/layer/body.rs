//! The request body as the inner service sees it. [`ReplayBody`] records the
//! frames while the inner service streams them, up to a cap, so that a refused
//! request can be sent again without a `B: Clone` bound and without an
//! unbounded buffer. An empty body replays for free; a body over the cap, that
//! failed, or that is longer or shorter than it said, is not replayed.
//!
//! A refusal can come before the body is all sent: a gRPC interceptor answers
//! on the request's head, and the client then drops the body half-read or
//! unread. The body itself is kept then, behind what was recorded of it, and
//! the replay sends the recorded part and goes on reading the rest.

use std::{
    fmt,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker, ready},
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
        // The body is boxed so that, dropped before its end, it can be kept
        // for a replay.
        Recording { tap: Tap<B> },
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
    /// The body for the first attempt, and what will tell whether and how it
    /// can be replayed. `declared` is the length the request declares (its
    /// `Content-Length`), which then counts instead of the size hint.
    ///
    /// A body is fully sent once the length it said it has (declared, or an
    /// exact size hint) has gone out: an HTTP/1 client that wrote that many
    /// bytes stops polling it, and never sees its end. A body that yields more
    /// than that, or ends short of it, is not replayed.
    pub(crate) fn first(body: B, limit: usize, declared: Option<u64>) -> (Self, Replay<B>) {
        if body.is_end_stream() {
            // An empty body that declares a length is broken: sent again, it
            // would break the same way.
            let replay = if declared.is_some_and(|len| len > 0) {
                Replay::Never
            } else {
                Replay::Empty
            };
            return (Self::new(body), replay);
        }
        let hint = body.size_hint();
        let expected = declared.or(hint.exact());
        let limit_len = limit as u64;
        if hint.lower() > limit_len || expected.is_some_and(|len| len > limit_len) {
            return (Self::new(body), Replay::Never);
        }
        let recorder = Arc::new(Mutex::new(Recorder {
            chunks: Vec::new(),
            len: 0,
            limit: limit_len,
            expected,
            // Nothing to wait for: a client sends no byte of a body of length 0.
            state: if expected == Some(0) {
                Recording::Complete
            } else {
                Recording::Streaming
            },
            trailers: None,
            settled: None,
            rest: None,
        }));
        let tap = Tap {
            body: Some(Box::pin(body)),
            prefix: None,
            recorder: Arc::clone(&recorder),
        };
        let body = Self {
            kind: KindBody::Recording { tap },
        };
        (body, Replay::Recorded(recorder))
    }
}

/// How the body of a request can be sent again. Dropped when the answer is
/// known not to be a refusal (with the request's future), it stops the
/// recording and frees what it holds, however long the body goes on
/// streaming.
pub(crate) enum Replay<B> {
    /// No body: replayed for free.
    Empty,
    /// Recorded while streamed; usable once complete, or once the inner
    /// service let go of the body before its end (kept to be read on).
    Recorded(Arc<Mutex<Recorder<B>>>),
    /// Known too large from the start.
    Never,
}

impl<B> Replay<B> {
    /// Whether the body is still being recorded: the inner service has not
    /// sent all of it yet, nor let go of it.
    pub(crate) fn is_settling(&self) -> bool {
        match self {
            Self::Recorded(recorder) => lock(recorder).state == Recording::Streaming,
            Self::Empty | Self::Never => false,
        }
    }

    /// Ready once the recording is settled: `true` when the body can be sent
    /// again, `false` when it never can (over the cap, or failed).
    pub(crate) fn poll_settled(&self, cx: &mut Context<'_>) -> Poll<bool> {
        match self {
            Self::Empty => Poll::Ready(true),
            Self::Never => Poll::Ready(false),
            Self::Recorded(recorder) => {
                let mut recorder = lock(recorder);
                match recorder.state {
                    Recording::Complete | Recording::Parked => Poll::Ready(true),
                    Recording::Abandoned => Poll::Ready(false),
                    Recording::Streaming => {
                        recorder.settled = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            }
        }
    }

    /// Whether the body can be sent again now.
    pub(crate) fn is_replayable(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Never => false,
            Self::Recorded(recorder) => matches!(
                lock(recorder).state,
                Recording::Complete | Recording::Parked
            ),
        }
    }

    /// The body for the next send, if the last one's can be sent again. A
    /// body that was let go of before its end is read on from where it was
    /// left, under a new recording (a later send may need it).
    pub(crate) fn body(&mut self) -> Option<ReplayBody<B>> {
        let recorder = match self {
            Self::Empty => return Some(ReplayBody::empty()),
            Self::Never => return None,
            Self::Recorded(recorder) => Arc::clone(recorder),
        };
        let mut recorder = lock(&recorder);
        match recorder.state {
            Recording::Complete => Some(ReplayBody {
                kind: KindBody::Replay {
                    replayed: Box::new(Replayed {
                        chunks: recorder.chunks.clone().into_iter(),
                        remaining: recorder.len,
                        trailers: recorder.trailers.clone(),
                    }),
                },
            }),
            Recording::Parked => {
                let rest = recorder.rest.take()?;
                recorder.state = Recording::Abandoned;
                let resumed = Arc::new(Mutex::new(Recorder {
                    chunks: recorder.chunks.clone(),
                    len: recorder.len,
                    limit: recorder.limit,
                    expected: recorder.expected,
                    state: Recording::Streaming,
                    trailers: None,
                    settled: None,
                    rest: None,
                }));
                let prefix = std::mem::take(&mut recorder.chunks);
                let tap = Tap {
                    body: Some(rest),
                    prefix: (!prefix.is_empty()).then(|| Box::new(prefix.into_iter())),
                    recorder: Arc::clone(&resumed),
                };
                drop(recorder);
                *self = Self::Recorded(resumed);
                Some(ReplayBody {
                    kind: KindBody::Recording { tap },
                })
            }
            Recording::Streaming | Recording::Abandoned => None,
        }
    }
}

impl<B> Drop for Replay<B> {
    /// Inline: for the usual empty body, one test; what a recording needs
    /// is out of line.
    #[inline]
    fn drop(&mut self) {
        if let Self::Recorded(recorder) = self
            && Arc::strong_count(recorder) > 1
        {
            // The body may stream on (an HTTP/2 upload answered at once): with
            // nothing left to replay it, keeping its chunks, or the body
            // itself, is waste.
            abandon(recorder);
        }
    }
}

#[cold]
#[inline(never)]
fn abandon<B>(recorder: &Mutex<Recorder<B>>) {
    lock(recorder).abandon();
}

fn lock<B>(recorder: &Mutex<Recorder<B>>) -> std::sync::MutexGuard<'_, Recorder<B>> {
    recorder.lock().unwrap_or_else(|e| e.into_inner())
}

/// A recorded body being sent again.
struct Replayed {
    chunks: std::vec::IntoIter<Bytes>,
    remaining: u64,
    trailers: Option<HeaderMap>,
}

pub(crate) struct Recorder<B> {
    chunks: Vec<Bytes>,
    len: u64,
    limit: u64,
    /// The length the body said it has: the recording is complete once it is
    /// reached, whether or not the body is polled to its end.
    expected: Option<u64>,
    state: Recording,
    trailers: Option<HeaderMap>,
    /// Woken when the recording is settled: a refusal that came before the
    /// body was all sent waits for it.
    settled: Option<Waker>,
    /// The body itself, let go of by the inner service before its end.
    rest: Option<Pin<Box<B>>>,
}

/// The body on its way to the inner service, with its recording: first what
/// an earlier send recorded of it (`prefix`, for a body read on), then the
/// body. Dropped before its end, it leaves the body to the recording.
pub(crate) struct Tap<B> {
    body: Option<Pin<Box<B>>>,
    /// Boxed, and only for a body read on: every request's body is moved
    /// with the request, and a request over 256 bytes costs more to move.
    prefix: Option<Box<std::vec::IntoIter<Bytes>>>,
    recorder: Arc<Mutex<Recorder<B>>>,
}

impl<B> Drop for Tap<B> {
    fn drop(&mut self) {
        if Arc::strong_count(&self.recorder) == 1 {
            // No one can replay it: nothing to keep.
            return;
        }
        let mut recorder = lock(&self.recorder);
        if recorder.state == Recording::Streaming {
            // What the inner service did not send of it is still in the
            // body (a prefix left unsent is in the recording already).
            recorder.rest = self.body.take();
            recorder.state = if recorder.rest.is_some() {
                Recording::Parked
            } else {
                Recording::Abandoned
            };
            recorder.wake();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recording {
    Streaming,
    Complete,
    /// The inner service let go of the body before its end: the recording
    /// holds what it sent, and the body the rest.
    Parked,
    /// Over the cap, failed, or not the length it said: dropped, never replayed.
    Abandoned,
}

impl<B> Recorder<B> {
    /// Records one frame; `end_stream` is whether the body says it is done.
    fn record(&mut self, frame: &Frame<Bytes>, end_stream: bool) {
        if self.state == Recording::Abandoned {
            return;
        }
        if let Some(data) = frame.data_ref() {
            if data.is_empty() {
                // Nothing was sent.
            } else if self.state == Recording::Complete {
                // Data past the end it announced or reached: what went out
                // is not what a replay would send.
                return self.abandon();
            } else {
                self.len += data.len() as u64;
                if self.len > self.limit || self.expected.is_some_and(|len| self.len > len) {
                    return self.abandon();
                }
                self.chunks.push(data.clone());
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            self.trailers = Some(trailers.clone());
            // Trailers end a body: hyper stops polling once it has them, and
            // the body's `is_end_stream` may never say so.
            return self.finish();
        }
        if end_stream || self.expected == Some(self.len) {
            self.finish();
        }
    }

    /// The body ended, or reached the length it said it has.
    fn finish(&mut self) {
        if self.state != Recording::Streaming {
            return;
        }
        if self.expected.is_some_and(|len| self.len < len) {
            // Shorter than it said: the request was cut short, not complete.
            self.abandon();
        } else {
            self.state = Recording::Complete;
            self.rest = None;
            self.wake();
        }
    }

    fn abandon(&mut self) {
        self.state = Recording::Abandoned;
        // Free what was kept: memory stays bounded by the cap.
        self.chunks = Vec::new();
        self.trailers = None;
        self.rest = None;
        self.wake();
    }

    fn wake(&mut self) {
        if let Some(waker) = self.settled.take() {
            waker.wake();
        }
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
            KindProj::Recording { tap } => {
                if let Some(chunk) = tap.prefix.as_mut().and_then(|prefix| prefix.next()) {
                    // Recorded by the send before, already.
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                let Some(body) = tap.body.as_mut() else {
                    return Poll::Ready(None);
                };
                let frame = ready!(body.as_mut().poll_frame(cx));
                let mut rec = lock(&tap.recorder);
                match frame {
                    None => {
                        rec.finish();
                        Poll::Ready(None)
                    }
                    Some(Err(err)) => {
                        rec.abandon();
                        Poll::Ready(Some(Err(err)))
                    }
                    Some(Ok(frame)) => {
                        let frame = frame.map_data(to_bytes);
                        rec.record(&frame, body.is_end_stream());
                        Poll::Ready(Some(Ok(frame)))
                    }
                }
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
            KindBody::Plain { body } => body.is_end_stream(),
            KindBody::Recording { tap } => {
                tap.prefix.as_ref().is_none_or(|prefix| prefix.len() == 0)
                    && tap.body.as_ref().is_none_or(|b| b.is_end_stream())
            }
            KindBody::Replay { replayed } => {
                replayed.chunks.len() == 0 && replayed.trailers.is_none()
            }
            KindBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            KindBody::Plain { body } => body.size_hint(),
            KindBody::Recording { tap } => {
                let prefix: u64 = tap.prefix.as_ref().map_or(0, |prefix| {
                    prefix.as_slice().iter().map(|c| c.len() as u64).sum()
                });
                let rest = tap
                    .body
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint());
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(prefix));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(prefix));
                }
                hint
            }
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
mod tests;
