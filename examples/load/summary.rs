//! What a load run saw, and the two ways `load` prints it: the table with a
//! small text histogram of the latencies, and the one-line JSON object of
//! `--json` (also the `{"error": …}` object of a run that could not start).
//! Latencies go into an HDR histogram, so a run of any length keeps the same
//! memory and the percentiles stay within 0.1% of the recorded values.

use std::{collections::BTreeMap, fmt, time::Duration};

use daxium_auth::{GrantType, Stats, mock::MockCounters};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::run::Embedded;

/// The slowest latency the histogram tells apart, in microseconds: an hour.
/// A slower one counts as an hour; a request never waits that long.
const HIGHEST_US: u64 = 3_600_000_000;
/// Significant digits the histogram keeps: values within 0.1%.
const SIGNIFICANT_DIGITS: u8 = 3;
/// The widest bar of the text histogram, in characters.
const BAR_WIDTH: u64 = 40;

/// Where the requests went.
// One per run: boxing the larger variant would save nothing worth a pointer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// The embedded server, with its settings and final counters.
    Embedded {
        base_url: String,
        settings: Embedded,
        revoked_at: Option<Duration>,
        counters: MockCounters,
    },
    /// A real server.
    Remote { api_url: String },
}

/// Latencies of answered requests, in an HDR histogram of microseconds.
#[derive(Clone)]
pub(crate) struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, HIGHEST_US, SIGNIFICANT_DIGITS)
                .expect("1 µs to an hour at 3 digits is a valid histogram"),
        }
    }
}

// The histogram's own `Debug` prints every bucket.
impl fmt::Debug for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Latency")
            .field("count", &self.count())
            .field("p50_ms", &self.percentile_ms(50.0))
            .field("p99_ms", &self.percentile_ms(99.0))
            .field("max_ms", &self.max_ms())
            .finish()
    }
}

/// One row of the text histogram: answers in `low_us..high_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bin {
    pub(crate) low_us: u64,
    pub(crate) high_us: u64,
    pub(crate) count: u64,
}

impl Latency {
    /// Records one answer's latency (below a microsecond counts as one).
    pub(crate) fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.record_us(micros);
    }

    pub(crate) fn record_us(&mut self, micros: u64) {
        self.histogram
            .saturating_record(micros.clamp(1, HIGHEST_US));
    }

    /// Answers recorded.
    pub(crate) fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency that `pct` percent of the answers did not exceed (nearest
    /// rank, to the histogram's precision), in milliseconds; 0 without answers.
    pub(crate) fn percentile_ms(&self, pct: f64) -> f64 {
        if self.count() == 0 {
            return 0.0;
        }
        ms(self.histogram.value_at_percentile(pct))
    }

    /// The slowest answer, to the histogram's precision, in milliseconds.
    pub(crate) fn max_ms(&self) -> f64 {
        if self.count() == 0 {
            return 0.0;
        }
        ms(self.histogram.max())
    }

    pub(crate) fn mean_ms(&self) -> f64 {
        self.histogram.mean() / 1000.0
    }

    /// The answers by latency, in bins whose bounds go 1, 2, 5, 10, 20, 50 …
    /// microseconds, from the bin of the fastest answer to the bin of the
    /// slowest. Empty without answers.
    pub(crate) fn distribution(&self) -> Vec<Bin> {
        if self.count() == 0 {
            return Vec::new();
        }
        let bounds = bounds_around(self.histogram.min(), self.histogram.max());
        let mut bins: Vec<Bin> = bounds
            .windows(2)
            .map(|pair| Bin {
                low_us: pair[0],
                high_us: pair[1],
                count: 0,
            })
            .collect();
        for step in self.histogram.iter_recorded() {
            let value = self.histogram.lowest_equivalent(step.value_iterated_to());
            // The bins cover min ..= max, so every value has one; the last
            // bin takes a value on its upper bound.
            let index = bins
                .iter()
                .position(|bin| value < bin.high_us)
                .unwrap_or(bins.len() - 1);
            bins[index].count += step.count_at_value();
        }
        bins
    }
}

