//! Opus <-> G.711 transcoding for one session and one direction, with loss concealment.
//!
//! A WebRTC client sends Opus (RTP clock 48 kHz, frames of 2.5 to 120 ms); a SIP Backend that
//! does not take Opus gets PCMU or PCMA (8 kHz, 20 ms = 160 samples per packet). Both codec
//! states are created at 8 kHz mono: libopus resamples internally (its decoder synthesises at
//! the requested rate, its encoder accepts it), so no resampler runs here. 8 kHz, not 16 kHz,
//! because G.711 is narrowband (300-3400 Hz): a 16 kHz (wideband) Opus state would decode
//! audio above 4 kHz only for G.711 to throw it away, at more CPU per sample.
//!
//! [`OpusToG711`] repacketizes to 20 ms: a 10 ms Opus frame fills half a G.711 packet, a 60 ms
//! one fills three. It keeps the outgoing stream continuous: lost packets (a sequence gap of
//! at most [`MAX_CONCEALED_SAMPLES`]) are filled by libopus loss concealment, or by in-band FEC
//! when the next packet carries it; a longer gap is not invented but skipped, by a timestamp
//! jump with the marker bit set. Duplicates and late packets are dropped and counted.
//!
//! [`G711ToOpus`] encodes 20 ms Opus frames (VOIP, 24 kbit/s, in-band FEC, complexity 5) with RTP
//! timestamps on the 48 kHz Opus clock. A gap on the G.711 side is not concealed: the encoder
//! just continues, and the outgoing timestamp jumps by the gap (marker set) so that the
//! browser's jitter buffer plays the silence for as long as the Backend was silent.
//!
//! Both take `(sequence, timestamp, payload)` from a parsed RTP packet and queue output frames
//! that [`OpusToG711::poll_frame`] / [`G711ToOpus::poll_frame`] hand out; drain them after
//! every input. The caller owns SSRC and payload type; the initial outgoing sequence number
//! and timestamp are arguments (random per RFC 3550, from the caller's RNG). No I/O, no clock:
//! the sender's RTP timestamps are the only notion of time.

use std::collections::VecDeque;

use opus::{Application, Bitrate, Channels, Decoder, Encoder};

use crate::g711::G711Law;
use crate::rtp::{RTP_HEADER_LEN, RtpError, RtpHeader};

/// Sample rate of both codec states and of G.711.
pub const PCM_RATE: u32 = 8000;

/// Samples in one 20 ms frame at [`PCM_RATE`]: one G.711 packet, one encoded Opus frame.
pub const FRAME_SAMPLES: usize = 160;

/// Opus RTP timestamps tick at 48 kHz whatever the codec's internal rate (RFC 7587 4.1).
pub const OPUS_RTP_CLOCK: u32 = 48_000;

/// 48 kHz RTP ticks per 8 kHz sample.
const TICKS_PER_SAMPLE: u32 = OPUS_RTP_CLOCK / PCM_RATE;

/// The longest gap [`OpusToG711`] fills with concealment: 5 frames, 100 ms. Beyond that
/// concealment drifts into buzz, and the far end's jitter buffer handles silence better.
pub const MAX_CONCEALED_SAMPLES: usize = 5 * FRAME_SAMPLES;

/// The longest Opus packet (RFC 6716 3.2.5), in samples at [`PCM_RATE`].
const MAX_OPUS_PACKET_SAMPLES: usize = 960;

/// The longest G.711 payload [`G711ToOpus`] takes: 120 ms.
pub const MAX_G711_PAYLOAD: usize = 960;

/// Room for one encoded 20 ms Opus frame; at 24 kbit/s frames are about 60 bytes.
pub const MAX_OPUS_PAYLOAD: usize = 256;

/// Opus bitrate toward the browser: transparent for narrowband speech with room for FEC.
const OPUS_BITRATE: i32 = 24_000;

/// Loss the encoder plans its in-band FEC for, percent.
const OPUS_EXPECTED_LOSS_PERCENT: i32 = 5;

/// Encoder complexity (0-10; libopus 1.6 defaults to 9). 5, as libwebrtc uses on mobile: on
/// narrowband speech the default costs about 30 % more CPU per frame (bench `transcode`) for
/// little audible gain, and encoding is most of a transcoded session's cost.
const OPUS_COMPLEXITY: i32 = 5;

/// A 20 ms frame of G.711 ready to send toward the Backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct G711Frame {
    /// Sequence number of the outgoing RTP stream.
    pub sequence: u16,
    /// Timestamp of the outgoing RTP stream (8 kHz).
    pub timestamp: u32,
    /// Set on the first frame and the first frame after a timestamp jump (RFC 3551 4.1).
    pub marker: bool,
    /// 160 G.711 codes.
    pub payload: [u8; FRAME_SAMPLES],
}

impl G711Frame {
    /// Writes this frame as an RTP packet into `buf`, returning its length (172 bytes).
    pub fn write_rtp(
        &self,
        ssrc: u32,
        payload_type: u8,
        buf: &mut [u8],
    ) -> Result<usize, RtpError> {
        let header = RtpHeader {
            marker: self.marker,
            payload_type,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc,
        };
        write_rtp(header, &self.payload, buf)
    }
}

/// A 20 ms Opus frame ready to send toward the WebRTC client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusFrame {
    /// Sequence number of the outgoing RTP stream.
    pub sequence: u16,
    /// Timestamp of the outgoing RTP stream (48 kHz).
    pub timestamp: u32,
    /// Set on the first frame and the first frame after a timestamp jump (RFC 3551 4.1).
    pub marker: bool,
    len: usize,
    buf: [u8; MAX_OPUS_PAYLOAD],
}

