//! RTCP compound packets (RFC 3550 6.4-6.7): parsing into typed packets and serializing them.
//!
//! RTCP runs at a few packets per second per stream, so these types own their data (`Vec`s)
//! rather than borrowing the datagram. [`parse_compound`] applies the RFC 3550 A.2 validity
//! checks (version 2, lengths add up, first packet SR or RR, padding only on the last packet);
//! [`parse_lenient`] keeps the per-packet checks but accepts any order, for reduced-size RTCP
//! (RFC 5506) and tolerant peers. [`CompoundIter`] walks a compound packet without collecting.

mod compound;

pub use compound::{CompoundIter, parse_compound, parse_lenient};

/// Packet type of a sender report.
pub const PT_SR: u8 = 200;
/// Packet type of a receiver report.
pub const PT_RR: u8 = 201;
/// Packet type of a source description.
pub const PT_SDES: u8 = 202;
/// Packet type of a goodbye.
pub const PT_BYE: u8 = 203;
/// Packet type of an application-defined packet.
pub const PT_APP: u8 = 204;
/// SDES item type of the canonical name.
pub const SDES_CNAME: u8 = 1;

/// Largest value of the 5-bit count field (report blocks, chunks, sources).
const MAX_COUNT: usize = 31;
const REPORT_BLOCK_LEN: usize = 24;

/// One reception report block (RFC 3550 6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction lost since the previous report, 8-bit fixed point (256 = all).
    pub fraction_lost: u8,
    /// Cumulative packets lost, a 24-bit signed value (duplicates can make it negative).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received (cycles in the high 16 bits).
    pub highest_seq: u32,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received from this source (0: none).
    pub last_sr: u32,
    /// Delay since that SR, in units of 1/65536 s.
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    /// Parses one 24-byte block; `None` if `b` is shorter.
    fn parse(b: &[u8]) -> Option<Self> {
        let w = |i: usize| -> Option<u32> {
            match b.get(i..i + 4) {
                Some(&[a, b, c, d]) => Some(u32::from_be_bytes([a, b, c, d])),
                _ => None,
            }
        };
        let lost = w(4)?;
        Some(Self {
            ssrc: w(0)?,
            fraction_lost: (lost >> 24) as u8,
            // Sign-extend the low 24 bits.
            cumulative_lost: ((lost << 8) as i32) >> 8,
            highest_seq: w(8)?,
            jitter: w(12)?,
            last_sr: w(16)?,
            delay_since_last_sr: w(20)?,
        })
    }

    /// Appends the 24-byte block; `cumulative_lost` is clamped to the 24-bit range.
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        let lost = self.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32 & 0x00ff_ffff;
        out.extend_from_slice(&((u32::from(self.fraction_lost) << 24) | lost).to_be_bytes());
        out.extend_from_slice(&self.highest_seq.to_be_bytes());
        out.extend_from_slice(&self.jitter.to_be_bytes());
        out.extend_from_slice(&self.last_sr.to_be_bytes());
        out.extend_from_slice(&self.delay_since_last_sr.to_be_bytes());
    }
}

/// A sender report (RFC 3550 6.4.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SenderReport {
    /// The sender.
    pub ssrc: u32,
    /// Wallclock time of this report, 64-bit NTP format.
    pub ntp_timestamp: u64,
    /// The same instant in the sender's RTP timestamp units.
    pub rtp_timestamp: u32,
    /// Packets sent since the sender started.
    pub packet_count: u32,
    /// Payload octets sent since the sender started.
    pub octet_count: u32,
    /// Reception reports (at most 31).
    pub reports: Vec<ReportBlock>,
}

/// A receiver report (RFC 3550 6.4.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReceiverReport {
    /// The reporter.
    pub ssrc: u32,
    /// Reception reports (at most 31).
    pub reports: Vec<ReportBlock>,
}

/// One SDES item (RFC 3550 6.5): type and value (UTF-8 by the RFC, kept as bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdesItem {
    /// Item type (1 = CNAME, 2 = NAME, ...; 0 never appears, it ends a chunk).
    pub kind: u8,
    /// Item text, at most 255 bytes.
    pub value: Vec<u8>,
}

/// The SDES items of one source.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SdesChunk {
    /// The source described.
    pub ssrc: u32,
    /// Its items, in wire order.
    pub items: Vec<SdesItem>,
}

