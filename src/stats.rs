//! Counters of what the layer did: grants by type and outcome, replays,
//! requests that had to wait for a token, and failed calls to the token
//! store. Only the rare paths count, so the hot path touches no shared
//! counter.
//!
//! With the `metrics` feature, every count also goes to the `metrics` facade,
//! and so to whichever exporter the application installed; the names and
//! labels are listed in the crate docs. Each token cache describes the
//! metrics to the recorder in place when it is made.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

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

#[derive(Debug)]
pub(crate) struct Counters {
    password_ok: AtomicU64,
    password_rejected: AtomicU64,
    password_failed: AtomicU64,
    refresh_ok: AtomicU64,
    refresh_rejected: AtomicU64,
    refresh_failed: AtomicU64,
    replays: AtomicU64,
    resends: AtomicU64,
    replays_skipped: AtomicU64,
    waited: AtomicU64,
    store_errors: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        #[cfg(feature = "metrics")]
        export::describe();
        Self {
            password_ok: AtomicU64::new(0),
            password_rejected: AtomicU64::new(0),
            password_failed: AtomicU64::new(0),
            refresh_ok: AtomicU64::new(0),
            refresh_rejected: AtomicU64::new(0),
            refresh_failed: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            resends: AtomicU64::new(0),
            replays_skipped: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
        }
    }
}

impl Counters {
    pub(crate) fn grant(&self, grant: GrantType, outcome: Outcome) {
        #[cfg(feature = "metrics")]
        export::grant(grant, outcome);
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

    /// [`grant`](Self::grant), and the grant's latency, from the moment its
    /// request was sent to its answer, for the `metrics` histogram.
    pub(crate) fn grant_timed(&self, grant: GrantType, outcome: Outcome, latency: Duration) {
        self.grant(grant, outcome);
        #[cfg(feature = "metrics")]
        export::grant_duration(grant, outcome, latency);
        #[cfg(not(feature = "metrics"))]
        let _ = latency;
    }

    /// A request with this `method` sent again: its one replay after a
    /// refusal (`replay`), or a resend after its token was replaced or
    /// revoked in flight. Counted and logged.
    pub(crate) fn sent_again(&self, replay: bool, method: &http::Method) {
        if replay {
            #[cfg(feature = "metrics")]
            metrics::counter!(export::REPLAYS).increment(1);
            self.replays.fetch_add(1, Relaxed);
            tracing::debug!(target: "daxium_auth", %method, "token refused: replaying the request once with a new token");
        } else {
            #[cfg(feature = "metrics")]
            metrics::counter!(export::RESENDS).increment(1);
            self.resends.fetch_add(1, Relaxed);
            tracing::debug!(target: "daxium_auth", %method, "token replaced or revoked while the request was in flight: sending it again with the current one");
        }
    }

    pub(crate) fn replay_skipped(&self) {
        #[cfg(feature = "metrics")]
        metrics::counter!(export::REPLAYS_SKIPPED).increment(1);
        self.replays_skipped.fetch_add(1, Relaxed);
    }

    pub(crate) fn store_error(&self) {
        #[cfg(feature = "metrics")]
        metrics::counter!(export::STORE_ERRORS).increment(1);
        self.store_errors.fetch_add(1, Relaxed);
    }

    pub(crate) fn waited(&self) {
        #[cfg(feature = "metrics")]
        metrics::counter!(export::WAITED).increment(1);
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
            resends: self.resends.load(Relaxed),
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
    /// Requests replayed once after the API refused a token it had never
    /// accepted (a new token refused on first use).
    pub replays: u64,
    /// Requests sent again after a refusal of a token that had been
    /// replaced while they were in flight (the layer's own refresh, an
    /// adopted fleet record, a change of login), or that the API had
    /// accepted before (revoked): not their replay.
    pub resends: u64,
    /// Refusals not followed by a resend: replay off, a body over the cap or
    /// not fully sent, the request's sends used up, or an API that refuses
    /// every new token for now.
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

/// Every count on one line, for a log or a program's last words:
///
/// ```text
/// password grants 1 ok, 0 rejected, 0 failed; refresh grants 6 ok, 0 rejected, 0 failed; 1 replays, 0 resends, 0 skipped; 3 waited; 0 store errors
/// ```
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "password grants {} ok, {} rejected, {} failed; \
             refresh grants {} ok, {} rejected, {} failed; \
             {} replays, {} resends, {} skipped; {} waited; {} store errors",
            self.password_ok,
            self.password_rejected,
            self.password_failed,
            self.refresh_ok,
            self.refresh_rejected,
            self.refresh_failed,
            self.replays,
            self.resends,
            self.replays_skipped,
            self.waited,
            self.store_errors
        )
    }
}

