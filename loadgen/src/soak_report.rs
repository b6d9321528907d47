//! The soak report: what a `soak` run did to the Proxy and what it saw, printed for people and
//! written as JSON.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::report::{Percentiles, RtpCounts, SipCounts, Verdict};
use crate::scrape::RssSource;
use crate::whip::report::{SetupTimes, ToneCounts, WhipRtpCounts, statuses};

/// Everything a `soak` run measured, and its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// `voxgate-loadgen <version>`.
    pub tool: String,
    /// The SIP target.
    pub target: String,
    /// Wall time of the run, settling included.
    pub duration_seconds: f64,
    /// What was asked for.
    pub settings: SoakSettings,
    /// Call outcomes.
    pub calls: SoakCalls,
    /// INVITE sent -> 200 OK received, answered calls.
    pub setup_ms: Percentiles,
    /// RTP sent -> its echo received.
    pub media_rtt_ms: Percentiles,
    /// Media of answered calls, except the ones dropped by the fault.
    pub rtp: RtpCounts,
    /// SIP datagrams on the wire.
    pub sip: SipCounts,
    /// The WebRTC (WHIP) sessions mixed with the calls; `None` without `--whip-target`.
    pub webrtc: Option<SoakWebrtc>,
    /// What the callers saw: the cap judged from outside the Proxy.
    pub callers: CallersSide,
    /// What the Proxy's `/metrics` said.
    pub proxy: ProxySummary,
    /// The fault injected, if one was asked for.
    pub fault: Option<FaultReport>,
    /// The invariants broken, if any.
    pub verdict: Verdict,
}

/// The run's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSettings {
    /// The Proxy's `/metrics` URL.
    pub metrics: String,
    /// How long calls were placed for.
    pub duration_seconds: f64,
    /// Mean calls started per second (Poisson arrivals).
    pub rate: f64,
    /// Shortest hold.
    pub hold_min_seconds: f64,
    /// Longest hold.
    pub hold_max_seconds: f64,
    /// Most calls up at once on the loadgen's side.
    pub concurrency: u64,
    /// An answered call whose echo stops this long counts as dropped.
    pub media_timeout_seconds: f64,
    /// How long the Proxy may take to get back to 0 sessions after the last call.
    pub grace_seconds: f64,
    /// RSS after this long is the baseline of the growth check.
    pub warmup_seconds: f64,
    /// Most RTP loss allowed.
    pub max_loss: Option<f64>,
    /// Most RSS growth allowed, as a fraction of the warm-up RSS.
    pub max_rss_growth: Option<f64>,
    /// Payload type offered first.
    pub codec: String,
    /// The Proxy's process, for RSS.
    pub proxy_pid: Option<u32>,
    /// Seed of arrivals, holds, Call-IDs, tags and SSRCs (`--seed` repeats the run).
    pub seed: u64,
}

/// Call outcomes of a soak.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakCalls {
    /// INVITEs sent.
    pub attempted: u64,
    /// 2xx received (the calls dropped by the fault included).
    pub answered: u64,
    /// Answered, held, and ended by our BYE with a 2xx.
    pub completed: u64,
    /// Final non-2xx responses, by status code (a 503 at the cap is expected, not a failure).
    pub rejected: BTreeMap<u16, u64>,
    /// No final response in time.
    pub timed_out: u64,
    /// Calls that went wrong, the `dropped` ones included; not the ones dropped by the fault.
    pub failed: u64,
    /// Why calls failed, with counts.
    pub failure_reasons: BTreeMap<String, u64>,
    /// Answered calls ended early, by the far side or because their media stopped, other than
    /// by the fault: each is a violation.
    pub dropped: u64,
    /// Answered calls lost with the killed Backend (not violations): dropped, or held to their
    /// end with the echo cut at the kill. Counted in `answered` only, their RTP left out of `rtp`.
    pub dropped_by_fault: u64,
    /// Calls started per second, measured.
    pub achieved_rate: f64,
    /// Most calls up at once on the loadgen's side.
    pub peak_concurrency: u64,
}

