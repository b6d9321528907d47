//! Heap cost of one connected `WebRtcPeer`, measured with a counting global allocator.
//!
//! Run with `cargo run --release -p voxgate-webrtc --example peer_memory`. It connects N
//! browser stand-ins (the test harness) to N peers in simulated time, exchanges a second of
//! 20 ms Opus frames both ways, then drops the peers one by one: the live heap each drop frees
//! is that peer's retained size (its rtc peer connection, DTLS and SRTP state, queues).
//! A figure, not an assertion (STYLE.md 14).

// A global allocator needs `unsafe impl GlobalAlloc`; it only forwards to `System` and counts.
#![allow(unsafe_code)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Harness, OPUS_PT};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                    - layout.size();
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

const PEERS: usize = 20;

fn main() {
    let mut h = Harness::new();
    for i in 0..PEERS {
        let index = h.add_pair(&format!("127.0.0.2:{}", 40000 + i));
        assert_eq!(index, i);
    }
    h.connect_all();

    // One second of 20 ms Opus frames (~80 bytes) both ways.
    for frame in 0..50u16 {
        let now = h.now;
        for i in 0..PEERS {
            let ts = 960 * u32::from(frame);
            h.clients[i].send_opus(now, frame, ts, &[0x78; 80]);
            h.peer(i)
                .send_audio(now, OPUS_PT, ts, frame == 0, Bytes::from(vec![0x78; 80]))
                .expect("send");
        }
        h.run_until(Duration::from_millis(20), |_| false);
    }
    for i in 0..PEERS {
        assert!(h.peer(i).is_connected());
        assert!(h.audio(i).len() >= 50);
        h.events[i].clear();
    }
    for client in &mut h.clients {
        client.received.clear();
    }

    let mut retained = Vec::new();
    for i in 0..PEERS {
        let before = live();
        h.peers[i] = None;
        retained.push(before - live());
    }
    retained.sort_unstable();
    println!(
        "connected WebRtcPeer after 1 s of audio, heap freed by drop: min {} B, median {} B, max {} B",
        retained[0],
        retained[PEERS / 2],
        retained[PEERS - 1]
    );
    println!(
        "process peak heap with {PEERS} clients and {PEERS} peers: {} B",
        PEAK.load(Ordering::Relaxed)
    );
}