impl SdesChunk {
    /// A chunk carrying only a CNAME, what every compound packet must include.
    pub fn with_cname(ssrc: u32, cname: &str) -> Self {
        Self {
            ssrc,
            items: vec![SdesItem {
                kind: SDES_CNAME,
                value: cname.as_bytes().to_vec(),
            }],
        }
    }

    /// The CNAME item, if present and valid UTF-8.
    pub fn cname(&self) -> Option<&str> {
        self.items
            .iter()
            .find(|i| i.kind == SDES_CNAME)
            .and_then(|i| std::str::from_utf8(&i.value).ok())
    }
}

/// A source description (RFC 3550 6.5).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceDescription {
    /// One chunk per source (at most 31).
    pub chunks: Vec<SdesChunk>,
}

/// A goodbye (RFC 3550 6.6).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Goodbye {
    /// Sources leaving (at most 31).
    pub sources: Vec<u32>,
    /// Optional reason (at most 255 bytes; invalid UTF-8 is replaced when parsing).
    pub reason: Option<String>,
}

/// An application-defined packet (RFC 3550 6.7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct App {
    /// The 5-bit subtype.
    pub subtype: u8,
    /// The sender.
    pub ssrc: u32,
    /// Four ASCII characters naming the application.
    pub name: [u8; 4],
    /// Application data (a multiple of 4 bytes on the wire).
    pub data: Vec<u8>,
}

/// One packet of a compound RTCP packet.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket {
    /// Sender report, PT 200.
    SenderReport(SenderReport),
    /// Receiver report, PT 201.
    ReceiverReport(ReceiverReport),
    /// Source description, PT 202.
    SourceDescription(SourceDescription),
    /// Goodbye, PT 203.
    Goodbye(Goodbye),
    /// Application-defined, PT 204.
    App(App),
    /// Any other packet type (feedback RFC 4585, XR RFC 3611, ...), kept opaque.
    Other {
        /// Packet type.
        pt: u8,
        /// The 5-bit count/format field.
        count: u8,
        /// Body after the 4-byte header, padding removed.
        body: Vec<u8>,
    },
}

impl RtcpPacket {
    /// The packet type on the wire.
    pub fn packet_type(&self) -> u8 {
        match self {
            Self::SenderReport(_) => PT_SR,
            Self::ReceiverReport(_) => PT_RR,
            Self::SourceDescription(_) => PT_SDES,
            Self::Goodbye(_) => PT_BYE,
            Self::App(_) => PT_APP,
            Self::Other { pt, .. } => *pt,
        }
    }