/// The counts as `metrics` series. The label values are the grant type and
/// the outcome, never anything a caller or the endpoint supplied.
#[cfg(feature = "metrics")]
mod export {
    use std::time::Duration;

    use metrics::Unit;

    use super::Outcome;
    use crate::fetcher::GrantType;

    pub(super) const GRANTS: &str = "daxium_auth_grants_total";
    pub(super) const GRANT_DURATION: &str = "daxium_auth_grant_duration_seconds";
    pub(super) const REPLAYS: &str = "daxium_auth_replays_total";
    pub(super) const RESENDS: &str = "daxium_auth_resends_total";
    pub(super) const REPLAYS_SKIPPED: &str = "daxium_auth_replays_skipped_total";
    pub(super) const WAITED: &str = "daxium_auth_waited_total";
    pub(super) const STORE_ERRORS: &str = "daxium_auth_store_errors_total";

    pub(super) fn describe() {
        metrics::describe_counter!(
            GRANTS,
            Unit::Count,
            "Grants made at the token endpoint, by grant type and outcome"
        );
        metrics::describe_histogram!(
            GRANT_DURATION,
            Unit::Seconds,
            "Time from a grant's request to its answer, by grant type and outcome"
        );
        metrics::describe_counter!(
            REPLAYS,
            Unit::Count,
            "Requests replayed once after the API refused a token it had never accepted"
        );
        metrics::describe_counter!(
            RESENDS,
            Unit::Count,
            "Requests sent again after a refusal of a token replaced while they were in flight or revoked after it worked"
        );
        metrics::describe_counter!(
            REPLAYS_SKIPPED,
            Unit::Count,
            "Refusals not followed by a resend: replay off, body over the cap or not fully sent, sends used up, or every new token refused"
        );
        metrics::describe_counter!(
            WAITED,
            Unit::Count,
            "Requests that waited for a grant, having no valid token"
        );
        metrics::describe_counter!(
            STORE_ERRORS,
            Unit::Count,
            "Calls to the token store that failed (down, timed out, refused)"
        );
    }

    pub(super) fn grant(grant: GrantType, outcome: Outcome) {
        metrics::counter!(GRANTS, "grant_type" => grant.as_str(), "outcome" => outcome.as_str())
            .increment(1);
    }

