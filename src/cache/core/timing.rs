//! The time arithmetic of the cache: when a token goes stale and expires, and
//! how long to wait after a failed grant. Pure functions of their inputs, the
//! randomness included (`jitter` in 0..1 comes with the event).

use std::time::Duration;

use super::Time;

/// When a token goes stale and when it expires, measured from the moment its
/// grant was sent. The margin is the configured one, or half the lifetime for
/// short-lived tokens; up to a fifth of it is added at random so that
/// replicas do not refresh in lockstep.
pub(crate) fn schedule(
    sent_at: Time,
    lifetime: Duration,
    margin: Duration,
    jitter: f64,
) -> (Time, Time) {
    let expires_at = sent_at.saturating_add(lifetime);
    let margin = margin.min(lifetime / 2);
    let margin = margin.saturating_add(scale(margin, unit(jitter) / 5.0));
    (expires_at.saturating_sub(margin), expires_at)
}

/// Exponential backoff with jitter: `min * 2^attempt`, capped at `max`, then
/// somewhere in its upper half; at least what `Retry-After` asked (itself capped
/// at an hour by the fetcher).
pub(crate) fn backoff(
    min: Duration,
    max: Duration,
    attempt: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let base = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    let half = base / 2;
    let jittered = half.saturating_add(scale(half, unit(jitter)));
    retry_after.map_or(jittered, |after| jittered.max(after))
}

/// `jitter` in 0..1, whatever came in (`mul_f64` panics on NaN).
fn unit(jitter: f64) -> f64 {
    if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    }
}

/// `d * factor` for a factor in 0..1, without `mul_f64`'s panic on overflow.
fn scale(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).map_or(d, |scaled| scaled.min(d))
}

/// The shortest wait [`backoff`] can choose for `attempt`, whatever the jitter.
#[cfg(test)]
pub(crate) fn backoff_floor(min: Duration, max: Duration, attempt: u32) -> Duration {
    backoff(min, max, attempt, None, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_long_token_goes_stale_one_margin_before_it_expires() {
        let (stale, expires) = schedule(S(5), S(3600), S(60), 0.0);
        assert_eq!(expires, S(3605));
        assert_eq!(expires - stale, S(60));
        let (stale, _) = schedule(S(5), S(3600), S(60), 1.0);
        assert_eq!(expires - stale, S(72));
    }

    #[test]
    fn a_short_token_goes_stale_at_half_its_life() {
        let (stale, expires) = schedule(S(0), S(20), S(60), 0.0);
        assert_eq!((stale, expires), (S(10), S(20)));
        let (stale, _) = schedule(S(0), S(20), S(60), 1.0);
        assert_eq!(stale, S(8));
    }

    #[test]
    fn backoff_grows_and_caps() {
        let (min, max) = (Duration::from_millis(500), S(30));
        let top = |attempt| backoff(min, max, attempt, None, 1.0);
        assert_eq!(top(0), Duration::from_millis(500));
        assert_eq!(backoff_floor(min, max, 0), Duration::from_millis(250));
        assert_eq!(top(1), S(1));
        assert_eq!(top(3), S(4));
        assert_eq!(top(10), S(30));
        assert_eq!(top(u32::MAX), S(30));
    }

    #[test]
    fn absurd_inputs_saturate_instead_of_panicking() {
        let (stale, expires) = schedule(Duration::MAX, Duration::MAX, Duration::MAX, f64::NAN);
        assert_eq!(expires, Duration::MAX);
        assert!(stale <= expires);
        let wait = backoff(
            Duration::MAX,
            Duration::MAX,
            40,
            Some(Duration::MAX),
            f64::NAN,
        );
        assert_eq!(wait, Duration::MAX);
    }

    #[test]
    fn backoff_honours_retry_after() {
        let (min, max) = (Duration::from_millis(500), S(30));
        assert_eq!(backoff(min, max, 0, Some(S(7)), 0.5), S(7));
        assert_eq!(backoff(min, max, 10, Some(S(1)), 1.0), S(30));
    }
}