impl SoakCalls {
    /// Calls rejected with any status.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// The WebRTC sessions of a soak: arrivals drawn from the same Poisson process and holds as the
/// calls, a `--whip-share` of them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakWebrtc {
    /// The WHIP endpoint.
    pub target: String,
    /// The fraction of arrivals that were WebRTC sessions.
    pub share: f64,
    /// Session outcomes.
    pub sessions: SoakSessions,
    /// Setup times, from the `POST`.
    pub setup_ms: SetupTimes,
    /// Audio round trip: a tone onset sent -> heard in the echo.
    pub media_rtt_ms: Percentiles,
    /// Media of connected sessions, except the ones lost with the killed Backend (the loss
    /// checked against `--max-loss` together with the calls').
    pub rtp: WhipRtpCounts,
    /// The tone check of connected sessions.
    pub tone: ToneCounts,
}

/// WebRTC session outcomes of a soak.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakSessions {
    /// `POST`s sent.
    pub attempted: u64,
    /// `POST`s answered other than 201, by status code (a 503 at the cap is expected, not a
    /// failure).
    pub refused: BTreeMap<u16, u64>,
    /// Answered 201 (the sessions lost with the killed Backend included).
    pub answered: u64,
    /// ICE and DTLS completed.
    pub connected: u64,
    /// Held with audio back and the tone found, and deleted.
    pub completed: u64,
    /// Sessions that went wrong after the `POST` was sent, the `dropped` ones included; not the
    /// refused ones nor the ones lost with the killed Backend.
    pub failed: u64,
    /// Why sessions failed, with counts.
    pub failure_reasons: BTreeMap<String, u64>,
    /// Connected sessions whose connection failed, or that heard no audio for
    /// `--media-timeout`, before their hold time, other than by the fault: each is a violation.
    pub dropped: u64,
    /// Connected sessions lost with the killed Backend (not violations); their RTP left out.
    pub dropped_by_fault: u64,
    /// Most sessions up at once on the loadgen's side.
    pub peak_concurrency: u64,
}

impl SoakSessions {
    /// Sessions refused with any status.
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

/// Calls and WebRTC sessions answered and up at once, as their callers saw them (see
/// [`crate::occupancy`](mod@crate::occupancy)), against the cap and against the Proxy's own gauge.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallersSide {
    /// Sessions answered in this run.
    pub answered: u64,
    /// Most sessions answered and up at once.
    pub peak_up: u64,
    /// When `peak_up` was first reached, seconds into the run.
    pub peak_up_at_seconds: Option<f64>,
    /// The cap judged against: the highest `voxgate_sessions_limit` read.
    pub cap: Option<f64>,
    /// Readings of `voxgate_sessions_active` below the callers' count all through the reading
    /// (the gauge under-counts).
    pub gauge_below_samples: u64,
    /// The first such reading.
    pub gauge_below_first: Option<GaugeBelow>,
    /// Where the spans were written (`--up-log`), for `voxgate-loadgen occupancy`.
    pub up_log: Option<String>,
}

/// A reading of `voxgate_sessions_active` lower than the sessions the callers had up.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GaugeBelow {
    /// Seconds into the run.
    pub at_seconds: f64,
    /// `voxgate_sessions_active`.
    pub gauge: f64,
    /// The fewest sessions the callers had up while the reading was taken.
    pub callers: u64,
}

/// The Proxy's `/metrics` samples, summed up.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProxySummary {
    /// Samples read.
    pub samples: u64,
    /// Scrapes that failed.
    pub failed_samples: u64,
    /// Highest `voxgate_sessions_active`.
    pub max_active: Option<f64>,
    /// `voxgate_sessions_limit` (the last seen).
    pub limit: Option<f64>,
    /// Highest `voxgate_drain_remaining_sessions`.
    pub max_drain_remaining: Option<f64>,
    /// Samples with `voxgate_sessions_active > voxgate_sessions_limit`.
    pub cap_exceeded_samples: u64,
    /// When the cap was first seen exceeded, seconds into the run.
    pub cap_first_exceeded_at_seconds: Option<f64>,
    /// `voxgate_sessions_active` after the last call ended and the grace period (None when the
    /// Proxy was gone).
    pub active_at_end: Option<f64>,
    /// Growth of `voxgate_sessions_rejected_total` over the run, by reason.
    pub rejected_by_reason: BTreeMap<String, f64>,
    /// Growth of `voxgate_rtp_packets_total` over the run, both directions.
    pub rtp_packets: Option<f64>,
    /// Resident memory.
    pub rss: RssSummary,
    /// How the Proxy ended the run.
    pub end: ProxyEnd,
    /// When it was seen gone, seconds into the run.
    pub exited_at_seconds: Option<f64>,
}

