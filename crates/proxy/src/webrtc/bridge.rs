//! The media bridge of one WebRTC session: what the Backend answered decides how RTP crosses
//! between the client (Opus, 48 kHz) and the Backend, and this type turns packets of one side
//! into packets of the other. It does no I/O: packets go in, datagrams come out through a
//! callback.
//!
//! - Opus answered: passthrough. Payloads are untouched; toward the Backend the client's
//!   sequence numbers are kept (shifted by a random offset) so the Backend sees the client's
//!   losses, and its timestamps are kept as they are.
//! - PCMU/PCMA answered: transcoding. Opus is decoded to G.711 frames, G.711 encoded to Opus;
//!   toward the Backend one sequence counter numbers every packet (audio and events) and the
//!   timestamps run on the 8 kHz clock the first packet set.
//! - RFC 4733 events use the telephone-event whose clock matches the audio codec (48 kHz with
//!   Opus, 8 kHz with G.711); their timestamps and durations move between clocks with the same
//!   origin as the audio, so an event stays where it was in the stream.

use bytes::Bytes;
use voxgate_media::{G711Law, G711ToOpus, OpusToG711, RtpHeader, RtpPacket};
use voxgate_sip::sdp::{AudioSdp, Codec, CodecKind};

/// Largest RTP packet built toward the Backend.
const MAX_RTP: usize = 1500;

/// A packet for the client; the peer adds its own sequence number and SSRC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPacket {
    /// The client's payload type (its Opus or telephone-event one).
    pub payload_type: u8,
    /// RTP timestamp (48 kHz).
    pub timestamp: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// The payload.
    pub payload: Bytes,
}

/// How the audio crosses.
enum Mode {
    Passthrough {
        backend_pt: u8,
        /// Added to the client's sequence numbers toward the Backend.
        seq_offset: u16,
    },
    Transcode {
        law: G711Law,
        to_backend: Option<Box<OpusToG711>>,
        to_client: Option<Box<G711ToOpus>>,
        /// (client timestamp, Backend timestamp) of the first packet toward the Backend.
        up_origin: Option<(u32, u32)>,
        /// (Backend timestamp, client timestamp) of the first packet toward the client.
        down_origin: Option<(u32, u32)>,
    },
}

/// One session's media bridge.
pub struct MediaBridge {
    mode: Mode,
    client_opus_pt: u8,
    client_event_pt: Option<u8>,
    /// The Backend's telephone-event payload type at the audio codec's clock, if it has one.
    backend_event_pt: Option<u8>,
    ssrc: u32,
    /// Next sequence number toward the Backend (transcoding).
    seq: u16,
    transcoded_to_backend: u64,
    transcoded_to_client: u64,
}

impl std::fmt::Debug for MediaBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaBridge")
            .field("transcodes", &self.transcodes())
            .field("backend_event_pt", &self.backend_event_pt)
            .finish_non_exhaustive()
    }
}

impl MediaBridge {
    /// The bridge for the Backend's `answer`, or `None` if it chose nothing this node can carry.
    /// `ssrc`, `seq` and `seq_offset` start our stream toward the Backend (random in production).
    pub fn new(
        answer: &AudioSdp,
        client_opus_pt: u8,
        client_event_pt: Option<u8>,
        ssrc: u32,
        seq: u16,
        seq_offset: u16,
    ) -> Option<Self> {
        let codec = audio_codec(answer)?;
        let mode = match codec.kind {
            CodecKind::Opus => Mode::Passthrough {
                backend_pt: codec.payload_type,
                seq_offset,
            },
            CodecKind::Pcmu | CodecKind::Pcma => Mode::Transcode {
                law: if codec.kind == CodecKind::Pcmu {
                    G711Law::Pcmu
                } else {
                    G711Law::Pcma
                },
                to_backend: None,
                to_client: None,
                up_origin: None,
                down_origin: None,
            },
            _ => return None,
        };
        Some(Self {
            mode,
            client_opus_pt,
            client_event_pt,
            backend_event_pt: event_codec(answer, codec.clock_rate).map(|c| c.payload_type),
            ssrc,
            seq,
            transcoded_to_backend: 0,
            transcoded_to_client: 0,
        })
    }

    /// Whether the Backend took G.711 (the session transcodes).
    pub fn transcodes(&self) -> bool {
        matches!(self.mode, Mode::Transcode { .. })
    }

    /// Frames transcoded so far (toward the Backend, toward the client).
    pub fn transcoded(&self) -> (u64, u64) {
        (self.transcoded_to_backend, self.transcoded_to_client)
    }

