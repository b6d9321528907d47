//! The `whip` run report: what the WHIP sessions measured, printed for people and written as
//! JSON.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::report::{Percentiles, write_outcomes};

/// Everything a `whip` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct WhipReport {
    /// `voxgate-loadgen <version>`.
    pub tool: String,
    /// The WHIP endpoint.
    pub target: String,
    /// Wall time of the run.
    pub duration_seconds: f64,
    /// What was asked for.
    pub settings: WhipSettings,
    /// Session outcomes.
    pub sessions: SessionCounts,
    /// Status codes of the `POST`s, by code (`"201": 5`).
    pub post_statuses: BTreeMap<u16, u64>,
    /// Status codes of the `DELETE`s, by code; sessions that never got a resource send none.
    pub delete_statuses: BTreeMap<u16, u64>,
    /// Setup times.
    pub setup_ms: SetupTimes,
    /// Audio round trip: a cycle's onset sent -> heard in the echo (see `whip::signal`).
    pub media_rtt_ms: Percentiles,
    /// Media counters.
    pub rtp: WhipRtpCounts,
    /// The tone check.
    pub tone: ToneCounts,
    /// Whether every session passed.
    pub verdict: WhipVerdict,
}

/// The run's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct WhipSettings {
    /// Most sessions up at once.
    pub concurrency: u64,
    /// Sessions to run.
    pub total: u64,
    /// Sessions started per second.
    pub rate: f64,
    /// How long each connected session sends and receives.
    pub hold_seconds: f64,
    /// The tone sent, Hz.
    pub tone_hz: f64,
    /// Whether telephone-event/48000 was offered.
    pub telephone_event: bool,
    /// Whether a bearer token was sent.
    pub token: bool,
}

/// Session outcomes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionCounts {
    /// `POST`s sent.
    pub attempted: u64,
    /// Answered with 201 and an SDP answer.
    pub answered: u64,
    /// ICE and DTLS completed.
    pub connected: u64,
    /// Sessions with audio back, the tone found and the resource deleted.
    pub completed: u64,
    /// Sessions that went wrong (any reason below).
    pub failed: u64,
    /// Why sessions failed, with counts (the first failure of each session).
    pub failure_reasons: BTreeMap<String, u64>,
    /// Sessions started per second, measured.
    pub achieved_rate: f64,
    /// Most sessions up at once, measured.
    pub peak_concurrency: u64,
}

/// Setup times, from the `POST` being sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SetupTimes {
    /// `POST` sent -> `201` received.
    pub post_to_201: Percentiles,
    /// `POST` sent -> ICE and DTLS connected.
    pub post_to_connected: Percentiles,
    /// `POST` sent -> first RTP packet received.
    pub post_to_first_audio: Percentiles,
}

/// Media counters over all sessions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WhipRtpCounts {
    /// Opus packets sent.
    pub sent: u64,
    /// Packets received (the echo, after the gateway's rewriting).
    pub received: u64,
    /// Packets missing from the received streams' sequence numbers.
    pub lost: u64,
    /// lost / (received + lost).
    pub loss_ratio: f64,
    /// RFC 3550 interarrival jitter of the received streams, mean over sessions, in ms.
    pub jitter_mean_ms: f64,
    /// The largest per-session jitter, in ms.
    pub jitter_max_ms: f64,
    /// Received Opus payloads that did not decode.
    pub decode_errors: u64,
}

/// The tone check over all sessions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ToneCounts {
    /// The frequency sent, Hz.
    pub sent_hz: f64,
    /// Sessions whose echo carried the tone (80 % of their checked windows).
    pub passed: u64,
    /// Connected sessions whose echo did not.
    pub failed: u64,
    /// 80 ms windows of echo checked, one per second heard.
    pub windows: u64,
    /// Windows where the tone held at least half the power.
    pub windows_passed: u64,
    /// Mean share of the power at the dominant frequency, over sessions.
    pub ratio_mean: f64,
    /// The smallest per-session minimum share of the sent tone (0: another frequency dominated).
    pub ratio_min: f64,
    /// The dominant frequency each session found most often, by frequency (Hz, rounded).
    pub found_hz: BTreeMap<u32, u64>,
}

/// Whether every session passed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WhipVerdict {
    /// No session failed.
    pub passed: bool,
}

impl fmt::Display for WhipReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.sessions;
        writeln!(
            f,
            "{} -> {} in {:.1} s",
            self.tool, self.target, self.duration_seconds
        )?;
        writeln!(
            f,
            "sessions  attempted {}  answered {}  connected {}  completed {}  failed {}",
            s.attempted, s.answered, s.connected, s.completed, s.failed
        )?;
        writeln!(
            f,
            "          rate {:.1}/s (asked {:.1}/s)  peak concurrency {} (asked {})",
            s.achieved_rate, self.settings.rate, s.peak_concurrency, self.settings.concurrency
        )?;
        write_outcomes(f, std::iter::empty::<(u16, u64)>(), &s.failure_reasons)?;
        writeln!(
            f,
            "http      POST {}  DELETE {}",
            statuses(&self.post_statuses),
            statuses(&self.delete_statuses)
        )?;
        writeln!(f, "201       {}", self.setup_ms.post_to_201)?;
        writeln!(f, "connected {}", self.setup_ms.post_to_connected)?;
        writeln!(f, "1st audio {}", self.setup_ms.post_to_first_audio)?;
        writeln!(f, "audio rtt {}", self.media_rtt_ms)?;
        let r = &self.rtp;
        writeln!(
            f,
            "rtp       sent {}  received {}  lost {} ({:.4} %)  jitter mean {:.3} ms max {:.3} ms  \
             undecodable {}",
            r.sent,
            r.received,
            r.lost,
            r.loss_ratio * 100.0,
            r.jitter_mean_ms,
            r.jitter_max_ms,
            r.decode_errors
        )?;
        let t = &self.tone;
        writeln!(
            f,
            "tone      {} Hz: passed {}  failed {}  windows {}/{}  ratio mean {:.3} min {:.3}  found {}",
            t.sent_hz,
            t.passed,
            t.failed,
            t.windows_passed,
            t.windows,
            t.ratio_mean,
            t.ratio_min,
            statuses(&t.found_hz)
        )?;
        if self.verdict.passed {
            write!(f, "verdict   PASS")
        } else {
            write!(f, "verdict   FAIL: {} session(s) failed", s.failed)
        }
    }
}

/// `201 x5, 503 x2`, or `none`.
pub fn statuses<K: fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(k, n)| format!("{k} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
