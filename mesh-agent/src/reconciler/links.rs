//! Passes started by the devices the data plane uses. A restarted wireguard-go brings back an
//! empty device (no key, no peers, no routes through it); the next timer may be half a minute
//! away when passes failed while the device was gone. So a change of a device starts a pass
//! once the burst of notifications settled, and the backoff starts over.

use std::time::{Duration, Instant};

/// How changes of the data plane's devices are gathered into one pass: a device that appears
/// sends several notifications (created, carrier, up, MTU) within milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkSettling {
    /// The pass starts once no change came for this long…
    pub quiet: Duration,
    /// …or this long after the first change of a burst, whatever follows (a flapping device
    /// still gets a pass this often, not never).
    pub max_delay: Duration,
}

impl Default for LinkSettling {
    /// 100 ms of quiet, at most 1 s after the first change.
    fn default() -> Self {
        LinkSettling { quiet: Duration::from_millis(100), max_delay: Duration::from_secs(1) }
    }
}

/// The burst of link changes that has not started its pass yet.
#[derive(Clone, Copy, Debug)]
pub(super) struct LinkBurst {
    settling: LinkSettling,
    /// The first and the last change of the burst.
    pending: Option<(Instant, Instant)>,
}

impl LinkBurst {
    pub(super) fn new(settling: LinkSettling) -> Self {
        LinkBurst { settling, pending: None }
    }

    /// A device changed at `now`.
    pub(super) fn changed(&mut self, now: Instant) {
        let first = self.pending.map_or(now, |(first, _)| first);
        self.pending = Some((first, now));
    }

    /// When the burst has settled.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.pending.map(|(first, last)| (last + self.settling.quiet).min(first + self.settling.max_delay))
    }

    /// Whether the burst settled by `now`; if so, it is over.
    pub(super) fn settled(&mut self, now: Instant) -> bool {
        if self.poll_timeout().is_some_and(|at| at <= now) {
            self.pending = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_settles_after_its_quiet_time_or_its_longest_delay() {
        let start = Instant::now();
        let ms = |n| start + Duration::from_millis(n);
        let mut burst = LinkBurst::new(LinkSettling::default());
        assert_eq!(burst.poll_timeout(), None);
        burst.changed(ms(0));
        burst.changed(ms(30));
        assert_eq!(burst.poll_timeout(), Some(ms(130)));
        assert!(!burst.settled(ms(129)));
        assert!(burst.settled(ms(130)));
        assert_eq!(burst.poll_timeout(), None, "one pass per burst");
        // A device flapping every 50 ms still gets its pass a second after the first change.
        for n in (1_000..2_500).step_by(50) {
            burst.changed(ms(n));
            if burst.settled(ms(n)) {
                assert_eq!(n, 2_000);
                return;
            }
        }
        panic!("a flapping device never got its pass");
    }
}
