//! The test signal of a WHIP session: a tone with a short gap every second, pre-encoded once as
//! Opus, and the analysis of its echo (tone check and round trip from the gap's end).
//!
//! The gateway rewrites RTP sequence numbers and timestamps and, when it transcodes through
//! G.711, the payload too, so nothing the client stamps on a packet survives the echo. What
//! survives is the audio. The signal is a cycle of [`CYCLE_FRAMES`] 20 ms frames: the tone, then
//! [`GAP_FRAMES`] of silence. The first tone sample of a cycle (the onset) is sharp and easy to
//! find again in the decoded echo, so the round trip is: arrival of the echoed frame holding the
//! onset - sending of the frame that starts the cycle + the onset's position within the echoed
//! frame. It includes the codec delays of every encoder on the path (Opus look-ahead), i.e. it is
//! the audio round trip a person would hear, less the 20 ms of packetization. An onset is
//! matched to the last cycle start sent, so a round trip longer than a cycle (1 s) would be
//! misread; the resolution is one sample at 8 kHz, plus the onset's rise through the codecs.
//!
//! Sending costs no encoding: one cycle is encoded at start-up (after a first cycle, so the
//! encoder is warm and the loop joins in the silence) and every session sends those packets.
//! Receiving decodes every echoed packet at 8 kHz, which is cheap (the echo of a G.711 path is
//! narrow band anyway) and keeps the decoder's state continuous: about 0.9 ms of CPU per
//! session-second in a debug build (`decode_cost`, ignored test), so 200 sessions cost under a
//! fifth of a core even unoptimized. The tone check runs Goertzel over one 80 ms window per
//! cycle, a few thousand multiplications a second per session.

use std::time::Duration;

use bytes::Bytes;
use opus::{Application, Channels, Decoder, Encoder};
use voxgate_media::tone::{ToneGenerator, dominant_tone, mean_power};

/// Frames in one cycle of the signal (one second).
pub const CYCLE_FRAMES: u64 = 50;
/// Silent frames at the end of each cycle.
pub const GAP_FRAMES: u64 = 5;
/// Duration of one frame.
pub const FRAME: Duration = Duration::from_millis(20);
/// RTP clock ticks per frame (48 kHz).
pub const FRAME_TICKS: u32 = 960;

/// Sample rate of the sent signal.
const SEND_RATE: u32 = 48_000;
/// Sample rate the echo is decoded at.
const DECODE_RATE: u32 = 8_000;
/// Peak amplitude of the tone (-12 dBFS: no clipping through G.711).
const AMPLITUDE: i16 = 8_000;
/// A decoded sample at least this loud after a gap is the onset.
const ONSET_LEVEL: i16 = AMPLITUDE / 4;
/// A decoded frame below this mean power (20 dB under the tone) is silent.
const QUIET_POWER: f32 = (AMPLITUDE as f32 / 10.0) * (AMPLITUDE as f32 / 10.0) / 2.0;
/// Silent frames needed before an onset counts (the gap is [`GAP_FRAMES`]).
const MIN_QUIET_FRAMES: u32 = 3;
/// Frames after the onset skipped before the tone is checked (codec ramp-up).
const SETTLE_FRAMES: u32 = 3;
/// Samples of one tone check: 80 ms at 8 kHz, whole periods for any frequency that divides
/// 12.5 Hz steps.
const WINDOW: usize = 640;
/// Largest decoded packet: 120 ms at 8 kHz.
const MAX_DECODED: usize = 960;
/// Share of the power the tone must hold in a checked window.
pub const MIN_TONE_RATIO: f32 = 0.5;
/// Share of checked windows that must pass for the session's tone check to pass.
const MIN_WINDOWS_PASSED: f32 = 0.8;

/// One cycle of the signal as Opus packets, shared by every session.
#[derive(Debug, Clone)]
pub struct ToneLoop {
    frames: Vec<Bytes>,
}