/// The 1-2-5 bounds from the last one at or below `min` to the first one
/// above `max`.
fn bounds_around(min: u64, max: u64) -> Vec<u64> {
    let mut bounds = Vec::new();
    let mut decade = 1u64;
    // At most 3 bounds per decade of a u64: a few dozen steps.
    'decades: for _ in 0..20 {
        for step in [1, 2, 5] {
            let bound = decade.saturating_mul(step);
            match bounds.last() {
                Some(&last) if last > max => break 'decades,
                _ if bound <= min => bounds = vec![bound],
                _ => bounds.push(bound),
            }
        }
        decade = decade.saturating_mul(10);
    }
    bounds
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// What the run did.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    pub(crate) target: Target,
    pub(crate) concurrency: usize,
    /// Requests that got an answer or failed.
    pub(crate) requests: u64,
    /// Answers with a 2xx status.
    pub(crate) ok: u64,
    /// Answers by status code.
    pub(crate) status: BTreeMap<u16, u64>,
    /// 2xx answers that carried a gRPC status other than OK (a refusal the
    /// layer did not replay), by gRPC code: not ok.
    pub(crate) grpc: BTreeMap<u32, u64>,
    /// Failures without an answer, by kind: `token`, `connect`, `timeout`,
    /// `transport`, `body`.
    pub(crate) errors: BTreeMap<&'static str, u64>,
    /// The counters of the whole fleet: the sum of its replicas'.
    pub(crate) stats: Stats,
    /// The scheme of the token store the replicas share, if any.
    pub(crate) store: Option<&'static str>,
    /// What each replica did, in order.
    pub(crate) replicas: Vec<ReplicaSummary>,
    /// Latencies of the answers.
    pub(crate) latency: Latency,
    pub(crate) elapsed: Duration,
    /// Why the run stopped before its end, if it did.
    pub(crate) aborted: Option<String>,
}

/// What one replica of the fleet did.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaSummary {
    /// Requests its workers made.
    pub(crate) requests: u64,
    /// Answers with a 2xx status.
    pub(crate) ok: u64,
    /// Its layer's counters.
    pub(crate) stats: Stats,
}

/// The `--json` object. The documented keys come first, in their documented
/// order; the others follow.
#[derive(Serialize)]
struct JsonSummary<'a> {
    requests: u64,
    ok: u64,
    status: &'a BTreeMap<u16, u64>,
    errors: &'a BTreeMap<&'static str, u64>,
    grants: JsonGrants,
    retries_401: u64,
    p50_ms: f64,
    p99_ms: f64,
    elapsed_s: f64,
    p90_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    mean_ms: f64,
    requests_per_s: f64,
    concurrency: usize,
    waited_for_token: u64,
    /// Requests sent again after a refusal of a token replaced while they
    /// were in flight: not their replay.
    resends: u64,
    aborted: Option<&'a str>,
    replicas: usize,
    store: Option<&'a str>,
    per_replica: Vec<JsonReplica>,
    grpc_status: &'a BTreeMap<u32, u64>,
    server: Option<JsonServer>,
}

/// What the embedded server counted; `null` for a real server.
#[derive(Serialize)]
struct JsonServer {
    api_requests: u64,
    api_ok: u64,
    api_revoked: u64,
    api_revoked_in_use: u64,
    api_expired: u64,
    api_refused_all: u64,
    api_slowed: u64,
    refresh_revoked_access: u64,
    refresh_reuse: u64,
    /// When the server revoked every token, in seconds into the load.
    revoked_all_at_s: Option<f64>,
}

impl JsonServer {
    fn of(target: &Target) -> Option<Self> {
        let Target::Embedded {
            revoked_at,
            counters: c,
            ..
        } = target
        else {
            return None;
        };
        Some(Self {
            api_requests: c.api_requests,
            api_ok: c.api_ok,
            api_revoked: c.api_revoked,
            api_revoked_in_use: c.api_revoked_in_use,
            api_expired: c.api_expired,
            api_refused_all: c.api_refused_all,
            api_slowed: c.api_slowed,
            refresh_revoked_access: c.refresh_revoked_access,
            refresh_reuse: c.refresh_reuse,
            revoked_all_at_s: revoked_at.map(|at| round3(at.as_secs_f64())),
        })
    }
}

#[derive(Serialize)]
struct JsonGrants {
    password: u64,
    refresh_token: u64,
}

impl JsonGrants {
    fn of(stats: &Stats) -> Self {
        Self {
            password: stats.grants_of(GrantType::Password),
            refresh_token: stats.grants_of(GrantType::RefreshToken),
        }
    }
}

