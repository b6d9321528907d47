//! RTP hot-path micro-benchmarks: parse, relay rewrite, receiver stats and G.711, per packet.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use voxgate_media::g711::{self, ToneGenerator};
use voxgate_media::rtp;
use voxgate_media::{RelayLeg, RtpHeader, RtpPacket, StreamStats};

/// A 172-byte PCMU packet (12-byte header, 160 samples of a 1 kHz tone).
fn pcmu_packet() -> [u8; 172] {
    let mut buf = [0u8; 172];
    RtpHeader {
        marker: false,
        payload_type: 0,
        sequence: 4242,
        timestamp: 160 * 4242,
        ssrc: 0x1234_5678,
    }
    .write(&mut buf)
    .expect("172 bytes hold a header");
    let mut pcm = [0i16; 160];
    ToneGenerator::new(1000.0, 8000, 8000).fill(&mut pcm);
    g711::encode_ulaw(&pcm, &mut buf[12..]);
    buf
}

fn parse(c: &mut Criterion) {
    let buf = pcmu_packet();
    let mut g = c.benchmark_group("rtp");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_172B", |b| {
        b.iter(|| {
            let p = RtpPacket::parse(black_box(&buf)).expect("valid");
            black_box((p.sequence(), p.timestamp(), p.ssrc(), p.payload().len()))
        })
    });

    // The relay's path: validate, then translate SSRC, sequence and timestamp in place.
    let mut relay = buf;
    let mut seq = 0u16;
    g.bench_function("parse_rewrite_172B", |b| {
        b.iter(|| {
            let buf = black_box(&mut relay[..]);
            let p = RtpPacket::parse(buf).expect("valid");
            let (s, ts) = (p.sequence(), p.timestamp());
            seq = seq.wrapping_add(1);
            rtp::set_ssrc(buf, 0xcafe_f00d).expect("header fits");
            rtp::set_sequence(buf, s.wrapping_add(seq)).expect("header fits");
            rtp::set_timestamp(buf, ts.wrapping_add(160)).expect("header fits");
        })
    });
    g.finish();
}

fn stats(c: &mut Criterion) {
    #[allow(clippy::disallowed_methods)] // an origin for simulated arrivals; only offsets matter
    let origin = Instant::now();
    let mut stats = StreamStats::new(8000);
    let mut i = 0u32;
    let mut g = c.benchmark_group("stats");
    g.throughput(Throughput::Elements(1));
    g.bench_function("record", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let arrival = origin + Duration::from_micros(20_000 * u64::from(i));
            stats.record(
                black_box(arrival),
                black_box(i as u16),
                black_box(i.wrapping_mul(160)),
                160,
            );
        })
    });
    g.finish();
    black_box(stats.lost());
}

fn g711(c: &mut Criterion) {
    let mut pcm = [0i16; 160];
    ToneGenerator::new(440.0, 8000, 12000).fill(&mut pcm);
    let mut codes = [0u8; 160];
    let mut back = [0i16; 160];
    let mut g = c.benchmark_group("g711_160_samples");
    g.throughput(Throughput::Elements(160));
    g.bench_function("ulaw_encode", |b| {
        b.iter(|| g711::encode_ulaw(black_box(&pcm), black_box(&mut codes)))
    });
    g.bench_function("ulaw_decode", |b| {
        b.iter(|| g711::decode_ulaw(black_box(&codes), black_box(&mut back)))
    });
    g.bench_function("alaw_encode", |b| {
        b.iter(|| g711::encode_alaw(black_box(&pcm), black_box(&mut codes)))
    });
    g.bench_function("alaw_decode", |b| {
        b.iter(|| g711::decode_alaw(black_box(&codes), black_box(&mut back)))
    });
    g.finish();
}

/// One accepted packet on a latched relay leg: strict-source check, parse, stats, counters.
fn relay(c: &mut Criterion) {
    #[allow(clippy::disallowed_methods)] // an origin for simulated arrivals; only offsets matter
    let origin = Instant::now();
    let peer: std::net::SocketAddr = "203.0.113.7:61000".parse().expect("literal address");
    let mut leg = RelayLeg::new(Some(peer), origin);
    let mut buf = pcmu_packet();
    let mut i = 0u32;
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));
    g.bench_function("receive_172B", |b| {
        b.iter(|| {
            // A fresh sequence number and arrival each time, as a live stream has.
            i = i.wrapping_add(1);
            rtp::set_sequence(&mut buf, i as u16).expect("header fits");
            let now = origin + Duration::from_micros(20_000 * u64::from(i));
            black_box(leg.receive(black_box(now), black_box(peer), black_box(&buf)))
        })
    });
    g.finish();
    black_box(leg.counters());
}

criterion_group!(benches, parse, stats, g711, relay);
criterion_main!(benches);
