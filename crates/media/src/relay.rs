//! One relay leg: the proxy's media socket facing one peer, with latching and strict source.
//!
//! A call has two legs, one facing the caller and one facing the Backend; the proxy forwards what
//! leg A accepts out of leg B to [`RelayLeg::destination`] of B, then calls [`RelayLeg::sent`] on
//! B. A leg is one socket: with RTCP on its own port (no rtcp-mux) the proxy keeps a second leg
//! for the RTCP socket, whose expected address is the peer's RTCP address from its SDP.
//!
//! Latching (symmetric RTP, RFC 4961): the address in the peer's SDP is only a hint, because a
//! peer behind NAT advertises its private address. The first valid packet from anywhere latches
//! its source as the peer; from then on the leg is strict: packets from any other address (IP
//! and port) are dropped, which stops RTP bleed and injection once media flows. Malformed
//! packets never latch, so garbage cannot claim the leg. A re-INVITE that moves the peer's media
//! calls [`RelayLeg::renegotiate`] to learn the new source the same way.
//!
//! The accepted-packet path ([`RelayLeg::receive`] of a valid RTP packet from the latched peer)
//! does not allocate.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::rtp::{RTP_VERSION, RtpPacket, is_rtcp};
use crate::stats::StreamStats;

/// RTP clock rate assumed until [`RelayLeg::set_clock_rate`] (G.711).
pub const DEFAULT_CLOCK_RATE: u32 = 8000;

/// Smallest RTCP packet: the 4-byte header and the sender's SSRC (an empty RR, RFC 3550 6.4.2).
pub const MIN_RTCP_LEN: usize = 8;

/// Why [`RelayLeg::receive`] refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Packet from an address other than the latched peer (RTP bleed / injection defence).
    StrictSource,
    /// Not RTP/RTCP (bad version, too short, inconsistent header).
    Malformed,
}

impl DropReason {
    /// The metric label value: `strict_source` or `malformed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::StrictSource => "strict_source",
            Self::Malformed => "malformed",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`RelayLeg::receive`] accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// An RTP packet that [`RtpPacket::parse`] accepts.
    Rtp,
    /// An RTCP packet (RFC 5761 4 packet type range, version 2, at least [`MIN_RTCP_LEN`] bytes).
    Rtcp,
}

impl PacketKind {
    /// The metric label value: `rtp` or `rtcp`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Rtp => "rtp",
            Self::Rtcp => "rtcp",
        }
    }
}

impl fmt::Display for PacketKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Packet and byte counts of one leg since it was created (renegotiation keeps them).
///
/// Bytes are whole UDP payloads (RTP header included), as the proxy forwards them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LegCounters {
    /// RTP packets accepted from the peer.
    pub rtp_packets: u64,
    /// Bytes of the accepted RTP packets.
    pub rtp_bytes: u64,
    /// RTCP packets accepted from the peer.
    pub rtcp_packets: u64,
    /// Bytes of the accepted RTCP packets.
    pub rtcp_bytes: u64,
    /// Packets dropped because they came from an address other than the latched peer.
    pub dropped_strict_source: u64,
    /// Packets dropped because they were neither RTP nor RTCP.
    pub dropped_malformed: u64,
    /// Packets forwarded out of this leg toward its peer.
    pub sent_packets: u64,
    /// Bytes of the forwarded packets.
    pub sent_bytes: u64,
}

/// The proxy's media socket facing one peer: who the peer is, what it sent, when it last did.
#[derive(Debug, Clone)]
pub struct RelayLeg {
    /// The peer's address from its SDP; a hint until a packet latches.
    expected: Option<SocketAddr>,
    latched: Option<SocketAddr>,
    last_activity: Instant,
    clock_rate: u32,
    /// SSRC of the stream `stats` describes.
    ssrc: Option<u32>,
    stats: StreamStats,
    counters: LegCounters,
}

impl RelayLeg {
    /// A leg whose peer announced `expected` in its SDP (`None` when it did not, or not yet).
    ///
    /// The address may be wrong behind NAT; the first valid packet decides (see the module doc).
    pub fn new(expected: Option<SocketAddr>, now: Instant) -> Self {
        Self {
            expected,
            latched: None,
            last_activity: now,
            clock_rate: DEFAULT_CLOCK_RATE,
            ssrc: None,
            stats: StreamStats::new(DEFAULT_CLOCK_RATE),
            counters: LegCounters::default(),
        }
    }

