//! Call records: one JSON object per ended session (answered, refused, cancelled or failed; SIP
//! or WebRTC), written as a line to a size-rotated file and, when `records.webhook` is set,
//! POSTed there through an on-disk spool.
//!
//! A session's task fills a [`Draft`] as the engine reports its steps (the far INVITEs, ringing,
//! the answer) and turns it into a [`CallRecord`] when the session ends, adding what the relay
//! (or the WebRTC bridge) received. [`Records::submit`] hands the record to the writer thread
//! through a bounded queue and never blocks the session: a full queue drops the record and counts
//! it. The writer thread ([`writer`]) appends the line to the file and, with a webhook, writes the
//! record into the spool; the webhook task ([`webhook`]) POSTs the spool oldest first and deletes
//! each record once answered 2xx. Delivery is at least once; `record_id` is unique per record (the
//! node, this process's start and the session id) so that a receiver de-duplicates on it.
//!
//! Where each field comes from, and what is approximate, is on [`CallRecord`]'s fields and in
//! README's "Call records".

pub mod mos;
pub mod webhook;
pub mod writer;

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;
use voxgate_core::{RegionId, SessionId};
use voxgate_media::stats::StreamStats;
use voxgate_session::{End, Progress, Side};
use voxgate_sip::sdp::{Codec, CodecKind};

pub use crate::webhook_url::WebhookUrl;

use crate::config::RecordsConfig;
use crate::metrics;

/// Records waiting for the writer thread at most.
pub const QUEUE: usize = 4096;

/// What kind of session a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// A SIP INVITE from a trunk or softphone, bridged to a Backend.
    Sip,
    /// A Backend's INVITE out through a trunk.
    SipOutbound,
    /// A call `POST /v1/calls` placed: a number dialled, then bridged to a Backend.
    Originated,
    /// A WHIP client bridged to a Backend.
    Webrtc,
}

/// Who ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedBy {
    /// The caller hung up, cancelled, refused (a dialled number) or went away (a WebRTC client).
    Caller,
    /// The Backend (or the trunk of an outbound call) hung up or refused.
    Backend,
    /// This node: a timeout, no Backend, the node cap, an unusable SDP, an operator, shutdown.
    Node,
}

impl SessionKind {
    /// As in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Sip => "sip",
            SessionKind::SipOutbound => "sip_outbound",
            SessionKind::Originated => "originated",
            SessionKind::Webrtc => "webrtc",
        }
    }
}

impl EndedBy {
    /// As in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            EndedBy::Caller => "caller",
            EndedBy::Backend => "backend",
            EndedBy::Node => "node",
        }
    }
}

impl From<Option<Side>> for EndedBy {
    fn from(side: Option<Side>) -> Self {
        match side {
            Some(Side::Caller) => EndedBy::Caller,
            Some(Side::Backend) => EndedBy::Backend,
            None => EndedBy::Node,
        }
    }
}

/// One ended session. Times are RFC 3339 UTC with milliseconds; durations whole milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallRecord {
    /// Unique per record: `{node}-{process start, unix ms, hex}-{session}`.
    pub record_id: String,
    /// The session id (as in logs and the admin API); 0 for a session refused before it got one.
    pub session_id: u64,
    /// What kind of session.
    pub kind: SessionKind,
    /// This node (`node.id`).
    pub node: String,
    /// The region the session was routed in.
    pub region: String,
    /// The trunk that sent the call (inbound) or carried it (outbound, originated), by name.
    pub trunk: Option<String>,
    /// Call-ID of the caller's leg (`whip:{resource}` for a WebRTC client).
    pub caller_call_id: Option<String>,
    /// Call-ID of the last far INVITE (the Backend's leg, or the trunk's for an outbound call).
    pub backend_call_id: Option<String>,
    /// The caller: its From URI (inbound), the From user we dialled with (originated),
    /// `webrtc` for a WHIP client.
    pub caller: Option<String>,
    /// The callee: the Request-URI the caller dialled, the number we dialled, the WHIP `to`.
    pub callee: Option<String>,
    /// The Backend (id) or trunk (address) that served the session: the last one called.
    pub backend: Option<String>,
    /// When the INVITE (or WHIP POST, or originate request's dialling) arrived here.
    pub arrived_at: String,
    /// The first 180/183 of a far INVITE (or of the dialled number).
    pub ringing_at: Option<String>,
    /// Both legs up.
    pub answered_at: Option<String>,
    /// The end.
    pub ended_at: String,
    /// `arrived_at` to `answered_at`.
    pub setup_ms: Option<u64>,
    /// `answered_at` to `ended_at`; 0 when never answered.
    pub duration_ms: u64,
    /// Why it ended: the `cause` label of `voxgate_sessions_ended_total`, or for a session
    /// refused before it started the `reason` of `voxgate_sessions_rejected_total`.
    pub cause: String,
    /// Who ended it.
    pub ended_by: EndedBy,
    /// The final status that decided the end, when one did (a far refusal, the dialled
    /// number's).
    pub code: Option<u16>,
    /// The final status of the caller leg (what an inbound caller was answered, what the
    /// dialled number answered); `None` for WebRTC.
    pub caller_code: Option<u16>,
    /// Every far INVITE, in order.
    pub attempts: Vec<AttemptRecord>,
    /// The codec each leg carried.
    pub codecs: Codecs,
    /// What was received from each side; `None` when no media path was set up.
    pub media: Option<MediaRecord>,
    /// The session's listening-quality estimate: the lower of the two directions' MOS, `None`
    /// without media.
    pub mos: Option<f64>,
    /// A transfer of the session: always `None` until transfer exists (see [`Draft::transfer`]).
    pub transfer: Option<TransferRecord>,
}

