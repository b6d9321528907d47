//! Two relay legs forwarding one call both ways: NAT latching, injection, re-INVITE, timeout. This
//! exercises `RelayLeg` itself; the proxy's real forwarding decision (RTP and RTCP, rtcp-mux or
//! not, strict source) is unit-tested beside it, in `crates/proxy/src/relay.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use voxgate_media::{DropReason, PacketKind, RelayLeg, RtpHeader};

/// Which of the proxy's two sockets a datagram arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Caller,
    Backend,
}

/// The proxy's media half of one call: a leg facing the caller and a leg facing the Backend.
#[derive(Debug)]
struct Call {
    caller: RelayLeg,
    backend: RelayLeg,
}

impl Call {
    /// Handles a datagram from `source` on `side`'s socket; returns where it is forwarded.
    fn handle(
        &mut self,
        side: Side,
        now: Instant,
        source: SocketAddr,
        packet: &[u8],
    ) -> Result<Option<(PacketKind, SocketAddr)>, DropReason> {
        let (rx, tx) = match side {
            Side::Caller => (&mut self.caller, &mut self.backend),
            Side::Backend => (&mut self.backend, &mut self.caller),
        };
        let kind = rx.receive(now, source, packet)?;
        let Some(to) = tx.destination() else {
            return Ok(None);
        };
        tx.sent(packet.len());
        Ok(Some((kind, to)))
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal address")
}

fn rtp(sequence: u16, ssrc: u32) -> Vec<u8> {
    let mut buf = vec![0xd5u8; 172];
    RtpHeader {
        marker: false,
        payload_type: 0,
        sequence,
        timestamp: u32::from(sequence) * 160,
        ssrc,
    }
    .write(&mut buf)
    .expect("172-byte buffer");
    buf
}

fn origin() -> Instant {
    #[allow(clippy::disallowed_methods)] // an origin for virtual time; only offsets matter
    Instant::now()
}

#[test]
fn call_through_nat_with_injection_and_reinvite() {
    let t0 = origin();
    let caller_sdp = addr("10.0.0.5:4000"); // the caller's private address
    let caller_nat = addr("203.0.113.7:50123"); // what the proxy actually sees
    let backend = addr("10.1.0.20:30000");
    let attacker = addr("198.51.100.66:4000");
    let mut call = Call {
        caller: RelayLeg::new(Some(caller_sdp), t0),
        backend: RelayLeg::new(Some(backend), t0),
    };

    // The Backend speaks first: the packet goes to the caller's SDP address, the best known.
    let t = t0 + Duration::from_millis(10);
    assert_eq!(
        call.handle(Side::Backend, t, backend, &rtp(1, 0xb)),
        Ok(Some((PacketKind::Rtp, caller_sdp)))
    );

    // The caller's first packet comes from its NAT mapping: latched, and answers follow it.
    let t = t + Duration::from_millis(10);
    assert_eq!(
        call.handle(Side::Caller, t, caller_nat, &rtp(1, 0xa)),
        Ok(Some((PacketKind::Rtp, backend)))
    );
    assert_eq!(
        call.handle(Side::Backend, t, backend, &rtp(2, 0xb)),
        Ok(Some((PacketKind::Rtp, caller_nat)))
    );

    // An attacker guessing the caller-facing port is refused and nothing is forwarded.
    assert_eq!(
        call.handle(Side::Caller, t, attacker, &rtp(2, 0xa)),
        Err(DropReason::StrictSource)
    );
    // RTCP on the muxed port is relayed like RTP.
    let rr = [0x80, 201, 0, 1, 0, 0, 0, 0xa];
    assert_eq!(
        call.handle(Side::Caller, t, caller_nat, &rr),
        Ok(Some((PacketKind::Rtcp, backend)))
    );

    let c = call.caller.counters();
    assert_eq!(
        (c.rtp_packets, c.rtcp_packets, c.dropped_strict_source),
        (1, 1, 1)
    );
    assert_eq!((c.sent_packets, c.sent_bytes), (2, 344));
    let b = call.backend.counters();
    assert_eq!((b.rtp_packets, b.sent_packets, b.sent_bytes), (2, 2, 180));

    // The caller moves (re-INVITE, new public address); the leg relearns.
    let moved = addr("203.0.113.9:40000");
    let t = t + Duration::from_secs(10);
    call.caller.renegotiate(Some(moved), t);
    assert_eq!(
        call.handle(Side::Backend, t, backend, &rtp(3, 0xb)),
        Ok(Some((PacketKind::Rtp, moved)))
    );
    assert_eq!(
        call.handle(Side::Caller, t, moved, &rtp(2, 0xa)),
        Ok(Some((PacketKind::Rtp, backend)))
    );
    assert_eq!(
        call.handle(Side::Caller, t, caller_nat, &rtp(3, 0xa)),
        Err(DropReason::StrictSource)
    );

    // The caller goes quiet while the Backend keeps talking: only the caller's leg times out.
    let timeout = Duration::from_secs(30);
    let mut now = t;
    for seq in 4..=1600u16 {
        now += Duration::from_millis(20);
        call.handle(Side::Backend, now, backend, &rtp(seq, 0xb))
            .unwrap();
    }
    assert!(call.caller.is_silent(now, timeout));
    assert!(!call.backend.is_silent(now, timeout));
    assert_eq!(call.caller.silence_deadline(timeout), Some(t + timeout));
    assert_eq!(call.backend.stats().lost(), 0);
}

#[test]
fn nothing_is_forwarded_before_the_other_peer_is_known() {
    let t0 = origin();
    let mut call = Call {
        caller: RelayLeg::new(None, t0),
        backend: RelayLeg::new(None, t0),
    };
    let caller = addr("203.0.113.7:50123");
    assert_eq!(call.handle(Side::Caller, t0, caller, &rtp(1, 1)), Ok(None));
    assert_eq!(call.caller.latched(), Some(caller));
    assert_eq!(call.backend.counters().sent_packets, 0);
}
