//! voxgate's media plane vocabulary: RTP and RTCP wire formats, G.711, Opus <-> G.711
//! transcoding and RFC 3550 stream statistics.
//!
//! Everything here works on bytes and values the caller hands in: RTP packets are parsed as
//! zero-copy views and rewritten in place (the relay's hot path allocates nothing), RTCP compound
//! packets are parsed into typed values and serialized back, G.711 samples are converted with
//! the ITU-T reference algorithm, and [`StreamStats`] keeps the RFC 3550 receiver accounting
//! (loss, extended sequence numbers, interarrival jitter). [`RelayLeg`] is one side of the media
//! relay (symmetric-RTP latching, strict source, counters, media timeout) and [`PortPool`] hands
//! out the RTP/RTCP port pairs that relay sockets bind. [`OpusToG711`] and [`G711ToOpus`]
//! transcode between a WebRTC client's Opus and a SIP Backend's PCMU/PCMA (libopus at 8 kHz,
//! loss concealment, 20 ms repacketization), [`dtmf`] detects and generates RFC 4733 events,
//! and [`tone`] makes and detects test tones.
//! This crate does no I/O: it opens no sockets, spawns no tasks and never reads a clock; receive
//! times are arguments, and the transcoders know time only from RTP timestamps.

pub mod coalesce;
pub mod dtmf;
pub mod g711;
pub mod pool;
pub mod relay;
pub mod rtcp;
pub mod rtp;
pub mod stats;
pub mod tone;
pub mod transcode;

pub use g711::G711Law;
pub use pool::{PoolError, PortLease, PortPool};
pub use relay::{DropReason, LegCounters, PacketKind, RelayLeg};
pub use rtcp::{ReportBlock, RtcpError, RtcpPacket};
pub use rtp::{RtpError, RtpHeader, RtpPacket, is_rtcp};
pub use stats::StreamStats;
pub use transcode::{
    G711Frame, G711ToOpus, OpusFrame, OpusToG711, TranscodeCounters, TranscodeError,
};