impl OpusFrame {
    /// The encoded Opus packet.
    pub fn payload(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Writes this frame as an RTP packet into `buf`, returning its length.
    pub fn write_rtp(
        &self,
        ssrc: u32,
        payload_type: u8,
        buf: &mut [u8],
    ) -> Result<usize, RtpError> {
        let header = RtpHeader {
            marker: self.marker,
            payload_type,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc,
        };
        write_rtp(header, self.payload(), buf)
    }
}

fn write_rtp(header: RtpHeader, payload: &[u8], buf: &mut [u8]) -> Result<usize, RtpError> {
    let needed = RTP_HEADER_LEN + payload.len();
    let Some(out) = buf.get_mut(..needed) else {
        return Err(RtpError::BufferTooSmall {
            needed,
            capacity: buf.len(),
        });
    };
    header.write(out)?;
    out[RTP_HEADER_LEN..].copy_from_slice(payload);
    Ok(needed)
}

/// What one transcoder has seen, since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TranscodeCounters {
    /// Input packets accepted and transcoded.
    pub packets: u64,
    /// Input packets dropped because one with the same sequence number was already taken.
    pub duplicates: u64,
    /// Input packets dropped because they came after a newer one (reordered too far to play),
    /// or so far from the stream's sequence numbers that they were taken for a stray.
    pub late: u64,
    /// Input packets missing, from the gaps in sequence numbers.
    pub lost: u64,
    /// Samples (8 kHz) made up by loss concealment or FEC; always 0 for [`G711ToOpus`].
    pub concealed_samples: u64,
    /// Times the output timestamp jumped instead of playing the gap (a long loss, a silence
    /// of the sender, a sender restart), or was re-anchored after the sender's clock jumped back.
    pub resyncs: u64,
    /// Input packets the codec refused (empty, malformed, too long).
    pub invalid: u64,
    /// Output frames dropped because the caller had not drained them before the next input.
    pub undrained: u64,
}

/// Opus from a WebRTC client to G.711 for a SIP Backend; one per session.
#[derive(Debug)]
pub struct OpusToG711 {
    decoder: Decoder,
    law: G711Law,
    gate: SequenceGate,
    /// Timestamp (48 kHz) the next in-order packet should carry.
    expected_ts: u32,
    out: OutputClock,
    /// Decoded PCM: `residual` samples carried from the last packet (less than a frame), then
    /// room for a maximal concealment and a maximal packet.
    pcm: Box<[i16; FRAME_SAMPLES + MAX_CONCEALED_SAMPLES + MAX_OPUS_PACKET_SAMPLES]>,
    residual: usize,
    /// The packet being decoded, kept apart until it is known to be valid.
    scratch: Box<[i16; MAX_OPUS_PACKET_SAMPLES]>,
    frames: VecDeque<G711Frame>,
    counters: TranscodeCounters,
}

impl OpusToG711 {
    /// A transcoder whose output stream starts at `first_sequence` and `first_timestamp` (8 kHz).
    pub fn new(
        law: G711Law,
        first_sequence: u16,
        first_timestamp: u32,
    ) -> Result<Self, TranscodeError> {
        let decoder = Decoder::new(PCM_RATE, Channels::Mono).map_err(TranscodeError::Codec)?;
        Ok(Self {
            decoder,
            law,
            gate: SequenceGate::default(),
            expected_ts: 0,
            out: OutputClock::new(first_sequence, first_timestamp, 1),
            pcm: Box::new([0; FRAME_SAMPLES + MAX_CONCEALED_SAMPLES + MAX_OPUS_PACKET_SAMPLES]),
            residual: 0,
            scratch: Box::new([0; MAX_OPUS_PACKET_SAMPLES]),
            // A maximal concealment plus a maximal packet is 11 frames.
            frames: VecDeque::with_capacity(12),
            counters: TranscodeCounters::default(),
        })
    }

    /// Takes one Opus RTP payload with its sequence number and 48 kHz timestamp.
    ///
    /// Frames that came of it are then ready in [`poll_frame`](Self::poll_frame); frames of
    /// the previous input not yet drained are dropped (counted as `undrained`). Duplicates and
    /// late packets return `Ok` and produce nothing. A refused packet leaves the stream state
    /// as it was, so it counts as lost when the next one arrives.
    pub fn handle_packet(
        &mut self,
        sequence: u16,
        timestamp: u32,
        payload: &[u8],
    ) -> Result<(), TranscodeError> {
        self.counters.undrained += self.frames.len() as u64;
        self.frames.clear();
        if payload.is_empty() {
            // libopus would take an empty packet for a lost one and conceal.
            self.counters.invalid += 1;
            return Err(TranscodeError::EmptyPayload);
        }
        let mut conceal = 0;
        let mut skip = 0;
        let mut lost = 0;
        match self.gate.classify(sequence) {
            Arrival::Duplicate => {
                self.counters.duplicates += 1;
                return Ok(());
            }
            Arrival::Late | Arrival::Stray => {
                self.counters.late += 1;
                return Ok(());
            }
            Arrival::First => {}
            Arrival::Restart => {
                // Another stream: its timestamps say nothing about ours; continue seamlessly.
                self.counters.resyncs += 1;
                self.decoder.reset_state().map_err(TranscodeError::Codec)?;
            }
            Arrival::Next { lost: missing } => {
                lost = missing;
                let gap_ticks = timestamp.wrapping_sub(self.expected_ts) as i32;
                if gap_ticks < 0 {
                    // The sender's clock went back: re-anchor on it, no gap to fill.
                    self.counters.resyncs += 1;
                } else {
                    let gap = gap_ticks.unsigned_abs() / TICKS_PER_SAMPLE;
                    // libopus conceals whole 2.5 ms steps (20 samples). A gap without a
                    // missing packet is the sender's silence (DTX): nothing to conceal.
                    if missing > 0
                        && gap as usize <= MAX_CONCEALED_SAMPLES
                        && gap.is_multiple_of(20)
                    {
                        conceal = gap as usize;
                    } else {
                        skip = gap;
                    }
                }
            }
        }
        if conceal > 0 {
            // With FEC asked for, libopus conceals all but the last lost frame and rebuilds
            // that one from this packet's redundancy when it carries some. It parses the
            // packet first, so a malformed one is refused before any state changes.
            let out = &mut self.pcm[self.residual..self.residual + conceal];
            match self.decoder.decode(payload, out, true) {
                Ok(n) => conceal = n.min(conceal),
                Err(e) => {
                    self.counters.invalid += 1;
                    return Err(TranscodeError::InvalidOpus(e));
                }
            }
            self.counters.concealed_samples += conceal as u64;
        }
        let decoded = match self.decoder.decode(payload, &mut self.scratch[..], false) {
            Ok(n) => n.min(self.scratch.len()),
            Err(e) => {
                self.counters.invalid += 1;
                if conceal > 0 {
                    // Concealment ran (the packet parsed, so this is libopus's own failure):
                    // keep what it made; this packet's audio is a gap the next one fills.
                    self.gate.accept(sequence);
                    self.expected_ts = timestamp;
                    self.counters.lost += u64::from(lost);
                    self.emit(self.residual + conceal);
                }
                return Err(TranscodeError::InvalidOpus(e));
            }
        };
        self.gate.accept(sequence);
        self.expected_ts = timestamp.wrapping_add(decoded as u32 * TICKS_PER_SAMPLE);
        self.counters.packets += 1;
        self.counters.lost += u64::from(lost);
        if skip > 0 {
            self.skip(skip);
        }
        let at = self.residual + conceal;
        self.pcm[at..at + decoded].copy_from_slice(&self.scratch[..decoded]);
        self.emit(at + decoded);
        Ok(())
    }

