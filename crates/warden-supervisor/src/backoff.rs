//! When to restart a host that exited, and when to give up.
//!
//! Exponential backoff with jitter, reset by a run that lasted: a host
//! crashing in a loop is restarted less and less often (and hosts crashing
//! together do not restart in lock step), one that ran for a while and
//! then crashed starts over from the first delay. Too many crashes within
//! a window and the host is `failed`: left down until an operator asks
//! (`wardenctl hosts restart`, or a reload).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The restart rules of one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// The delay before the first restart.
    pub first_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// This many crashes within [`RestartPolicy::crash_window`] mark the
    /// host failed.
    pub crash_limit: u32,
    /// See [`RestartPolicy::crash_limit`].
    pub crash_window: Duration,
    /// A run at least this long resets the delay (and forgets earlier
    /// crashes).
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            crash_limit: 5,
            crash_window: Duration::from_secs(60),
            stable_after: Duration::from_secs(10),
        }
    }
}

/// What to do after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Start it again after this delay.
    RestartAfter(Duration),
    /// Too many crashes: leave it down.
    Failed {
        /// Crashes counted within the window.
        crashes: u32,
    },
}

/// The restart state of one host.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RestartPolicy,
    crashes: VecDeque<Instant>,
    next: Duration,
}

impl Backoff {
    /// A fresh state: the next delay is the first.
    pub fn new(policy: RestartPolicy) -> Backoff {
        Backoff {
            policy,
            crashes: VecDeque::new(),
            next: policy.first_delay,
        }
    }

    /// Forgets every crash (an operator restarted the host).
    pub fn reset(&mut self) {
        self.crashes.clear();
        self.next = self.policy.first_delay;
    }

    /// Records that the host exited at `now` after running for `uptime`;
    /// `jitter` in \[0, 1) spreads the delay over ±20 %.
    pub fn exited(&mut self, now: Instant, uptime: Duration, jitter: f64) -> Verdict {
        if uptime >= self.policy.stable_after {
            self.reset();
        }
        self.crashes.push_back(now);
        while let Some(&first) = self.crashes.front() {
            if now.saturating_duration_since(first) > self.policy.crash_window {
                self.crashes.pop_front();
            } else {
                break;
            }
        }
        let crashes = u32::try_from(self.crashes.len()).unwrap_or(u32::MAX);
        if crashes >= self.policy.crash_limit {
            return Verdict::Failed { crashes };
        }
        let spread = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        let delay = self.next.mul_f64(spread).min(self.policy.max_delay);
        self.next = self.next.saturating_mul(2).min(self.policy.max_delay);
        Verdict::RestartAfter(delay)
    }
}

/// A jitter value in \[0, 1) that differs between calls and processes
/// (the standard library's per-process random hash keys, stirred with the
/// time): enough to keep hosts from restarting in lock step, no secret.
pub(crate) fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(700),
            crash_limit: 5,
            crash_window: Duration::from_secs(60),
            stable_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn delays_double_up_to_the_maximum_then_the_host_fails() {
        let mut b = Backoff::new(policy());
        let t = Instant::now();
        let quick = Duration::from_millis(5);
        // jitter 0.5 = no spread.
        let delays: Vec<Verdict> = (0..5)
            .map(|i| b.exited(t + Duration::from_secs(i), quick, 0.5))
            .collect();
        assert_eq!(
            delays,
            [
                Verdict::RestartAfter(Duration::from_millis(100)),
                Verdict::RestartAfter(Duration::from_millis(200)),
                Verdict::RestartAfter(Duration::from_millis(400)),
                Verdict::RestartAfter(Duration::from_millis(700)),
                Verdict::Failed { crashes: 5 },
            ]
        );
    }

    #[test]
    fn jitter_spreads_the_delay_by_at_most_a_fifth() {
        let t = Instant::now();
        for j in [0.0, 0.25, 0.999] {
            let mut b = Backoff::new(policy());
            let Verdict::RestartAfter(d) = b.exited(t, Duration::ZERO, j) else {
                panic!("a first crash fails the host");
            };
            assert!(
                d >= Duration::from_millis(80) && d <= Duration::from_millis(120),
                "{d:?}"
            );
        }
        let (a, b) = (jitter(), jitter());
        assert!((0.0..1.0).contains(&a) && (0.0..1.0).contains(&b));
    }

    #[test]
    fn a_run_that_lasted_starts_over_and_old_crashes_expire() {
        let mut b = Backoff::new(policy());
        let t = Instant::now();
        for i in 0..4 {
            b.exited(t + Duration::from_millis(i), Duration::ZERO, 0.5);
        }
        // Stable for 10 s: back to the first delay, the count forgotten.
        assert_eq!(
            b.exited(t + Duration::from_secs(20), Duration::from_secs(15), 0.5),
            Verdict::RestartAfter(Duration::from_millis(100))
        );
        // Crashes older than the window do not count.
        let mut b = Backoff::new(policy());
        for i in 0..4 {
            b.exited(t + Duration::from_secs(i * 61), Duration::ZERO, 0.5);
        }
        assert!(matches!(
            b.exited(t + Duration::from_secs(4 * 61), Duration::ZERO, 0.5),
            Verdict::RestartAfter(_)
        ));
    }
}
