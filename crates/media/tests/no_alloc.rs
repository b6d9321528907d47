//! The RTP relay hot path (parse, rewrite, stats, RelayLeg::receive) performs no heap allocation.

// A counting allocator must implement the unsafe `GlobalAlloc` trait; it only forwards to the
// system allocator and bumps a per-thread counter, so the workspace's `unsafe_code = "deny"`
// is relaxed for this test file alone.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use voxgate_media::rtp::{self, RTP_HEADER_LEN};
use voxgate_media::{PacketKind, RelayLeg, RtpHeader, RtpPacket, StreamStats};

struct CountingAllocator;

thread_local! {
    // Per thread, so that the test harness's own threads do not disturb the count.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with` fails only during thread teardown, when nothing is measured.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn relay_path_does_not_allocate() {
    // Everything that may allocate is set up before counting starts.
    #[allow(clippy::disallowed_methods)] // an origin for simulated arrivals; only offsets matter
    let origin = Instant::now();
    let mut stats = StreamStats::new(8000);
    let mut buf = [0u8; 172];
    let mut out = [0u8; 172];
    let mut checksum = 0u64;

    let before = allocations();
    for i in 0..10_000u32 {
        let header = RtpHeader {
            marker: i == 0,
            payload_type: 0,
            sequence: i as u16,
            timestamp: i.wrapping_mul(160),
            ssrc: 0x1234_5678,
        };
        header.write(&mut buf).expect("172-byte buffer");

        let packet = RtpPacket::parse(&buf).expect("valid packet");
        checksum += u64::from(packet.sequence()) + packet.payload().len() as u64;
        stats.record(
            origin + Duration::from_millis(20) * i,
            packet.sequence(),
            packet.timestamp(),
            packet.payload().len(),
        );

        out.copy_from_slice(&buf);
        rtp::set_ssrc(&mut out, 0xcafe_f00d).expect("header fits");
        rtp::set_sequence(&mut out, (i as u16).wrapping_add(1000)).expect("header fits");
        rtp::set_timestamp(&mut out, i.wrapping_mul(160).wrapping_add(9)).expect("header fits");
        rtp::set_payload_type(&mut out, 8).expect("header fits");
    }
    let after = allocations();

    assert_eq!(after - before, 0, "allocations on the RTP hot path");
    assert_eq!(stats.packets(), 10_000);
    assert_eq!(stats.lost(), 0);
    // Every packet was parsed with its 160-byte payload: sum of 0..10,000 plus 10,000 * 160.
    assert_eq!(checksum, 49_995_000 + 1_600_000);
    // The last rewrite took: the relayed copy carries the new SSRC, sequence, timestamp and PT.
    let relayed = RtpPacket::parse(&out).expect("rewritten packet");
    assert_eq!(relayed.ssrc(), 0xcafe_f00d);
    assert_eq!(relayed.sequence(), 9_999 + 1000);
    assert_eq!(relayed.timestamp(), 9_999 * 160 + 9);
    assert_eq!(relayed.payload_type(), 8);
    assert_eq!(relayed.payload().len(), 172 - RTP_HEADER_LEN);

    // The counter does see allocations, so the zero above means something.
    let v: Vec<u8> = std::hint::black_box(Vec::with_capacity(16));
    assert!(allocations() > after);
    drop(v);
}

#[test]
fn relay_leg_receive_does_not_allocate() {
    #[allow(clippy::disallowed_methods)] // an origin for simulated arrivals; only offsets matter
    let origin = Instant::now();
    let peer: std::net::SocketAddr = "203.0.113.7:61000".parse().expect("literal address");
    let mut leg = RelayLeg::new(Some("192.168.1.10:4000".parse().expect("literal")), origin);
    let mut buf = [0u8; 172];
    RtpHeader {
        marker: false,
        payload_type: 0,
        sequence: 0,
        timestamp: 0,
        ssrc: 0x1234_5678,
    }
    .write(&mut buf)
    .expect("172-byte buffer");
    // Latching happens on the first packet, also inside the counted loop.
    let mut accepted = 0u32;

    let before = allocations();
    for i in 0..10_000u32 {
        rtp::set_sequence(&mut buf, i as u16).expect("header fits");
        rtp::set_timestamp(&mut buf, i.wrapping_mul(160)).expect("header fits");
        let now = origin + Duration::from_millis(20) * i;
        if leg.receive(now, peer, &buf) == Ok(PacketKind::Rtp) {
            accepted += 1;
            leg.sent(buf.len());
        }
    }
    let after = allocations();

    assert_eq!(after - before, 0, "allocations in RelayLeg::receive");
    assert_eq!(accepted, 10_000);
    assert_eq!(leg.latched(), Some(peer));
    assert_eq!(leg.counters().rtp_packets, 10_000);
    assert_eq!(leg.stats().lost(), 0);
}
