//! The session engine: one B2BUA session of voxgate, from its first message to its end, as a
//! sans-I/O state machine.
//!
//! A [`Session`] joins a caller leg (a SIP dialog we answered, a SIP dialog we placed for
//! `POST /v1/calls`, or a WebRTC peer) to a Backend leg (a SIP dialog today) and owns everything
//! that happens between them: failover to the next Backend on 5xx, 408 or silence, 503 cooldown,
//! the ring deadline, CANCEL at any moment, re-INVITE, UPDATE and INFO relayed with the media
//! re-pointed (and restored when the far side refuses), late offer passed through (the offer in
//! a 2xx, the answer in the ACK), reliable provisionals (RFC 3262) and session timers (RFC 4028)
//! on each leg independently, BYE from either side (also while a re-INVITE or INFO is in
//! flight), blind transfer of the caller (RFC 3515 REFER, with NOTIFY progress), the operator's
//! hang-up and transfer, the node's shutdown and the media timeout.
//!
//! Where things are: `session.rs` holds the state, the inputs and the end; `caller.rs` how a
//! session starts from its caller; `far.rs` the far leg
//! (target, INVITE, answers, failover, PRACK, the dialled number, wound-down INVITEs);
//! `identity.rs` which of the caller's headers cross to the far INVITE;
//! `exchange.rs` what crosses a confirmed session (re-INVITE, UPDATE, INFO, held ACKs);
//! `refresh.rs` what keeps each leg alive (session refreshes, reliable provisionals);
//! `transfer.rs` and `handover.rs` the caller's transfer (REFER, bridged here or passed to the
//! trunk); `auth.rs` the answer to a trunk's digest challenge.
//!
//! The engine does no I/O and reads no clock, in the style of quinn-proto's `Connection` and
//! str0m's `Rtc`: SIP events of the transaction layer, media events and operator commands go in
//! through [`Session::handle`] with the time they happened; SIP to send, relay commands, Backend
//! choices and the end come out of [`Session::poll_output`], drained until empty after every
//! input; [`Session::poll_timeout`] names the next deadline. The async side (the proxy's
//! drivers) only carries inputs and outputs, so every flow is tested here on virtual time.
//!
//! What it does not do: parse bytes or run transactions (`voxgate_sip` does), choose a Backend
//! (it asks with [`Output::Pick`] and is answered with [`Input::Target`]), relay media (it says
//! where each side's media goes with [`MediaCommand`]) or count metrics (it reports progress).
//! A lease handed in with a [`Target`] is held exactly as long as the Backend's INVITE or dialog
//! lives, so dropping it is what releases the Backend's capacity.
//!
//! The far leg is a SIP dialog today. Its seam is [`Output::Pick`] / [`Input::Target`] (where it
//! goes) and `far.rs` (how it is called and answered); the caller side sees the far side only
//! through [`Output::Answered`], the media commands and the end, which is what a Backend reached
//! over a WebSocket or QUIC media stream will implement.

mod attempt;
mod auth;
mod caller;
mod cause;
mod exchange;
mod far;
mod handover;
mod identity;
mod io;
mod leg;
mod media;
mod refresh;
mod reliable;
mod session;
mod timer;
mod transfer;

pub use cause::{End, EndCause};
pub use identity::{IDENTITY_HEADERS, IdentityPolicy};
pub use io::{
    CallerSpec, Dialled, Inbound, Input, MediaCommand, Output, Progress, Target, TrunkCredentials,
    WebRtcCaller,
};
pub use media::{PeerMedia, Side, first_codec_only, parse_sdp, peer_media};
pub use session::{ALLOW, SUPPORTED, Session, SessionConfig};
pub use transfer::TransferMode;
