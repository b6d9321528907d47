//! RFC 3261 timer values (T1, T2, T4) and the timers derived from them.

use std::time::Duration;

/// The three base values every RFC 3261 transaction timer is derived from (section 17, table 4).
///
/// The defaults are the RFC's: T1 = 500 ms (RTT estimate), T2 = 4 s (cap on non-INVITE and
/// response retransmission intervals), T4 = 5 s (how long a message may live in the network).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// Round-trip time estimate; first retransmission interval.
    pub t1: Duration,
    /// Maximum retransmission interval for non-INVITE requests and INVITE responses.
    pub t2: Duration,
    /// Maximum duration a message remains in the network.
    pub t4: Duration,
}

impl TimerConfig {
    /// 64*T1: Timers B, F, H, J (UDP), L and M.
    pub fn transaction_timeout(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// Timer D: wait for response retransmissions in an INVITE client (>= 32 s on UDP, 0 on TCP).
    pub fn timer_d(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            Duration::from_secs(32).max(self.transaction_timeout() / 2)
        }
    }

    /// Timers I and K: T4 on UDP, 0 on TCP.
    pub fn timer_i_k(&self, reliable: bool) -> Duration {
        if reliable { Duration::ZERO } else { self.t4 }
    }

    /// Timer J: 64*T1 on UDP, 0 on TCP.
    pub fn timer_j(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.transaction_timeout()
        }
    }
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_rfc3261() {
        let config = TimerConfig::default();
        assert_eq!(config.transaction_timeout(), Duration::from_secs(32));
        assert_eq!(config.timer_d(false), Duration::from_secs(32));
        assert_eq!(config.timer_d(true), Duration::ZERO);
        assert_eq!(config.timer_i_k(false), Duration::from_secs(5));
        assert_eq!(config.timer_j(true), Duration::ZERO);
    }
}
