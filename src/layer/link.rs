//! What a service hands the futures of its requests: the [`Link`] to the
//! layer (its token cache and settings) and to a spare clone of the inner
//! service, and [`failure`], the error of an answer that holds no token. A
//! leaf, as tower's `buffer/message.rs` is: the service and the future both
//! use it, and it uses neither.

use std::sync::{Arc, Mutex, OnceLock};

use super::AuthLayer;
use crate::{
    cache::{Answer, Live, Shared},
    error::TokenError,
};

/// What a future that may replay keeps: the layer, whose token cache it keeps
/// alive until the future is done, and a spare clone of the inner service,
/// cloned again only for a replay. Sharing the spare costs a request one count
/// of the service's own, where a clone of the inner service would write to
/// what all its clones share (a client's pool, say).
pub(crate) struct Link<S> {
    pub(crate) layer: AuthLayer,
    /// Made once, at the first request that may be replayed (checking costs a
    /// load); behind a lock only so that the future stays `Send` for an inner
    /// service that is not `Sync`, taken only for a replay.
    spare: OnceLock<Mutex<S>>,
}

impl<S> Link<S> {
    pub(crate) fn new(layer: AuthLayer) -> Self {
        Self {
            layer,
            spare: OnceLock::new(),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        self.layer.cache().shared()
    }

    /// Keeps a clone of `inner` for replays, if none is kept yet.
    #[inline]
    pub(crate) fn keep_spare(&self, inner: &S)
    where
        S: Clone,
    {
        self.spare.get_or_init(|| Mutex::new(inner.clone()));
    }

    /// Whether a spare is kept, to send a request again with.
    pub(crate) fn has_spare(&self) -> bool {
        self.spare.get().is_some()
    }

    /// A clone of the spare, for a replay.
    pub(crate) fn spare(&self) -> Option<S>
    where
        S: Clone,
    {
        let spare = self.spare.get()?;
        Some(spare.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The error of an answer that holds no token.
pub(crate) fn failure(answer: Answer<Live>) -> TokenError {
    match answer {
        Answer::Failed(err) => err,
        Answer::Token(_) | Answer::NoReplay | Answer::Retry => TokenError::closed(),
    }
}