#[derive(Serialize)]
struct JsonReplica {
    requests: u64,
    ok: u64,
    grants: JsonGrants,
    retries_401: u64,
    resends: u64,
}

/// The `--json` object of a run that could not start.
#[derive(Serialize)]
struct JsonError<'a> {
    error: JsonErrorBody<'a>,
}

#[derive(Serialize)]
struct JsonErrorBody<'a> {
    kind: &'a str,
    message: &'a str,
}

/// `{"error":{"kind":…,"message":…}}` on one line.
pub(crate) fn error_json(kind: &str, message: &str) -> String {
    serde_json::to_string(&JsonError {
        error: JsonErrorBody { kind, message },
    })
    .expect("two strings serialize")
}

impl Summary {
    /// Whether every request got a 2xx.
    pub(crate) fn all_ok(&self) -> bool {
        self.aborted.is_none() && self.requests > 0 && self.ok == self.requests
    }

    fn requests_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }

    /// The JSON object of `--json`, on one line. Times in milliseconds (the
    /// run's in seconds), to the microsecond.
    pub(crate) fn to_json(&self) -> String {
        let latency = &self.latency;
        serde_json::to_string(&JsonSummary {
            requests: self.requests,
            ok: self.ok,
            status: &self.status,
            errors: &self.errors,
            grants: JsonGrants::of(&self.stats),
            retries_401: self.stats.replays,
            p50_ms: round3(latency.percentile_ms(50.0)),
            p99_ms: round3(latency.percentile_ms(99.0)),
            elapsed_s: round3(self.elapsed.as_secs_f64()),
            p90_ms: round3(latency.percentile_ms(90.0)),
            p999_ms: round3(latency.percentile_ms(99.9)),
            max_ms: round3(latency.max_ms()),
            mean_ms: round3(latency.mean_ms()),
            requests_per_s: round3(self.requests_per_s()),
            concurrency: self.concurrency,
            waited_for_token: self.stats.waited,
            resends: self.stats.resends,
            aborted: self.aborted.as_deref(),
            replicas: self.replicas.len(),
            store: self.store,
            per_replica: (self.replicas.iter())
                .map(|replica| JsonReplica {
                    requests: replica.requests,
                    ok: replica.ok,
                    grants: JsonGrants::of(&replica.stats),
                    retries_401: replica.stats.replays,
                    resends: replica.stats.resends,
                })
                .collect(),
            grpc_status: &self.grpc,
            server: JsonServer::of(&self.target),
        })
        .expect("numbers, strings and maps with string or integer keys serialize")
    }

    /// The summary table, with the latency distribution.
    pub(crate) fn table(&self) -> String {
        let s = &self.stats;
        let mut out = String::new();
        let mut row = |name: &str, value: String| {
            out.push_str(&format!("  {name:<18} {value}\n"));
        };
        let target = match &self.target {
            Target::Embedded {
                base_url, settings, ..
            } => format!(
                "embedded Daxium-compatible server at {base_url} ({})",
                behaviour(settings)
            ),
            Target::Remote { api_url } => api_url.clone(),
        };
        row("target", target);
        if self.replicas.len() > 1 || self.store.is_some() {
            let sharing = match self.store {
                Some(scheme) => format!("sharing one login through a {scheme} token store"),
                None => "each on its own".to_owned(),
            };
            row(
                "fleet",
                format!("{} replicas, {sharing}", self.replicas.len()),
            );
        }
        row(
            "run",
            format!(
                "{:.2} s, {} in flight, {} req/s",
                self.elapsed.as_secs_f64(),
                self.concurrency,
                group(self.requests_per_s().round() as u64)
            ),
        );
        row("requests", group(self.requests));
        row(
            "ok (2xx)",
            format!(
                "{} ({:.2}%)",
                group(self.ok),
                percent(self.ok, self.requests)
            ),
        );
        row("status", listed(&self.status, "-"));
        if !self.grpc.is_empty() {
            row(
                "grpc status",
                format!(
                    "{} (2xx answers refusing the call)",
                    listed(&self.grpc, "-")
                ),
            );
        }
        row("errors", listed(&self.errors, "none"));
        let latency = &self.latency;
        row(
            "latency",
            format!(
                "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
                latency.percentile_ms(50.0),
                latency.percentile_ms(90.0),
                latency.percentile_ms(99.0),
                latency.percentile_ms(99.9),
                latency.max_ms()
            ),
        );
        let bins = latency.distribution();
        let labels: Vec<String> = bins
            .iter()
            .map(|bin| format!("{}-{} ms", ms(bin.low_us), ms(bin.high_us)))
            .collect();
        let label_width = labels.iter().map(String::len).max().unwrap_or(0);
        let widest = bins.iter().map(|bin| bin.count).max().unwrap_or(0);
        for (i, (bin, label)) in bins.iter().zip(&labels).enumerate() {
            let name = if i == 0 { "distribution" } else { "" };
            let bar = match bin.count {
                0 => 0,
                n => (n * BAR_WIDTH).div_ceil(widest.max(1)),
            };
            row(
                name,
                format!(
                    "{label:>label_width$}  {:<bar_width$}  {:>9}  {:>5.1}%",
                    "#".repeat(bar as usize),
                    group(bin.count),
                    percent(bin.count, latency.count()),
                    bar_width = BAR_WIDTH as usize,
                ),
            );
        }
        row(
            "password grants",
            format!(
                "{} (ok {}, refused {}, failed {})",
                s.grants_of(GrantType::Password),
                s.password_ok,
                s.password_rejected,
                s.password_failed
            ),
        );
        row(
            "refresh grants",
            format!(
                "{} (ok {}, refused {}, failed {})",
                s.grants_of(GrantType::RefreshToken),
                s.refresh_ok,
                s.refresh_rejected,
                s.refresh_failed
            ),
        );
        if self.replicas.len() > 1 {
            row("grants by replica", by_replica(&self.replicas));
        }
        row(
            "401 replays",
            format!("{} (401s not replayed: {})", s.replays, s.replays_skipped),
        );
        row(
            "resends",
            format!(
                "{} (refused with a token replaced in flight or revoked)",
                group(s.resends)
            ),
        );
        row("waited for a token", group(s.waited));
        if let Target::Embedded {
            revoked_at,
            counters,
            ..
        } = &self.target
        {
            row("server", server_line(*revoked_at, counters));
        }
        if let Some(reason) = &self.aborted {
            row("stopped early", reason.clone());
        }
        out
    }
}

