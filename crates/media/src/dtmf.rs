//! RFC 4733 telephone events (DTMF): a detector that turns the packets carriers really send into
//! digits once each, and a generator that makes the packet train of a digit at any clock and
//! payload type.
//!
//! Carriers are loose with RFC 4733: the first packet of an event often lacks the marker bit (or
//! is lost), and the end of an event is sent three times (2.5.1.4) with the same timestamp. An
//! event is therefore identified by its RTP timestamp (which every packet of one event shares,
//! 2.5.1.1) and completed by the first packet with the End bit; the marker bit is ignored.

use crate::rtp::{RTP_HEADER_LEN, RtpHeader};

/// The digits of events 0-15 (RFC 4733 3.2): `0`-`9`, `*`, `#`, `A`-`D`.
const DIGITS: &[u8; 16] = b"0123456789*#ABCD";

/// Length of one event payload (event, E/R/volume, duration).
pub const EVENT_LEN: usize = 4;

/// The event number of a DTMF `digit` (case-insensitive for `A`-`D`), if it is one.
pub fn event_of(digit: char) -> Option<u8> {
    let upper = digit.to_ascii_uppercase();
    DIGITS
        .iter()
        .position(|&d| char::from(d) == upper)
        .and_then(|i| u8::try_from(i).ok())
}

/// The DTMF digit of event number `event`, if it is one (0-15).
pub fn digit_of(event: u8) -> Option<char> {
    DIGITS.get(usize::from(event)).map(|&d| char::from(d))
}

/// One parsed RFC 4733 event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPayload {
    /// The event number (0-15 are DTMF digits).
    pub event: u8,
    /// The End bit.
    pub end: bool,
    /// The volume, in -dBm0 (0-63).
    pub volume: u8,
    /// The duration so far, in timestamp units of the event's clock.
    pub duration: u16,
}

impl EventPayload {
    /// Parses the first event of an RTP payload; `None` if it is shorter than one.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let bytes = payload.get(..EVENT_LEN)?;
        Some(Self {
            event: bytes[0],
            end: bytes[1] & 0x80 != 0,
            volume: bytes[1] & 0x3f,
            duration: u16::from_be_bytes([bytes[2], bytes[3]]),
        })
    }

    /// The four payload bytes.
    pub fn to_bytes(self) -> [u8; EVENT_LEN] {
        let [d0, d1] = self.duration.to_be_bytes();
        [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3f),
            d0,
            d1,
        ]
    }
}

/// A completed event, as [`DtmfDetector::receive`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectedEvent {
    /// The event number.
    pub event: u8,
    /// The DTMF digit, if the event is one.
    pub digit: Option<char>,
    /// The RTP timestamp of the event (its start).
    pub timestamp: u32,
    /// Its final duration, in timestamp units.
    pub duration: u16,
}

/// Turns a stream of telephone-event payloads into completed events, each once.
///
/// Fed every packet of the event payload type with its RTP timestamp; reports an event on the
/// first End packet of a timestamp not yet completed. The repeated End packets (and late
/// updates) of a completed event are ignored. Events whose End packets were all lost are not
/// reported (a receiver cannot tell how long they were).
#[derive(Debug, Default, Clone)]
pub struct DtmfDetector {
    /// The timestamp of the last completed event.
    last_completed: Option<u32>,
    /// Events completed so far.
    completed: u64,
}

impl DtmfDetector {
    /// A detector that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one packet's event payload with its RTP `timestamp`; the marker bit is not needed.
    /// Returns the event when this packet completes it.
    pub fn receive(&mut self, timestamp: u32, payload: &[u8]) -> Option<DetectedEvent> {
        let event = EventPayload::parse(payload)?;
        if !event.end || self.last_completed == Some(timestamp) {
            return None;
        }
        self.last_completed = Some(timestamp);
        self.completed += 1;
        Some(DetectedEvent {
            event: event.event,
            digit: digit_of(event.event),
            timestamp,
            duration: event.duration,
        })
    }

