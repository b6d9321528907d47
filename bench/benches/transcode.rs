//! Opus <-> G.711 transcoding cost: one session-second (50 packets each way) per iteration.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use opus::{Application, Bitrate, Channels, Encoder};
use voxgate_media::tone::ToneGenerator;
use voxgate_media::{G711Law, G711ToOpus, OpusToG711};

/// Packets in one second of 20 ms audio.
const PACKETS_PER_SECOND: usize = 50;

/// One second of what a browser sends: speech-band tone, 48 kHz, 20 ms frames, in-band FEC.
fn browser_second() -> Vec<Vec<u8>> {
    let mut encoder =
        Encoder::new(48_000, Channels::Mono, Application::Voip).expect("opus encoder");
    encoder
        .set_bitrate(Bitrate::Bits(32_000))
        .and_then(|()| encoder.set_inband_fec(true))
        .and_then(|()| encoder.set_packet_loss_perc(10))
        .expect("encoder settings");
    let mut tone = ToneGenerator::new(440.0, 48_000, 8000);
    let mut pcm = [0i16; 960];
    (0..PACKETS_PER_SECOND)
        .map(|_| {
            tone.fill(&mut pcm);
            encoder.encode_vec(&pcm, 1500).expect("encode")
        })
        .collect()
}

/// One second of what a Backend sends: PCMU, 20 ms packets.
fn backend_second() -> Vec<[u8; 160]> {
    let mut tone = ToneGenerator::new(440.0, 8000, 8000);
    let mut pcm = [0i16; 160];
    (0..PACKETS_PER_SECOND)
        .map(|_| {
            tone.fill(&mut pcm);
            let mut codes = [0u8; 160];
            G711Law::Pcmu.encode(&pcm, &mut codes);
            codes
        })
        .collect()
}

/// Feeds one second of browser packets, continuing the stream from packet `next`.
fn opus_second(t: &mut OpusToG711, packets: &[Vec<u8>], next: &mut u32) {
    for payload in packets {
        let (seq, ts) = (*next as u16, next.wrapping_mul(960));
        *next = next.wrapping_add(1);
        t.handle_packet(seq, ts, black_box(payload))
            .expect("valid opus");
        while let Some(frame) = t.poll_frame() {
            black_box(&frame);
        }
    }
}

/// Feeds one second of Backend packets, continuing the stream from packet `next`.
fn g711_second(t: &mut G711ToOpus, packets: &[[u8; 160]], next: &mut u32) {
    for payload in packets {
        let (seq, ts) = (*next as u16, next.wrapping_mul(160));
        *next = next.wrapping_add(1);
        t.handle_packet(seq, ts, black_box(payload))
            .expect("valid g711");
        while let Some(frame) = t.poll_frame() {
            black_box(&frame);
        }
    }
}

fn transcode(c: &mut Criterion) {
    let browser = browser_second();
    let backend = backend_second();
    let mut to_g711 = OpusToG711::new(G711Law::Pcmu, 0, 0).expect("decoder");
    let mut to_opus = G711ToOpus::new(G711Law::Pcmu, 0, 0).expect("encoder");
    let (mut next_opus, mut next_g711) = (0u32, 0u32);

    let mut g = c.benchmark_group("transcode_session_second");
    g.bench_function("opus_to_g711", |b| {
        b.iter(|| opus_second(&mut to_g711, &browser, &mut next_opus))
    });
    g.bench_function("g711_to_opus", |b| {
        b.iter(|| g711_second(&mut to_opus, &backend, &mut next_g711))
    });
    // The figure that sizes a node: CPU time per second of one transcoded session.
    g.bench_function("both_directions", |b| {
        b.iter(|| {
            opus_second(&mut to_g711, &browser, &mut next_opus);
            g711_second(&mut to_opus, &backend, &mut next_g711);
        })
    });
    g.finish();

    c.bench_function("transcode_session_setup", |b| {
        b.iter(|| {
            let pair = (
                OpusToG711::new(G711Law::Pcmu, 0, 0).expect("decoder"),
                G711ToOpus::new(G711Law::Pcmu, 0, 0).expect("encoder"),
            );
            black_box(pair)
        })
    });
    black_box((to_g711.counters(), to_opus.counters()));
}

criterion_group!(benches, transcode);
criterion_main!(benches);