    /// The next G.711 frame to send, oldest first; `None` when drained.
    pub fn poll_frame(&mut self) -> Option<G711Frame> {
        self.frames.pop_front()
    }

    /// What this transcoder has seen.
    pub fn counters(&self) -> TranscodeCounters {
        self.counters
    }

    /// Cuts `pcm[..len]` into 20 ms frames and keeps the remainder as the next residual.
    fn emit(&mut self, len: usize) {
        let mut start = 0;
        while len - start >= FRAME_SAMPLES {
            let mut payload = [0u8; FRAME_SAMPLES];
            self.law
                .encode(&self.pcm[start..start + FRAME_SAMPLES], &mut payload);
            let (sequence, timestamp, marker) = self.out.next_frame(FRAME_SAMPLES as u32);
            self.frames.push_back(G711Frame {
                sequence,
                timestamp,
                marker,
                payload,
            });
            start += FRAME_SAMPLES;
        }
        self.pcm.copy_within(start..len, 0);
        self.residual = len - start;
    }

    /// Leaves `gap` samples of silence in the output: zeros up to the end of a partly filled
    /// frame, then a timestamp jump, so nothing is invented and the timing stays true.
    fn skip(&mut self, gap: u32) {
        self.counters.resyncs += 1;
        let mut gap = gap as usize;
        if self.residual > 0 {
            let fill = gap.min(FRAME_SAMPLES - self.residual);
            self.pcm[self.residual..self.residual + fill].fill(0);
            gap -= fill;
            self.emit(self.residual + fill);
        }
        self.out.jump(gap as u32);
    }
}

/// G.711 from a SIP Backend to Opus for a WebRTC client; one per session.
#[derive(Debug)]
pub struct G711ToOpus {
    encoder: Encoder,
    law: G711Law,
    gate: SequenceGate,
    /// Timestamp (8 kHz) the next in-order packet should carry.
    expected_ts: u32,
    out: OutputClock,
    pcm: Box<[i16; FRAME_SAMPLES + MAX_G711_PAYLOAD]>,
    residual: usize,
    frames: VecDeque<OpusFrame>,
    counters: TranscodeCounters,
}

impl G711ToOpus {
    /// A transcoder whose output stream starts at `first_sequence` and `first_timestamp` (48 kHz).
    pub fn new(
        law: G711Law,
        first_sequence: u16,
        first_timestamp: u32,
    ) -> Result<Self, TranscodeError> {
        let mut encoder = Encoder::new(PCM_RATE, Channels::Mono, Application::Voip)
            .map_err(TranscodeError::Codec)?;
        encoder
            .set_bitrate(Bitrate::Bits(OPUS_BITRATE))
            .and_then(|()| encoder.set_inband_fec(true))
            .and_then(|()| encoder.set_packet_loss_perc(OPUS_EXPECTED_LOSS_PERCENT))
            .and_then(|()| encoder.set_complexity(OPUS_COMPLEXITY))
            .map_err(TranscodeError::Codec)?;
        Ok(Self {
            encoder,
            law,
            gate: SequenceGate::default(),
            expected_ts: 0,
            out: OutputClock::new(first_sequence, first_timestamp, TICKS_PER_SAMPLE),
            pcm: Box::new([0; FRAME_SAMPLES + MAX_G711_PAYLOAD]),
            residual: 0,
            frames: VecDeque::with_capacity(MAX_G711_PAYLOAD / FRAME_SAMPLES + 1),
            counters: TranscodeCounters::default(),
        })
    }

