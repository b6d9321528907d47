//! The run report: what a `call` run measured, printed for people and written as JSON.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Everything a `call` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `voxgate-loadgen <version>`.
    pub tool: String,
    /// The SIP target.
    pub target: String,
    /// Wall time of the run.
    pub duration_seconds: f64,
    /// What was asked for.
    pub settings: Settings,
    /// Call outcomes.
    pub calls: CallCounts,
    /// INVITE sent -> 200 OK received.
    pub setup_ms: Percentiles,
    /// RTP sent -> its echo received.
    pub media_rtt_ms: Percentiles,
    /// Media counters.
    pub rtp: RtpCounts,
    /// SIP datagrams on the wire.
    pub sip: SipCounts,
    /// Limits checked and the ones exceeded.
    pub verdict: Verdict,
}

/// The run's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Calls per second offered.
    pub rate: f64,
    /// Most calls up at once.
    pub concurrency: u64,
    /// Calls to place.
    pub total: u64,
    /// How long each answered call is held.
    pub hold_seconds: f64,
    /// Payload type offered first.
    pub codec: String,
    /// Seed of Call-IDs, tags and SSRCs (`--seed` repeats the run).
    pub seed: u64,
}

/// Call outcomes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallCounts {
    /// INVITEs sent.
    pub attempted: u64,
    /// 2xx received.
    pub answered: u64,
    /// Answered, held, and ended by our BYE with a 2xx.
    pub completed: u64,
    /// Final non-2xx responses, by status code.
    pub rejected: BTreeMap<u16, u64>,
    /// No final response in time (Timer B, or the answer timeout).
    pub timed_out: u64,
    /// Answered calls that went wrong: ended by the far side before the hold time, bad SDP,
    /// BYE not answered.
    pub failed: u64,
    /// Why calls failed, with counts.
    pub failure_reasons: BTreeMap<String, u64>,
    /// Calls started per second, measured.
    pub achieved_rate: f64,
    /// Most calls up at once, measured.
    pub peak_concurrency: u64,
}

impl CallCounts {
    /// Calls rejected with any status.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// (failed + timed out) / attempted; rejections are reported apart, since a 503 at a cap is
    /// the right answer, not a fault.
    pub fn failure_rate(&self) -> f64 {
        ratio(self.failed + self.timed_out, self.attempted)
    }
}

/// Media counters over all calls.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RtpCounts {
    /// Packets sent.
    pub sent: u64,
    /// Echoed packets received.
    pub received: u64,
    /// sent - received (never negative).
    pub lost: u64,
    /// lost / sent.
    pub loss_ratio: f64,
    /// Packets received that were not our echo (foreign SSRC or no stamp).
    pub foreign: u64,
    /// Sends the kernel refused (socket buffer full): the loadgen could not keep up.
    pub send_errors: u64,
    /// RFC 3550 interarrival jitter of the echoed streams, mean over calls, in ms.
    pub jitter_mean_ms: f64,
    /// The largest per-call jitter, in ms.
    pub jitter_max_ms: f64,
}

/// SIP datagrams on the wire.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SipCounts {
    /// Datagrams sent, retransmissions included.
    pub sent: u64,
    /// Datagrams received.
    pub received: u64,
    /// Datagrams that did not parse.
    pub malformed: u64,
}

/// Limits checked and the ones exceeded.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// Whether no limit was exceeded.
    pub passed: bool,
    /// One line per exceeded limit.
    pub violations: Vec<String>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of a histogram recorded in microseconds.
    pub fn from_micros(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: histogram.len(),
            min: ms(histogram.min()),
            mean: histogram.mean() / 1000.0,
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 0 {
            return f.write_str("no samples");
        }
        write!(
            f,
            "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n={})",
            self.p50, self.p90, self.p99, self.p999, self.max, self.count
        )
    }
}

/// The limits a run is judged against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Most (failed + timed out) / attempted allowed.
    pub max_failure_rate: Option<f64>,
    /// Most RTP lost / sent allowed.
    pub max_loss: Option<f64>,
}