    /// The codecs this bridge carries, as the Backend sees them: for a re-INVITE answer.
    pub fn codecs(&self) -> Vec<Codec> {
        let (audio, rate) = match &self.mode {
            Mode::Passthrough { backend_pt, .. } => (Codec::opus(*backend_pt), 48_000),
            Mode::Transcode { law, .. } => match law {
                G711Law::Pcmu => (Codec::pcmu(), 8_000),
                G711Law::Pcma => (Codec::pcma(), 8_000),
            },
        };
        let event = self.backend_event_pt.map(|pt| Codec {
            clock_rate: rate,
            ..Codec::telephone_event(pt)
        });
        std::iter::once(audio).chain(event).collect()
    }

    /// Takes a Backend re-offer that keeps this bridge's codec (its payload types may move);
    /// false if it would change the codec, which this session cannot follow.
    pub fn accept_reoffer(&mut self, offer: &AudioSdp) -> bool {
        let Some(codec) = offer
            .codecs
            .iter()
            .find(|c| c.kind == self.codecs()[0].kind)
        else {
            return false;
        };
        if let Mode::Passthrough { backend_pt, .. } = &mut self.mode {
            *backend_pt = codec.payload_type;
        }
        self.backend_event_pt = event_codec(offer, codec.clock_rate).map(|c| c.payload_type);
        true
    }

    /// One RTP packet from the client; `send` gets each datagram for the Backend.
    pub fn from_client(
        &mut self,
        payload_type: u8,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
        mut send: impl FnMut(&[u8]),
    ) {
        let mut out = [0u8; MAX_RTP];
        let is_event = Some(payload_type) == self.client_event_pt;
        if !is_event && payload_type != self.client_opus_pt {
            return;
        }
        match &mut self.mode {
            Mode::Passthrough {
                backend_pt,
                seq_offset,
            } => {
                let pt = if is_event {
                    match self.backend_event_pt {
                        Some(pt) => pt,
                        None => return,
                    }
                } else {
                    *backend_pt
                };
                let header = RtpHeader {
                    marker,
                    payload_type: pt,
                    sequence: seq.wrapping_add(*seq_offset),
                    timestamp,
                    ssrc: self.ssrc,
                };
                if let Some(len) = write_packet(header, payload, &mut out) {
                    send(&out[..len]);
                }
            }
            Mode::Transcode {
                law,
                to_backend,
                up_origin,
                ..
            } => {
                let (client0, backend0) = *up_origin.get_or_insert((timestamp, timestamp / 6));
                if is_event {
                    let (Some(pt), Some(event)) =
                        (self.backend_event_pt, rescale_event(payload, 6, false))
                    else {
                        return;
                    };
                    let ts = backend0.wrapping_add(timestamp.wrapping_sub(client0) / 6);
                    let header = RtpHeader {
                        marker,
                        payload_type: pt,
                        sequence: self.seq,
                        timestamp: ts,
                        ssrc: self.ssrc,
                    };
                    if let Some(len) = write_packet(header, &event, &mut out) {
                        self.seq = self.seq.wrapping_add(1);
                        send(&out[..len]);
                    }
                    return;
                }
                if to_backend.is_none() {
                    match OpusToG711::new(*law, self.seq, backend0) {
                        Ok(t) => *to_backend = Some(Box::new(t)),
                        Err(err) => {
                            tracing::warn!(%err, "cannot create the Opus decoder");
                            return;
                        }
                    }
                }
                let Some(transcoder) = to_backend.as_mut() else {
                    return;
                };
                if transcoder.handle_packet(seq, timestamp, payload).is_err() {
                    return;
                }
                let pt = law.payload_type();
                while let Some(mut frame) = transcoder.poll_frame() {
                    // One counter numbers audio and events alike.
                    frame.sequence = self.seq;
                    if let Ok(len) = frame.write_rtp(self.ssrc, pt, &mut out) {
                        self.seq = self.seq.wrapping_add(1);
                        self.transcoded_to_backend += 1;
                        send(&out[..len]);
                    }
                }
            }
        }
    }