impl ToneLoop {
    /// Encodes a cycle of `freq_hz` (mono, 48 kHz, 20 ms frames).
    pub fn new(freq_hz: f64) -> Result<Self, opus::Error> {
        let mut encoder = Encoder::new(SEND_RATE, Channels::Mono, Application::Voip)?;
        let mut pcm = [0i16; FRAME_TICKS as usize];
        let mut out = [0u8; 1500];
        let mut frames = Vec::with_capacity(CYCLE_FRAMES as usize);
        // Two cycles; the second is kept: its encoder state at the start matches the one at its
        // end, so looping it is seamless (and the joint is in the gap anyway).
        for cycle in 0..2 {
            let mut tone = ToneGenerator::new(freq_hz, SEND_RATE, AMPLITUDE);
            for index in 0..CYCLE_FRAMES {
                if index < CYCLE_FRAMES - GAP_FRAMES {
                    tone.fill(&mut pcm);
                } else {
                    pcm.fill(0);
                }
                let len = encoder.encode(&pcm, &mut out)?;
                if cycle == 1 {
                    frames.push(Bytes::copy_from_slice(&out[..len]));
                }
            }
        }
        Ok(Self { frames })
    }

    /// The payload of frame `index` of the session (0 is the first sent) and whether it starts a
    /// cycle (its first sample is the onset).
    pub fn frame(&self, index: u64) -> (&Bytes, bool) {
        let position = index % CYCLE_FRAMES;
        // `frames` has CYCLE_FRAMES entries, so the index is in range.
        (&self.frames[position as usize], position == 0)
    }
}

/// What the tone check of one session found.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ToneSummary {
    /// Windows of the echo checked (one per cycle heard).
    pub windows: u64,
    /// Windows where the sent tone was dominant with at least [`MIN_TONE_RATIO`] of the power.
    pub passed: u64,
    /// Mean share of the power at the dominant candidate, over the windows.
    pub ratio_mean: f32,
    /// Smallest share of the sent tone's frequency among the windows (0 when it was not
    /// dominant in one).
    pub ratio_min: f32,
    /// The dominant frequency most often found (0 when no window was checked).
    pub found_hz: f32,
}

impl ToneSummary {
    /// Whether the tone came back: at least one window checked and 80 % of them passed.
    pub fn passed(&self) -> bool {
        self.windows > 0 && self.passed as f32 >= self.windows as f32 * MIN_WINDOWS_PASSED
    }
}

/// The receiving side: decodes the echo, finds onsets and checks the tone.
#[derive(Debug)]
pub struct EchoAnalyzer {
    decoder: Decoder,
    pcm: Box<[i16; MAX_DECODED]>,
    freq_hz: f32,
    candidates: Vec<f32>,
    /// Consecutive silent frames (saturating).
    quiet_frames: u32,
    /// Frames since the last onset, when one was seen and no gap followed.
    since_onset: Option<u32>,
    window: Box<[i16; WINDOW]>,
    window_len: usize,
    windows: u64,
    passed: u64,
    ratio_sum: f64,
    ratio_min: f32,
    found: Vec<u64>,
    decode_errors: u64,
}

impl EchoAnalyzer {
    /// An analyzer for a tone of `freq_hz`.
    pub fn new(freq_hz: f64) -> Result<Self, opus::Error> {
        let freq_hz = freq_hz as f32;
        // The tone and neighbours it would be confused with, all within G.711's band.
        let candidates: Vec<f32> = [1.0, 0.5, 0.75, 1.25, 1.5, 2.0]
            .iter()
            .map(|k| k * freq_hz)
            .filter(|&f| f == freq_hz || (50.0..3900.0).contains(&f))
            .collect();
        Ok(Self {
            decoder: Decoder::new(DECODE_RATE, Channels::Mono)?,
            pcm: Box::new([0; MAX_DECODED]),
            freq_hz,
            found: vec![0; candidates.len()],
            candidates,
            quiet_frames: 0,
            since_onset: None,
            window: Box::new([0; WINDOW]),
            window_len: 0,
            windows: 0,
            passed: 0,
            ratio_sum: 0.0,
            ratio_min: f32::INFINITY,
            decode_errors: 0,
        })
    }

    /// Decodes one echoed Opus payload. Returns how far into it the onset of a cycle is when it
    /// holds one.
    pub fn handle_opus(&mut self, payload: &[u8]) -> Option<Duration> {
        let len = match self.decoder.decode(payload, &mut self.pcm[..], false) {
            Ok(len) => len.min(MAX_DECODED),
            Err(_) => {
                self.decode_errors += 1;
                return None;
            }
        };
        self.handle_pcm(len)
    }