    pub(super) fn grant_duration(grant: GrantType, outcome: Outcome, latency: Duration) {
        metrics::histogram!(
            GRANT_DURATION,
            "grant_type" => grant.as_str(),
            "outcome" => outcome.as_str()
        )
        .record(latency.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Counters, Outcome, Stats};
    use crate::fetcher::GrantType;

    #[test]
    fn the_display_shows_every_count_in_its_place() {
        let mut stats = Stats::default();
        let counts = [
            &mut stats.password_ok,
            &mut stats.password_rejected,
            &mut stats.password_failed,
            &mut stats.refresh_ok,
            &mut stats.refresh_rejected,
            &mut stats.refresh_failed,
            &mut stats.replays,
            &mut stats.resends,
            &mut stats.replays_skipped,
            &mut stats.waited,
            &mut stats.store_errors,
        ];
        for (count, value) in counts.into_iter().zip(1..) {
            *count = value;
        }
        assert_eq!(
            stats.to_string(),
            "password grants 1 ok, 2 rejected, 3 failed; \
             refresh grants 4 ok, 5 rejected, 6 failed; \
             7 replays, 8 resends, 9 skipped; 10 waited; 11 store errors"
        );
    }

    #[test]
    fn grant_timed_counts_as_grant_does() {
        let counters = Counters::default();
        counters.grant_timed(GrantType::Password, Outcome::Ok, Duration::from_millis(250));
        counters.grant_timed(
            GrantType::RefreshToken,
            Outcome::Rejected,
            Duration::from_secs(2),
        );
        counters.grant(GrantType::Password, Outcome::Ok);
        let stats = counters.snapshot();
        assert_eq!((stats.password_ok, stats.refresh_rejected), (2, 1));
        assert_eq!(stats.grants(), 3);
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn grant_timed_records_the_latency_in_seconds_under_the_grant_labels() {
        use metrics::Unit;
        use metrics_util::{
            MetricKind,
            debugging::{DebugValue, DebuggingRecorder},
        };

        use super::export::{GRANT_DURATION, GRANTS};

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let counters = Counters::default();
            counters.grant_timed(GrantType::Password, Outcome::Ok, Duration::from_millis(250));
            counters.grant_timed(
                GrantType::RefreshToken,
                Outcome::Rejected,
                Duration::from_millis(1500),
            );
            counters.grant(GrantType::Password, Outcome::Ok);
        });
        // Name, labels and value of each series, checking its unit and help text.
        type Series = (String, Vec<(String, String)>, DebugValue);
        let mut seen: Vec<Series> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, unit, description, value)| {
                let unit_wanted = match key.kind() {
                    MetricKind::Histogram => Unit::Seconds,
                    _ => Unit::Count,
                };
                assert_eq!(unit, Some(unit_wanted), "{key:?}");
                assert!(description.is_some_and(|d| !d.is_empty()), "{key:?}");
                let labels = key
                    .key()
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                (key.key().name().to_owned(), labels, value)
            })
            .collect();
        seen.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let series = |name: &str, grant_type: &str, outcome: &str, value| {
            let labels = vec![
                ("grant_type".to_owned(), grant_type.to_owned()),
                ("outcome".to_owned(), outcome.to_owned()),
            ];
            (name.to_owned(), labels, value)
        };
        assert_eq!(
            seen,
            [
                series(
                    GRANT_DURATION,
                    "password",
                    "ok",
                    DebugValue::Histogram(vec![0.25.into()])
                ),
                series(
                    GRANT_DURATION,
                    "refresh_token",
                    "rejected",
                    DebugValue::Histogram(vec![1.5.into()])
                ),
                series(GRANTS, "password", "ok", DebugValue::Counter(2)),
                series(GRANTS, "refresh_token", "rejected", DebugValue::Counter(1)),
            ]
        );
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn replays_resends_skips_waits_and_store_errors_go_to_their_counters() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        use super::export::{REPLAYS, REPLAYS_SKIPPED, RESENDS, STORE_ERRORS, WAITED};

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let stats = metrics::with_local_recorder(&recorder, || {
            let counters = Counters::default();
            counters.sent_again(true, &http::Method::GET);
            for _ in 0..5 {
                counters.sent_again(false, &http::Method::POST);
            }
            counters.replay_skipped();
            counters.replay_skipped();
            for _ in 0..3 {
                counters.waited();
            }
            for _ in 0..4 {
                counters.store_error();
            }
            counters.snapshot()
        });
        let mut seen: Vec<(String, usize, DebugValue)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let labels = key.key().labels().count();
                (key.key().name().to_owned(), labels, value)
            })
            .collect();
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        let counter = |name: &str, n| (name.to_owned(), 0, DebugValue::Counter(n));
        assert_eq!(
            seen,
            [
                counter(REPLAYS_SKIPPED, stats.replays_skipped),
                counter(REPLAYS, stats.replays),
                counter(RESENDS, stats.resends),
                counter(STORE_ERRORS, stats.store_errors),
                counter(WAITED, stats.waited),
            ]
        );
        assert_eq!(
            (
                stats.replays,
                stats.resends,
                stats.replays_skipped,
                stats.waited,
                stats.store_errors
            ),
            (1, 5, 2, 3, 4)
        );
    }
}
