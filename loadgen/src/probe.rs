//! The media probe: G.711 RTP packets that carry their send time, so an echo gives the round trip.
//!
//! Payload layout (160 bytes at 20 ms): `VXLG` magic, the send time in nanoseconds since the run's
//! epoch (u64, big-endian), then a G.711-encoded 1 kHz tone so the stream is real audio to any
//! peer that listens to it.

use std::time::Duration;

use voxgate_media::g711;
use voxgate_media::rtp::{RTP_HEADER_LEN, RtpHeader, RtpPacket};

/// Samples per 20 ms packet at 8 kHz.
pub const SAMPLES_PER_PACKET: usize = 160;
/// Packet interval.
pub const PTIME: Duration = Duration::from_millis(20);
/// Bytes of a probe packet: RTP header plus 160 G.711 bytes.
pub const PACKET_LEN: usize = RTP_HEADER_LEN + SAMPLES_PER_PACKET;

const MAGIC: &[u8; 4] = b"VXLG";
const STAMP_LEN: usize = MAGIC.len() + 8;

/// G.711 flavour of a probe stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum G711 {
    /// mu-law, payload type 0.
    Pcmu,
    /// A-law, payload type 8.
    Pcma,
}

impl G711 {
    /// The static RTP payload type.
    pub fn payload_type(self) -> u8 {
        match self {
            G711::Pcmu => 0,
            G711::Pcma => 8,
        }
    }
}

/// Builds the packets of one outgoing stream.
#[derive(Debug)]
pub struct ProbeSender {
    header: RtpHeader,
    tone: [u8; SAMPLES_PER_PACKET],
}

impl ProbeSender {
    /// A stream with `ssrc` and the given random starting sequence and timestamp.
    pub fn new(codec: G711, ssrc: u32, sequence: u16, timestamp: u32) -> Self {
        let mut pcm = [0i16; SAMPLES_PER_PACKET];
        // 1 kHz at 8 kHz: a whole number of cycles per packet, so every packet carries the same
        // samples and one encoded copy serves the whole call.
        let mut tone = g711::ToneGenerator::new(1000.0, 8000, 8000);
        tone.fill(&mut pcm);
        let mut encoded = [0u8; SAMPLES_PER_PACKET];
        match codec {
            G711::Pcmu => g711::encode_ulaw(&pcm, &mut encoded),
            G711::Pcma => g711::encode_alaw(&pcm, &mut encoded),
        }
        Self {
            header: RtpHeader {
                marker: true,
                payload_type: codec.payload_type(),
                sequence,
                timestamp,
                ssrc,
            },
            tone: encoded,
        }
    }

    /// Writes the next packet, stamped with `sent_at` since the epoch, into `buf`.
    pub fn next_packet(&mut self, sent_at: Duration, buf: &mut [u8; PACKET_LEN]) {
        // The buffer is exactly PACKET_LEN, so writing the header cannot fail.
        let _ = self.header.write(buf);
        let payload = &mut buf[RTP_HEADER_LEN..];
        payload.copy_from_slice(&self.tone);
        payload[..MAGIC.len()].copy_from_slice(MAGIC);
        let nanos = u64::try_from(sent_at.as_nanos()).unwrap_or(u64::MAX);
        payload[MAGIC.len()..STAMP_LEN].copy_from_slice(&nanos.to_be_bytes());
        self.header.marker = false;
        self.header.sequence = self.header.sequence.wrapping_add(1);
        self.header.timestamp = self
            .header
            .timestamp
            .wrapping_add(SAMPLES_PER_PACKET as u32);
    }
}

/// The send time stamped in a probe packet, if `packet` is one.
pub fn sent_at(packet: &RtpPacket<'_>) -> Option<Duration> {
    let payload = packet.payload();
    if payload.len() < STAMP_LEN || &payload[..MAGIC.len()] != MAGIC {
        return None;
    }
    let mut nanos = [0u8; 8];
    nanos.copy_from_slice(&payload[MAGIC.len()..STAMP_LEN]);
    Some(Duration::from_nanos(u64::from_be_bytes(nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let mut sender = ProbeSender::new(G711::Pcmu, 0x1234, 65535, 7);
        let mut buf = [0u8; PACKET_LEN];
        sender.next_packet(Duration::from_micros(1500), &mut buf);
        let packet = RtpPacket::parse(&buf).unwrap();
        assert_eq!(packet.ssrc(), 0x1234);
        assert_eq!(packet.sequence(), 65535);
        assert!(packet.marker());
        assert_eq!(sent_at(&packet), Some(Duration::from_micros(1500)));
        sender.next_packet(Duration::from_micros(21500), &mut buf);
        let packet = RtpPacket::parse(&buf).unwrap();
        assert_eq!(packet.sequence(), 0);
        assert_eq!(packet.timestamp(), 167);
        assert!(!packet.marker());
    }

    #[test]
    fn foreign_payload_has_no_stamp() {
        let mut buf = [0u8; PACKET_LEN];
        RtpHeader::default().write(&mut buf).unwrap();
        assert_eq!(sent_at(&RtpPacket::parse(&buf).unwrap()), None);
    }
}