    /// Opus payloads that did not decode.
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// The tone check so far.
    pub fn summary(&self) -> ToneSummary {
        let found_hz = self
            .found
            .iter()
            .zip(&self.candidates)
            .filter(|(count, _)| **count > 0)
            .max_by_key(|(count, _)| **count)
            .map_or(0.0, |(_, &freq)| freq);
        ToneSummary {
            windows: self.windows,
            passed: self.passed,
            ratio_mean: if self.windows == 0 {
                0.0
            } else {
                (self.ratio_sum / self.windows as f64) as f32
            },
            ratio_min: if self.windows == 0 {
                0.0
            } else {
                self.ratio_min
            },
            found_hz,
        }
    }

    /// Analyzes the first `len` samples of `self.pcm`.
    fn handle_pcm(&mut self, len: usize) -> Option<Duration> {
        let samples = &self.pcm[..len];
        let mut onset = None;
        if self.quiet_frames >= MIN_QUIET_FRAMES
            && let Some(at) = samples
                .iter()
                .position(|s| s.unsigned_abs() >= ONSET_LEVEL as u16)
        {
            onset = Some(Duration::from_micros(
                at as u64 * 1_000_000 / u64::from(DECODE_RATE),
            ));
            self.since_onset = Some(0);
            self.window_len = 0;
            self.quiet_frames = 0;
        }
        if mean_power(samples) < QUIET_POWER {
            // An onset late in a frame leaves it quiet on the whole: not a gap.
            if onset.is_none() {
                self.quiet_frames = self.quiet_frames.saturating_add(1);
                self.since_onset = None;
            }
            return onset;
        }
        self.quiet_frames = 0;
        let Some(since) = self.since_onset.as_mut() else {
            return onset;
        };
        *since += 1;
        // `since` counts this frame; the onset frame itself is 1.
        if *since > SETTLE_FRAMES && self.window_len < WINDOW {
            let take = (WINDOW - self.window_len).min(len);
            self.window[self.window_len..self.window_len + take].copy_from_slice(&self.pcm[..take]);
            self.window_len += take;
            if self.window_len == WINDOW {
                self.check_window();
            }
        }
        onset
    }

