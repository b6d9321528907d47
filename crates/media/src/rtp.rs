//! RTP packets (RFC 3550 5.1): a validated zero-copy view, header writing and in-place rewrites.
//!
//! Nothing here allocates: the relay parses every datagram, rewrites SSRC, sequence number,
//! timestamp and payload type in place and forwards the same buffer.

/// Length of the fixed RTP header (no CSRCs, no extension).
pub const RTP_HEADER_LEN: usize = 12;

/// The only RTP version on the wire (RFC 3550 5.1).
pub const RTP_VERSION: u8 = 2;

/// Largest payload type; the 7-bit field cannot carry more.
pub const MAX_PAYLOAD_TYPE: u8 = 127;

/// A validated view over one RTP datagram.
///
/// [`RtpPacket::parse`] checks the version and that the CSRC list, the header extension and the
/// padding all fit in the buffer, so the accessors never fail and never panic.
#[derive(Debug, Clone, Copy)]
pub struct RtpPacket<'a> {
    buf: &'a [u8],
    /// Fixed header + CSRCs + extension.
    header_len: usize,
    /// End of the payload: `buf.len()` minus the padding.
    payload_end: usize,
}

impl<'a> RtpPacket<'a> {
    /// Validates `buf` as an RTP packet (RFC 3550 5.1, 5.3.1).
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        let len = buf.len();
        let Some(&first) = buf.first() else {
            return Err(RtpError::TooShort {
                needed: RTP_HEADER_LEN,
                len,
            });
        };
        if len < RTP_HEADER_LEN {
            return Err(RtpError::TooShort {
                needed: RTP_HEADER_LEN,
                len,
            });
        }
        let version = first >> 6;
        if version != RTP_VERSION {
            return Err(RtpError::BadVersion(version));
        }
        let mut header_len = RTP_HEADER_LEN + 4 * usize::from(first & 0x0f);
        if len < header_len {
            return Err(RtpError::TooShort {
                needed: header_len,
                len,
            });
        }
        if first & 0x10 != 0 {
            // 16-bit profile, 16-bit length in 32-bit words, then the words.
            let words = match buf.get(header_len + 2..header_len + 4) {
                Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
                _ => return Err(RtpError::BadExtension),
            };
            header_len += 4 + 4 * words;
            if len < header_len {
                return Err(RtpError::BadExtension);
            }
        }
        let mut payload_end = len;
        if first & 0x20 != 0 {
            // The last octet counts the padding, itself included (RFC 3550 5.1).
            let pad = usize::from(buf[len - 1]);
            if pad == 0 || pad > len - header_len {
                return Err(RtpError::BadPadding);
            }
            payload_end = len - pad;
        }
        Ok(Self {
            buf,
            header_len,
            payload_end,
        })
    }

    /// The whole datagram this view was parsed from.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Always 2: anything else fails [`RtpPacket::parse`].
    pub fn version(&self) -> u8 {
        self.buf[0] >> 6
    }

    /// The padding bit.
    pub fn padding(&self) -> bool {
        self.buf[0] & 0x20 != 0
    }

    /// The extension bit.
    pub fn extension(&self) -> bool {
        self.buf[0] & 0x10 != 0
    }

    /// The marker bit (first packet of a talkspurt for audio).
    pub fn marker(&self) -> bool {
        self.buf[1] & 0x80 != 0
    }

    /// The 7-bit payload type.
    pub fn payload_type(&self) -> u8 {
        self.buf[1] & 0x7f
    }

    /// The 16-bit sequence number.
    pub fn sequence(&self) -> u16 {
        u16::from_be_bytes([self.buf[2], self.buf[3]])
    }

    /// The 32-bit media timestamp.
    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]])
    }

    /// The synchronization source.
    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]])
    }

    /// Number of contributing sources (0..=15).
    pub fn csrc_count(&self) -> u8 {
        self.buf[0] & 0x0f
    }

    /// The `i`th contributing source, if there are more than `i`.
    pub fn csrc(&self, i: usize) -> Option<u32> {
        if i >= usize::from(self.csrc_count()) {
            return None;
        }
        let at = RTP_HEADER_LEN + 4 * i;
        match self.buf.get(at..at + 4) {
            Some(&[a, b, c, d]) => Some(u32::from_be_bytes([a, b, c, d])),
            _ => None,
        }
    }

    /// The header extension: its 16-bit profile identifier and its data (RFC 3550 5.3.1).
    pub fn extension_data(&self) -> Option<(u16, &'a [u8])> {
        if !self.extension() {
            return None;
        }
        let at = RTP_HEADER_LEN + 4 * usize::from(self.csrc_count());
        let profile = match self.buf.get(at..at + 2) {
            Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
            _ => return None,
        };
        self.buf
            .get(at + 4..self.header_len)
            .map(|data| (profile, data))
    }

    /// Length of the header: fixed part, CSRCs and extension.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// Number of padding octets at the end (0 without the padding bit).
    pub fn padding_len(&self) -> usize {
        self.buf.len() - self.payload_end
    }

    /// The payload, without header and padding.
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.header_len..self.payload_end]
    }
}