/// One far INVITE of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    /// The Backend's id; `None` for a trunk.
    pub backend: Option<String>,
    /// Where the INVITE went.
    pub address: String,
    /// Its dialog's Call-ID.
    pub call_id: String,
    /// Its final status (408 on a transaction timeout); `None` when given up before one came
    /// (silence, a CANCEL, the session's end).
    pub code: Option<u16>,
}

/// The codecs of both legs, as `name/clock_rate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Codecs {
    /// The caller's leg.
    pub caller: Option<String>,
    /// The Backend's leg.
    pub backend: Option<String>,
}

/// Media each way.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MediaRecord {
    /// Received from the caller (and relayed to the Backend).
    pub caller_to_backend: StreamRecord,
    /// Received from the Backend (and relayed to the caller).
    pub backend_to_caller: StreamRecord,
}

/// One direction's RTP, as this node received it (RFC 3550 receiver statistics).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamRecord {
    /// RTP packets.
    pub packets: u64,
    /// RTP bytes (header and payload).
    pub bytes: u64,
    /// Packets lost (expected minus received, RFC 3550 A.3; 0 when duplicates outnumber
    /// losses).
    pub lost: u64,
    /// `lost` over expected, percent.
    pub loss_pct: f64,
    /// Interarrival jitter (RFC 3550 A.8) at the end, ms.
    pub jitter_ms: f64,
    /// E-model MOS estimate of this direction ([`mos`]); `None` without packets.
    pub mos: Option<f64>,
}

impl StreamRecord {
    /// The record of `stats`, whose codec is `codec` (its SDP name; for the MOS parameters).
    pub fn from_stats(stats: &StreamStats, codec: Option<&str>) -> Self {
        let expected = stats.expected();
        let lost = stats.lost().min(expected);
        let loss_pct = if expected == 0 {
            0.0
        } else {
            round2(lost as f64 * 100.0 / expected as f64)
        };
        let jitter_ms = round2(stats.jitter_seconds() * 1000.0);
        let impairment = mos::CodecImpairment::for_codec(codec.unwrap_or("PCMU"));
        Self {
            packets: stats.packets(),
            bytes: stats.bytes(),
            lost,
            loss_pct,
            jitter_ms,
            mos: (stats.packets() > 0).then(|| mos::mos(impairment, loss_pct, jitter_ms)),
        }
    }
}

/// A transfer of the session. Transfer does not exist yet; the work that adds it fills this
/// through [`Draft::transfer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferRecord {
    /// Where the session was transferred (a SIP URI).
    pub target: String,
    /// What became of it (e.g. `completed`, `failed`).
    pub outcome: String,
}

/// How a session ended, as its record tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    /// The cause (or refusal reason).
    pub cause: &'static str,
    /// Who ended it.
    pub by: EndedBy,
    /// The deciding final status.
    pub code: Option<u16>,
    /// The caller leg's final status.
    pub caller_code: Option<u16>,
}

