//! OPTIONS probing bookkeeping: consecutive probe outcomes -> up/down with hysteresis.

use std::time::Duration;

/// How a Backend is probed and how many outcomes in a row flip its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between probes (the proxy schedules them).
    pub interval: Duration,
    /// Consecutive failed probes that mark an up Backend down; 0 counts as 1.
    pub failures_to_down: u32,
    /// Consecutive answered probes that mark a down Backend up; 0 counts as 1.
    pub successes_to_up: u32,
}

impl Default for HealthConfig {
    /// Every 5 s; down after 3 failures (about 15 s), up again after 2 successes.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            failures_to_down: 3,
            successes_to_up: 2,
        }
    }
}

/// One Backend's health as seen through probes. The proxy sends the OPTIONS, decides what counts
/// as a success (any final response, or a timeout as a failure) and reports it here; the outcome
/// feeds [`BackendPicker::set_up`](crate::picker::BackendPicker::set_up) when the state flips.
///
/// A tracker starts up (optimistic): after a proxy restart or a config reload, holding every
/// Backend out until `successes_to_up` probes have answered would turn all callers away for
/// seconds, while a dead Backend costs one failover per call until `failures_to_down` probes fail.
#[derive(Debug)]
pub struct HealthTracker {
    config: HealthConfig,
    up: bool,
    /// Consecutive outcomes pointing away from `up`; reset by any outcome agreeing with it.
    streak: u32,
}

impl HealthTracker {
    /// A tracker that starts up.
    pub fn new(config: HealthConfig) -> Self {
        Self {
            config,
            up: true,
            streak: 0,
        }
    }

    /// The current verdict.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The configuration, for scheduling probes.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// Records one probe outcome; returns Some(new_state) when the state flips (after N
    /// consecutive failures / M consecutive successes).
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up {
            self.config.failures_to_down
        } else {
            self.config.successes_to_up
        };
        if self.streak >= needed.max(1) {
            self.up = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_up_and_defaults() {
        let tracker = HealthTracker::new(HealthConfig::default());
        assert!(tracker.is_up());
        assert_eq!(tracker.config().interval, Duration::from_secs(5));
        assert_eq!(
            (
                tracker.config().failures_to_down,
                tracker.config().successes_to_up
            ),
            (3, 2)
        );
    }

    #[test]
    fn flips_after_consecutive_outcomes_only() {
        let mut tracker = HealthTracker::new(HealthConfig::default());
        assert_eq!(tracker.record(false), None);
        assert_eq!(tracker.record(false), None);
        // A success in between restarts the count.
        assert_eq!(tracker.record(true), None);
        assert_eq!(tracker.record(false), None);
        assert_eq!(tracker.record(false), None);
        assert_eq!(tracker.record(false), Some(false));
        assert!(!tracker.is_up());
        assert_eq!(tracker.record(false), None);
        assert_eq!(tracker.record(true), None);
        assert_eq!(tracker.record(false), None);
        assert_eq!(tracker.record(true), None);
        assert_eq!(tracker.record(true), Some(true));
        assert!(tracker.is_up());
        assert_eq!(tracker.record(true), None);
    }

    #[test]
    fn zero_thresholds_flip_on_first_outcome() {
        let config = HealthConfig {
            interval: Duration::from_secs(1),
            failures_to_down: 0,
            successes_to_up: 0,
        };
        let mut tracker = HealthTracker::new(config);
        assert_eq!(tracker.record(false), Some(false));
        assert_eq!(tracker.record(true), Some(true));
    }
}
