//! Why a session ended, and what the end reports.

use crate::media::Side;

/// Why a session ended: the `cause` label of `voxgate_sessions_ended_total`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndCause {
    /// The caller hung up (BYE), or cancelled an originated call's Backend leg by hanging up.
    CallerBye,
    /// The Backend (or the trunk of an outbound call) hung up.
    BackendBye,
    /// The caller cancelled its INVITE.
    Cancelled,
    /// The far side refused the call with a final response the caller gets.
    Rejected,
    /// No RTP for the media timeout.
    MediaTimeout,
    /// The relay of the session was lost (it could not be started, or its worker died).
    MediaFailure,
    /// The caller never ACKed our 2xx (RFC 6026 Timer L).
    AckTimeout,
    /// An SDP this node cannot use: no offer, or an answer without usable media.
    BadSdp,
    /// No Backend could take the call (none eligible, or every one tried failed).
    NoBackend,
    /// The far leg rang past the ring deadline.
    RingTimeout,
    /// The dialled number (originated call) stayed silent: not even a provisional answer.
    Silent,
    /// A leg's session timer (RFC 4028) ran out: its refresh did not come, or failed.
    SessionExpired,
    /// The node is going away (drain deadline, second signal).
    Shutdown,
    /// An operator hung the session up through the API.
    HungUp,
    /// A WebRTC client's WHIP DELETE.
    WhipDelete,
    /// A WebRTC client's peer closed (DTLS close, consent expired, setup timeout).
    WebRtcClosed,
    /// The Backend hung up while its caller was being transferred, and the transfer failed.
    TransferFailed,
}

impl EndCause {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            EndCause::CallerBye => "caller_bye",
            EndCause::BackendBye => "backend_bye",
            EndCause::Cancelled => "cancelled",
            EndCause::Rejected => "rejected",
            EndCause::MediaTimeout => "media_timeout",
            EndCause::MediaFailure => "media_failure",
            EndCause::AckTimeout => "ack_timeout",
            EndCause::BadSdp => "bad_sdp",
            EndCause::NoBackend => "no_backend",
            EndCause::RingTimeout => "ring_timeout",
            EndCause::Silent => "silent",
            EndCause::SessionExpired => "session_expired",
            EndCause::Shutdown => "shutdown",
            EndCause::HungUp => "hung_up",
            EndCause::WhipDelete => "whip_delete",
            EndCause::WebRtcClosed => "webrtc_closed",
            EndCause::TransferFailed => "transfer_failed",
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// Why.
    pub cause: EndCause,
    /// The final SIP status that decided it, when one did (the far side's refusal, or the
    /// dialled number's).
    pub code: Option<u16>,
    /// The caller leg was up: an inbound caller answered, a dialled number answered, a WebRTC
    /// client connected.
    pub caller_up: bool,
    /// Both legs were up: the session was connected end to end.
    pub connected: bool,
    /// A far INVITE was sent (a Backend, or a trunk for a Backend's outbound call).
    pub far_called: bool,
    /// Who ended it: the side that hung up, cancelled or refused; `None` when this node did
    /// (a timeout, no Backend, an unusable SDP, an operator, the shutdown).
    pub by: Option<Side>,
    /// The final status of the caller leg: what an inbound caller was answered (200, or the
    /// refusal), what a dialled number answered; `None` for a WebRTC client and for a number
    /// that never answered finally.
    pub caller_code: Option<u16>,
}