impl From<End> for Ending {
    fn from(end: End) -> Self {
        Self {
            cause: end.cause.as_str(),
            by: end.by.into(),
            code: end.code,
            caller_code: end.caller_code,
        }
    }
}

/// A session's record while the session runs.
#[derive(Debug)]
pub struct Draft {
    record: CallRecord,
    arrived: Instant,
    arrived_wall: SystemTime,
    ringing: Option<Instant>,
    answered: Option<Instant>,
    codec_names: [Option<String>; 2],
}

impl Draft {
    /// A draft for session `id` of `kind`, arrived at `arrived`, on node `records`' node.
    pub fn new(
        records: &Records,
        kind: SessionKind,
        id: Option<SessionId>,
        region: &RegionId,
        arrived: Instant,
    ) -> Self {
        // The wall clock of the arrival, from the monotonic one: times stay consistent with
        // the durations even if the wall clock steps meanwhile.
        let arrived_wall = SystemTime::now() - arrived.elapsed();
        let session_id = id.map_or(0, |id| id.0);
        let record_id = match id {
            Some(id) => format!("{}-{}", records.prefix, id.0),
            // A refusal has no session: its own sequence, apart from session ids.
            None => format!("{}-r{}", records.prefix, records.next_refusal()),
        };
        Self {
            record: CallRecord {
                record_id,
                session_id,
                kind,
                node: records.node.clone(),
                region: region.to_string(),
                trunk: None,
                caller_call_id: None,
                backend_call_id: None,
                caller: None,
                callee: None,
                backend: None,
                arrived_at: String::new(),
                ringing_at: None,
                answered_at: None,
                ended_at: String::new(),
                setup_ms: None,
                duration_ms: 0,
                cause: String::new(),
                ended_by: EndedBy::Node,
                code: None,
                caller_code: None,
                attempts: Vec::new(),
                codecs: Codecs::default(),
                media: None,
                mos: None,
                transfer: None,
            },
            arrived,
            arrived_wall,
            ringing: None,
            answered: None,
            codec_names: [None, None],
        }
    }

    /// The caller's identity and dialog.
    pub fn caller(
        &mut self,
        call_id: Option<String>,
        caller: Option<String>,
        callee: Option<String>,
    ) {
        self.record.caller_call_id = call_id.filter(|c| !c.is_empty());
        self.record.caller = caller;
        self.record.callee = callee;
    }

    /// The caller leg's Call-ID, unless it is known already.
    pub fn caller_call_id_if_unset(&mut self, call_id: Option<&str>) {
        if self.record.caller_call_id.is_none() {
            self.record.caller_call_id = call_id.map(str::to_owned);
        }
    }

    /// The caller's identity and dialog from its INVITE: From URI, Request-URI, Call-ID.
    pub fn caller_invite(&mut self, invite: &rsip::Request) {
        let from = voxgate_sip::dialog::header_value(&invite.headers, "From")
            .map(|from| voxgate_sip::dialog::name_addr_uri(&from).to_owned());
        let call_id = voxgate_sip::message::call_id(invite).map(str::to_owned);
        self.caller(call_id, from, Some(invite.uri.to_string()));
    }

    /// The trunk, by name.
    pub fn trunk(&mut self, trunk: Option<String>) {
        self.record.trunk = trunk;
    }

    /// A transfer and what became of it (for the transfer work to call).
    pub fn transfer(&mut self, target: String, outcome: String) {
        self.record.transfer = Some(TransferRecord { target, outcome });
    }

    /// The codec of `side`'s leg.
    pub fn codec(&mut self, side: Side, codec: Option<&Codec>) {
        let Some(codec) = codec else { return };
        let name = codec.kind.name().to_owned();
        let text = format!("{name}/{}", codec.clock_rate);
        match side {
            Side::Caller => self.record.codecs.caller = Some(text),
            Side::Backend => self.record.codecs.backend = Some(text),
        }
        self.codec_names[side.index()] = Some(name);
    }

