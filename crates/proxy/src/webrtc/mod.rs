//! WebRTC clients: the public WHIP listener ([`whip`]), the one UDP socket every WebRTC peer's
//! media shares ([`hub`]), the session that bridges a peer to a Backend as a SIP call
//! ([`session`]) and its media bridge, passthrough or transcoding ([`bridge`]). The protocol work (WHIP resource model, ICE-lite, DTLS-SRTP, demultiplexing)
//! is `voxgate-webrtc`'s and the transcoding `voxgate-media`'s; this module does their I/O.

pub mod bridge;
pub mod hub;
pub mod session;
pub mod whip;

pub use hub::PeerHub;
pub use whip::Whip;