/// The Proxy's resident memory over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RssSummary {
    /// Where it was read.
    pub source: RssSource,
    /// The first reading after the warm-up.
    pub warmup_bytes: Option<u64>,
    /// The last reading.
    pub end_bytes: Option<u64>,
    /// The highest reading.
    pub max_bytes: Option<u64>,
    /// `end / warmup - 1`.
    pub growth: Option<f64>,
}

/// How the Proxy ended the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyEnd {
    /// Still up at the end.
    #[default]
    Running,
    /// Exited after the declared drain.
    ExitedAfterDrain,
    /// Drained but still up after its last call and the grace period.
    DrainedButRunning,
    /// Gone (or `/metrics` unreachable) without a declared drain.
    Lost,
}

/// A fault injected in the middle of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGTERM to the Proxy: it drains.
    Drain,
    /// SIGKILL to a Backend.
    KillBackend,
}

/// What the fault did.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    /// Which fault.
    pub kind: FaultKind,
    /// The process signalled.
    pub pid: u32,
    /// When it was asked for, seconds into the run.
    pub at_seconds: f64,
    /// When the signal was sent (None: the run ended first, or it failed).
    pub fired_at_seconds: Option<f64>,
    /// Why the signal could not be sent.
    pub error: Option<String>,
    /// Calls whose INVITE went out after the signal.
    pub calls_started_after: PhaseCounts,
    /// WebRTC sessions whose `POST` went out after the signal (`rejected`: refused); `None`
    /// without `--whip-target`.
    pub webrtc_sessions_started_after: Option<PhaseCounts>,
}