    /// A step the engine reported at `now`.
    pub fn progress(&mut self, progress: &Progress, now: Instant) {
        match progress {
            Progress::Calling {
                backend,
                address,
                call_id,
            } => {
                let backend = backend.as_ref().map(ToString::to_string);
                self.record.backend = Some(backend.clone().unwrap_or_else(|| address.to_string()));
                self.record.backend_call_id = Some(call_id.clone());
                self.record.attempts.push(AttemptRecord {
                    backend,
                    address: address.to_string(),
                    call_id: call_id.clone(),
                    code: None,
                });
            }
            Progress::Attempted { code, .. } => {
                // Reported in order, one per Calling: the latest without an outcome is it.
                if let Some(attempt) = self
                    .record
                    .attempts
                    .iter_mut()
                    .rev()
                    .find(|a| a.code.is_none())
                {
                    attempt.code = *code;
                }
            }
            Progress::Ringing => {
                self.ringing.get_or_insert(now);
            }
            Progress::Connected => {
                self.answered.get_or_insert(now);
            }
            _ => {}
        }
    }

    /// The record of the session that ended at `ended` with `ending`; `media` is what was
    /// received from the caller and from the Backend (`None` without a media path).
    pub fn finish(
        mut self,
        ending: Ending,
        ended: Instant,
        media: Option<&[StreamStats; 2]>,
    ) -> CallRecord {
        let at =
            |t: Instant| rfc3339(self.arrived_wall + t.saturating_duration_since(self.arrived));
        let record = &mut self.record;
        record.arrived_at = at(self.arrived);
        record.ringing_at = self.ringing.map(at);
        record.answered_at = self.answered.map(at);
        record.ended_at = at(ended);
        record.setup_ms = self
            .answered
            .map(|t| millis(t.saturating_duration_since(self.arrived)));
        record.duration_ms = self
            .answered
            .map_or(0, |t| millis(ended.saturating_duration_since(t)));
        record.cause = ending.cause.to_owned();
        record.ended_by = ending.by;
        record.code = ending.code;
        record.caller_code = ending.caller_code;
        if let Some([caller, backend]) = media {
            let [caller_codec, backend_codec] = &self.codec_names;
            let media = MediaRecord {
                caller_to_backend: StreamRecord::from_stats(caller, caller_codec.as_deref()),
                backend_to_caller: StreamRecord::from_stats(backend, backend_codec.as_deref()),
            };
            record.mos = [media.caller_to_backend.mos, media.backend_to_caller.mos]
                .into_iter()
                .flatten()
                .reduce(f64::min);
            record.media = Some(media);
        }
        self.record
    }
}

/// The first audio codec of an SDP's list (telephone-event skipped).
pub fn first_audio(codecs: &[Codec]) -> Option<&Codec> {
    codecs.iter().find(|c| c.kind != CodecKind::TelephoneEvent)
}

/// The handle sessions give their records to.
#[derive(Debug)]
pub struct Records {
    node: String,
    prefix: String,
    refusals: std::sync::atomic::AtomicU64,
    queue: Option<std_mpsc::SyncSender<writer::Message>>,
    /// Logs every record's key fields at INFO (the operator's one line per session).
    log: bool,
}

impl Records {
    /// A handle for node `node` whose records go nowhere (no file, no webhook), still logged.
    pub fn disabled(node: &str) -> Self {
        Self::with_queue(node, None)
    }

    fn with_queue(node: &str, queue: Option<std_mpsc::SyncSender<writer::Message>>) -> Self {
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        Self {
            node: node.to_owned(),
            prefix: format!("{node}-{started:x}"),
            refusals: std::sync::atomic::AtomicU64::new(1),
            queue,
            log: true,
        }
    }

    /// Starts the writer thread (and the webhook task, when configured) for `config`.
    pub fn start(node: &str, config: &RecordsConfig) -> anyhow::Result<(Self, RecordsTasks)> {
        let (tasks, queue) = writer::spawn(config)?;
        Ok((Self::with_queue(node, queue), tasks))
    }