    /// Takes one whole RTP packet; packets of another payload type than `event_pt` and
    /// unparsable ones are ignored.
    pub fn receive_packet(&mut self, event_pt: u8, packet: &[u8]) -> Option<DetectedEvent> {
        let rtp = crate::rtp::RtpPacket::parse(packet).ok()?;
        if rtp.payload_type() != event_pt {
            return None;
        }
        self.receive(rtp.timestamp(), rtp.payload())
    }

    /// Events completed so far.
    pub fn completed(&self) -> u64 {
        self.completed
    }
}

/// How a [`DtmfGenerator`] sends events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventStream {
    /// The telephone-event payload type of the receiving side.
    pub payload_type: u8,
    /// The clock rate of that payload type (8000, 16000, 48000).
    pub clock_rate: u32,
    /// The SSRC of the stream.
    pub ssrc: u32,
}

/// One packet of a train, due `offset` after the train's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedPacket {
    /// When to send it, from the start of the train.
    pub offset: std::time::Duration,
    /// The RTP datagram.
    pub packet: Vec<u8>,
}

/// Makes RFC 4733 packet trains: for each digit a first packet with the marker bit, an update
/// every [`DtmfGenerator::PACKET_INTERVAL`], and three End packets, all with the event's start
/// timestamp; digits are separated by [`DtmfGenerator::GAP`]. Sequence numbers run on across
/// digits and calls, timestamps advance with the time spent.
#[derive(Debug, Clone)]
pub struct DtmfGenerator {
    stream: EventStream,
    sequence: u16,
    timestamp: u32,
}

impl DtmfGenerator {
    /// Time between two packets of one event.
    pub const PACKET_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
    /// How long each digit sounds.
    pub const TONE: std::time::Duration = std::time::Duration::from_millis(100);
    /// Silence between two digits.
    pub const GAP: std::time::Duration = std::time::Duration::from_millis(100);
    /// How many times the End packet is sent (RFC 4733 2.5.1.4).
    pub const END_REPEATS: usize = 3;
    /// The volume of generated events, in -dBm0.
    pub const VOLUME: u8 = 10;

    /// A generator for `stream` whose first packet has sequence number `sequence` and whose
    /// first event starts at `timestamp`.
    pub fn new(stream: EventStream, sequence: u16, timestamp: u32) -> Self {
        Self {
            stream,
            sequence,
            timestamp,
        }
    }

    /// The packet train of `digits`, or the first character that is not a DTMF digit.
    pub fn digits(&mut self, digits: &str) -> Result<Vec<TimedPacket>, char> {
        if let Some(bad) = digits.chars().find(|&c| event_of(c).is_none()) {
            return Err(bad);
        }
        let mut train = Vec::new();
        let mut start = std::time::Duration::ZERO;
        for event in digits.chars().filter_map(event_of) {
            let spent = self.event(event, start, &mut train);
            start += spent + Self::GAP;
            self.advance(spent + Self::GAP);
        }
        Ok(train)
    }

    /// Appends the packets of one event starting at `start`; returns how long it lasted.
    fn event(
        &mut self,
        event: u8,
        start: std::time::Duration,
        train: &mut Vec<TimedPacket>,
    ) -> std::time::Duration {
        let updates = Self::TONE.as_millis() / Self::PACKET_INTERVAL.as_millis();
        let mut elapsed = std::time::Duration::ZERO;
        for index in 0..=updates {
            elapsed = Self::PACKET_INTERVAL * u32::try_from(index).unwrap_or(u32::MAX);
            let last = index == updates;
            let repeats = if last { Self::END_REPEATS } else { 1 };
            for _ in 0..repeats {
                let payload = EventPayload {
                    event,
                    end: last,
                    volume: Self::VOLUME,
                    // Each packet covers the tone up to the next one; the end covers all of it.
                    duration: self.units((elapsed + Self::PACKET_INTERVAL).min(Self::TONE)),
                };
                train.push(TimedPacket {
                    offset: start + elapsed,
                    packet: self.packet(index == 0, payload),
                });
            }
        }
        elapsed
    }