impl Report {
    /// Fills `verdict` from `limits`.
    pub fn judge(&mut self, limits: Limits) {
        let mut violations = Vec::new();
        if let Some(max) = limits.max_failure_rate {
            let rate = self.calls.failure_rate();
            if rate > max {
                violations.push(format!(
                    "failure rate {:.4} exceeds --max-failure-rate {max}",
                    rate
                ));
            }
        }
        if let Some(max) = limits.max_loss
            && self.rtp.loss_ratio > max
        {
            violations.push(format!(
                "RTP loss {:.6} exceeds --max-loss {max}",
                self.rtp.loss_ratio
            ));
        }
        self.verdict = Verdict {
            passed: violations.is_empty(),
            violations,
        };
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.calls;
        writeln!(
            f,
            "{} -> {} in {:.1} s (seed {})",
            self.tool, self.target, self.duration_seconds, self.settings.seed
        )?;
        writeln!(
            f,
            "calls     attempted {}  answered {}  completed {}  rejected {}  timed out {}  failed {}",
            c.attempted,
            c.answered,
            c.completed,
            c.rejected_total(),
            c.timed_out,
            c.failed
        )?;
        writeln!(
            f,
            "          rate {:.1}/s (asked {:.1}/s)  peak concurrency {} (asked {})",
            c.achieved_rate, self.settings.rate, c.peak_concurrency, self.settings.concurrency
        )?;
        write_outcomes(f, &c.rejected, &c.failure_reasons)?;
        writeln!(f, "setup     {}", self.setup_ms)?;
        writeln!(f, "media rtt {}", self.media_rtt_ms)?;
        writeln!(f, "rtp       {}", self.rtp)?;
        writeln!(
            f,
            "sip       sent {}  received {}  malformed {}",
            self.sip.sent, self.sip.received, self.sip.malformed
        )?;
        if self.verdict.passed {
            write!(f, "verdict   PASS")
        } else {
            write!(f, "verdict   FAIL: {}", self.verdict.violations.join("; "))
        }
    }
}

impl fmt::Display for RtpCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {}  received {}  lost {} ({:.4} %)  foreign {}  jitter mean {:.3} ms max {:.3} ms",
            self.sent,
            self.received,
            self.lost,
            self.loss_ratio * 100.0,
            self.foreign,
            self.jitter_mean_ms,
            self.jitter_max_ms
        )
    }
}

/// The summary lines of refused calls by status code and failed ones by reason.
pub fn write_outcomes(
    f: &mut fmt::Formatter<'_>,
    rejected: impl IntoIterator<Item = (impl fmt::Display, impl fmt::Display)>,
    failure_reasons: impl IntoIterator<Item = (impl fmt::Display, impl fmt::Display)>,
) -> fmt::Result {
    for (code, count) in rejected {
        writeln!(f, "          rejected {code}: {count}")?;
    }
    for (reason, count) in failure_reasons {
        writeln!(f, "          failed ({reason}): {count}")?;
    }
    Ok(())
}

/// `part / whole`, 0 when `whole` is 0.
pub fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            tool: "voxgate-loadgen 0".into(),
            target: "127.0.0.1:5080".into(),
            duration_seconds: 1.0,
            settings: Settings {
                rate: 10.0,
                concurrency: 10,
                total: 100,
                hold_seconds: 1.0,
                codec: "PCMU".into(),
                seed: 1,
            },
            calls: CallCounts {
                attempted: 100,
                answered: 90,
                completed: 88,
                rejected: BTreeMap::from([(503, 8)]),
                timed_out: 0,
                failed: 2,
                ..CallCounts::default()
            },
            setup_ms: Percentiles::default(),
            media_rtt_ms: Percentiles::default(),
            rtp: RtpCounts {
                sent: 1000,
                received: 999,
                lost: 1,
                loss_ratio: 0.001,
                ..RtpCounts::default()
            },
            sip: SipCounts::default(),
            verdict: Verdict::default(),
        }
    }

    #[test]
    fn limits_judge_the_run() {
        let mut r = report();
        r.judge(Limits::default());
        assert!(r.verdict.passed);
        r.judge(Limits {
            max_failure_rate: Some(0.01),
            max_loss: Some(0.0),
        });
        assert!(!r.verdict.passed);
        assert_eq!(r.verdict.violations.len(), 2, "{:?}", r.verdict.violations);
        r.judge(Limits {
            max_failure_rate: Some(0.02),
            max_loss: Some(0.001),
        });
        assert!(r.verdict.passed, "{:?}", r.verdict.violations);
        assert!(r.to_string().contains("rejected 503: 8"));
    }

    #[test]
    fn percentiles_in_ms() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let p = Percentiles::from_micros(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 0.5).abs() < 0.01, "{p:?}");
        assert!((p.max - 1.0).abs() < 0.01);
        assert_eq!(
            Percentiles::from_micros(&Histogram::new(3).unwrap()).count,
            0
        );
    }
}
