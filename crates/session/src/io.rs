//! What goes into a session and what comes out of it.

use std::net::SocketAddr;
use std::time::Instant;

use voxgate_core::NodeId;
use voxgate_sip::sdp::{AudioSdp, Codec};
use voxgate_sip::{Event, TransactionKey, Transport};

use crate::cause::{End, EndCause};
use crate::media::{PeerMedia, Side};

/// Who is calling: the leg the session starts from.
#[derive(Debug)]
pub enum CallerSpec {
    /// A SIP INVITE we answer (a trunk or softphone calling in, or a Backend calling out).
    Inbound(Inbound),
    /// A number we dial through a trunk for `POST /v1/calls`; the Backend is called once it
    /// answers.
    Dialled(Dialled),
    /// A WebRTC client (WHIP); the Backend is called once it has connected.
    WebRtc(WebRtcCaller),
}

/// A new INVITE as the transaction layer delivered it.
#[derive(Debug)]
pub struct Inbound {
    /// Its server transaction.
    pub key: TransactionKey,
    /// Where it came from (a TCP connection's peer for TCP).
    pub source: SocketAddr,
    /// The transport it came on; requests to the caller go back on it.
    pub transport: Transport,
    /// The INVITE.
    pub invite: rsip::Request,
}

/// A number to dial.
#[derive(Debug)]
pub struct Dialled {
    /// The trunk's address.
    pub address: SocketAddr,
    /// Caller id (our From user).
    pub from: String,
    /// The number (Request-URI user).
    pub to: String,
    /// The Request-URI host (the carrier sees its own domain).
    pub host: String,
    /// How long the number may ring before the session gives up.
    pub ring_timeout: std::time::Duration,
}

/// A WebRTC client's side of a session.
#[derive(Debug)]
pub struct WebRtcCaller {
    /// What the Backend is offered (codecs of the media bridge; address and port are this node's).
    pub offer: AudioSdp,
    /// The From user the Backend sees.
    pub from_user: String,
    /// The Request-URI user the Backend sees.
    pub to_user: String,
}

/// A place to send the far leg's INVITE, answering [`Output::Pick`].
#[derive(Debug)]
pub struct Target<L> {
    /// Where the INVITE goes.
    pub address: SocketAddr,
    /// The Backend, for cooldown and reports; `None` for a trunk.
    pub backend: Option<NodeId>,
    /// The Request-URI host; `None` uses `address` (a trunk keeps the host the caller dialled).
    pub host: Option<String>,
    /// Held while the INVITE or the dialog lives (the Backend's share of its cap).
    pub lease: Option<L>,
}

/// An input to [`crate::Session::handle`].
// SIP events are most of the inputs and pass through once: boxing them would cost an allocation
// each for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Input<L> {
    /// A transaction-layer event of one of the session's dialogs (the driver routes them by
    /// Call-ID; timeouts by transaction key).
    Sip(Event),
    /// The answer to [`Output::Pick`]: where to try next, or `None` when nothing is left.
    Target(Option<Target<L>>),
    /// The answer to [`Output::Transfer`]: where the transfer target is, or the status the
    /// transfer fails with (404: no route to it; 480: the Backend it names takes no session now).
    TransferTarget(Result<Target<L>, u16>),
    /// The answer to [`Output::Reoffer`]: the codecs the media bridge keeps carrying (the
    /// re-offer is accepted), or `None` (refused with 488).
    ReofferAnswer(Option<Vec<Codec>>),
    /// The WebRTC client connected (ICE and DTLS done).
    ClientConnected,
    /// The WebRTC client is gone.
    ClientGone(EndCause),
    /// No RTP from `side` for the media timeout.
    MediaTimeout(Side),
    /// The relay is lost (not started, or its worker died).
    MediaLost,
    /// An operator ends the session.
    HangUp,
    /// The node is going away: every session ends now.
    Shutdown,
}

/// Where a side's media goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaCommand {
    /// The peer of `side` announced (or re-announced, or is restored to) this media.
    Peer(Side, PeerMedia),
    /// Both legs are up: start the media timeout.
    Arm,
}

/// Steps of a session that the driver reports (logs, metrics, the outbound request's record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A far-leg INVITE went out to `address` (a Backend when `backend` is set), on dialog
    /// `call_id`.
    Calling {
        /// The Backend, when the far side is one.
        backend: Option<NodeId>,
        /// Where.
        address: SocketAddr,
        /// The far dialog's Call-ID.
        call_id: String,
    },
    /// The far INVITE (or a dialled number's) got its first ringing answer (180 or 183);
    /// reported once per session.
    Ringing,
    /// A far INVITE of [`Progress::Calling`] has its outcome: the final status it got (408
    /// when its transaction timed out), or `None` when the session gave up on it first
    /// (silence, or the session ended while it was out).
    Attempted {
        /// The Backend, when the far side is one.
        backend: Option<NodeId>,
        /// Its final status.
        code: Option<u16>,
    },
    /// The dialled number answered; the Backend is being called.
    Bridging,
    /// Both legs are up.
    Connected,
    /// The caller is being transferred to `to` (a Backend's REFER, or an operator's request).
    Transferring {
        /// The target as named (Refer-To).
        to: String,
    },
    /// The transfer to `to` ended with `code`: 200 when the caller is with the target now.
    Transferred {
        /// The target as named.
        to: String,
        /// The target's final answer (404: no route to it, 408: no answer in time).
        code: u16,
    },
}

/// An output of [`crate::Session::poll_output`].
#[derive(Debug)]
pub enum Output {
    /// Route every event of `call_id` to this session from now on (before its first request).
    Listen(String),
    /// Start a client transaction: send `request` to `to`.
    Request {
        /// The next hop.
        to: SocketAddr,
        /// The request.
        request: rsip::Request,
    },
    /// Answer a server transaction.
    Respond {
        /// The transaction.
        key: TransactionKey,
        /// The response.
        response: rsip::Response,
    },
    /// Send a message outside any transaction (an ACK for a 2xx).
    Stateless {
        /// The next hop.
        to: SocketAddr,
        /// The ACK.
        message: rsip::Request,
    },
    /// Choose where the far leg goes next, not one of `tried`; answer with [`Input::Target`].
    Pick {
        /// Backends tried already.
        tried: Vec<NodeId>,
    },
    /// Find where the transfer target `to` (a `sip:`, `sips:` or `tel:` URI as the transferor
    /// sent it) goes; answer with [`Input::TransferTarget`].
    Transfer {
        /// The target.
        to: String,
    },
    /// Hold `backend` out of selection until `until` (a 503, or silence).
    CoolDown {
        /// The Backend.
        backend: NodeId,
        /// Until when.
        until: Instant,
    },
    /// Where media goes.
    Media(MediaCommand),
    /// The far side answered: its SDP answer as it sent it (a WebRTC driver builds its media
    /// bridge from it; an unusable one is ended with [`Input::HangUp`]).
    Answered(AudioSdp),
    /// The far side re-offered media to a caller that has no SIP of its own (a WebRTC client):
    /// the media bridge decides whether it can follow; answer with [`Input::ReofferAnswer`].
    Reoffer(AudioSdp),
    /// A step of the session.
    Progress(Progress),
    /// The session ended: the caller and the far side have been told. The node slot may go
    /// now; the session may still see a cancelled far INVITE to its end (see
    /// [`crate::Session::is_finished`]).
    Ended(End),
}

/// What this node answers a trunk's challenge with.
#[derive(Clone, PartialEq, Eq)]
pub struct TrunkCredentials {
    /// The account's user name.
    pub username: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for TrunkCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of logs.
        f.debug_struct("TrunkCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}