    fn packet(&mut self, marker: bool, payload: EventPayload) -> Vec<u8> {
        let header = RtpHeader {
            marker,
            payload_type: self.stream.payload_type,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.stream.ssrc,
        };
        self.sequence = self.sequence.wrapping_add(1);
        let mut packet = vec![0u8; RTP_HEADER_LEN + EVENT_LEN];
        // The payload type was checked when the stream was made; a bad one writes nothing.
        if header.write(&mut packet).is_err() {
            return Vec::new();
        }
        packet[RTP_HEADER_LEN..].copy_from_slice(&payload.to_bytes());
        packet
    }

    /// `span` in timestamp units of the stream's clock (saturating at the 16-bit field).
    fn units(&self, span: std::time::Duration) -> u16 {
        let units = span.as_micros() * u128::from(self.stream.clock_rate) / 1_000_000;
        u16::try_from(units).unwrap_or(u16::MAX)
    }

    fn advance(&mut self, span: std::time::Duration) {
        let units = span.as_micros() * u128::from(self.stream.clock_rate) / 1_000_000;
        self.timestamp = self
            .timestamp
            .wrapping_add(u32::try_from(units).unwrap_or(u32::MAX));
    }

    /// The next sequence number.
    pub fn sequence(&self) -> u16 {
        self.sequence
    }
}