    /// Appends this packet, without padding, to `out`.
    ///
    /// On error `out` is left as it was.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), RtcpError> {
        let start = out.len();
        let result = self.write_packet(out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// Serializes into `buf`, returning the number of bytes written.
    pub fn write_to_slice(&self, buf: &mut [u8]) -> Result<usize, RtcpError> {
        let mut v = Vec::new();
        self.write(&mut v)?;
        let capacity = buf.len();
        let dst = buf.get_mut(..v.len()).ok_or(RtcpError::BufferTooSmall {
            needed: v.len(),
            capacity,
        })?;
        dst.copy_from_slice(&v);
        Ok(v.len())
    }

    fn write_packet(&self, out: &mut Vec<u8>) -> Result<(), RtcpError> {
        let start = out.len();
        match self {
            Self::SenderReport(sr) => {
                header(out, count(sr.reports.len())?, PT_SR);
                out.extend_from_slice(&sr.ssrc.to_be_bytes());
                out.extend_from_slice(&sr.ntp_timestamp.to_be_bytes());
                out.extend_from_slice(&sr.rtp_timestamp.to_be_bytes());
                out.extend_from_slice(&sr.packet_count.to_be_bytes());
                out.extend_from_slice(&sr.octet_count.to_be_bytes());
                sr.reports.iter().for_each(|r| r.write(out));
            }
            Self::ReceiverReport(rr) => {
                header(out, count(rr.reports.len())?, PT_RR);
                out.extend_from_slice(&rr.ssrc.to_be_bytes());
                rr.reports.iter().for_each(|r| r.write(out));
            }
            Self::SourceDescription(sdes) => {
                header(out, count(sdes.chunks.len())?, PT_SDES);
                for chunk in &sdes.chunks {
                    let chunk_start = out.len();
                    out.extend_from_slice(&chunk.ssrc.to_be_bytes());
                    for item in &chunk.items {
                        if item.kind == 0 {
                            return Err(RtcpError::BadSdesItem);
                        }
                        out.push(item.kind);
                        out.push(item_len(item.value.len())?);
                        out.extend_from_slice(&item.value);
                    }
                    // At least one null octet ends the item list, then pad to 32 bits.
                    out.push(0);
                    while !(out.len() - chunk_start).is_multiple_of(4) {
                        out.push(0);
                    }
                }
            }
            Self::Goodbye(bye) => {
                header(out, count(bye.sources.len())?, PT_BYE);
                bye.sources
                    .iter()
                    .for_each(|s| out.extend_from_slice(&s.to_be_bytes()));
                if let Some(reason) = &bye.reason {
                    out.push(item_len(reason.len())?);
                    out.extend_from_slice(reason.as_bytes());
                    while !(out.len() - start).is_multiple_of(4) {
                        out.push(0);
                    }
                }
            }
            Self::App(app) => {
                if usize::from(app.subtype) > MAX_COUNT {
                    return Err(RtcpError::TooMany {
                        count: usize::from(app.subtype),
                    });
                }
                if !app.data.len().is_multiple_of(4) {
                    return Err(RtcpError::Unaligned);
                }
                header(out, app.subtype, PT_APP);
                out.extend_from_slice(&app.ssrc.to_be_bytes());
                out.extend_from_slice(&app.name);
                out.extend_from_slice(&app.data);
            }
            Self::Other { pt, count: c, body } => {
                if usize::from(*c) > MAX_COUNT {
                    return Err(RtcpError::TooMany {
                        count: usize::from(*c),
                    });
                }
                if !body.len().is_multiple_of(4) {
                    return Err(RtcpError::Unaligned);
                }
                header(out, *c, *pt);
                out.extend_from_slice(body);
            }
        }
        let words = (out.len() - start) / 4 - 1;
        let words = u16::try_from(words).map_err(|_| RtcpError::TooLong)?;
        out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
        Ok(())
    }
}

impl From<SenderReport> for RtcpPacket {
    fn from(p: SenderReport) -> Self {
        Self::SenderReport(p)
    }
}

impl From<ReceiverReport> for RtcpPacket {
    fn from(p: ReceiverReport) -> Self {
        Self::ReceiverReport(p)
    }
}

impl From<SourceDescription> for RtcpPacket {
    fn from(p: SourceDescription) -> Self {
        Self::SourceDescription(p)
    }
}

impl From<Goodbye> for RtcpPacket {
    fn from(p: Goodbye) -> Self {
        Self::Goodbye(p)
    }
}

impl From<App> for RtcpPacket {
    fn from(p: App) -> Self {
        Self::App(p)
    }
}

/// Writes a 4-byte header with a zero length; the caller patches the length.
fn header(out: &mut Vec<u8>, count: u8, pt: u8) {
    out.extend_from_slice(&[0x80 | count, pt, 0, 0]);
}

fn count(n: usize) -> Result<u8, RtcpError> {
    if n > MAX_COUNT {
        return Err(RtcpError::TooMany { count: n });
    }
    Ok(n as u8)
}

fn item_len(n: usize) -> Result<u8, RtcpError> {
    u8::try_from(n).map_err(|_| RtcpError::ItemTooLong { len: n })
}

/// Serializes `packets` back to back as one compound packet.
pub fn write_compound(packets: &[RtcpPacket]) -> Result<Vec<u8>, RtcpError> {
    let mut out = Vec::with_capacity(64 * packets.len());
    for p in packets {
        p.write(&mut out)?;
    }
    Ok(out)
}

/// Why a buffer is not a valid RTCP (compound) packet, or a packet could not be written.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum RtcpError {
    /// The datagram is empty.
    #[error("empty RTCP datagram")]
    Empty,
    /// Fewer than 4 bytes remain where a packet header should start.
    #[error("RTCP packet header truncated: {len} bytes left")]
    TooShort {
        /// Bytes left in the datagram.
        len: usize,
    },
    /// The version field is not 2.
    #[error("RTCP version {0}, expected 2")]
    BadVersion(u8),
    /// The length field announces more bytes than the datagram has left.
    #[error("RTCP length field declares {declared} bytes, {available} available")]
    BadLength {
        /// Packet length the header declares, in bytes.
        declared: usize,
        /// Bytes left in the datagram.
        available: usize,
    },
    /// The padding bit is set but the padding count is 0 or longer than the packet body.
    #[error("RTCP padding length is 0 or exceeds the packet")]
    BadPadding,
    /// The body is shorter than its count field and structure require.
    #[error("RTCP packet of type {pt} is truncated")]
    Truncated {
        /// Packet type of the truncated packet.
        pt: u8,
    },
    /// Strict parsing: the first packet of the compound is not an SR or RR (its type given).
    #[error("compound RTCP must start with SR or RR, found packet type {0}")]
    NotReportFirst(u8),
    /// Strict parsing: a packet other than the last has its padding bit set.
    #[error("RTCP padding on a packet that is not the last of the compound")]
    MisplacedPadding,
    /// Writing: more than 31 report blocks, chunks or sources, or a subtype above 31.
    #[error("{count} items exceed the 5-bit RTCP count field")]
    TooMany {
        /// The count asked for.
        count: usize,
    },
    /// Writing: an SDES item or BYE reason longer than 255 bytes.
    #[error("RTCP text of {len} bytes exceeds 255")]
    ItemTooLong {
        /// Its length.
        len: usize,
    },
    /// Writing: an SDES item of type 0, which would end the chunk early.
    #[error("SDES item type 0 is reserved for the end of a chunk")]
    BadSdesItem,
    /// Writing: APP data or an opaque body whose length is not a multiple of 4.
    #[error("RTCP body length is not a multiple of 4")]
    Unaligned,
    /// Writing: the packet exceeds what the 16-bit length field can describe.
    #[error("RTCP packet too long for its length field")]
    TooLong,
    /// Writing: the output buffer cannot hold the packet.
    #[error("buffer of {capacity} bytes cannot hold {needed} bytes")]
    BufferTooSmall {
        /// Bytes the packet needs.
        needed: usize,
        /// Bytes the buffer has.
        capacity: usize,
    },
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn block(ssrc: u32, lost: i32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 25,
            cumulative_lost: lost,
            highest_seq: 0x0001_0005,
            jitter: 42,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 65536,
        }
    }

    fn sample_compound() -> Vec<RtcpPacket> {
        vec![
            SenderReport {
                ssrc: 1,
                ntp_timestamp: 0xe000_0000_8000_0000,
                rtp_timestamp: 160,
                packet_count: 10,
                octet_count: 1600,
                reports: vec![block(2, -3), block(3, 0x7f_ffff)],
            }
            .into(),
            SourceDescription {
                chunks: vec![
                    SdesChunk::with_cname(1, "voxgate@10.0.0.1"),
                    SdesChunk::with_cname(4, "abc"),
                ],
            }
            .into(),
            Goodbye {
                sources: vec![1],
                reason: Some("session ended".into()),
            }
            .into(),
        ]
    }

    #[test]
    fn compound_round_trips() {
        let packets = sample_compound();
        let bytes = write_compound(&packets).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(parse_compound(&bytes).unwrap(), packets);
        match &packets[1] {
            RtcpPacket::SourceDescription(s) => {
                assert_eq!(s.chunks[0].cname(), Some("voxgate@10.0.0.1"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parses_a_known_receiver_report() {
        // RR from SSRC 0x11223344 with one block on 0xaabbccdd: 10% lost, cumulative -1.
        let bytes = [
            0x81, 201, 0, 7, 0x11, 0x22, 0x33, 0x44, // header, reporter
            0xaa, 0xbb, 0xcc, 0xdd, 25, 0xff, 0xff, 0xff, // source, fraction, cumulative -1
            0, 1, 0, 9, 0, 0, 0, 80, // highest seq, jitter
            0, 0, 0, 0, 0, 0, 0, 0, // LSR, DLSR
        ];
        let packets = parse_compound(&bytes).unwrap();
        let [RtcpPacket::ReceiverReport(rr)] = &packets[..] else {
            panic!("{packets:?}");
        };
        assert_eq!(rr.ssrc, 0x1122_3344);
        let b = rr.reports[0];
        assert_eq!(b.ssrc, 0xaabb_ccdd);
        assert_eq!(b.fraction_lost, 25);
        assert_eq!(b.cumulative_lost, -1);
        assert_eq!(b.highest_seq, 0x0001_0009);
        assert_eq!(b.jitter, 80);
        let mut again = Vec::new();
        packets[0].write(&mut again).unwrap();
        assert_eq!(again, bytes);
    }

    #[test]
    fn cumulative_lost_clamps_to_24_bits() {
        let mut out = Vec::new();
        RtcpPacket::from(ReceiverReport {
            ssrc: 1,
            reports: vec![block(2, i32::MAX), block(3, i32::MIN)],
        })
        .write(&mut out)
        .unwrap();
        let [RtcpPacket::ReceiverReport(rr)] = &parse_compound(&out).unwrap()[..] else {
            panic!()
        };
        assert_eq!(rr.reports[0].cumulative_lost, 0x7f_ffff);
        assert_eq!(rr.reports[1].cumulative_lost, -0x80_0000);
    }

    #[test]
    fn app_and_other_round_trip_and_writers_validate() {
        let app: RtcpPacket = App {
            subtype: 3,
            ssrc: 9,
            name: *b"VOXG",
            data: vec![1, 2, 3, 4],
        }
        .into();
        let fb = RtcpPacket::Other {
            pt: 205,
            count: 1,
            body: vec![0, 0, 0, 1, 0, 0, 0, 2],
        };
        let bytes = write_compound(&[app.clone(), fb.clone()]).unwrap();
        assert_eq!(parse_lenient(&bytes).unwrap(), vec![app, fb]);

        let mut out = vec![0xee];
        let too_many = RtcpPacket::from(ReceiverReport {
            ssrc: 1,
            reports: vec![ReportBlock::default(); 32],
        });
        assert_eq!(
            too_many.write(&mut out),
            Err(RtcpError::TooMany { count: 32 })
        );
        let long = RtcpPacket::from(Goodbye {
            sources: vec![],
            reason: Some("x".repeat(256)),
        });
        assert_eq!(
            long.write(&mut out),
            Err(RtcpError::ItemTooLong { len: 256 })
        );
        assert_eq!(out, [0xee], "failed writes leave the buffer as it was");

        let bye = RtcpPacket::from(Goodbye {
            sources: vec![1, 2],
            reason: None,
        });
        let mut small = [0u8; 8];
        assert_eq!(
            bye.write_to_slice(&mut small),
            Err(RtcpError::BufferTooSmall {
                needed: 12,
                capacity: 8
            })
        );
        let mut big = [0u8; 16];
        assert_eq!(bye.write_to_slice(&mut big), Ok(12));
        assert_eq!(parse_lenient(&big[..12]).unwrap(), vec![bye]);
    }

    fn arb_block() -> impl Strategy<Value = ReportBlock> + Clone {
        (
            any::<u32>(),
            any::<u8>(),
            -0x80_0000i32..=0x7f_ffff,
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(
                |(ssrc, fraction_lost, cumulative_lost, highest_seq, jitter, lsr, dlsr)| {
                    ReportBlock {
                        ssrc,
                        fraction_lost,
                        cumulative_lost,
                        highest_seq,
                        jitter,
                        last_sr: lsr,
                        delay_since_last_sr: dlsr,
                    }
                },
            )
    }

    fn arb_packet() -> impl Strategy<Value = RtcpPacket> {
        let blocks = proptest::collection::vec(arb_block(), 0..=31);
        prop_oneof![
            (
                any::<u32>(),
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                blocks.clone()
            )
                .prop_map(|(ssrc, ntp, rtp, pc, oc, reports)| {
                    RtcpPacket::SenderReport(SenderReport {
                        ssrc,
                        ntp_timestamp: ntp,
                        rtp_timestamp: rtp,
                        packet_count: pc,
                        octet_count: oc,
                        reports,
                    })
                }),
            (any::<u32>(), blocks).prop_map(|(ssrc, reports)| {
                RtcpPacket::ReceiverReport(ReceiverReport { ssrc, reports })
            }),
            proptest::collection::vec(
                (
                    any::<u32>(),
                    proptest::collection::vec(
                        (1u8..=255, proptest::collection::vec(any::<u8>(), 0..=255)),
                        0..4
                    )
                ),
                0..=31
            )
            .prop_map(|chunks| {
                RtcpPacket::SourceDescription(SourceDescription {
                    chunks: chunks
                        .into_iter()
                        .map(|(ssrc, items)| SdesChunk {
                            ssrc,
                            items: items
                                .into_iter()
                                .map(|(kind, value)| SdesItem { kind, value })
                                .collect(),
                        })
                        .collect(),
                })
            }),
            (
                proptest::collection::vec(any::<u32>(), 0..=31),
                proptest::option::of("[ -~]{0,255}")
            )
                .prop_map(|(sources, reason)| RtcpPacket::Goodbye(Goodbye { sources, reason })),
        ]
    }

    proptest! {
        #[test]
        fn builders_round_trip(packets in proptest::collection::vec(arb_packet(), 1..4)) {
            let bytes = write_compound(&packets).unwrap();
            prop_assert_eq!(parse_lenient(&bytes).unwrap(), packets);
        }
    }
}
