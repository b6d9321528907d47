//! The payload types of the audio section: which codec each one carries.

/// Which codec a payload type carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CodecKind {
    /// G.711 mu-law, static payload type 0, 8 kHz.
    Pcmu,
    /// G.711 A-law, static payload type 8, 8 kHz.
    Pcma,
    /// Opus, dynamic payload type, `opus/48000/2`.
    Opus,
    /// RFC 4733 DTMF events, dynamic payload type.
    TelephoneEvent,
    /// Any other encoding, by its rtpmap name.
    Other(String),
}

impl CodecKind {
    pub(super) fn from_name(name: &str) -> Self {
        if name.eq_ignore_ascii_case("PCMU") {
            Self::Pcmu
        } else if name.eq_ignore_ascii_case("PCMA") {
            Self::Pcma
        } else if name.eq_ignore_ascii_case("opus") {
            Self::Opus
        } else if name.eq_ignore_ascii_case("telephone-event") {
            Self::TelephoneEvent
        } else {
            Self::Other(name.to_string())
        }
    }

    /// The encoding name used in `a=rtpmap`.
    pub fn name(&self) -> &str {
        match self {
            Self::Pcmu => "PCMU",
            Self::Pcma => "PCMA",
            Self::Opus => "opus",
            Self::TelephoneEvent => "telephone-event",
            Self::Other(name) => name,
        }
    }
}

/// One payload type of the audio section.
///
/// Equality compares the format (payload type, kind, rate, channels, fmtp) and not
/// [`rtpmap`](Codec::rtpmap): whether the `a=rtpmap` line is written is presentation, so
/// `Codec::pcmu()` equals the PCMU parsed from `m=audio 4000 RTP/AVP 0` without an rtpmap.
#[derive(Debug, Clone, Eq)]
pub struct Codec {
    /// RTP payload type (0..=127).
    pub payload_type: u8,
    /// The encoding.
    pub kind: CodecKind,
    /// RTP clock rate in Hz.
    pub clock_rate: u32,
    /// Audio channels (1 unless the rtpmap says otherwise; Opus is always 2).
    pub channels: u8,
    /// The `a=fmtp` parameters, if any.
    pub fmtp: Option<String>,
    /// Whether an `a=rtpmap` line is written for this payload type. True for every codec built
    /// here; false when the parsed section named the payload type on its `m=` line only (a
    /// static type such as `13`, CN), so that it is written back as it came instead of with an
    /// invented `a=rtpmap:13 13/8000`.
    pub rtpmap: bool,
}

impl Codec {
    /// PCMU on its static payload type 0.
    pub fn pcmu() -> Self {
        Self::new(0, CodecKind::Pcmu, 8000, 1)
    }

    /// PCMA on its static payload type 8.
    pub fn pcma() -> Self {
        Self::new(8, CodecKind::Pcma, 8000, 1)
    }

    /// Opus (`opus/48000/2`) on a dynamic payload type.
    pub fn opus(payload_type: u8) -> Self {
        Self::new(payload_type, CodecKind::Opus, 48000, 2)
    }

    /// telephone-event/8000 on a dynamic payload type, events 0-16.
    pub fn telephone_event(payload_type: u8) -> Self {
        Self {
            fmtp: Some("0-16".into()),
            ..Self::new(payload_type, CodecKind::TelephoneEvent, 8000, 1)
        }
    }

    fn new(payload_type: u8, kind: CodecKind, clock_rate: u32, channels: u8) -> Self {
        Self {
            payload_type,
            kind,
            clock_rate,
            channels,
            fmtp: None,
            rtpmap: true,
        }
    }

    /// The codec a payload type means when no rtpmap names it (RFC 3551 table 4 for the static
    /// ones voxgate knows; the number as the name otherwise). Marked as written without rtpmap.
    pub(super) fn from_static(payload_type: u8) -> Self {
        let (kind, rate) = match payload_type {
            0 => (CodecKind::Pcmu, 8000),
            8 => (CodecKind::Pcma, 8000),
            3 => (CodecKind::Other("GSM".into()), 8000),
            4 => (CodecKind::Other("G723".into()), 8000),
            9 => (CodecKind::Other("G722".into()), 8000),
            13 => (CodecKind::Other("CN".into()), 8000),
            18 => (CodecKind::Other("G729".into()), 8000),
            pt => (CodecKind::Other(pt.to_string()), 8000),
        };
        Self {
            rtpmap: false,
            ..Self::new(payload_type, kind, rate, 1)
        }
    }
}

impl PartialEq for Codec {
    fn eq(&self, other: &Self) -> bool {
        // `rtpmap` left out on purpose: see the type's doc.
        self.payload_type == other.payload_type
            && self.kind == other.kind
            && self.clock_rate == other.clock_rate
            && self.channels == other.channels
            && self.fmtp == other.fmtp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_ignores_whether_rtpmap_is_written() {
        let parsed = Codec::from_static(0);
        assert!(!parsed.rtpmap);
        assert!(Codec::pcmu().rtpmap);
        assert_eq!(parsed, Codec::pcmu());
        assert_ne!(Codec::from_static(13), Codec::pcmu());
        assert_eq!(Codec::from_static(13).kind.name(), "CN");
    }
}
