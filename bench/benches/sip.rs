//! SIP hot-path micro-benchmarks: parse an INVITE, open a server transaction among ~1000 live
//! ones, and absorb a retransmitted INVITE.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use voxgate_sip::{TimerConfig, Transactions, Transport};

/// A realistic trunk INVITE with an SDP offer (PCMU, PCMA, Opus, telephone-event).
fn invite(branch: &str, call_id: &str) -> Vec<u8> {
    let sdp = "v=0\r\n\
        o=- 3894823 3894823 IN IP4 203.0.113.10\r\n\
        s=-\r\n\
        c=IN IP4 203.0.113.10\r\n\
        t=0 0\r\n\
        m=audio 31044 RTP/AVP 0 8 111 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:111 opus/48000/2\r\n\
        a=fmtp:111 minptime=10;useinbandfec=1\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-16\r\n\
        a=ptime:20\r\n\
        a=sendrecv\r\n";
    format!(
        "INVITE sip:+14155550123@proxy.example.com:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 203.0.113.10:5060;branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Caller\" <sip:+14155550100@trunk.example.net>;tag=as5f1e7c2a\r\n\
         To: <sip:+14155550123@proxy.example.com>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 102 INVITE\r\n\
         Contact: <sip:+14155550100@203.0.113.10:5060>\r\n\
         User-Agent: trunk/1.0\r\n\
         Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY\r\n\
         Supported: replaces, timer\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

fn source() -> SocketAddr {
    "203.0.113.10:5060".parse().expect("literal address")
}

/// A server holding `live` INVITE transactions in Proceeding.
fn loaded_server(now: Instant, live: usize) -> Transactions {
    let mut server = Transactions::new(TimerConfig::default());
    for i in 0..live {
        let bytes = invite(&format!("z9hG4bKlive{i}"), &format!("live{i}@bench"));
        server
            .handle_datagram(now, source(), Transport::Udp, &bytes)
            .expect("valid INVITE");
    }
    while server.poll_transmit().is_some() {}
    while server.poll_event().is_some() {}
    server
}

fn parse(c: &mut Criterion) {
    let bytes = invite("z9hG4bK74bf9", "3848276298220188511@trunk.example.net");
    let mut group = c.benchmark_group("sip");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_invite_with_sdp", |b| {
        b.iter(|| voxgate_sip::parse(black_box(&bytes)).expect("valid"))
    });
    group.finish();
}

fn new_invite(c: &mut Criterion) {
    #[allow(clippy::disallowed_methods)] // an origin for virtual time; only offsets matter
    let now = Instant::now();
    // Distinct INVITEs so each one opens a transaction; a fresh server with 1000 live
    // transactions (built outside the timed section) takes every lap of 1000.
    let messages: Vec<Vec<u8>> = (0..1000)
        .map(|i| invite(&format!("z9hG4bKnew{i}"), &format!("new{i}@bench")))
        .collect();
    let mut group = c.benchmark_group("sip");
    group.throughput(Throughput::Elements(1));
    group.bench_function("new_invite_with_1000_live", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let lap = left.min(messages.len());
                left -= lap;
                let mut server = loaded_server(now, 1000);
                #[allow(clippy::disallowed_methods)] // measuring wall time is the point here
                let started = Instant::now();
                for bytes in &messages[..lap] {
                    server
                        .handle_datagram(now, source(), Transport::Udp, black_box(bytes))
                        .expect("valid");
                    while let Some(event) = server.poll_event() {
                        black_box(event);
                    }
                    while let Some(transmit) = server.poll_transmit() {
                        black_box(transmit);
                    }
                }
                total += started.elapsed();
                // Dropping the loaded server is not part of the measurement.
                drop(server);
            }
            total
        })
    });
    group.finish();
}

fn retransmitted_invite(c: &mut Criterion) {
    #[allow(clippy::disallowed_methods)] // an origin for virtual time; only offsets matter
    let now = Instant::now();
    let mut server = loaded_server(now, 1000);
    let bytes = invite("z9hG4bKlive500", "live500@bench");
    let mut group = c.benchmark_group("sip");
    group.throughput(Throughput::Elements(1));
    group.bench_function("retransmitted_invite_absorbed", |b| {
        b.iter(|| {
            server
                .handle_datagram(now, source(), Transport::Udp, black_box(&bytes))
                .expect("valid");
            while let Some(transmit) = server.poll_transmit() {
                black_box(transmit);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, parse, new_invite, retransmitted_invite);
criterion_main!(benches);