/// The embedded server's settings, as the target line shows them.
fn behaviour(settings: &Embedded) -> String {
    let mut parts = vec![
        format!("{} s tokens", settings.token_lifetime.as_secs_f64()),
        "rotation on".to_owned(),
    ];
    if settings.revoke_rate > 0.0 {
        parts.push(format!(
            "revoking {}% of tokens in use",
            settings.revoke_rate * 100.0
        ));
    }
    if settings.revoke_on_refresh {
        parts.push("revoking on refresh".to_owned());
    }
    if let Some(slow) = settings.slow_api {
        parts.push(format!(
            "{}% of answers {} ms late",
            slow.fraction * 100.0,
            slow.latency.as_millis()
        ));
    }
    if let Some(window) = settings.refuse_all {
        let from = window.at.as_secs_f64();
        parts.push(format!(
            "refusing every token from {from} s to {} s",
            from + window.length.as_secs_f64()
        ));
    }
    if settings.grpc_refusals {
        parts.push("refusing the gRPC way".to_owned());
    }
    parts.join(", ")
}

/// The embedded server's `server` row: what it refused and revoked.
fn server_line(revoked_at: Option<Duration>, c: &MockCounters) -> String {
    let mut line = match revoked_at {
        Some(at) => format!("revoked every token at {:.1} s; ", at.as_secs_f64()),
        None => String::new(),
    };
    let mut refused = vec![
        format!("{} revoked", group(c.api_revoked)),
        format!("{} expired", group(c.api_expired)),
    ];
    if c.api_revoked_in_use > 0 {
        refused[0].push_str(&format!(" ({} in use)", group(c.api_revoked_in_use)));
    }
    if c.api_refused_all > 0 {
        refused.push(format!(
            "{} while refusing every token",
            group(c.api_refused_all)
        ));
    }
    line.push_str(&format!(
        "{} API requests, {} refused ({})",
        group(c.api_requests),
        group(c.api_requests - c.api_ok),
        refused.join(", ")
    ));
    if c.api_slowed > 0 {
        line.push_str(&format!(", {} held back", group(c.api_slowed)));
    }
    line.push_str(&format!("; refresh tokens reused {}", c.refresh_reuse));
    if c.refresh_revoked_access > 0 {
        line.push_str(&format!(
            "; access tokens revoked by a refresh {}",
            group(c.refresh_revoked_access)
        ));
    }
    line
}