    /// Takes one G.711 RTP payload with its sequence number and 8 kHz timestamp.
    ///
    /// Every complete 20 ms of audio is encoded into a frame ready in
    /// [`poll_frame`](Self::poll_frame); frames of the previous input not yet drained are
    /// dropped (counted as `undrained`). Duplicates and late packets return `Ok` and produce
    /// nothing. An error leaves the stream state as it was.
    pub fn handle_packet(
        &mut self,
        sequence: u16,
        timestamp: u32,
        payload: &[u8],
    ) -> Result<(), TranscodeError> {
        self.counters.undrained += self.frames.len() as u64;
        self.frames.clear();
        if payload.is_empty() {
            self.counters.invalid += 1;
            return Err(TranscodeError::EmptyPayload);
        }
        if payload.len() > MAX_G711_PAYLOAD {
            self.counters.invalid += 1;
            return Err(TranscodeError::PayloadTooLong {
                len: payload.len(),
                max: MAX_G711_PAYLOAD,
            });
        }
        match self.gate.classify(sequence) {
            Arrival::Duplicate => {
                self.counters.duplicates += 1;
                return Ok(());
            }
            Arrival::Late | Arrival::Stray => {
                self.counters.late += 1;
                return Ok(());
            }
            Arrival::First => {}
            Arrival::Restart => self.counters.resyncs += 1,
            Arrival::Next { lost } => {
                self.counters.lost += u64::from(lost);
                let gap = timestamp.wrapping_sub(self.expected_ts) as i32;
                if gap < 0 {
                    self.counters.resyncs += 1;
                } else if gap > 0 {
                    // The encoder just continues; the receiver sees the silence in the timestamps.
                    self.skip(gap.unsigned_abs())?;
                }
            }
        }
        self.gate.accept(sequence);
        self.expected_ts = timestamp.wrapping_add(payload.len() as u32);
        self.counters.packets += 1;
        let end = self.residual + payload.len();
        self.law.decode(payload, &mut self.pcm[self.residual..end]);
        self.emit(end)
    }

    /// The next Opus frame to send, oldest first; `None` when drained.
    pub fn poll_frame(&mut self) -> Option<OpusFrame> {
        self.frames.pop_front()
    }

    /// What this transcoder has seen.
    pub fn counters(&self) -> TranscodeCounters {
        self.counters
    }

    /// Encodes `pcm[..len]` in 20 ms frames and keeps the remainder as the next residual.
    fn emit(&mut self, len: usize) -> Result<(), TranscodeError> {
        let mut result = Ok(());
        let mut start = 0;
        while len - start >= FRAME_SAMPLES {
            let mut buf = [0u8; MAX_OPUS_PAYLOAD];
            let encoded = self
                .encoder
                .encode(&self.pcm[start..start + FRAME_SAMPLES], &mut buf);
            start += FRAME_SAMPLES;
            // The clock moves even if a frame is lost, so the timing stays true.
            let (sequence, timestamp, marker) = self.out.next_frame(FRAME_SAMPLES as u32);
            match encoded {
                Ok(len) => self.frames.push_back(OpusFrame {
                    sequence,
                    timestamp,
                    marker,
                    len: len.min(MAX_OPUS_PAYLOAD),
                    buf,
                }),
                // Only bad arguments (a bug here) make libopus fail on 20 ms of PCM.
                Err(e) => result = Err(TranscodeError::Codec(e)),
            }
        }
        self.pcm.copy_within(start..len, 0);
        self.residual = len - start;
        result
    }

    /// As [`OpusToG711`]: zeros to the end of a partly filled frame, then a timestamp jump.
    fn skip(&mut self, gap: u32) -> Result<(), TranscodeError> {
        self.counters.resyncs += 1;
        let mut gap = gap as usize;
        if self.residual > 0 {
            let fill = gap.min(FRAME_SAMPLES - self.residual);
            self.pcm[self.residual..self.residual + fill].fill(0);
            gap -= fill;
            self.emit(self.residual + fill)?;
        }
        self.out.jump(gap as u32);
        Ok(())
    }
}

/// Sequence number, timestamp and marker of an outgoing stream.
#[derive(Debug)]
struct OutputClock {
    sequence: u16,
    timestamp: u32,
    /// RTP clock ticks per 8 kHz sample.
    ticks_per_sample: u32,
    /// Set for the next frame: the stream starts, or its timestamp jumped.
    marker: bool,
}

impl OutputClock {
    fn new(sequence: u16, timestamp: u32, ticks_per_sample: u32) -> Self {
        Self {
            sequence,
            timestamp,
            ticks_per_sample,
            marker: true,
        }
    }

    /// Sequence number, timestamp and marker of the next frame of `samples` samples.
    fn next_frame(&mut self, samples: u32) -> (u16, u32, bool) {
        let frame = (self.sequence, self.timestamp, self.marker);
        self.sequence = self.sequence.wrapping_add(1);
        self.advance(samples);
        self.marker = false;
        frame
    }

    /// Leaves `samples` of silence: the next frame's timestamp is that much later.
    fn jump(&mut self, samples: u32) {
        if samples > 0 {
            self.advance(samples);
            self.marker = true;
        }
    }

    fn advance(&mut self, samples: u32) {
        self.timestamp = self
            .timestamp
            .wrapping_add(samples.wrapping_mul(self.ticks_per_sample));
    }
}

/// How a sequence number relates to the stream so far (RFC 3550 A.1, with a replay window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// The stream's first packet.
    First,
    /// Newer than any so far, after `lost` missing ones.
    Next { lost: u16 },
    /// Already taken.
    Duplicate,
    /// Older than the newest taken, and not taken before.
    Late,
    /// Far from the stream; dropped unless the next packet follows it.
    Stray,
    /// Follows a stray: the sender restarted its sequence numbers.
    Restart,
}

/// A jump of more than this many sequence numbers ahead is not taken for loss (RFC 3550 A.1).
const MAX_DROPOUT: u16 = 3000;
/// Up to this many sequence numbers behind is reordering; further, a stray (RFC 3550 A.1).
const MAX_MISORDER: u16 = 100;

/// Sorts arriving sequence numbers into new, duplicate, late and stray.
#[derive(Debug, Default)]
struct SequenceGate {
    newest: Option<u16>,
    /// Bit `i`: `newest - i` was taken.
    taken: u64,
    /// A stray's successor: if it comes next, the stream restarted.
    probe: Option<u16>,
}