    /// One datagram from the Backend; `send` gets each packet for the client.
    pub fn from_backend(&mut self, datagram: &[u8], mut send: impl FnMut(ClientPacket)) {
        let Ok(packet) = RtpPacket::parse(datagram) else {
            return;
        };
        let pt = packet.payload_type();
        let is_event = Some(pt) == self.backend_event_pt;
        match &mut self.mode {
            Mode::Passthrough { backend_pt, .. } => {
                let client_pt = if is_event {
                    match self.client_event_pt {
                        Some(pt) => pt,
                        None => return,
                    }
                } else if pt == *backend_pt {
                    self.client_opus_pt
                } else {
                    return;
                };
                send(ClientPacket {
                    payload_type: client_pt,
                    timestamp: packet.timestamp(),
                    marker: packet.marker(),
                    payload: Bytes::copy_from_slice(packet.payload()),
                });
            }
            Mode::Transcode {
                law,
                to_client,
                down_origin,
                ..
            } => {
                if !is_event && pt != law.payload_type() {
                    return;
                }
                let ts = packet.timestamp();
                let (backend0, client0) = *down_origin.get_or_insert((ts, ts.wrapping_mul(6)));
                if is_event {
                    let (Some(client_pt), Some(event)) = (
                        self.client_event_pt,
                        rescale_event(packet.payload(), 6, true),
                    ) else {
                        return;
                    };
                    send(ClientPacket {
                        payload_type: client_pt,
                        timestamp: client0.wrapping_add(ts.wrapping_sub(backend0).wrapping_mul(6)),
                        marker: packet.marker(),
                        payload: Bytes::from(event),
                    });
                    return;
                }
                if to_client.is_none() {
                    match G711ToOpus::new(*law, 0, client0) {
                        Ok(t) => *to_client = Some(Box::new(t)),
                        Err(err) => {
                            tracing::warn!(%err, "cannot create the Opus encoder");
                            return;
                        }
                    }
                }
                let Some(transcoder) = to_client.as_mut() else {
                    return;
                };
                if transcoder
                    .handle_packet(packet.sequence(), ts, packet.payload())
                    .is_err()
                {
                    return;
                }
                while let Some(frame) = transcoder.poll_frame() {
                    self.transcoded_to_client += 1;
                    send(ClientPacket {
                        payload_type: self.client_opus_pt,
                        timestamp: frame.timestamp,
                        marker: frame.marker,
                        payload: Bytes::copy_from_slice(frame.payload()),
                    });
                }
            }
        }
    }
}

/// The first audio codec of an SDP (not telephone-event).
fn audio_codec(sdp: &AudioSdp) -> Option<&Codec> {
    sdp.codecs
        .iter()
        .find(|c| c.kind != CodecKind::TelephoneEvent)
}

/// The telephone-event of an SDP at `clock_rate`.
fn event_codec(sdp: &AudioSdp, clock_rate: u32) -> Option<&Codec> {
    sdp.codecs
        .iter()
        .find(|c| c.kind == CodecKind::TelephoneEvent && c.clock_rate == clock_rate)
}

fn write_packet(header: RtpHeader, payload: &[u8], out: &mut [u8]) -> Option<usize> {
    let len = header.write(out).ok()?;
    let end = len.checked_add(payload.len())?;
    out.get_mut(len..end)?.copy_from_slice(payload);
    Some(end)
}

