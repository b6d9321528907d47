//! Operator commands to a running session (`/v1/sessions/{id}`): each session task registers a
//! bounded [`SessionCommand`] queue in the gateway's session table and takes commands from it
//! next to its SIP events, so a command is carried out by the task that owns the session, never
//! beside it.

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use voxgate_media::stats::StreamStats;

/// Commands queued per session; an operator does not send more than a few at once.
pub const COMMAND_QUEUE: usize = 8;

/// What an operator asks of a session.
#[derive(Debug)]
pub enum SessionCommand {
    /// End it: BYE (or CANCEL) both legs.
    HangUp,
    /// Blind-transfer the caller to `to` (a `sip:` or `tel:` URI).
    Transfer {
        /// The target.
        to: String,
        /// The engine's refusal, if any.
        reply: oneshot::Sender<Result<(), &'static str>>,
    },
    /// Play `digits` toward the caller as RFC 4733 events.
    Dtmf {
        /// Validated DTMF digits.
        digits: String,
        /// Why they cannot be sent, if they cannot.
        reply: oneshot::Sender<Result<(), DtmfRefusal>>,
    },
    /// Describe the session.
    View {
        /// Its view.
        reply: oneshot::Sender<SessionView>,
    },
}

/// Why DTMF cannot be sent on a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfRefusal {
    /// The session is not connected.
    NotConnected,
    /// The caller's media has no telephone-event, or this kind of session carries none.
    Unavailable,
}

/// The sending half that the session table keeps.
pub type CommandSender = mpsc::Sender<SessionCommand>;

/// A new session's command queue.
pub fn channel() -> (CommandSender, mpsc::Receiver<SessionCommand>) {
    mpsc::channel(COMMAND_QUEUE)
}

/// The state a session's view shows after `progress`, from `current`.
pub fn state_after(progress: &voxgate_session::Progress, current: &'static str) -> &'static str {
    use voxgate_session::Progress;
    match progress {
        Progress::Ringing => "ringing",
        Progress::Bridging => "bridging",
        Progress::Connected | Progress::Transferred { .. } => "connected",
        Progress::Transferring { .. } => "transferring",
        _ => current,
    }
}

/// A running session as its task sees it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    /// `calling`, `ringing`, `bridging`, `connected`, `transferring`, `ending`.
    pub state: &'static str,
    /// Milliseconds since the session started.
    pub age_ms: u64,
    /// The caller's leg.
    pub caller: LegView,
    /// The Backend's leg.
    pub backend: LegView,
}

/// One leg of a [`SessionView`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct LegView {
    /// Its dialog's Call-ID (a WebRTC caller: `whip:<resource>`).
    pub call_id: Option<String>,
    /// Its audio codec (`PCMU/8000`, `opus/48000`).
    pub codec: Option<String>,
    /// RTP received from it, once media flows.
    pub media: Option<MediaView>,
}

/// RTP counters of one leg.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MediaView {
    /// Packets received.
    pub packets: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Packets lost (RFC 3550).
    pub lost: u64,
    /// Interarrival jitter in milliseconds.
    pub jitter_ms: f64,
}

impl From<&StreamStats> for MediaView {
    fn from(stats: &StreamStats) -> Self {
        Self {
            packets: stats.packets(),
            bytes: stats.bytes(),
            lost: stats.lost(),
            jitter_ms: stats.jitter_seconds() * 1000.0,
        }
    }
}

/// The `name/rate` of a codec.
pub fn codec_name(codec: &voxgate_sip::sdp::Codec) -> String {
    format!("{}/{}", codec.kind.name(), codec.clock_rate)
}

/// Answers a command that needs the session connected while it is not (or carries no media):
/// used by the tasks before their session is up.
pub fn refuse(command: SessionCommand) {
    match command {
        SessionCommand::Transfer { reply, .. } => {
            let _ = reply.send(Err("the session is not connected"));
        }
        SessionCommand::Dtmf { reply, .. } => {
            let _ = reply.send(Err(DtmfRefusal::NotConnected));
        }
        SessionCommand::HangUp | SessionCommand::View { .. } => {}
    }
}