/// Re-expresses an event payload received at `from_clock` for a receiver at `to_clock` (the
/// duration scaled); `None` if `payload` is not an event.
pub fn rescale(payload: &[u8], from_clock: u32, to_clock: u32) -> Option<[u8; EVENT_LEN]> {
    let mut event = EventPayload::parse(payload)?;
    if from_clock != 0 && from_clock != to_clock {
        let scaled = u64::from(event.duration) * u64::from(to_clock) / u64::from(from_clock);
        event.duration = u16::try_from(scaled).unwrap_or(u16::MAX);
    }
    Some(event.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::RtpPacket;

    fn payload(event: u8, end: bool, duration: u16) -> [u8; 4] {
        EventPayload {
            event,
            end,
            volume: 10,
            duration,
        }
        .to_bytes()
    }

    #[test]
    fn digits_and_events_map_both_ways() {
        for (i, c) in "0123456789*#ABCD".chars().enumerate() {
            assert_eq!(event_of(c), Some(i as u8));
            assert_eq!(digit_of(i as u8), Some(c));
        }
        assert_eq!(event_of('a'), Some(12));
        assert_eq!(event_of('x'), None);
        assert_eq!(digit_of(16), None);
    }

    #[test]
    fn an_event_without_marker_is_completed_by_its_end_bit() {
        let mut detector = DtmfDetector::new();
        // No marker anywhere, and the first packet lost: updates then the end.
        assert_eq!(detector.receive(1000, &payload(5, false, 400)), None);
        assert_eq!(detector.receive(1000, &payload(5, false, 800)), None);
        let done = detector
            .receive(1000, &payload(5, true, 1200))
            .expect("end");
        assert_eq!(done.digit, Some('5'));
        assert_eq!(done.duration, 1200);
        assert_eq!(done.timestamp, 1000);
    }

    #[test]
    fn repeated_ends_count_once() {
        let mut detector = DtmfDetector::new();
        let mut digits = String::new();
        for (ts, event) in [(1000, 1), (3000, 2), (5000, 11)] {
            for _ in 0..3 {
                if let Some(done) = detector.receive(ts, &payload(event, true, 800)) {
                    digits.extend(done.digit);
                }
            }
            // A late update after the end does not start anything.
            assert_eq!(detector.receive(ts, &payload(event, true, 800)), None);
        }
        assert_eq!(digits, "12#");
        assert_eq!(detector.completed(), 3);
    }

    #[test]
    fn the_same_digit_twice_is_two_events() {
        let mut detector = DtmfDetector::new();
        assert!(detector.receive(160, &payload(7, true, 800)).is_some());
        assert!(detector.receive(160, &payload(7, true, 800)).is_none());
        assert!(detector.receive(2560, &payload(7, true, 800)).is_some());
    }

    #[test]
    fn short_payloads_are_ignored() {
        let mut detector = DtmfDetector::new();
        assert_eq!(detector.receive(1, &[1, 0x80]), None);
    }

    fn stream(payload_type: u8, clock_rate: u32) -> EventStream {
        EventStream {
            payload_type,
            clock_rate,
            ssrc: 0xdead_beef,
        }
    }

    #[test]
    fn the_generator_sends_marker_updates_and_three_ends_per_digit() {
        let mut generator = DtmfGenerator::new(stream(101, 8000), 100, 16_000);
        let train = generator.digits("1#").expect("digits");
        // Per digit: start, one update, three ends.
        assert_eq!(train.len(), 10);
        let parsed: Vec<_> = train
            .iter()
            .map(|p| RtpPacket::parse(&p.packet).expect("rtp"))
            .collect();
        let first = &parsed[..5];
        assert!(first[0].marker());
        assert!(first[1..].iter().all(|p| !p.marker()));
        assert!(first.iter().all(|p| p.timestamp() == 16_000));
        assert!(first.iter().all(|p| p.payload_type() == 101));
        let events: Vec<_> = first
            .iter()
            .map(|p| EventPayload::parse(p.payload()).expect("event"))
            .collect();
        assert_eq!(events.iter().filter(|e| e.end).count(), 3);
        assert_eq!(events[0].duration, 400);
        assert_eq!(events[1].duration, 800);
        assert_eq!(events[4].duration, 800);
        assert_eq!(train[1].offset, std::time::Duration::from_millis(50));
        assert_eq!(train[2].offset, std::time::Duration::from_millis(100));
        // The second digit starts after the first and the gap, on a later timestamp.
        assert_eq!(train[5].offset, std::time::Duration::from_millis(200));
        assert!(parsed[5].marker());
        assert_eq!(parsed[5].timestamp(), 16_000 + 1600);
        // Sequence numbers run on, one per packet.
        let seqs: Vec<u16> = parsed.iter().map(RtpPacket::sequence).collect();
        assert_eq!(seqs, (100..110).collect::<Vec<u16>>());
        assert_eq!(generator.sequence(), 110);
    }

    #[test]
    fn the_generator_counts_in_the_stream_clock() {
        let mut generator = DtmfGenerator::new(stream(96, 48_000), 0, 0);
        let train = generator.digits("9").expect("digits");
        let last = RtpPacket::parse(&train.last().expect("packet").packet).expect("rtp");
        assert_eq!(last.payload_type(), 96);
        let event = EventPayload::parse(last.payload()).expect("event");
        assert_eq!(event.duration, 4800);
    }

    #[test]
    fn generated_trains_detect_as_the_same_digits() {
        let mut generator = DtmfGenerator::new(stream(101, 8000), u16::MAX - 3, u32::MAX - 100);
        let train = generator.digits("12#*0D").expect("digits");
        let mut detector = DtmfDetector::new();
        let digits: String = train
            .iter()
            .filter_map(|p| detector.receive_packet(101, &p.packet))
            .filter_map(|e| e.digit)
            .collect();
        assert_eq!(digits, "12#*0D");
    }

    #[test]
    fn a_bad_digit_is_refused_before_anything_is_made() {
        let mut generator = DtmfGenerator::new(stream(101, 8000), 7, 0);
        assert_eq!(generator.digits("12x"), Err('x'));
        assert_eq!(generator.sequence(), 7);
    }

    #[test]
    fn rescaling_follows_the_clocks() {
        let up = rescale(&payload(3, true, 800), 8000, 48_000).expect("event");
        assert_eq!(EventPayload::parse(&up).expect("event").duration, 4800);
        let down = rescale(&up, 48_000, 8000).expect("event");
        assert_eq!(down, payload(3, true, 800));
        assert_eq!(rescale(&[1, 2], 8000, 8000), None);
    }
}
