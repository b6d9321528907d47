//! voxgate's WebRTC leg: the WHIP resource model (RFC 9725) and the media peer a browser
//! connects to, an ICE-lite, DTLS-SRTP, audio-only (Opus) endpoint built on webrtc-rs's sans-I/O
//! core ([`rtc`]).
//!
//! [`whip`] classifies WHIP requests (content type, offer, PATCH) into typed outcomes with their
//! HTTP status and mints resource ids and ETags. [`WebRtcPeer`] answers one offer and then runs
//! that session: datagrams and time go in through `handle_*(now, ..)`, datagrams, events and the
//! next deadline come out through `poll_*`. [`PeerDemux`] routes the datagrams of the one UDP
//! socket all peers share (STUN by our ICE ufrag, the rest by the client address learned from a
//! valid STUN binding). This crate does no I/O: it opens no sockets, spawns no tasks and never
//! reads a clock; it speaks no HTTP (the proxy maps [`WhipError::http_status`] to responses), and
//! it neither decodes nor transcodes audio (Opus RTP payloads go in and out as bytes).

pub mod demux;
pub mod peer;
pub mod whip;

pub use demux::{DemuxError, PeerDemux};
pub use peer::{ClosedReason, PeerConfig, PeerError, PeerEvent, SendError, Transmit, WebRtcPeer};
pub use whip::{
    ETag, MissingInOffer, PatchOutcome, ResourceId, WhipError, WhipOffer, classify_patch,
    classify_post, inspect_offer,
};
