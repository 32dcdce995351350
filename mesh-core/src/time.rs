//! Time as values: Unix seconds from a [`SystemTime`] and a bounded exponential [`Backoff`].
//!
//! Nothing here reads a clock: callers pass the time in, so the agent's reconciler and the
//! backends' retry loops can be tested with time as a value.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `time` as Unix seconds (what `last-seen` and [`ClusterSnapshot::now`](crate::ClusterSnapshot)
/// hold): 0 before 1970, `i64::MAX` past the year 292 billion.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// assert_eq!(mesh_core::time::unix_seconds(UNIX_EPOCH + Duration::from_millis(1_500)), 1);
/// ```
pub fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| i64::try_from(since.as_secs()).unwrap_or(i64::MAX))
}

/// Exponential backoff, bounded: the delay after failure number `n` (0-based) is
/// `initial * 2^n`, at most `max`.
///
/// Stateless on purpose: the caller counts its failures (and resets the count on success), so
/// one value serves every retry path.
///
/// ```
/// use std::time::Duration;
/// use mesh_core::time::Backoff;
///
/// let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
/// assert_eq!(backoff.delay(0), Duration::from_secs(1));
/// assert_eq!(backoff.delay(3), Duration::from_secs(8));
/// assert_eq!(backoff.delay(10), Duration::from_secs(30));
/// // Scaled into [delay / 2, delay] by a random value, so that agents restarted together spread out:
/// assert_eq!(backoff.jittered(3, 0), Duration::from_secs(4));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `initial`, doubling up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max }
    }

    /// The delay after failure number `failure` (0-based): `initial * 2^failure`, capped at `max`.
    pub fn delay(&self, failure: u32) -> Duration {
        self.initial.saturating_mul(2u32.saturating_pow(failure.min(31))).min(self.max)
    }

    /// [`Backoff::delay`] scaled by a factor in [0.5, 1] taken from `random` (any 64 random
    /// bits; the caller picks the source, so this stays deterministic under test).
    pub fn jittered(&self, failure: u32, random: u64) -> Duration {
        let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
        self.delay(failure).mul_f64(0.5 + fraction / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_stop_at_the_maximum() {
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(70));
        let delays: Vec<u128> = (0..5).map(|failure| backoff.delay(failure).as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 70, 70]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_millis(70), "no overflow");
    }

    #[test]
    fn jitter_stays_between_half_and_the_whole_delay() {
        let backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(30));
        assert_eq!(backoff.jittered(0, 0), Duration::from_secs(1));
        assert!(backoff.jittered(0, u64::MAX) <= Duration::from_secs(2));
        assert!(backoff.jittered(0, u64::MAX) > Duration::from_millis(1999));
    }

    #[test]
    fn unix_seconds_before_the_epoch_are_zero() {
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), 0);
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_secs(1_767_225_600)), 1_767_225_600);
    }
}
