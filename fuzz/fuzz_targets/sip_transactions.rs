//! Fuzzes the transaction layer with a sequence of datagrams and clock jumps on one server and
//! one client; nothing may panic and every transaction must end once the clock passes 10 min.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use voxgate_sip::{TimerConfig, Transactions, Transport};

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    // The fuzzer's only clock read: an anchor for virtual time.
    *ORIGIN.get_or_init(Instant::now)
}

fuzz_target!(|data: &[u8]| {
    let source: SocketAddr = ([192, 0, 2, 1], 5060).into();
    let mut endpoints = [
        Transactions::new(TimerConfig::default()),
        Transactions::new(TimerConfig::default()),
    ];
    let mut now = origin();
    // Records: [flags][len_hi][len_lo][bytes...]; flags pick endpoint, transport and a time jump.
    let mut rest = data;
    while let [flags, hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        rest = tail;
        let endpoint = &mut endpoints[usize::from(flags & 1)];
        let transport = if flags & 2 == 0 { Transport::Udp } else { Transport::Tcp };
        now += Duration::from_millis(u64::from(flags >> 2) * 250);
        let _ = endpoint.handle_datagram(now, source, transport, datagram);
        endpoint.handle_timeout(now);
        while endpoint.poll_transmit().is_some() {}
        while endpoint.poll_event().is_some() {}
    }
    for endpoint in &mut endpoints {
        // Server transactions waiting for the TU's final response never end by themselves.
        let end = now + Duration::from_secs(600);
        while let Some(at) = endpoint.poll_timeout().filter(|at| *at <= end) {
            endpoint.handle_timeout(at);
            while endpoint.poll_transmit().is_some() {}
            while endpoint.poll_event().is_some() {}
        }
    }
});