    /// Classifies a packet the proxy received on this leg's socket from `source` at `now`.
    ///
    /// Before latching, the first valid packet latches `source`; after, packets from any other
    /// source are dropped with [`DropReason::StrictSource`] before being looked at. Accepted
    /// packets refresh [`RelayLeg::last_activity`] and the counters; RTP also feeds
    /// [`RelayLeg::stats`], which restart when the SSRC changes (a new stream).
    pub fn receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        packet: &[u8],
    ) -> Result<PacketKind, DropReason> {
        if self.latched.is_some_and(|peer| peer != source) {
            self.counters.dropped_strict_source += 1;
            return Err(DropReason::StrictSource);
        }
        let bytes = packet.len() as u64;
        // RTCP first: an RTCP header also parses as RTP (marker set, PT 64..=95).
        let kind = if is_rtcp(packet) {
            if packet.len() < MIN_RTCP_LEN || packet[0] >> 6 != RTP_VERSION {
                return Err(self.malformed());
            }
            self.counters.rtcp_packets += 1;
            self.counters.rtcp_bytes += bytes;
            PacketKind::Rtcp
        } else {
            let Ok(rtp) = RtpPacket::parse(packet) else {
                return Err(self.malformed());
            };
            if self.ssrc != Some(rtp.ssrc()) {
                if self.ssrc.is_some() {
                    self.stats = StreamStats::new(self.clock_rate);
                }
                self.ssrc = Some(rtp.ssrc());
            }
            // Payload octets, as RFC 3550 counts them; the counters keep datagram bytes.
            self.stats
                .record(now, rtp.sequence(), rtp.timestamp(), rtp.payload().len());
            self.counters.rtp_packets += 1;
            self.counters.rtp_bytes += bytes;
            PacketKind::Rtp
        };
        self.latched = Some(source);
        self.last_activity = now;
        Ok(kind)
    }

    /// Where packets for this leg's peer go: the latched address, else the SDP address; `None`
    /// while neither is known (the proxy then drops what it would forward here).
    pub fn destination(&self) -> Option<SocketAddr> {
        self.latched.or(self.expected)
    }

    /// The peer moved its media (a re-INVITE with a new `c=`/`m=`): forget the latched source,
    /// take `expected` as the new hint and learn the source again from the next valid packet.
    ///
    /// Counters and stream statistics carry on. Silence is measured from `now`, giving the peer
    /// a full timeout to start sending from its new address. Call this only when the address
    /// or port changed: an unchanged re-INVITE (refresh, hold) needs no relearning, and every
    /// relearning reopens the window in which another source could latch.
    pub fn renegotiate(&mut self, expected: Option<SocketAddr>, now: Instant) {
        self.expected = expected;
        self.latched = None;
        self.last_activity = now;
    }

    /// The RTP clock rate of the negotiated codec: 8000 for G.711 (and G.722, RFC 3551 4.5.2),
    /// 48000 for Opus. A change restarts [`RelayLeg::stats`], whose jitter is in clock units.
    pub fn set_clock_rate(&mut self, hz: u32) {
        if hz != self.clock_rate {
            self.clock_rate = hz;
            self.stats = StreamStats::new(hz);
            self.ssrc = None;
        }
    }

    /// The RTP clock rate the statistics use.
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    /// When the last valid packet from the peer arrived; creation or renegotiation time before.
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// True when no valid packet arrived for at least `timeout` as of `now` (media timeout).
    pub fn is_silent(&self, now: Instant, timeout: Duration) -> bool {
        now.saturating_duration_since(self.last_activity) >= timeout
    }

    /// When the leg becomes silent unless a packet arrives first, for the proxy's timer;
    /// `None` if that lies beyond what `Instant` can represent.
    pub fn silence_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.last_activity.checked_add(timeout)
    }

    /// The peer's source address, once a valid packet latched it.
    pub fn latched(&self) -> Option<SocketAddr> {
        self.latched
    }

    /// The peer's address from its SDP.
    pub fn expected(&self) -> Option<SocketAddr> {
        self.expected
    }

    /// The SSRC of the RTP stream [`RelayLeg::stats`] describes, once one arrived.
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    /// Packet and byte counts.
    pub fn counters(&self) -> LegCounters {
        self.counters
    }

    /// RFC 3550 receiver statistics of the peer's current RTP stream.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// Mutable statistics, to take report blocks for RTCP or to record the peer's SRs.
    pub fn stats_mut(&mut self) -> &mut StreamStats {
        &mut self.stats
    }

    /// Notes that a packet of `bytes` was forwarded out of this leg toward its peer.
    pub fn sent(&mut self, bytes: usize) {
        self.counters.sent_packets += 1;
        self.counters.sent_bytes += bytes as u64;
    }

    fn malformed(&mut self) -> DropReason {
        self.counters.dropped_malformed += 1;
        DropReason::Malformed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::RtpHeader;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A 172-byte PCMU packet.
    fn rtp(sequence: u16, ssrc: u32) -> [u8; 172] {
        let mut buf = [0xffu8; 172];
        RtpHeader {
            marker: false,
            payload_type: 0,
            sequence,
            timestamp: u32::from(sequence) * 160,
            ssrc,
        }
        .write(&mut buf)
        .unwrap();
        buf
    }

    /// An empty receiver report (RFC 3550 6.4.2): V=2, RC=0, PT=201, length 1, SSRC.
    fn rtcp_rr() -> [u8; 8] {
        [0x80, 201, 0, 1, 0, 0, 0, 7]
    }

    fn origin() -> Instant {
        #[allow(clippy::disallowed_methods)] // an origin for virtual time; only offsets matter
        Instant::now()
    }

    #[test]
    fn latches_first_valid_packet_even_when_sdp_differs() {
        let t0 = origin();
        let sdp = addr("192.168.1.10:4000"); // private address behind NAT
        let nat = addr("203.0.113.7:61000");
        let mut leg = RelayLeg::new(Some(sdp), t0);
        assert_eq!(leg.latched(), None);
        assert_eq!(leg.destination(), Some(sdp));

        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(leg.receive(t1, nat, &rtp(1, 9)), Ok(PacketKind::Rtp));
        assert_eq!(leg.latched(), Some(nat));
        assert_eq!(leg.destination(), Some(nat));
        assert_eq!(leg.expected(), Some(sdp));
        assert_eq!(leg.last_activity(), t1);
        let c = leg.counters();
        assert_eq!((c.rtp_packets, c.rtp_bytes), (1, 172));
        assert_eq!(leg.stats().packets(), 1);
        assert_eq!(leg.stats().bytes(), 160);
        assert_eq!(leg.ssrc(), Some(9));
    }

    #[test]
    fn rtcp_latches_too() {
        let t0 = origin();
        let peer = addr("198.51.100.1:5001");
        let mut leg = RelayLeg::new(None, t0);
        assert_eq!(leg.destination(), None);
        assert_eq!(leg.receive(t0, peer, &rtcp_rr()), Ok(PacketKind::Rtcp));
        assert_eq!(leg.latched(), Some(peer));
        let c = leg.counters();
        assert_eq!((c.rtcp_packets, c.rtcp_bytes, c.rtp_packets), (1, 8, 0));
        assert_eq!(leg.stats().packets(), 0);
    }

    #[test]
    fn strict_source_drops_other_addresses_after_latching() {
        let t0 = origin();
        let peer = addr("203.0.113.7:61000");
        let mut leg = RelayLeg::new(Some(peer), t0);
        leg.receive(t0, peer, &rtp(1, 9)).unwrap();

        let t1 = t0 + Duration::from_secs(1);
        for other in [
            addr("203.0.113.66:61000"), // another host
            addr("203.0.113.7:61001"),  // same host, another port
            addr("[2001:db8::1]:61000"),
        ] {
            assert_eq!(
                leg.receive(t1, other, &rtp(2, 9)),
                Err(DropReason::StrictSource)
            );
            assert_eq!(
                leg.receive(t1, other, &rtcp_rr()),
                Err(DropReason::StrictSource)
            );
            // Malformed packets from elsewhere are strict-source drops: source is checked first.
            assert_eq!(
                leg.receive(t1, other, &[0u8; 3]),
                Err(DropReason::StrictSource)
            );
        }
        let c = leg.counters();
        assert_eq!(c.dropped_strict_source, 9);
        assert_eq!(c.dropped_malformed, 0);
        assert_eq!(c.rtp_packets, 1);
        assert_eq!(leg.latched(), Some(peer));
        // Drops are not activity and reach neither stats nor the last-activity time.
        assert_eq!(leg.last_activity(), t0);
        assert_eq!(leg.stats().packets(), 1);

        assert_eq!(leg.receive(t1, peer, &rtp(2, 9)), Ok(PacketKind::Rtp));
        assert_eq!(leg.counters().rtp_packets, 2);
    }

    #[test]
    fn malformed_packets_do_not_latch() {
        let t0 = origin();
        let attacker = addr("198.51.100.66:1234");
        let peer = addr("203.0.113.7:61000");
        let mut leg = RelayLeg::new(Some(peer), t0);

        let mut bad_version = rtp(1, 9);
        bad_version[0] = 0x40; // version 1
        let mut bad_rtcp_version = rtcp_rr();
        bad_rtcp_version[0] = 0x40;
        let mut bad_padding = rtp(1, 9);
        bad_padding[0] |= 0x20;
        bad_padding[171] = 0; // padding count 0
        let stun_like = [0u8; 20]; // version 0, as STUN's first two bits are
        let cases: [&[u8]; 7] = [
            &[],
            &[0x80],
            &rtp(1, 9)[..11],
            &bad_version,
            &bad_rtcp_version,
            &rtcp_rr()[..4], // RTCP header without the SSRC
            &bad_padding,
        ];
        for packet in cases.iter().copied().chain([&stun_like[..]]) {
            assert_eq!(
                leg.receive(t0, attacker, packet),
                Err(DropReason::Malformed),
                "{packet:?}"
            );
            assert_eq!(leg.latched(), None);
        }
        assert_eq!(leg.counters().dropped_malformed, 8);
        assert_eq!(leg.destination(), Some(peer));

        // The first valid packet still latches, and malformed ones from the peer count as such.
        leg.receive(t0, peer, &rtp(1, 9)).unwrap();
        assert_eq!(leg.receive(t0, peer, &[0x80]), Err(DropReason::Malformed));
        assert_eq!(leg.counters().dropped_malformed, 9);
        assert_eq!(leg.latched(), Some(peer));
    }

    #[test]
    fn renegotiate_unlatches_and_relearns() {
        let t0 = origin();
        let old = addr("203.0.113.7:61000");
        let new_sdp = addr("203.0.113.8:40000");
        let new_src = addr("203.0.113.8:40002");
        let mut leg = RelayLeg::new(Some(old), t0);
        leg.receive(t0, old, &rtp(1, 9)).unwrap();
        leg.sent(172);

        let t1 = t0 + Duration::from_secs(5);
        leg.renegotiate(Some(new_sdp), t1);
        assert_eq!(leg.latched(), None);
        assert_eq!(leg.destination(), Some(new_sdp));
        assert_eq!(leg.last_activity(), t1);

        let t2 = t1 + Duration::from_millis(20);
        assert_eq!(leg.receive(t2, new_src, &rtp(2, 9)), Ok(PacketKind::Rtp));
        assert_eq!(leg.latched(), Some(new_src));
        assert_eq!(
            leg.receive(t2, old, &rtp(3, 9)),
            Err(DropReason::StrictSource)
        );
        // Counters carry on across the renegotiation.
        let c = leg.counters();
        assert_eq!((c.rtp_packets, c.sent_packets, c.sent_bytes), (2, 1, 172));
        assert_eq!(c.dropped_strict_source, 1);

        leg.renegotiate(None, t2);
        assert_eq!(leg.destination(), None);
    }

    #[test]
    fn silence_is_measured_from_the_last_valid_packet() {
        let t0 = origin();
        let timeout = Duration::from_secs(30);
        let peer = addr("203.0.113.7:61000");
        let mut leg = RelayLeg::new(Some(peer), t0);
        assert!(!leg.is_silent(t0, timeout));
        assert!(!leg.is_silent(t0 + Duration::from_secs(29), timeout));
        assert!(leg.is_silent(t0 + timeout, timeout));
        assert_eq!(leg.silence_deadline(timeout), Some(t0 + timeout));

        let t1 = t0 + Duration::from_secs(20);
        leg.receive(t1, peer, &rtp(1, 9)).unwrap();
        assert!(!leg.is_silent(t0 + Duration::from_secs(45), timeout));
        assert!(leg.is_silent(t1 + timeout, timeout));
        assert_eq!(leg.silence_deadline(timeout), Some(t1 + timeout));

        // Dropped packets do not keep a leg alive.
        let t2 = t1 + Duration::from_secs(29);
        let _ = leg.receive(t2, addr("198.51.100.66:1"), &rtp(2, 9));
        let _ = leg.receive(t2, peer, &[0x00]);
        assert!(leg.is_silent(t1 + timeout, timeout));
        // A clock that reads earlier than the last packet is not silence.
        assert!(!leg.is_silent(t0, timeout));
    }

    #[test]
    fn stats_follow_the_stream() {
        let t0 = origin();
        let peer = addr("203.0.113.7:61000");
        let mut leg = RelayLeg::new(None, t0);
        for seq in [1u16, 2, 3, 5] {
            let at = t0 + Duration::from_millis(20) * u32::from(seq);
            leg.receive(at, peer, &rtp(seq, 9)).unwrap();
        }
        assert_eq!(leg.stats().packets(), 4);
        assert_eq!(leg.stats().lost(), 1);
        assert_eq!(leg.stats().jitter(), 0);

        // A new SSRC is a new stream: the statistics restart.
        leg.receive(t0 + Duration::from_millis(120), peer, &rtp(900, 10))
            .unwrap();
        assert_eq!(leg.ssrc(), Some(10));
        assert_eq!(leg.stats().packets(), 1);
        assert_eq!(leg.stats().lost(), 0);
        assert_eq!(leg.counters().rtp_packets, 5);

        leg.stats_mut().take_fraction_lost();
    }

    #[test]
    fn clock_rate_change_restarts_stats() {
        let t0 = origin();
        let peer = addr("203.0.113.7:61000");
        let mut leg = RelayLeg::new(None, t0);
        assert_eq!(leg.clock_rate(), DEFAULT_CLOCK_RATE);
        leg.receive(t0, peer, &rtp(1, 9)).unwrap();
        leg.set_clock_rate(8000);
        assert_eq!(leg.stats().packets(), 1, "same rate: nothing restarts");
        leg.set_clock_rate(48000);
        assert_eq!(leg.clock_rate(), 48000);
        assert_eq!(leg.stats().packets(), 0);
        assert_eq!(leg.ssrc(), None);
        assert_eq!(
            leg.latched(),
            Some(peer),
            "the clock rate is not an address"
        );
    }

    #[test]
    fn sent_counts_forwarded_packets() {
        let mut leg = RelayLeg::new(None, origin());
        leg.sent(172);
        leg.sent(60);
        let c = leg.counters();
        assert_eq!((c.sent_packets, c.sent_bytes), (2, 232));
        assert_eq!(c.rtp_packets, 0);
    }

    #[test]
    fn rtcp_types_are_not_taken_for_rtp() {
        let t0 = origin();
        let peer = addr("203.0.113.7:61000");
        let mut leg = RelayLeg::new(None, t0);
        for pt in 192u8..=223 {
            let packet = [0x80, pt, 0, 1, 0, 0, 0, 7];
            assert_eq!(leg.receive(t0, peer, &packet), Ok(PacketKind::Rtcp));
        }
        assert_eq!(leg.stats().packets(), 0);
        assert_eq!(leg.ssrc(), None);
    }

    #[test]
    fn labels() {
        assert_eq!(DropReason::StrictSource.as_str(), "strict_source");
        assert_eq!(DropReason::Malformed.to_string(), "malformed");
        assert_eq!(PacketKind::Rtp.as_str(), "rtp");
        assert_eq!(PacketKind::Rtcp.to_string(), "rtcp");
    }
}
