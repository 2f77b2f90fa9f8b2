//! The core's refusal rules: which refusal is a resend (the token was
//! replaced in flight, or had worked and was revoked) and which the
//! request's one replay, the refused tokens remembered, and the pause of
//! the grants once new tokens are refused before they ever worked.

use super::*;

/// How many tokens in a row the API must refuse on first use before the
/// grants that replace them slow down. One or two such refusals happen to
/// an API that revokes tokens at random (a token can be revoked on its first
/// request); three in a row are an API that refuses every token.
const UNPROVEN_BEFORE_PAUSE: u32 = 3;

/// How many refused token ids are remembered, to tell a refusal of a token
/// that was refused already from one of a token that was replaced. More
/// than the tokens one request can carry (five sends), so that a late
/// refusal of any of them is still known.
pub(super) const REFUSED_KEPT: usize = 8;

/// A token dropped because the API refused it, and whether the API had
/// accepted it before (told while it was current, or late): then it was
/// revoked, and the requests still in flight with it are sent again as
/// resends when their refusals come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RefusedId {
    pub(super) id: u64,
    pub(super) worked: bool,
}

impl<P: Payload> Core<P> {
    /// Whether the grants wait out a streak of tokens the API refused on
    /// first use: no token now could help.
    pub(super) fn refusing(&self) -> bool {
        matches!(self.flight, Flight::Paused { refusing: true, .. })
    }

    /// Whether a refusal of token `id` at `now` is explained by its
    /// replacement: a newer token came (a refresh, an adopted record, another
    /// login) or it expired, and the API did not refuse it before. A request
    /// refused with such a token is sent again without counting as its
    /// replay.
    pub(crate) fn superseded(&self, id: u64, now: Time) -> bool {
        let current = (self.token.as_ref())
            .is_some_and(|t| t.slot.id == id && now.max(self.now) < t.expires_at);
        let refused = self.refused_ids.iter().any(|r| r.id == id);
        id != 0 && id < self.next_token && !current && !refused
    }

    /// Whether the API is known to have accepted token `id`: the current
    /// token once an answer said so, or a refused one that an answer showed
    /// to have worked, before its refusal or after it (answers of the
    /// requests in flight with it come in any order).
    pub(crate) fn worked(&self, id: u64) -> bool {
        match &self.token {
            Some(t) if t.slot.id == id => t.slot.accepted,
            _ => (self.refused_ids.iter()).any(|r| r.id == id && r.worked),
        }
    }

    /// Whether a request refused with token `id` at `now` is sent again as
    /// a resend, which does not count as its one replay: the token had been
    /// superseded, or it had worked and the API revoked it. Only a refusal
    /// of a token that never worked (a new token refused on first use, as
    /// an API that refuses every token refuses them) is the replay.
    pub(crate) fn resends(&self, id: u64, now: Time) -> bool {
        self.superseded(id, now) || self.worked(id)
    }

    /// The API refused token `id`. The current token is dropped at once, so
    /// that no request starting afterwards carries it. One that had worked
    /// was revoked: the refresh starts at once. One refused on first use
    /// lengthens the streak that slows the grants down.
    pub(super) fn refused(
        &mut self,
        id: u64,
        waiter: Option<(WaiterId, Time)>,
        out: &mut Vec<Action<P>>,
    ) {
        if let Some(token) = self.token.take_if(|t| t.slot.id == id) {
            if token.slot.accepted {
                tracing::debug!(target: "daxium_auth", "access token revoked by the API; refreshing");
                self.unproven = 0;
            } else {
                if self.unproven == 0 {
                    self.streak_from = id;
                }
                self.unproven = self.unproven.saturating_add(1);
                tracing::debug!(target: "daxium_auth", streak = self.unproven, "new access token refused by the API before it worked");
                if self.unproven >= UNPROVEN_BEFORE_PAUSE {
                    let doublings = self.unproven - UNPROVEN_BEFORE_PAUSE;
                    let pause = (self.config.refusal_pause)
                        .saturating_mul(1u32 << doublings.min(20))
                        .min(self.config.backoff_max.max(self.config.refusal_pause));
                    self.refusal_hold = Some(self.now.saturating_add(pause));
                }
            }
            if self.refused_ids.len() == REFUSED_KEPT {
                self.refused_ids.pop_front();
            }
            self.refused_ids.push_back(RefusedId {
                id,
                worked: token.slot.accepted,
            });
            self.refused_access = Some(token.slot.access);
            self.refused = true;
        }
        if let Some((waiter, deadline)) = waiter {
            self.need(waiter, deadline, Some(id), out);
        }
    }

    /// The API accepted token `id`: if it is the current one, a later
    /// refusal of it is a revocation, and the streak of refusals ends. So it
    /// does for a token of the streak whose refusal came first: under load a
    /// token goes out on many requests at once, and the answers of those the
    /// API accepted before it revoked the token can arrive after the
    /// refusal. That token had worked: it was revoked, not refused on first
    /// use, and a pause the streak began is over; and the refusals of the
    /// requests still in flight with it are revocations, sent again as
    /// resends.
    pub(super) fn accepted(&mut self, id: u64) {
        if let Some(refused) = self.refused_ids.iter_mut().find(|r| r.id == id) {
            refused.worked = true;
        }
        if let Some(token) = self.token.as_mut().filter(|t| t.slot.id == id) {
            token.slot.accepted = true;
        } else if self.unproven == 0 || id < self.streak_from || id >= self.next_token {
            return;
        } else if self.refusing() {
            self.flight = Flight::Idle;
            self.refresh_due = true;
        }
        self.unproven = 0;
        self.refusal_hold = None;
    }
}