/// An RFC 4733 event payload with its duration divided (or, with `up`, multiplied) by
/// `factor`; `None` if it is shorter than an event.
fn rescale_event(payload: &[u8], factor: u32, up: bool) -> Option<Vec<u8>> {
    let mut event = payload.get(..4)?.to_vec();
    let duration = u32::from(u16::from_be_bytes([event[2], event[3]]));
    let scaled = if up {
        duration.saturating_mul(factor)
    } else {
        duration / factor
    };
    let scaled = u16::try_from(scaled).unwrap_or(u16::MAX).to_be_bytes();
    event[2..4].copy_from_slice(&scaled);
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(codecs: Vec<Codec>) -> AudioSdp {
        AudioSdp::offer("127.0.0.1".parse().expect("ip"), 4000, codecs, 1)
    }

    fn event_48k(pt: u8) -> Codec {
        Codec {
            clock_rate: 48_000,
            ..Codec::telephone_event(pt)
        }
    }

    fn rtp(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        let header = RtpHeader {
            marker: false,
            payload_type: pt,
            sequence: seq,
            timestamp: ts,
            ssrc: 9,
        };
        let mut out = [0u8; MAX_RTP];
        let len = write_packet(header, payload, &mut out).expect("fits");
        out[..len].to_vec()
    }

    #[test]
    fn passthrough_keeps_payloads_and_the_clients_gaps() {
        let sdp = answer(vec![
            Codec::opus(96),
            event_48k(97),
            Codec::telephone_event(101),
        ]);
        let mut bridge = MediaBridge::new(&sdp, 111, Some(126), 7, 0, 1000).expect("opus");
        assert!(!bridge.transcodes());
        let mut sent = Vec::new();
        for seq in [10u16, 11, 13] {
            bridge.from_client(111, seq, 960 * u32::from(seq), false, b"opus", |d| {
                sent.push(d.to_vec());
            });
        }
        bridge.from_client(126, 14, 13_440, true, &[1, 10, 0, 160], |d| {
            sent.push(d.to_vec())
        });
        let parsed: Vec<(u8, u16)> = sent
            .iter()
            .map(|d| {
                let p = RtpPacket::parse(d).expect("rtp");
                (p.payload_type(), p.sequence())
            })
            .collect();
        // The gap at 12 is still there; events use the 48 kHz event type of the answer.
        assert_eq!(parsed, vec![(96, 1010), (96, 1011), (96, 1013), (97, 1014)]);
        let mut back = Vec::new();
        bridge.from_backend(&rtp(96, 5, 4800, b"echo"), |p| back.push(p));
        bridge.from_backend(&rtp(0, 6, 4960, b"pcmu"), |p| back.push(p));
        assert_eq!(back.len(), 1, "only the negotiated Opus goes to the client");
        assert_eq!((back[0].payload_type, back[0].timestamp), (111, 4800));
        assert_eq!(&back[0].payload[..], b"echo");
    }

    #[test]
    fn transcoding_numbers_audio_and_events_with_one_counter_on_one_clock() {
        let sdp = answer(vec![
            Codec::pcmu(),
            event_48k(97),
            Codec::telephone_event(101),
        ]);
        let mut bridge = MediaBridge::new(&sdp, 111, Some(126), 7, 500, 0).expect("pcmu");
        assert!(bridge.transcodes());
        assert_eq!(
            bridge.codecs(),
            vec![Codec::pcmu(), Codec::telephone_event(101)]
        );
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).expect("enc");
        let mut sent = Vec::new();
        let pcm = [0i16; 960];
        for i in 0..3u16 {
            let frame = encoder.encode_vec(&pcm, 400).expect("encode");
            let ts = 96_000 + 960 * u32::from(i);
            bridge.from_client(111, i, ts, false, &frame, |d| sent.push(d.to_vec()));
            if i == 1 {
                // An event 960 ticks (20 ms) after the stream's start, 960 long at 48 kHz.
                bridge.from_client(126, 100, 96_960, true, &[5, 10, 0x03, 0xC0], |d| {
                    sent.push(d.to_vec());
                });
            }
        }
        let parsed: Vec<(u8, u16, u32, Vec<u8>)> = sent
            .iter()
            .map(|d| {
                let p = RtpPacket::parse(d).expect("rtp");
                (
                    p.payload_type(),
                    p.sequence(),
                    p.timestamp(),
                    p.payload().to_vec(),
                )
            })
            .collect();
        let sequences: Vec<u16> = parsed.iter().map(|p| p.1).collect();
        assert_eq!(
            sequences,
            vec![500, 501, 502, 503],
            "one counter, no repeats"
        );
        assert!(parsed.iter().filter(|p| p.0 == 0).all(|p| p.3.len() == 160));
        let event = parsed
            .iter()
            .find(|p| p.0 == 101)
            .expect("event sent at 8 kHz");
        // 16,000 + 160: the audio's origin plus 20 ms at 8 kHz; duration 160.
        assert_eq!((event.2, &event.3[..]), (16_160, &[5u8, 10, 0, 160][..]));
        assert_eq!(bridge.transcoded().0, 3);

        let mut back = Vec::new();
        bridge.from_backend(&rtp(0, 1, 8_000, &[0xffu8; 160]), |p| back.push(p));
        bridge.from_backend(&rtp(101, 2, 8_080, &[5, 10, 0, 160]), |p| back.push(p));
        assert_eq!(back[0].payload_type, 111);
        assert_eq!(back[0].timestamp, 48_000);
        assert_eq!((back[1].payload_type, back[1].timestamp), (126, 48_480));
        assert_eq!(&back[1].payload[..], &[5, 10, 0x03, 0xC0]);
    }

    #[test]
    fn a_reoffer_may_move_payload_types_but_not_the_codec() {
        let mut bridge =
            MediaBridge::new(&answer(vec![Codec::opus(96)]), 111, None, 7, 0, 0).expect("opus");
        assert!(bridge.accept_reoffer(&answer(vec![Codec::pcmu(), Codec::opus(98)])));
        assert_eq!(bridge.codecs(), vec![Codec::opus(98)]);
        assert!(!bridge.accept_reoffer(&answer(vec![Codec::pcmu()])));
        assert!(
            MediaBridge::new(
                &answer(vec![Codec::telephone_event(101)]),
                111,
                None,
                7,
                0,
                0
            )
            .is_none()
        );
    }

    #[test]
    fn short_or_garbage_input_is_dropped() {
        let mut bridge =
            MediaBridge::new(&answer(vec![Codec::pcma()]), 111, Some(126), 7, 0, 0).expect("pcma");
        let mut sent = 0;
        bridge.from_client(126, 1, 0, false, &[1, 2], |_| sent += 1);
        bridge.from_client(111, 2, 0, false, &[], |_| sent += 1);
        bridge.from_client(99, 3, 0, false, b"other", |_| sent += 1);
        bridge.from_backend(&[0x80, 8], |_| sent += 1);
        assert_eq!(sent, 0);
        assert_eq!(
            rescale_event(&[1, 2, 0xff, 0xff], 6, true),
            Some(vec![1, 2, 0xff, 0xff])
        );
    }
}
