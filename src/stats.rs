//! Counters of what the layer did: grants by type and outcome, replays, and
//! requests that had to wait for a token. Only the rare paths count, so the
//! hot path touches no shared counter.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::fetcher::GrantType;

/// How a grant ended, as the counters and the traces tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Rejected,
    Failed,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    password_ok: AtomicU64,
    password_rejected: AtomicU64,
    password_failed: AtomicU64,
    refresh_ok: AtomicU64,
    refresh_rejected: AtomicU64,
    refresh_failed: AtomicU64,
    replays: AtomicU64,
    replays_skipped: AtomicU64,
    waited: AtomicU64,
    store_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn grant(&self, grant: GrantType, outcome: Outcome) {
        let counter = match (grant, outcome) {
            (GrantType::Password, Outcome::Ok) => &self.password_ok,
            (GrantType::Password, Outcome::Rejected) => &self.password_rejected,
            (GrantType::Password, Outcome::Failed) => &self.password_failed,
            (GrantType::RefreshToken, Outcome::Ok) => &self.refresh_ok,
            (GrantType::RefreshToken, Outcome::Rejected) => &self.refresh_rejected,
            (GrantType::RefreshToken, Outcome::Failed) => &self.refresh_failed,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn replayed(&self) {
        self.replays.fetch_add(1, Relaxed);
    }

    pub(crate) fn replay_skipped(&self) {
        self.replays_skipped.fetch_add(1, Relaxed);
    }

    pub(crate) fn store_error(&self) {
        self.store_errors.fetch_add(1, Relaxed);
    }

    pub(crate) fn waited(&self) {
        self.waited.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            password_ok: self.password_ok.load(Relaxed),
            password_rejected: self.password_rejected.load(Relaxed),
            password_failed: self.password_failed.load(Relaxed),
            refresh_ok: self.refresh_ok.load(Relaxed),
            refresh_rejected: self.refresh_rejected.load(Relaxed),
            refresh_failed: self.refresh_failed.load(Relaxed),
            replays: self.replays.load(Relaxed),
            replays_skipped: self.replays_skipped.load(Relaxed),
            waited: self.waited.load(Relaxed),
            store_errors: self.store_errors.load(Relaxed),
        }
    }
}

/// A snapshot of a token cache's counters, from
/// [`AuthLayer::stats`](crate::AuthLayer::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Password grants that returned a token.
    pub password_ok: u64,
    /// Password grants the endpoint refused.
    pub password_rejected: u64,
    /// Password grants that failed otherwise (5xx, network, malformed answer).
    pub password_failed: u64,
    /// Refresh grants that returned a token.
    pub refresh_ok: u64,
    /// Refresh grants the endpoint refused.
    pub refresh_rejected: u64,
    /// Refresh grants that failed otherwise.
    pub refresh_failed: u64,
    /// Requests replayed after a 401.
    pub replays: u64,
    /// 401 answers not replayed: replay off, body over the cap or not fully sent.
    pub replays_skipped: u64,
    /// Requests that waited for a grant (no valid token when they were made).
    pub waited: u64,
    /// Calls to the token store that failed (down, timed out, refused).
    pub store_errors: u64,
}

impl Stats {
    /// Every grant attempt.
    pub fn grants(&self) -> u64 {
        self.password_ok
            + self.password_rejected
            + self.password_failed
            + self.refresh_ok
            + self.refresh_rejected
            + self.refresh_failed
    }

    /// Grants of one type, whatever their outcome.
    pub fn grants_of(&self, grant: GrantType) -> u64 {
        match grant {
            GrantType::Password => self.password_ok + self.password_rejected + self.password_failed,
            GrantType::RefreshToken => {
                self.refresh_ok + self.refresh_rejected + self.refresh_failed
            }
        }
    }
}