/// Outcomes of the calls started in one phase of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseCounts {
    /// INVITEs sent.
    pub attempted: u64,
    /// 2xx received.
    pub answered: u64,
    /// Held and ended by our BYE.
    pub completed: u64,
    /// Final non-2xx.
    pub rejected: u64,
    /// Timed out or failed.
    pub failed: u64,
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.calls;
        writeln!(
            f,
            "{} soak -> {} in {:.1} s (seed {})",
            self.tool, self.target, self.duration_seconds, self.settings.seed
        )?;
        writeln!(
            f,
            "calls     attempted {}  answered {}  completed {}  rejected {}  timed out {}  failed {}  \
             dropped {}  dropped by fault {}",
            c.attempted,
            c.answered,
            c.completed,
            c.rejected_total(),
            c.timed_out,
            c.failed,
            c.dropped,
            c.dropped_by_fault
        )?;
        writeln!(
            f,
            "          rate {:.1}/s (asked {:.1}/s)  peak concurrency {}",
            c.achieved_rate, self.settings.rate, c.peak_concurrency
        )?;
        crate::report::write_outcomes(f, &c.rejected, &c.failure_reasons)?;
        writeln!(f, "setup     {}", self.setup_ms)?;
        writeln!(f, "media rtt {}", self.media_rtt_ms)?;
        writeln!(f, "rtp       {}", self.rtp)?;
        if let Some(webrtc) = &self.webrtc {
            let s = &webrtc.sessions;
            writeln!(
                f,
                "webrtc    attempted {}  refused {}  answered {}  connected {}  completed {}  \
                 failed {}  dropped {}  dropped by fault {}  ({:.0} % of arrivals, peak {})",
                s.attempted,
                s.refused_total(),
                s.answered,
                s.connected,
                s.completed,
                s.failed,
                s.dropped,
                s.dropped_by_fault,
                webrtc.share * 100.0,
                s.peak_concurrency
            )?;
            if !s.refused.is_empty() {
                writeln!(f, "          refused: {}", statuses(&s.refused))?;
            }
            crate::report::write_outcomes(f, std::iter::empty::<(u16, u64)>(), &s.failure_reasons)?;
            writeln!(
                f,
                "          connected {}",
                webrtc.setup_ms.post_to_connected
            )?;
            writeln!(f, "          audio rtt {}", webrtc.media_rtt_ms)?;
            let r = &webrtc.rtp;
            writeln!(
                f,
                "          rtp sent {}  received {}  lost {} ({:.4} %)  jitter mean {:.3} ms  \
                 tone passed {} failed {}",
                r.sent,
                r.received,
                r.lost,
                r.loss_ratio * 100.0,
                r.jitter_mean_ms,
                webrtc.tone.passed,
                webrtc.tone.failed
            )?;
        }
        let up = &self.callers;
        writeln!(
            f,
            "callers   answered {}  peak up at once {}{} / cap {}  gauge below the callers in {} \
             reading(s)",
            up.answered,
            up.peak_up,
            up.peak_up_at_seconds
                .map_or_else(String::new, |at| format!(" (at {at:.1} s)")),
            number(up.cap),
            up.gauge_below_samples
        )?;
        let p = &self.proxy;
        writeln!(
            f,
            "proxy     samples {} (failed {})  max active {} / limit {}  active at end {}  {}",
            p.samples,
            p.failed_samples,
            number(p.max_active),
            number(p.limit),
            number(p.active_at_end),
            match p.end {
                ProxyEnd::Running => "still up".to_owned(),
                ProxyEnd::ExitedAfterDrain => format!(
                    "exited after the drain at {:.1} s",
                    p.exited_at_seconds.unwrap_or_default()
                ),
                ProxyEnd::DrainedButRunning => "drained but still up".to_owned(),
                ProxyEnd::Lost =>
                    format!("lost at {:.1} s", p.exited_at_seconds.unwrap_or_default()),
            }
        )?;
        for (reason, count) in &p.rejected_by_reason {
            writeln!(f, "          rejected ({reason}): {count}")?;
        }
        match (p.rss.warmup_bytes, p.rss.end_bytes) {
            (Some(warmup), Some(end)) => writeln!(
                f,
                "          rss warm-up {:.1} MiB  end {:.1} MiB ({:+.1} %)  max {:.1} MiB",
                mib(warmup),
                mib(end),
                p.rss.growth.unwrap_or_default() * 100.0,
                mib(p.rss.max_bytes.unwrap_or(end))
            )?,
            _ => writeln!(f, "          rss not measured")?,
        }
        if let Some(fault) = &self.fault {
            let kind = match fault.kind {
                FaultKind::Drain => "drain (SIGTERM)",
                FaultKind::KillBackend => "Backend kill (SIGKILL)",
            };
            let after = &fault.calls_started_after;
            match (fault.fired_at_seconds, &fault.error) {
                (Some(at), _) => writeln!(
                    f,
                    "fault     {kind} of pid {} at {at:.1} s; calls started after: {} (answered {}, \
                     completed {}, rejected {}, failed {})",
                    fault.pid,
                    after.attempted,
                    after.answered,
                    after.completed,
                    after.rejected,
                    after.failed
                )?,
                (None, Some(error)) => writeln!(f, "fault     {kind} failed: {error}")?,
                (None, None) => writeln!(f, "fault     {kind} not sent: the run ended first")?,
            }
            if let (Some(after), Some(_)) =
                (&fault.webrtc_sessions_started_after, fault.fired_at_seconds)
            {
                writeln!(
                    f,
                    "          webrtc sessions started after: {} (answered {}, completed {}, \
                     refused {}, failed {})",
                    after.attempted, after.answered, after.completed, after.rejected, after.failed
                )?;
            }
        }
        if self.verdict.passed {
            write!(f, "verdict   PASS")
        } else {
            write!(f, "verdict   FAIL: {}", self.verdict.violations.join("; "))
        }
    }
}

fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v}"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