    fn check_window(&mut self) {
        let Some(found) = dominant_tone(&self.window[..], DECODE_RATE, &self.candidates) else {
            return;
        };
        self.windows += 1;
        self.ratio_sum += f64::from(found.ratio);
        let is_tone = found.freq_hz == self.freq_hz;
        self.ratio_min = self.ratio_min.min(if is_tone { found.ratio } else { 0.0 });
        if is_tone && found.ratio >= MIN_TONE_RATIO {
            self.passed += 1;
        }
        if let Some(slot) = self.candidates.iter().position(|&f| f == found.freq_hz) {
            self.found[slot] += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `cycles` of a `freq` loop to an analyzer of `analyzer_freq`; returns the onsets
    /// found (frame index, offset into the frame) and the tone check.
    fn run(freq: f64, analyzer_freq: f64, cycles: u64) -> (Vec<(u64, Duration)>, ToneSummary) {
        let tone = ToneLoop::new(freq).expect("loop");
        let mut analyzer = EchoAnalyzer::new(analyzer_freq).expect("analyzer");
        let mut onsets = Vec::new();
        for index in 0..cycles * CYCLE_FRAMES {
            let (payload, _) = tone.frame(index);
            if let Some(at) = analyzer.handle_opus(payload) {
                onsets.push((index, at));
            }
        }
        assert_eq!(analyzer.decode_errors(), 0);
        (onsets, analyzer.summary())
    }

    #[test]
    fn loop_marks_one_onset_per_cycle() {
        let tone = ToneLoop::new(1000.0).expect("loop");
        let onsets = (0..3 * CYCLE_FRAMES)
            .filter(|&i| tone.frame(i).1)
            .collect::<Vec<_>>();
        assert_eq!(onsets, vec![0, CYCLE_FRAMES, 2 * CYCLE_FRAMES]);
        // Tone frames carry more than the silent ones.
        assert!(tone.frame(10).0.len() > tone.frame(CYCLE_FRAMES - 1).0.len());
    }

    #[test]
    fn echo_of_the_loop_passes_the_tone_check_and_shows_its_onsets() {
        let (onsets, summary) = run(1000.0, 1000.0, 5);
        // The first cycle has no gap before it; every later one is found, in its first frame,
        // within the encoder's look-ahead plus the decoder's delay.
        assert_eq!(
            onsets.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![
                CYCLE_FRAMES,
                2 * CYCLE_FRAMES,
                3 * CYCLE_FRAMES,
                4 * CYCLE_FRAMES
            ]
        );
        for (_, at) in &onsets {
            assert!(
                *at < Duration::from_millis(15),
                "onset {at:?} into the frame"
            );
        }
        assert!(summary.passed(), "{summary:?}");
        assert_eq!(summary.windows, 4);
        assert_eq!(summary.found_hz, 1000.0);
        assert!(summary.ratio_min > 0.8, "{summary:?}");
    }

    #[test]
    fn echo_through_g711_keeps_the_tone_and_the_onsets() {
        use voxgate_media::{G711Law, G711ToOpus, OpusToG711};
        for law in [G711Law::Pcmu, G711Law::Pcma] {
            // The gateway's path toward an echo Backend and back, packet for packet.
            let tone = ToneLoop::new(1000.0).expect("loop");
            let mut to_g711 = OpusToG711::new(law, 0, 0).expect("to g711");
            let mut to_opus = G711ToOpus::new(law, 0, 0).expect("to opus");
            let mut analyzer = EchoAnalyzer::new(1000.0).expect("analyzer");
            let mut onsets = Vec::new();
            for index in 0..4 * CYCLE_FRAMES {
                let (payload, _) = tone.frame(index);
                let ts = (index as u32).wrapping_mul(FRAME_TICKS);
                to_g711
                    .handle_packet(index as u16, ts, payload)
                    .expect("opus in");
                while let Some(g711) = to_g711.poll_frame() {
                    to_opus
                        .handle_packet(g711.sequence, g711.timestamp, &g711.payload)
                        .expect("g711 in");
                    while let Some(opus) = to_opus.poll_frame() {
                        if let Some(at) = analyzer.handle_opus(opus.payload()) {
                            onsets.push((index, at));
                        }
                    }
                }
            }
            let summary = analyzer.summary();
            assert!(summary.passed(), "{law:?}: {summary:?}");
            assert_eq!(summary.windows, 3, "{law:?}");
            assert!(summary.ratio_min > 0.8, "{law:?}: {summary:?}");
            // Three onsets, each heard in the frame that carried it or the next: the codecs'
            // look-ahead is a few ms.
            assert_eq!(onsets.len(), 3, "{law:?}: {onsets:?}");
            for (n, (index, at)) in onsets.iter().enumerate() {
                let sent = (n as u64 + 1) * CYCLE_FRAMES;
                let delay = (*index - sent) as u32 * FRAME + *at;
                assert!(delay < Duration::from_millis(40), "{law:?}: {onsets:?}");
            }
        }
    }

    #[test]
    fn another_tone_fails_the_check() {
        let (_, summary) = run(1500.0, 1000.0, 3);
        assert_eq!(summary.windows, 2);
        assert_eq!(summary.passed, 0);
        assert_eq!(summary.found_hz, 1500.0);
        assert!(!summary.passed());
    }

    #[test]
    fn silence_has_no_onsets_and_no_windows() {
        let mut encoder = Encoder::new(SEND_RATE, Channels::Mono, Application::Voip).expect("enc");
        let mut analyzer = EchoAnalyzer::new(1000.0).expect("analyzer");
        let pcm = [0i16; FRAME_TICKS as usize];
        let mut out = [0u8; 1500];
        for _ in 0..100 {
            let len = encoder.encode(&pcm, &mut out).expect("encode");
            assert_eq!(analyzer.handle_opus(&out[..len]), None);
        }
        assert_eq!(analyzer.summary(), ToneSummary::default());
        assert!(!analyzer.summary().passed());
        assert_eq!(analyzer.handle_opus(b"\xff\xff\xff"), None);
    }

    /// The cost of decoding and analyzing one second of echo (50 packets), for the doc.
    #[test]
    #[ignore]
    fn decode_cost() {
        let tone = ToneLoop::new(1000.0).expect("loop");
        let mut analyzer = EchoAnalyzer::new(1000.0).expect("analyzer");
        #[allow(clippy::disallowed_methods)] // a measurement, not a core
        let start = std::time::Instant::now();
        let seconds = 200;
        for index in 0..seconds * CYCLE_FRAMES {
            analyzer.handle_opus(tone.frame(index).0);
        }
        println!(
            "{:?} per session-second",
            start.elapsed() / u32::try_from(seconds).expect("small")
        );
    }
}