impl SequenceGate {
    /// Classifies `seq`; only a stray changes the gate (it arms the restart probe).
    fn classify(&mut self, seq: u16) -> Arrival {
        let Some(newest) = self.newest else {
            return Arrival::First;
        };
        let ahead = seq.wrapping_sub(newest);
        let behind = newest.wrapping_sub(seq);
        if ahead == 0 {
            Arrival::Duplicate
        } else if ahead < MAX_DROPOUT {
            Arrival::Next { lost: ahead - 1 }
        } else if behind <= MAX_MISORDER {
            if behind < 64 && (self.taken >> behind) & 1 == 1 {
                Arrival::Duplicate
            } else {
                Arrival::Late
            }
        } else if self.probe == Some(seq) {
            Arrival::Restart
        } else {
            self.probe = Some(seq.wrapping_add(1));
            Arrival::Stray
        }
    }

    /// Records `seq`, classified `First`, `Next` or `Restart`, as taken.
    fn accept(&mut self, seq: u16) {
        let ahead = self.newest.map(|newest| seq.wrapping_sub(newest));
        self.taken = match ahead {
            Some(d) if d > 0 && d < MAX_DROPOUT => {
                self.taken.checked_shl(u32::from(d)).unwrap_or(0) | 1
            }
            _ => 1,
        };
        self.newest = Some(seq);
        self.probe = None;
    }
}