/// Each replica's grants as `password+refresh`, the first 16 of them.
fn by_replica(replicas: &[ReplicaSummary]) -> String {
    const SHOWN: usize = 16;
    let mut text = (replicas.iter().take(SHOWN))
        .map(|r| {
            format!(
                "{}+{}",
                r.stats.grants_of(GrantType::Password),
                r.stats.grants_of(GrantType::RefreshToken)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    if replicas.len() > SHOWN {
        text.push_str(&format!(", … ({} more)", replicas.len() - SHOWN));
    }
    text.push_str(" (password+refresh)");
    text
}

/// `200: 1,234, 401: 2`, or `empty` for an empty map.
fn listed<K: fmt::Display>(map: &BTreeMap<K, u64>, empty: &str) -> String {
    if map.is_empty() {
        return empty.into();
    }
    map.iter()
        .map(|(key, n)| format!("{key}: {}", group(*n)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// `1234567` as `1,234,567`.
pub(crate) fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed spread of latencies from 40 µs to about 4 s, most of them fast,
    /// made by a small linear congruential generator.
    fn latencies(n: usize) -> Vec<u64> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
                // Exponential in the unit: 40 µs at 0, 4 s at 1.
                (40.0 * 100_000f64.powf(unit.powi(3))) as u64
            })
            .collect()
    }

    /// Nearest-rank percentile of sorted values.
    fn nearest_rank(sorted: &[u64], pct: f64) -> u64 {
        let rank = ((pct / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
        sorted[rank - 1]
    }

    #[test]
    fn percentiles_agree_with_the_raw_latencies_within_the_precision() {
        let mut raw = latencies(100_000);
        let mut latency = Latency::default();
        for &us in &raw {
            latency.record(Duration::from_micros(us));
        }
        raw.sort_unstable();
        assert_eq!(latency.count(), raw.len() as u64);
        for pct in [50.0, 90.0, 99.0, 99.9, 100.0] {
            let exact = nearest_rank(&raw, pct) as f64 / 1000.0;
            let got = latency.percentile_ms(pct);
            // Three significant digits: within 0.1% of the value.
            assert!(
                (got - exact).abs() <= exact * 0.001,
                "p{pct}: {got} ms from the histogram, {exact} ms exactly"
            );
        }
        let exact_max = *raw.last().unwrap() as f64 / 1000.0;
        assert!((latency.max_ms() - exact_max).abs() <= exact_max * 0.001);
        let exact_mean = raw.iter().sum::<u64>() as f64 / raw.len() as f64 / 1000.0;
        assert!((latency.mean_ms() - exact_mean).abs() <= exact_mean * 0.001);
    }

    #[test]
    fn percentiles_are_ordered_and_at_most_the_max() {
        let mut latency = Latency::default();
        // All in one bucket of the histogram, and a single value.
        for us in [2_000_001, 2_000_002, 2_000_003] {
            latency.record_us(us);
        }
        let p = [50.0, 90.0, 99.0, 99.9].map(|pct| latency.percentile_ms(pct));
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "{p:?}");
        assert!(p[3] <= latency.max_ms());

        // Below 2,048 µs the histogram keeps every microsecond.
        let mut one = Latency::default();
        one.record(Duration::from_micros(1_999));
        assert_eq!(one.percentile_ms(50.0), 1.999);
        assert_eq!(one.percentile_ms(99.9), 1.999);
        assert_eq!(one.max_ms(), 1.999);
    }

    #[test]
    fn no_answers_mean_zeros_and_no_distribution() {
        let latency = Latency::default();
        assert_eq!(latency.percentile_ms(50.0), 0.0);
        assert_eq!(latency.max_ms(), 0.0);
        assert_eq!(latency.mean_ms(), 0.0);
        assert!(latency.distribution().is_empty());
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_lost() {
        let mut latency = Latency::default();
        latency.record(Duration::ZERO);
        latency.record(Duration::from_secs(10 * 3600));
        assert_eq!(latency.count(), 2);
        assert_eq!(latency.percentile_ms(50.0), 0.001);
        assert!((latency.max_ms() - 3_600_000.0).abs() <= 3_600.0);
    }

    #[test]
    fn the_distribution_counts_every_answer_once_in_its_bin() {
        let raw = latencies(20_000);
        let mut latency = Latency::default();
        for &us in &raw {
            latency.record_us(us);
        }
        let bins = latency.distribution();
        assert_eq!(bins.iter().map(|b| b.count).sum::<u64>(), raw.len() as u64);
        // Contiguous 1-2-5 bounds from the fastest answer to the slowest.
        assert!(bins.windows(2).all(|w| w[0].high_us == w[1].low_us));
        assert!(bins[0].low_us <= *raw.iter().min().unwrap());
        assert!(bins.last().unwrap().high_us > *raw.iter().max().unwrap());
        // Each bin holds the raw values in its range, to the precision.
        for bin in &bins {
            let exact = raw
                .iter()
                .filter(|&&us| us >= bin.low_us && us < bin.high_us)
                .count() as u64;
            let slack = (exact / 500).max(2);
            assert!(
                bin.count.abs_diff(exact) <= slack,
                "{bin:?}: {exact} exactly"
            );
        }
    }

    #[test]
    fn bounds_go_one_two_five() {
        assert_eq!(bounds_around(1, 1), [1, 2]);
        assert_eq!(bounds_around(300, 4_000), [200, 500, 1_000, 2_000, 5_000]);
        assert_eq!(bounds_around(500, 500), [500, 1_000]);
        assert_eq!(bounds_around(499, 1_000), [200, 500, 1_000, 2_000]);
    }

    fn summary(latencies: &[u64]) -> Summary {
        let mut latency = Latency::default();
        for &us in latencies {
            latency.record_us(us);
        }
        let mut stats = Stats::default();
        stats.password_ok = 2;
        stats.refresh_ok = 3;
        stats.refresh_rejected = 1;
        stats.replays = 5;
        Summary {
            target: Target::Remote {
                api_url: "https://api.example.com/api/v1/structures".into(),
            },
            concurrency: 4,
            requests: latencies.len() as u64 + 1,
            ok: latencies.len() as u64 - 1,
            status: BTreeMap::from([(200, latencies.len() as u64 - 1), (401, 1)]),
            grpc: BTreeMap::new(),
            errors: BTreeMap::from([("timeout", 1)]),
            stats,
            store: None,
            replicas: vec![ReplicaSummary {
                requests: latencies.len() as u64 + 1,
                ok: latencies.len() as u64 - 1,
                stats,
            }],
            latency,
            elapsed: Duration::from_millis(2500),
            aborted: None,
        }
    }

    #[test]
    fn json_holds_the_summary_in_its_documented_keys() {
        let summary = summary(&[100, 200, 300, 400]);
        let text = summary.to_json();
        assert!(!text.contains('\n'));
        assert!(
            text.starts_with(
                r#"{"requests":5,"ok":3,"status":{"200":3,"401":1},"errors":{"timeout":1},"grants":{"password":2,"refresh_token":4},"retries_401":5,"p50_ms":0.2,"p99_ms":0.4,"elapsed_s":2.5,"#
            ),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["p90_ms"], 0.4);
        assert_eq!(json["p999_ms"], 0.4);
        assert_eq!(json["max_ms"], 0.4);
        assert_eq!(json["mean_ms"], 0.25);
        assert_eq!(json["requests_per_s"], 2.0);
        assert_eq!(json["concurrency"], 4);
        assert_eq!(json["aborted"], serde_json::Value::Null);
        assert_eq!(json["replicas"], 1);
        assert_eq!(json["store"], serde_json::Value::Null);
        assert_eq!(
            json["per_replica"],
            serde_json::json!([{
                "requests": 5,
                "ok": 3,
                "grants": {"password": 2, "refresh_token": 4},
                "retries_401": 5,
                "resends": 0
            }])
        );
    }

    #[test]
    fn a_fleet_shows_its_store_and_each_replicas_grants() {
        let mut fleet = summary(&[100, 200]);
        let one = fleet.replicas[0].clone();
        fleet.replicas = vec![one.clone(), one.clone(), one];
        fleet.store = Some("redis");
        let json: serde_json::Value = serde_json::from_str(&fleet.to_json()).unwrap();
        assert_eq!(json["replicas"], 3);
        assert_eq!(json["store"], "redis");
        assert_eq!(json["per_replica"].as_array().unwrap().len(), 3);
        let table = fleet.table();
        assert!(
            table.contains("3 replicas, sharing one login through a redis token store"),
            "{table}"
        );
        assert!(
            table.contains("grants by replica  2+4, 2+4, 2+4 (password+refresh)"),
            "{table}"
        );
    }

    #[test]
    fn the_embedded_servers_settings_and_counters_are_shown() {
        use crate::run::{SlowApi, Window};

        let mut run = summary(&[100, 200]);
        let mut counters = MockCounters::default();
        counters.api_requests = 1_200;
        counters.api_ok = 1_000;
        counters.api_revoked = 150;
        counters.api_revoked_in_use = 40;
        counters.api_refused_all = 50;
        counters.api_slowed = 7;
        counters.refresh_revoked_access = 3;
        run.target = Target::Embedded {
            base_url: "http://127.0.0.1:1".into(),
            settings: Embedded {
                token_lifetime: Duration::from_millis(500),
                revoke_rate: 0.01,
                revoke_on_refresh: true,
                slow_api: Some(SlowApi {
                    fraction: 0.05,
                    latency: Duration::from_millis(200),
                }),
                refuse_all: Some(Window {
                    at: Duration::from_secs(2),
                    length: Duration::from_millis(1500),
                }),
                grpc_refusals: true,
                ..Embedded::default()
            },
            revoked_at: Some(Duration::from_millis(6_040)),
            counters,
        };
        run.grpc = BTreeMap::from([(16, 12)]);
        let table = run.table();
        assert!(
            table.contains(
                "(0.5 s tokens, rotation on, revoking 1% of tokens in use, revoking on refresh, \
                 5% of answers 200 ms late, refusing every token from 2 s to 3.5 s, \
                 refusing the gRPC way)"
            ),
            "{table}"
        );
        assert!(
            table.contains("grpc status        16: 12 (2xx answers refusing the call)"),
            "{table}"
        );
        assert!(
            table.contains(
                "revoked every token at 6.0 s; 1,200 API requests, 200 refused (150 revoked \
                 (40 in use), 0 expired, 50 while refusing every token), 7 held back; refresh \
                 tokens reused 0; access tokens revoked by a refresh 3"
            ),
            "{table}"
        );
        let json: serde_json::Value = serde_json::from_str(&run.to_json()).unwrap();
        assert_eq!(json["grpc_status"], serde_json::json!({"16": 12}));
        let server = &json["server"];
        assert_eq!(server["api_revoked_in_use"], 40);
        assert_eq!(server["api_refused_all"], 50);
        assert_eq!(server["api_slowed"], 7);
        assert_eq!(server["refresh_revoked_access"], 3);
        assert_eq!(server["revoked_all_at_s"], 6.04);
        // A real server: no counters of its own.
        let remote = summary(&[100]).to_json();
        assert!(
            remote.ends_with(r#""grpc_status":{},"server":null}"#),
            "{remote}"
        );
    }

    #[test]
    fn the_error_object_is_one_line() {
        let text = error_json("login_refused", "login refused: \"DAERR-1\"");
        assert_eq!(
            text,
            r#"{"error":{"kind":"login_refused","message":"login refused: \"DAERR-1\""}}"#
        );
    }

    #[test]
    fn the_table_shows_the_percentiles_and_the_distribution() {
        let table = summary(&[150, 180, 350, 900, 1_500]).table();
        assert!(
            table
                .contains("p50 0.350 ms, p90 1.500 ms, p99 1.500 ms, p99.9 1.500 ms, max 1.500 ms"),
            "{table}"
        );
        let rows: Vec<&str> = table
            .lines()
            .skip_while(|line| !line.contains("distribution"))
            .take_while(|line| line.contains(" ms "))
            .collect();
        assert_eq!(rows.len(), 4, "{table}");
        assert!(
            rows[0].contains("0.1-0.2 ms") && rows[0].contains(" 2 "),
            "{table}"
        );
        assert!(rows[1].contains("0.2-0.5 ms"), "{table}");
        assert!(rows[2].contains("0.5-1 ms"), "{table}");
        assert!(
            rows[3].contains("1-2 ms") && rows[3].contains("20.0%"),
            "{table}"
        );
        // The widest bar is the full width; the others are in proportion.
        assert!(rows[0].contains(&"#".repeat(40)));
        assert!(rows[1].contains(&format!("{} ", "#".repeat(20))));
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }
}
