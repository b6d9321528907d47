//! Loopback ports for the processes a test starts, leased so that concurrent test processes never
//! hand out the same one.
//!
//! Binding port 0 and closing the socket gives a port that was free a moment ago: another process
//! may take it before the child binds it. Instead each test process leases whole blocks of
//! [`BLOCK`] ports and hands out ports only from its own blocks. A block is leased by binding UDP
//! on its first port (the block's lock, never handed out) and keeping that socket for the life of
//! the process: the kernel lets one process hold it, and frees it when the process ends however it
//! ends, so a crashed run leaves nothing to clean up. Plain std: the workspace denies `unsafe`
//! (no `flock` through libc) and `File::try_lock` is newer than its `rust-version`.
//!
//! The blocks lie below the kernel's ephemeral range (32768 and up by default, where port-0 binds
//! and outgoing connections take their ports), outside voxgate's default media range 20000-29999
//! (a voxgate running elsewhere on the machine) and away from the well-known ports. A port is
//! still tried (UDP and TCP, or UDP for a range) before it is handed out, since anything outside
//! the tests may hold it.
//!
//! Also compiled into `crates/proxy/tests` (through `#[path]`) for its `redis-server`.

// Each user takes a different part; a plain thread polls for a block with the real clock.
#![allow(dead_code, clippy::disallowed_methods)]

use std::net::{TcpListener, UdpSocket};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Ports per leased block (its first one is the lock).
const BLOCK: u16 = 256;

/// Where blocks are taken, in order: 30000-32767 first (no older test harness used it), then
/// 10000-19999.
const SPANS: [(u16, u16); 2] = [(30_000, 32_767), (10_000, 19_999)];

/// How long to wait for another test process to give a block back when every one is leased.
const WAIT_FOR_BLOCK: Duration = Duration::from_secs(60);

/// This process's blocks and the next port to hand out of the newest.
struct Leases {
    /// One bound socket per leased block: the lease itself.
    locks: Vec<UdpSocket>,
    /// Next port of the newest block, and the end of that block (exclusive).
    next: u32,
    end: u32,
}

static LEASES: Mutex<Leases> = Mutex::new(Leases {
    locks: Vec::new(),
    next: 0,
    end: 0,
});

/// A loopback port for a child process's SIP, HTTP or other listener: leased to this process
/// and, when handed out, free for both UDP and TCP on 127.0.0.1.
pub fn lease_port() -> u16 {
    let mut leases = LEASES.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if leases.next >= leases.end {
            leases.lease_block();
        }
        let port = leases.next as u16;
        leases.next += 1;
        if binds_udp(port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `len` consecutive loopback ports (inclusive bounds, the first one even: RTP/RTCP pairs), each
/// free for UDP on 127.0.0.1 when handed out; at most [`BLOCK`] - 2 (a block's lock and the
/// alignment).
pub fn lease_port_range(len: u16) -> (u16, u16) {
    assert!(len > 0 && len <= BLOCK - 2, "a range of {len} ports");
    let mut leases = LEASES.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        leases.next += leases.next % 2;
        let first = leases.next;
        let past = first + u32::from(len);
        if past > leases.end {
            leases.lease_block();
            continue;
        }
        match (first..past).find(|&port| !binds_udp(port as u16)) {
            Some(taken) => leases.next = taken + 1,
            None => {
                leases.next = past;
                return (first as u16, (past - 1) as u16);
            }
        }
    }
}

impl Leases {
    /// Leases one more block (waiting up to [`WAIT_FOR_BLOCK`] while all are held) and makes it
    /// the one ports come from.
    fn lease_block(&mut self) {
        let blocks = blocks();
        let deadline = Instant::now() + WAIT_FOR_BLOCK;
        loop {
            for &start in &blocks {
                if let Ok(lock) = UdpSocket::bind(("127.0.0.1", start)) {
                    self.locks.push(lock);
                    self.next = u32::from(start) + 1;
                    self.end = u32::from(start) + u32::from(BLOCK);
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "all {} test port blocks are leased by other processes ({} of them by this one)",
                blocks.len(),
                self.locks.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The first port of every block, in the order they are tried; blocks reaching into this
/// machine's ephemeral range are left out (unless that would leave none).
fn blocks() -> Vec<u16> {
    let all: Vec<u16> = SPANS
        .iter()
        .flat_map(|&(first, last)| {
            (0..)
                .map(move |i| u32::from(first) + i * u32::from(BLOCK))
                .take_while(move |start| start + u32::from(BLOCK) - 1 <= u32::from(last))
                .map(|start| start as u16)
        })
        .collect();
    let ephemeral_min = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u32>().ok());
    let Some(ephemeral_min) = ephemeral_min else {
        return all;
    };
    let below: Vec<u16> = all
        .iter()
        .copied()
        .filter(|&start| u32::from(start) + u32::from(BLOCK) <= ephemeral_min)
        .collect();
    if below.is_empty() { all } else { below }
}

fn binds_udp(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok()
}
