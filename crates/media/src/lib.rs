//! voxgate's media plane vocabulary: RTP and RTCP wire formats, G.711 and RFC 3550 stream statistics.
//!
//! Everything here works on bytes and values the caller hands in: RTP packets are parsed as
//! zero-copy views and rewritten in place (the relay's hot path allocates nothing), RTCP compound
//! packets are parsed into typed values and serialized back, G.711 samples are converted with
//! the ITU-T reference algorithm, and [`StreamStats`] keeps the RFC 3550 receiver accounting
//! (loss, extended sequence numbers, interarrival jitter). [`RelayLeg`] is one side of the media
//! relay (symmetric-RTP latching, strict source, counters, media timeout) and [`PortPool`] hands
//! out the RTP/RTCP port pairs that relay sockets bind; [`tone`] makes and detects test tones.
//! This crate does no I/O: it opens no sockets, spawns no tasks and never reads a clock; receive
//! times are arguments.

pub mod coalesce;
pub mod g711;
pub mod pool;
pub mod relay;
pub mod rtcp;
pub mod rtp;
pub mod stats;
pub mod tone;

pub use g711::G711Law;
pub use pool::{PoolError, PortLease, PortPool};
pub use relay::{DropReason, LegCounters, PacketKind, RelayLeg};
pub use rtcp::{ReportBlock, RtcpError, RtcpPacket};
pub use rtp::{RtpError, RtpHeader, RtpPacket, is_rtcp};
pub use stats::StreamStats;