/// Fields for writing a header (no CSRCs, no extension, no padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtpHeader {
    /// The marker bit.
    pub marker: bool,
    /// The payload type (0..=127).
    pub payload_type: u8,
    /// The sequence number.
    pub sequence: u16,
    /// The media timestamp.
    pub timestamp: u32,
    /// The synchronization source.
    pub ssrc: u32,
}

impl RtpHeader {
    /// Writes the 12-byte header at the start of `buf`; returns 12.
    ///
    /// Fails when `buf` is shorter than 12 bytes or the payload type does not fit in 7 bits.
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, RtpError> {
        if self.payload_type > MAX_PAYLOAD_TYPE {
            return Err(RtpError::BadPayloadType(self.payload_type));
        }
        let capacity = buf.len();
        let Some(head) = buf.get_mut(..RTP_HEADER_LEN) else {
            return Err(RtpError::BufferTooSmall {
                needed: RTP_HEADER_LEN,
                capacity,
            });
        };
        head[0] = RTP_VERSION << 6;
        head[1] = (u8::from(self.marker) << 7) | self.payload_type;
        head[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        head[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        head[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        Ok(RTP_HEADER_LEN)
    }
}

impl From<&RtpPacket<'_>> for RtpHeader {
    fn from(p: &RtpPacket<'_>) -> Self {
        Self {
            marker: p.marker(),
            payload_type: p.payload_type(),
            sequence: p.sequence(),
            timestamp: p.timestamp(),
            ssrc: p.ssrc(),
        }
    }
}

/// Writes `bytes` at `at` in the fixed header of `buf`; any buffer shorter than the fixed
/// header is refused, whichever field is written, so all setters agree on what is too short.
fn put<const N: usize>(buf: &mut [u8], at: usize, bytes: [u8; N]) -> Result<(), RtpError> {
    let len = buf.len();
    match buf
        .get_mut(..RTP_HEADER_LEN)
        .and_then(|h| h.get_mut(at..at + N))
    {
        Some(dst) => {
            dst.copy_from_slice(&bytes);
            Ok(())
        }
        None => Err(RtpError::TooShort {
            needed: RTP_HEADER_LEN,
            len,
        }),
    }
}

/// Rewrites the SSRC of the RTP datagram in `buf` in place.
pub fn set_ssrc(buf: &mut [u8], v: u32) -> Result<(), RtpError> {
    put(buf, 8, v.to_be_bytes())
}

/// Rewrites the sequence number of the RTP datagram in `buf` in place.
pub fn set_sequence(buf: &mut [u8], v: u16) -> Result<(), RtpError> {
    put(buf, 2, v.to_be_bytes())
}

/// Rewrites the timestamp of the RTP datagram in `buf` in place.
pub fn set_timestamp(buf: &mut [u8], v: u32) -> Result<(), RtpError> {
    put(buf, 4, v.to_be_bytes())
}

/// Rewrites the payload type of the RTP datagram in `buf` in place, keeping the marker bit.
pub fn set_payload_type(buf: &mut [u8], v: u8) -> Result<(), RtpError> {
    if v > MAX_PAYLOAD_TYPE {
        return Err(RtpError::BadPayloadType(v));
    }
    if buf.len() < RTP_HEADER_LEN {
        return Err(RtpError::TooShort {
            needed: RTP_HEADER_LEN,
            len: buf.len(),
        });
    }
    buf[1] = (buf[1] & 0x80) | v;
    Ok(())
}

/// Rewrites the marker bit of the RTP datagram in `buf` in place.
pub fn set_marker(buf: &mut [u8], v: bool) -> Result<(), RtpError> {
    if buf.len() < RTP_HEADER_LEN {
        return Err(RtpError::TooShort {
            needed: RTP_HEADER_LEN,
            len: buf.len(),
        });
    }
    buf[1] = (buf[1] & 0x7f) | (u8::from(v) << 7);
    Ok(())
}

/// RFC 5761 4: a datagram on a muxed port is RTCP when its second byte is 192..=223 (PT 64..95
/// with the marker bit set, i.e. RTCP packet types 192..=223).
pub fn is_rtcp(buf: &[u8]) -> bool {
    matches!(buf.get(1), Some(192..=223))
}

/// Why a buffer is not a valid RTP packet, or a header could not be written.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum RtpError {
    /// The datagram ends before the fixed header or the CSRC list it announces.
    #[error("RTP packet too short: {len} bytes, header needs {needed}")]
    TooShort {
        /// Bytes the header needs.
        needed: usize,
        /// Bytes available.
        len: usize,
    },
    /// The version field is not 2.
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    /// The padding bit is set but the padding count is 0 or longer than the payload.
    #[error("RTP padding length is 0 or exceeds the payload")]
    BadPadding,
    /// The extension bit is set but the extension header or its data run past the datagram.
    #[error("RTP header extension runs past the end of the packet")]
    BadExtension,
    /// A payload type above 127 was asked for: the field has 7 bits.
    #[error("RTP payload type {0} does not fit in 7 bits")]
    BadPayloadType(u8),
    /// The output buffer cannot hold the header being written.
    #[error("buffer of {capacity} bytes cannot hold {needed} bytes")]
    BufferTooSmall {
        /// Bytes the writer needs.
        needed: usize,
        /// Bytes the buffer has.
        capacity: usize,
    },
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A 172-byte PCMU packet: 12-byte header and 160 samples.
    fn pcmu_packet() -> Vec<u8> {
        let mut buf = vec![0xffu8; 172];
        RtpHeader {
            marker: true,
            payload_type: 0,
            sequence: 0x1234,
            timestamp: 0xdead_beef,
            ssrc: 0x0102_0304,
        }
        .write(&mut buf)
        .unwrap();
        buf
    }

    #[test]
    fn parses_fixed_header() {
        let buf = pcmu_packet();
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(p.version(), 2);
        assert!(!p.padding());
        assert!(!p.extension());
        assert!(p.marker());
        assert_eq!(p.payload_type(), 0);
        assert_eq!(p.sequence(), 0x1234);
        assert_eq!(p.timestamp(), 0xdead_beef);
        assert_eq!(p.ssrc(), 0x0102_0304);
        assert_eq!(p.csrc_count(), 0);
        assert_eq!(p.csrc(0), None);
        assert_eq!(p.header_len(), 12);
        assert_eq!(p.payload().len(), 160);
        assert_eq!(p.extension_data(), None);
    }

    #[test]
    fn parses_csrcs_extension_and_padding() {
        let mut buf = vec![
            0xb2, 0x08, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, // V=2 P X CC=2, PT 8
            0, 0, 0, 10, 0, 0, 0, 11, // CSRCs
            0xbe, 0xde, 0, 1, 1, 2, 3, 4, // extension, one word
            9, 9, 9, // payload
        ];
        buf.extend_from_slice(&[0, 0, 3]); // padding of 3
        let p = RtpPacket::parse(&buf).unwrap();
        assert!(p.padding() && p.extension());
        assert_eq!(p.payload_type(), 8);
        assert_eq!(p.csrc_count(), 2);
        assert_eq!(p.csrc(0), Some(10));
        assert_eq!(p.csrc(1), Some(11));
        assert_eq!(p.csrc(2), None);
        assert_eq!(p.extension_data(), Some((0xbede, &[1u8, 2, 3, 4][..])));
        assert_eq!(p.header_len(), 28);
        assert_eq!(p.padding_len(), 3);
        assert_eq!(p.payload(), &[9, 9, 9]);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(
            RtpPacket::parse(&[]).unwrap_err(),
            RtpError::TooShort { needed: 12, len: 0 }
        );
        let mut buf = pcmu_packet();
        assert_eq!(
            RtpPacket::parse(&buf[..11]).unwrap_err(),
            RtpError::TooShort {
                needed: 12,
                len: 11
            }
        );
        buf[0] = 0x40;
        assert_eq!(RtpPacket::parse(&buf).unwrap_err(), RtpError::BadVersion(1));
        // 15 CSRCs need 72 bytes.
        buf[0] = 0x8f;
        assert_eq!(
            RtpPacket::parse(&buf[..60]).unwrap_err(),
            RtpError::TooShort {
                needed: 72,
                len: 60
            }
        );
        // Extension announcing more words than there are.
        buf[0] = 0x90;
        buf[14] = 0xff;
        buf[15] = 0xff;
        assert_eq!(RtpPacket::parse(&buf).unwrap_err(), RtpError::BadExtension);
        assert_eq!(
            RtpPacket::parse(&buf[..14]).unwrap_err(),
            RtpError::BadExtension
        );
        // Padding of 0 and padding longer than the payload.
        buf[0] = 0xa0;
        let last = buf.len() - 1;
        buf[last] = 0;
        assert_eq!(RtpPacket::parse(&buf).unwrap_err(), RtpError::BadPadding);
        buf[last] = 161;
        assert_eq!(RtpPacket::parse(&buf).unwrap_err(), RtpError::BadPadding);
        buf[last] = 160;
        assert_eq!(RtpPacket::parse(&buf).unwrap().payload(), &[] as &[u8]);
    }

    #[test]
    fn rewrites_in_place() {
        let mut buf = pcmu_packet();
        set_ssrc(&mut buf, 7).unwrap();
        set_sequence(&mut buf, 65535).unwrap();
        set_timestamp(&mut buf, 160).unwrap();
        set_payload_type(&mut buf, 101).unwrap();
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(
            (p.ssrc(), p.sequence(), p.timestamp(), p.payload_type()),
            (7, 65535, 160, 101)
        );
        assert!(p.marker(), "payload type rewrite keeps the marker");
        set_marker(&mut buf, false).unwrap();
        assert!(!RtpPacket::parse(&buf).unwrap().marker());
        assert_eq!(
            set_payload_type(&mut buf, 128),
            Err(RtpError::BadPayloadType(128))
        );
        let short = &mut [0x80u8; 11][..];
        assert!(set_ssrc(short, 1).is_err());
        assert!(set_sequence(&mut short[..3], 1).is_err());
        assert!(set_timestamp(short, 1).is_err());
        assert!(set_payload_type(short, 1).is_err());
        assert!(set_marker(short, true).is_err());
    }

    #[test]
    fn header_write_checks_buffer_and_payload_type() {
        let h = RtpHeader::default();
        assert_eq!(
            h.write(&mut [0u8; 11]),
            Err(RtpError::BufferTooSmall {
                needed: 12,
                capacity: 11
            })
        );
        let bad = RtpHeader {
            payload_type: 200,
            ..h
        };
        assert_eq!(
            bad.write(&mut [0u8; 12]),
            Err(RtpError::BadPayloadType(200))
        );
    }

    #[test]
    fn rtcp_demux_follows_rfc_5761() {
        assert!(is_rtcp(&[0x80, 200]));
        assert!(is_rtcp(&[0x80, 192]));
        assert!(is_rtcp(&[0x80, 223]));
        assert!(!is_rtcp(&[0x80, 191]));
        assert!(!is_rtcp(&[0x80, 224]));
        assert!(!is_rtcp(&[0x80, 0]));
        assert!(!is_rtcp(&[0x80]));
        assert!(!is_rtcp(&pcmu_packet()));
    }

    proptest! {
        #[test]
        fn parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Ok(p) = RtpPacket::parse(&buf) {
                prop_assert!(p.header_len() + p.payload().len() + p.padding_len() == buf.len());
                for i in 0..16 {
                    let _ = p.csrc(i);
                }
                let _ = p.extension_data();
            }
        }

        #[test]
        fn header_round_trips(
            marker: bool,
            payload_type in 0u8..=127,
            sequence: u16,
            timestamp: u32,
            ssrc: u32,
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let h = RtpHeader { marker, payload_type, sequence, timestamp, ssrc };
            let mut buf = vec![0u8; RTP_HEADER_LEN + payload.len()];
            prop_assert_eq!(h.write(&mut buf).unwrap(), RTP_HEADER_LEN);
            buf[RTP_HEADER_LEN..].copy_from_slice(&payload);
            let p = RtpPacket::parse(&buf).unwrap();
            prop_assert_eq!(RtpHeader::from(&p), h);
            prop_assert_eq!(p.payload(), &payload[..]);
        }
    }
}