/// Why a transcoder refused a packet or could not start.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// libopus could not create or configure a codec state (out of memory), or refused
    /// arguments (a bug here).
    #[error("opus codec state: {0}")]
    Codec(#[source] opus::Error),
    /// The RTP payload is empty, so there is no frame to transcode.
    #[error("empty RTP payload")]
    EmptyPayload,
    /// The payload is not a valid Opus packet (RFC 6716 3), or libopus failed decoding it.
    #[error("invalid Opus packet: {0}")]
    InvalidOpus(#[source] opus::Error),
    /// A G.711 payload longer than [`MAX_G711_PAYLOAD`] bytes (120 ms).
    #[error("G.711 payload of {len} bytes, at most {max} taken")]
    PayloadTooLong {
        /// Bytes in the payload.
        len: usize,
        /// Bytes taken at most.
        max: usize,
    },
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::rtp::RtpPacket;
    use crate::tone::{ToneGenerator, dominant_tone};

    const CANDIDATES: [f32; 5] = [500.0, 1000.0, 1500.0, 2000.0, 3000.0];

    /// What a browser sends: a tone encoded at 48 kHz in frames of `frame_ms`.
    fn browser_packets(freq: f64, frame_ms: usize, count: usize) -> Vec<(u16, u32, Vec<u8>)> {
        browser_packets_with(freq, frame_ms, count, false)
    }

    /// As [`browser_packets`], with in-band FEC on as WebRTC negotiates it (`useinbandfec=1`).
    fn browser_packets_with(
        freq: f64,
        frame_ms: usize,
        count: usize,
        fec: bool,
    ) -> Vec<(u16, u32, Vec<u8>)> {
        let mut encoder = Encoder::new(48_000, Channels::Mono, Application::Voip).unwrap();
        if fec {
            encoder.set_inband_fec(true).unwrap();
            encoder.set_packet_loss_perc(10).unwrap();
            encoder.set_bitrate(Bitrate::Bits(32_000)).unwrap();
        }
        let mut tone = ToneGenerator::new(freq, 48_000, 8000);
        let samples = 48 * frame_ms;
        let mut pcm = vec![0i16; samples];
        (0..count)
            .map(|i| {
                tone.fill(&mut pcm);
                let payload = encoder.encode_vec(&pcm, 1500).unwrap();
                let seq = 30_000u16.wrapping_add(i as u16);
                let ts = 7u32.wrapping_add((i * samples) as u32);
                (seq, ts, payload)
            })
            .collect()
    }

    /// Feeds `packets` to `t` and drains every frame.
    fn run_opus(t: &mut OpusToG711, packets: &[(u16, u32, Vec<u8>)]) -> Vec<G711Frame> {
        let mut out = Vec::new();
        for (seq, ts, payload) in packets {
            t.handle_packet(*seq, *ts, payload).unwrap();
            while let Some(f) = t.poll_frame() {
                out.push(f);
            }
        }
        out
    }

    fn decode_g711(law: G711Law, frames: &[G711Frame]) -> Vec<i16> {
        let mut pcm = vec![0i16; frames.len() * FRAME_SAMPLES];
        for (f, out) in frames.iter().zip(pcm.chunks_mut(FRAME_SAMPLES)) {
            law.decode(&f.payload, out);
        }
        pcm
    }

    /// Consecutive sequence numbers and 160-sample timestamp steps from the given start.
    fn assert_continuous(frames: &[G711Frame], seq: u16, ts: u32) {
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.sequence, seq.wrapping_add(i as u16), "frame {i}");
            assert_eq!(f.timestamp, ts.wrapping_add(160 * i as u32), "frame {i}");
            assert_eq!(f.marker, i == 0, "frame {i}");
        }
    }

    fn opus_to_pcmu() -> OpusToG711 {
        OpusToG711::new(G711Law::Pcmu, 65_530, u32::MAX - 500).unwrap()
    }

    #[test]
    fn a_browser_tone_comes_out_as_g711() {
        let packets = browser_packets(1000.0, 20, 50);
        let mut t = opus_to_pcmu();
        let frames = run_opus(&mut t, &packets);
        assert_eq!(frames.len(), 50);
        // Both counters wrap on the way.
        assert_continuous(&frames, 65_530, u32::MAX - 500);
        let pcm = decode_g711(G711Law::Pcmu, &frames);
        // Skip the codec's start-up; a second of audio leaves plenty.
        let m = dominant_tone(&pcm[1600..], 8000, &CANDIDATES).unwrap();
        assert_eq!(m.freq_hz, 1000.0);
        assert!(m.ratio > 0.8, "{m:?}");
        let c = t.counters();
        assert_eq!(
            (c.packets, c.lost, c.concealed_samples, c.resyncs),
            (50, 0, 0, 0)
        );
    }

    #[test]
    fn every_opus_frame_size_is_repacketized_to_20_ms() {
        for (frame_ms, count) in [(10, 100), (20, 50), (40, 25), (60, 17)] {
            let packets = browser_packets(1500.0, frame_ms, count);
            let mut t = OpusToG711::new(G711Law::Pcma, 1, 0).unwrap();
            let mut frames = Vec::new();
            for (i, (seq, ts, payload)) in packets.iter().enumerate() {
                t.handle_packet(*seq, *ts, payload).unwrap();
                let before = frames.len();
                while let Some(f) = t.poll_frame() {
                    frames.push(f);
                }
                // 60 ms gives three packets at once; 10 ms one every second packet.
                let expected = if frame_ms == 10 { i % 2 } else { frame_ms / 20 };
                assert_eq!(frames.len() - before, expected, "{frame_ms} ms, packet {i}");
            }
            assert_eq!(frames.len(), count * frame_ms / 20, "{frame_ms} ms");
            assert_continuous(&frames, 1, 0);
            let pcm = decode_g711(G711Law::Pcma, &frames);
            let m = dominant_tone(&pcm[1600..], 8000, &CANDIDATES).unwrap();
            assert_eq!(m.freq_hz, 1500.0, "{frame_ms} ms");
            assert!(m.ratio > 0.8, "{frame_ms} ms: {m:?}");
        }
    }

    #[test]
    fn a_lost_packet_is_concealed_without_a_timestamp_jump() {
        let mut packets = browser_packets(1000.0, 20, 50);
        packets.remove(20);
        let mut t = opus_to_pcmu();
        let frames = run_opus(&mut t, &packets);
        // The stream comes out whole: 49 packets in, 50 frames out.
        assert_eq!(frames.len(), 50);
        assert_continuous(&frames, 65_530, u32::MAX - 500);
        let c = t.counters();
        assert_eq!(
            (c.packets, c.lost, c.concealed_samples, c.resyncs),
            (49, 1, 160, 0)
        );
        let pcm = decode_g711(G711Law::Pcmu, &frames);
        // The concealed frame and its neighbours still carry the tone.
        // Concealment plays something tone-like, not silence (libopus then ramps the gain back
        // up over a few frames), and the tone is clean again soon after.
        let concealed = &pcm[20 * 160..21 * 160];
        assert!(crate::tone::mean_power(concealed).sqrt() > 1000.0);
        let m = dominant_tone(&pcm[30 * 160..], 8000, &CANDIDATES).unwrap();
        assert_eq!(m.freq_hz, 1000.0);
        assert!(m.ratio > 0.9, "{m:?}");
    }

    #[test]
    fn in_band_fec_rebuilds_a_lost_packet() {
        let mut packets = browser_packets_with(1000.0, 20, 50, true);
        packets.remove(20);
        let mut t = opus_to_pcmu();
        let frames = run_opus(&mut t, &packets);
        assert_eq!(frames.len(), 50);
        assert_continuous(&frames, 65_530, u32::MAX - 500);
        let pcm = decode_g711(G711Law::Pcmu, &frames);
        // The rebuilt frame is (nearly) the tone itself, at full level.
        let rebuilt = &pcm[20 * 160..21 * 160];
        assert!(crate::tone::mean_power(rebuilt).sqrt() > 5000.0);
        let m = dominant_tone(rebuilt, 8000, &CANDIDATES).unwrap();
        assert_eq!(m.freq_hz, 1000.0);
        assert!(m.ratio > 0.99, "{m:?}");
        assert_eq!(t.counters().concealed_samples, 160);
    }

    #[test]
    fn concealment_is_bounded_and_a_long_gap_jumps() {
        // Five lost packets (100 ms) are concealed, six are not.
        let packets = browser_packets(1000.0, 20, 40);
        let mut short: Vec<_> = packets.clone();
        short.drain(10..15);
        let mut t = opus_to_pcmu();
        let frames = run_opus(&mut t, &short);
        assert_eq!(frames.len(), 40);
        assert_continuous(&frames, 65_530, u32::MAX - 500);
        assert_eq!(t.counters().concealed_samples, 800);

        let mut long = packets;
        long.drain(10..16);
        let mut t = OpusToG711::new(G711Law::Pcmu, 100, 1000).unwrap();
        let frames = run_opus(&mut t, &long);
        assert_eq!(frames.len(), 34);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.sequence, 100 + i as u16, "sequence stays continuous");
            let skipped = if i >= 10 { 6 * 160 } else { 0 };
            assert_eq!(f.timestamp, 1000 + 160 * i as u32 + skipped, "frame {i}");
            assert_eq!(f.marker, i == 0 || i == 10, "frame {i}");
        }
        let c = t.counters();
        assert_eq!((c.lost, c.concealed_samples, c.resyncs), (6, 0, 1));
    }

    #[test]
    fn sender_silence_is_a_jump_not_concealment() {
        // DTX: sequence numbers continue, timestamps leave 200 ms out.
        let mut packets = browser_packets(1000.0, 20, 20);
        for (_, ts, _) in &mut packets[10..] {
            *ts += 10 * 960;
        }
        let mut t = opus_to_pcmu();
        let frames = run_opus(&mut t, &packets);
        assert_eq!(frames.len(), 20);
        assert_eq!(
            frames[10].timestamp.wrapping_sub(frames[9].timestamp),
            11 * 160
        );
        assert!(frames[10].marker);
        let c = t.counters();
        assert_eq!((c.lost, c.concealed_samples, c.resyncs), (0, 0, 1));
    }

    #[test]
    fn duplicates_and_late_packets_are_dropped_and_counted() {
        let p = browser_packets(1000.0, 20, 6);
        let mut t = opus_to_pcmu();
        let order = [0, 1, 1, 3, 2, 0, 4, 3, 5];
        let mut frames = Vec::new();
        for i in order {
            let (seq, ts, payload) = &p[i];
            t.handle_packet(*seq, *ts, payload).unwrap();
            while let Some(f) = t.poll_frame() {
                frames.push(f);
            }
        }
        // Packet 2 came after 3: it was concealed in time and is late now.
        assert_eq!(frames.len(), 6);
        assert_continuous(&frames, 65_530, u32::MAX - 500);
        let c = t.counters();
        assert_eq!((c.packets, c.duplicates, c.late, c.lost), (5, 3, 1, 1));
        assert_eq!(c.concealed_samples, 160);
    }

    #[test]
    fn a_sender_restart_is_followed_after_one_stray() {
        let p = browser_packets(1000.0, 20, 10);
        let mut t = opus_to_pcmu();
        let mut frames = run_opus(&mut t, &p[..5]);
        // The same audio again under sequence numbers 20000 away.
        let restarted: Vec<_> = p[5..]
            .iter()
            .map(|(s, ts, pl)| (s.wrapping_add(20_000), ts.wrapping_add(12_345), pl.clone()))
            .collect();
        frames.extend(run_opus(&mut t, &restarted));
        // The stray is dropped; from its successor on the stream continues seamlessly.
        assert_eq!(frames.len(), 9);
        assert_continuous(&frames, 65_530, u32::MAX - 500);
        let c = t.counters();
        assert_eq!((c.late, c.resyncs, c.lost), (1, 1, 0));
    }

    #[test]
    fn an_invalid_packet_is_refused_and_then_counts_as_lost() {
        let p = browser_packets(1000.0, 20, 4);
        let mut t = opus_to_pcmu();
        let mut frames = run_opus(&mut t, &p[..2]);
        // Code 3 with a frame count of 0 (RFC 6716 3.2.5).
        let (seq, ts, _) = &p[2];
        assert!(matches!(
            t.handle_packet(*seq, *ts, &[0x03, 0x00]),
            Err(TranscodeError::InvalidOpus(_))
        ));
        assert!(matches!(
            t.handle_packet(*seq, *ts, &[]),
            Err(TranscodeError::EmptyPayload)
        ));
        assert!(t.poll_frame().is_none());
        frames.extend(run_opus(&mut t, &p[3..]));
        assert_eq!(frames.len(), 4);
        assert_continuous(&frames, 65_530, u32::MAX - 500);
        let c = t.counters();
        assert_eq!((c.invalid, c.lost, c.concealed_samples), (2, 1, 160));
    }

    #[test]
    fn undrained_frames_are_dropped_and_counted() {
        let p = browser_packets(1000.0, 60, 2);
        let mut t = opus_to_pcmu();
        t.handle_packet(p[0].0, p[0].1, &p[0].2).unwrap();
        assert!(t.poll_frame().is_some());
        t.handle_packet(p[1].0, p[1].1, &p[1].2).unwrap();
        assert_eq!(t.counters().undrained, 2);
        // The clock went on: the frames were made, only not sent.
        assert_eq!(t.poll_frame().unwrap().sequence, 65_530u16.wrapping_add(3));
    }

    fn g711_packets(law: G711Law, freq: f64, count: usize) -> Vec<(u16, u32, Vec<u8>)> {
        let mut tone = ToneGenerator::new(freq, 8000, 8000);
        let mut pcm = [0i16; FRAME_SAMPLES];
        (0..count)
            .map(|i| {
                tone.fill(&mut pcm);
                let mut payload = vec![0u8; FRAME_SAMPLES];
                law.encode(&pcm, &mut payload);
                (500 + i as u16, 160 * i as u32, payload)
            })
            .collect()
    }

    fn run_g711(t: &mut G711ToOpus, packets: &[(u16, u32, Vec<u8>)]) -> Vec<OpusFrame> {
        let mut out = Vec::new();
        for (seq, ts, payload) in packets {
            t.handle_packet(*seq, *ts, payload).unwrap();
            while let Some(f) = t.poll_frame() {
                out.push(f);
            }
        }
        out
    }

    #[test]
    fn a_backend_tone_comes_out_as_opus_a_browser_can_play() {
        for law in [G711Law::Pcmu, G711Law::Pcma] {
            let mut t = G711ToOpus::new(law, 9, u32::MAX - 1000).unwrap();
            let frames = run_g711(&mut t, &g711_packets(law, 1000.0, 50));
            assert_eq!(frames.len(), 50);
            let mut decoder = Decoder::new(48_000, Channels::Mono).unwrap();
            let mut pcm = vec![0i16; 50 * 960];
            for (i, f) in frames.iter().enumerate() {
                assert_eq!(f.sequence, 9 + i as u16);
                assert_eq!(f.timestamp, (u32::MAX - 1000).wrapping_add(960 * i as u32));
                assert_eq!(f.marker, i == 0);
                assert!(
                    !f.payload().is_empty() && f.payload().len() < 120,
                    "{}",
                    f.payload().len()
                );
                let n = decoder
                    .decode(f.payload(), &mut pcm[i * 960..], false)
                    .unwrap();
                assert_eq!(n, 960);
            }
            let m = dominant_tone(&pcm[9600..], 48_000, &CANDIDATES).unwrap();
            assert_eq!(m.freq_hz, 1000.0, "{law:?}");
            assert!(m.ratio > 0.8, "{law:?}: {m:?}");
        }
    }

    #[test]
    fn g711_gaps_jump_the_opus_timestamp_and_duplicates_drop() {
        let mut p = g711_packets(G711Law::Pcmu, 1000.0, 10);
        p.remove(4);
        let dup = p[6].clone();
        p.insert(7, dup);
        let mut t = G711ToOpus::new(G711Law::Pcmu, 0, 0).unwrap();
        let frames = run_g711(&mut t, &p);
        assert_eq!(frames.len(), 9);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.sequence, i as u16);
            let skipped = if i >= 4 { 960 } else { 0 };
            assert_eq!(f.timestamp, 960 * i as u32 + skipped, "frame {i}");
            assert_eq!(f.marker, i == 0 || i == 4, "frame {i}");
        }
        let c = t.counters();
        assert_eq!((c.packets, c.lost, c.duplicates, c.resyncs), (9, 1, 1, 1));
    }

    #[test]
    fn g711_packets_of_any_length_are_reframed() {
        let mut t = G711ToOpus::new(G711Law::Pcma, 0, 0).unwrap();
        // 10 ms then 30 ms: one frame after the second.
        t.handle_packet(1, 0, &[0xd5; 80]).unwrap();
        assert!(t.poll_frame().is_none());
        t.handle_packet(2, 80, &[0xd5; 240]).unwrap();
        assert_eq!(t.poll_frame().unwrap().timestamp, 0);
        assert_eq!(t.poll_frame().unwrap().timestamp, 960);
        assert!(t.poll_frame().is_none());
        assert!(matches!(
            t.handle_packet(3, 320, &[0; MAX_G711_PAYLOAD + 1]),
            Err(TranscodeError::PayloadTooLong { len: 961, max: 960 })
        ));
        assert!(matches!(
            t.handle_packet(3, 320, &[]),
            Err(TranscodeError::EmptyPayload)
        ));
        assert_eq!(t.counters().invalid, 2);
    }

    #[test]
    fn frames_write_as_rtp() {
        let p = browser_packets(1000.0, 20, 1);
        let mut t = opus_to_pcmu();
        t.handle_packet(p[0].0, p[0].1, &p[0].2).unwrap();
        let f = t.poll_frame().unwrap();
        let mut buf = [0u8; 200];
        assert_eq!(f.write_rtp(0xabcd, 0, &mut buf), Ok(172));
        let rtp = RtpPacket::parse(&buf[..172]).unwrap();
        assert_eq!(
            (rtp.ssrc(), rtp.sequence(), rtp.timestamp()),
            (0xabcd, 65_530, u32::MAX - 500)
        );
        assert!(rtp.marker());
        assert_eq!(rtp.payload(), &f.payload);
        assert!(f.write_rtp(1, 0, &mut buf[..171]).is_err());

        let mut t = G711ToOpus::new(G711Law::Pcmu, 3, 4).unwrap();
        t.handle_packet(1, 0, &[0xff; 160]).unwrap();
        let f = t.poll_frame().unwrap();
        let n = f.write_rtp(5, 111, &mut buf).unwrap();
        let rtp = RtpPacket::parse(&buf[..n]).unwrap();
        assert_eq!(
            (rtp.payload_type(), rtp.sequence(), rtp.timestamp()),
            (111, 3, 4)
        );
        assert_eq!(rtp.payload(), f.payload());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Any bytes, sequence numbers and timestamps: errors at worst, never a panic, and the
        /// output stays a well-formed 20 ms stream.
        #[test]
        fn opus_to_g711_takes_any_input(
            packets in proptest::collection::vec(
                (any::<u16>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..200)),
                1..20,
            ),
        ) {
            let mut t = OpusToG711::new(G711Law::Pcmu, 0, 0).unwrap();
            let mut next_seq = 0u16;
            for (seq, ts, payload) in &packets {
                let _ = t.handle_packet(*seq, *ts, payload);
                while let Some(f) = t.poll_frame() {
                    prop_assert_eq!(f.sequence, next_seq);
                    next_seq = next_seq.wrapping_add(1);
                }
            }
        }

        /// A valid stream with random loss, duplication, reordering and corruption: the output
        /// keeps consecutive sequence numbers and its timestamps move forward by a frame or more.
        #[test]
        fn opus_to_g711_survives_a_bad_network(
            ops in proptest::collection::vec((0u8..8, 0usize..40), 1..60),
        ) {
            let packets = browser_packets(1000.0, 20, 40);
            let mut t = OpusToG711::new(G711Law::Pcma, 0, 0).unwrap();
            let mut last: Option<(u16, u32)> = None;
            for (op, i) in ops {
                let (seq, ts, payload) = &packets[i];
                let mut payload = payload.clone();
                if op == 0 {
                    payload.truncate(1 + i % 3);
                    payload[0] ^= 0x03;
                }
                let _ = t.handle_packet(*seq, *ts, &payload);
                while let Some(f) = t.poll_frame() {
                    if let Some((seq, ts)) = last {
                        prop_assert_eq!(f.sequence, seq.wrapping_add(1));
                        let step = f.timestamp.wrapping_sub(ts);
                        prop_assert!((160..1 << 31).contains(&step), "step {}", step);
                    }
                    last = Some((f.sequence, f.timestamp));
                }
            }
        }

        #[test]
        fn g711_to_opus_takes_any_input(
            packets in proptest::collection::vec(
                (any::<u16>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..1000)),
                1..10,
            ),
        ) {
            let mut t = G711ToOpus::new(G711Law::Pcma, 0, 0).unwrap();
            for (seq, ts, payload) in &packets {
                let _ = t.handle_packet(*seq, *ts, payload);
                while let Some(f) = t.poll_frame() {
                    prop_assert!(f.payload().len() <= MAX_OPUS_PAYLOAD);
                }
            }
        }
    }
}