    fn next_refusal(&self) -> u64 {
        self.refusals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Records a session refused before it started (node cap, draining, no route, no
    /// Backend): `reason` is the `voxgate_sessions_rejected_total` reason, `code` what the
    /// caller got (SIP or HTTP status). `fill` adds the caller's identity.
    pub fn refused(
        &self,
        kind: SessionKind,
        region: &RegionId,
        reason: &'static str,
        code: u16,
        fill: impl FnOnce(&mut Draft),
    ) {
        let now = Instant::now();
        let mut draft = Draft::new(self, kind, None, region, now);
        fill(&mut draft);
        let ending = Ending {
            cause: reason,
            by: EndedBy::Node,
            code: None,
            caller_code: Some(code),
        };
        self.submit(draft.finish(ending, now, None));
    }

    /// Logs the record's key fields and hands it to the writer; never blocks (a full queue
    /// drops it, counted).
    pub fn submit(&self, record: CallRecord) {
        if self.log {
            log_line(&record);
        }
        let Some(queue) = &self.queue else { return };
        match queue.try_send(writer::Message::Record(Box::new(record))) {
            Ok(()) => {}
            Err(std_mpsc::TrySendError::Full(_)) => metrics::record_dropped("queue_full"),
            // The writer is gone (a session that ended after the shutdown closed it).
            Err(std_mpsc::TrySendError::Disconnected(_)) => metrics::record_dropped("closed"),
        }
    }

    /// Writes what is queued, flushes the file and stops the writer thread; the webhook keeps
    /// what it has not delivered in its spool. Waits at most `timeout`.
    pub async fn close(&self, tasks: RecordsTasks, timeout: Duration) {
        tasks.close(self.queue.as_ref(), timeout).await;
    }
}

pub use writer::RecordsTasks;

/// The operator's line for one ended session.
fn log_line(r: &CallRecord) {
    tracing::info!(
        session = r.session_id,
        kind = r.kind.as_str(),
        caller = r.caller.as_deref().unwrap_or("-"),
        callee = r.callee.as_deref().unwrap_or("-"),
        backend = r.backend.as_deref().unwrap_or("-"),
        cause = %r.cause,
        ended_by = r.ended_by.as_str(),
        code = ?r.caller_code,
        setup_ms = ?r.setup_ms,
        duration_ms = r.duration_ms,
        mos = ?r.mos,
        "session ended"
    );
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use voxgate_core::NodeId;
    use voxgate_session::EndCause;

    use super::*;

    fn draft(kind: SessionKind) -> (Draft, Instant) {
        let records = Records::disabled("proxy-1");
        let t0 = Instant::now();
        let region = RegionId::new("US-EAST").unwrap_or_else(|_| unreachable!());
        let draft = Draft::new(&records, kind, Some(SessionId(7)), &region, t0);
        (draft, t0)
    }

    fn calling(backend: &str, call_id: &str) -> Progress {
        Progress::Calling {
            backend: NodeId::new(backend).ok(),
            address: SocketAddr::from(([127, 0, 0, 1], 5080)),
            call_id: call_id.into(),
        }
    }

    fn stats(packets: u16, skip: &[u16], clock: u32, t0: std::time::Instant) -> StreamStats {
        let mut s = StreamStats::new(clock);
        let step = clock / 50;
        for seq in 0..packets {
            if skip.contains(&seq) {
                continue;
            }
            let at = t0 + Duration::from_millis(u64::from(seq) * 20);
            s.record(at, seq, u32::from(seq) * step, 172);
        }
        s
    }

    #[test]
    fn a_completed_call_from_its_scripted_steps() {
        let (mut d, t0) = draft(SessionKind::Sip);
        d.caller(
            Some("abc@x".into()),
            Some("sip:alice@10.0.0.1".into()),
            Some("sip:agent@proxy".into()),
        );
        d.trunk(Some("carrier-a".into()));
        d.progress(&calling("b1", "far-1"), t0 + Duration::from_millis(2));
        d.progress(
            &Progress::Attempted {
                backend: NodeId::new("b1").ok(),
                code: Some(503),
            },
            t0 + Duration::from_millis(5),
        );
        d.progress(&calling("b2", "far-2"), t0 + Duration::from_millis(6));
        d.progress(&Progress::Ringing, t0 + Duration::from_millis(10));
        d.progress(
            &Progress::Attempted {
                backend: NodeId::new("b2").ok(),
                code: Some(200),
            },
            t0 + Duration::from_millis(40),
        );
        d.progress(&Progress::Connected, t0 + Duration::from_millis(40));
        let pcmu = Codec::pcmu();
        d.codec(Side::Caller, Some(&pcmu));
        d.codec(Side::Backend, Some(&pcmu));
        let end = End {
            cause: EndCause::CallerBye,
            code: None,
            caller_up: true,
            connected: true,
            far_called: true,
            by: Some(Side::Caller),
            caller_code: Some(200),
        };
        let std0 = t0.into_std();
        let media = [
            stats(100, &[], 8000, std0),
            stats(100, &[10, 20], 8000, std0),
        ];
        let r = d.finish(end.into(), t0 + Duration::from_millis(10_040), Some(&media));

        assert!(
            r.record_id.starts_with("proxy-1-") && r.record_id.ends_with("-7"),
            "{}",
            r.record_id
        );
        assert_eq!(
            (r.session_id, r.kind, r.node.as_str(), r.region.as_str()),
            (7, SessionKind::Sip, "proxy-1", "US-EAST")
        );
        assert_eq!(r.trunk.as_deref(), Some("carrier-a"));
        assert_eq!(r.backend.as_deref(), Some("b2"));
        assert_eq!(r.backend_call_id.as_deref(), Some("far-2"));
        let codes: Vec<_> = r
            .attempts
            .iter()
            .map(|a| (a.backend.clone(), a.code))
            .collect();
        assert_eq!(
            codes,
            vec![
                (Some("b1".into()), Some(503)),
                (Some("b2".into()), Some(200))
            ]
        );
        assert_eq!((r.setup_ms, r.duration_ms), (Some(40), 10_000));
        assert!(r.ringing_at.is_some() && r.answered_at.is_some());
        assert!(
            r.arrived_at.ends_with('Z') && r.arrived_at.len() == "2024-01-01T00:00:00.000Z".len(),
            "{}",
            r.arrived_at
        );
        assert_eq!(
            (r.cause.as_str(), r.ended_by, r.caller_code),
            ("caller_bye", EndedBy::Caller, Some(200))
        );
        assert_eq!(r.codecs.caller.as_deref(), Some("PCMU/8000"));
        let media = r.media.as_ref().unwrap_or_else(|| unreachable!());
        assert_eq!(
            (
                media.caller_to_backend.packets,
                media.caller_to_backend.lost
            ),
            (100, 0)
        );
        assert_eq!(media.caller_to_backend.bytes, 17_200);
        assert_eq!(
            (
                media.backend_to_caller.packets,
                media.backend_to_caller.lost
            ),
            (98, 2)
        );
        assert_eq!(media.backend_to_caller.loss_pct, 2.0);
        assert_eq!(media.caller_to_backend.jitter_ms, 0.0);
        assert_eq!(media.caller_to_backend.mos, Some(4.41));
        // The session's MOS is the worse direction's.
        assert!(
            r.mos < Some(4.41) && r.mos == media.backend_to_caller.mos,
            "{:?}",
            r.mos
        );
        assert_eq!(r.transfer, None);

        let json: serde_json::Value = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(json["kind"], "sip");
        assert_eq!(json["ended_by"], "caller");
        assert!(json["transfer"].is_null());
        assert_eq!(json["media"]["backend_to_caller"]["lost"], 2);
    }

    #[test]
    fn a_refusal_has_its_own_id_no_times_after_arrival_and_no_media() {
        let records = Records::disabled("proxy-1");
        let region = RegionId::new("US-EAST").unwrap_or_else(|_| unreachable!());
        let t0 = Instant::now();
        let first = Draft::new(&records, SessionKind::Sip, None, &region, t0);
        let second = Draft::new(&records, SessionKind::Sip, None, &region, t0);
        let ending = Ending {
            cause: "capacity",
            by: EndedBy::Node,
            code: None,
            caller_code: Some(503),
        };
        let (a, b) = (
            first.finish(ending, t0, None),
            second.finish(ending, t0, None),
        );
        assert_ne!(a.record_id, b.record_id);
        assert_eq!(a.session_id, 0);
        assert_eq!((a.setup_ms, a.duration_ms, a.mos), (None, 0, None));
        assert_eq!(a.arrived_at, a.ended_at);
        assert!(a.media.is_none() && a.attempts.is_empty());
        assert_eq!((a.cause.as_str(), a.caller_code), ("capacity", Some(503)));
    }

    #[test]
    fn an_opus_stream_jitter_is_in_its_own_clock() {
        let t0 = Instant::now().into_std();
        let s = stats(50, &[], 48_000, t0);
        let record = StreamRecord::from_stats(&s, Some("opus"));
        assert_eq!(
            (record.packets, record.lost, record.jitter_ms),
            (50, 0, 0.0)
        );
        assert_eq!(record.mos, Some(4.41));
        let empty = StreamRecord::from_stats(&StreamStats::new(8000), None);
        assert_eq!((empty.packets, empty.mos), (0, None));
    }
}
