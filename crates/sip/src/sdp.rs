//! Audio-only SDP (RFC 4566) parsing and building, and RFC 3264 offer/answer for PCMU, PCMA,
//! Opus and telephone-event.
//!
//! A small hand parser rather than webrtc-rs's `sdp` crate: voxgate needs a dozen fields of one
//! audio section (rtpmap, fmtp, ptime, direction, rtcp, rtcp-mux), which would still have to be
//! dug out of that crate's generic attribute lists, and a parser this size is easy to keep
//! panic-free under proptest and cargo-fuzz. Only the first `m=audio` section is used; other
//! media sections are ignored (an answer carries the audio section only).

use std::fmt;
use std::net::IpAddr;

/// Largest SDP body accepted, in bytes (it travels inside one SIP message).
pub const MAX_SDP_SIZE: usize = 16 * 1024;

/// Why an SDP body was refused, or no answer could be made.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SdpError {
    /// The body is longer than [`MAX_SDP_SIZE`].
    #[error("SDP of {len} bytes exceeds the limit")]
    TooLarge {
        /// Length of the body.
        len: usize,
    },
    /// A mandatory line is absent (`v=`, `o=`, `c=`).
    #[error("missing {0} line")]
    Missing(&'static str),
    /// A line is present but cannot be used.
    #[error("invalid {field} line: {reason}")]
    Invalid {
        /// The line type, e.g. `m=` or `a=rtpmap`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// There is no `m=audio` section.
    #[error("no audio media section")]
    NoAudio,
    /// The offer's audio stream is disabled (port 0): answer it with port 0 too.
    #[error("the offered audio stream is disabled (port 0)")]
    StreamDisabled,
    /// No offered codec is supported: answer with port 0 ([`AudioSdp::rejection`]) or 488.
    #[error("no common codec")]
    NoCommonCodec,
}

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
    fn from_name(name: &str) -> Self {
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
        }
    }

    /// The codec a static payload type means when no rtpmap names it.
    fn from_static(payload_type: u8) -> Self {
        let (kind, rate) = match payload_type {
            0 => (CodecKind::Pcmu, 8000),
            8 => (CodecKind::Pcma, 8000),
            3 => (CodecKind::Other("GSM".into()), 8000),
            4 => (CodecKind::Other("G723".into()), 8000),
            9 => (CodecKind::Other("G722".into()), 8000),
            18 => (CodecKind::Other("G729".into()), 8000),
            pt => (CodecKind::Other(pt.to_string()), 8000),
        };
        Self::new(payload_type, kind, rate, 1)
    }
}

/// Media direction attribute (RFC 3264 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Both ways (the default when no attribute is present).
    #[default]
    SendRecv,
    /// Offerer only sends.
    SendOnly,
    /// Offerer only receives.
    RecvOnly,
    /// No media (hold).
    Inactive,
}

impl Direction {
    /// The direction an answer uses for this offered direction.
    pub fn mirrored(self) -> Self {
        match self {
            Self::SendOnly => Self::RecvOnly,
            Self::RecvOnly => Self::SendOnly,
            other => other,
        }
    }

    fn attribute(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }
}

/// The `o=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// User name (`-` when none).
    pub username: String,
    /// Session id.
    pub session_id: u64,
    /// Session version, incremented on every change.
    pub session_version: u64,
    /// Address of the originating host.
    pub address: IpAddr,
}

/// An audio-only session description: the session lines plus one audio media section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioSdp {
    /// The `o=` line.
    pub origin: Origin,
    /// The `s=` line (`-` when none).
    pub session_name: String,
    /// Where media goes: media-level `c=` if present, else session-level.
    pub connection: IpAddr,
    /// RTP port; 0 means the stream is disabled.
    pub port: u16,
    /// Transport protocol of the `m=` line, e.g. `RTP/AVP`.
    pub protocol: String,
    /// Payload types in preference order.
    pub codecs: Vec<Codec>,
    /// `a=ptime` in milliseconds.
    pub ptime: Option<u32>,
    /// Media direction.
    pub direction: Direction,
    /// `a=rtcp-mux` (RFC 5761).
    pub rtcp_mux: bool,
    /// `a=rtcp` port (RFC 3605), when RTCP is not on port + 1.
    pub rtcp: Option<u16>,
}

impl AudioSdp {
    /// An offer for `codecs` (in preference order): sendrecv, 20 ms, RTP/AVP, no rtcp-mux.
    pub fn offer(local_ip: IpAddr, port: u16, codecs: Vec<Codec>, session_id: u64) -> Self {
        Self {
            origin: Origin {
                username: "voxgate".into(),
                session_id,
                session_version: session_id,
                address: local_ip,
            },
            session_name: "voxgate".into(),
            connection: local_ip,
            port,
            protocol: "RTP/AVP".into(),
            codecs,
            ptime: Some(20),
            direction: Direction::SendRecv,
            rtcp_mux: false,
            rtcp: None,
        }
    }

    /// The RFC 3264 answer to `offer`: the first offered codec whose kind is in `supported`,
    /// plus the offered telephone-event (same payload type) when both sides have it; direction
    /// mirrored; rtcp-mux accepted when offered; the offer's ptime and protocol.
    pub fn answer(
        offer: &AudioSdp,
        supported: &[CodecKind],
        local_ip: IpAddr,
        local_port: u16,
        session_id: u64,
    ) -> Result<AudioSdp, SdpError> {
        if offer.port == 0 {
            return Err(SdpError::StreamDisabled);
        }
        let chosen = offer
            .codecs
            .iter()
            .find(|c| c.kind != CodecKind::TelephoneEvent && supported.contains(&c.kind))
            .ok_or(SdpError::NoCommonCodec)?;
        let mut codecs = vec![chosen.clone()];
        if supported.contains(&CodecKind::TelephoneEvent) {
            let events = offer
                .codecs
                .iter()
                .filter(|c| c.kind == CodecKind::TelephoneEvent);
            // Prefer the event rate matching the voice codec (RFC 4733 2.1), else 8 kHz.
            let mut events: Vec<&Codec> = events.collect();
            events.sort_by_key(|c| (c.clock_rate != chosen.clock_rate, c.clock_rate != 8000));
            if let Some(event) = events.first() {
                codecs.push((*event).clone());
            }
        }
        Ok(AudioSdp {
            protocol: offer.protocol.clone(),
            ptime: offer.ptime,
            direction: offer.direction.mirrored(),
            rtcp_mux: offer.rtcp_mux,
            ..AudioSdp::offer(local_ip, local_port, codecs, session_id)
        })
    }

    /// An answer that declines the offered audio stream (port 0, the offer's payload types).
    pub fn rejection(offer: &AudioSdp, local_ip: IpAddr, session_id: u64) -> AudioSdp {
        AudioSdp {
            protocol: offer.protocol.clone(),
            ptime: None,
            direction: offer.direction.mirrored(),
            ..AudioSdp::offer(local_ip, 0, offer.codecs.clone(), session_id)
        }
    }

    /// Parses an SDP body; only the first `m=audio` section is read.
    pub fn parse(text: &str) -> Result<AudioSdp, SdpError> {
        if text.len() > MAX_SDP_SIZE {
            return Err(SdpError::TooLarge { len: text.len() });
        }
        let mut version_seen = false;
        let mut origin = None;
        let mut session_name = String::from("-");
        let mut session_connection = None;
        let mut session_direction = None;
        let mut media: Option<MediaBuilder> = None;
        // Inside a non-audio section, or past the first audio one.
        let mut skipping = false;
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let Some((kind, value)) = line.split_once('=') else {
                return Err(invalid("line", "no '='"));
            };
            if kind.len() != 1 {
                return Err(invalid("line", "type is not one character"));
            }
            if kind == "m" {
                if media.is_some() || !value.starts_with("audio ") {
                    skipping = true;
                    continue;
                }
                skipping = false;
                media = Some(MediaBuilder::new(value)?);
                continue;
            }
            if skipping {
                continue;
            }
            match (kind, media.as_mut()) {
                ("v", None) => {
                    if value != "0" {
                        return Err(invalid("v=", "version is not 0"));
                    }
                    version_seen = true;
                }
                ("o", None) => origin = Some(parse_origin(value)?),
                ("s", None) => session_name = value.to_string(),
                ("c", None) => session_connection = Some(parse_connection(value)?),
                ("c", Some(m)) => m.connection = Some(parse_connection(value)?),
                ("a", None) => {
                    if let Some(direction) = parse_direction(value) {
                        session_direction = Some(direction);
                    }
                }
                ("a", Some(m)) => m.attribute(value)?,
                _ => {}
            }
        }
        if !version_seen {
            return Err(SdpError::Missing("v="));
        }
        let origin = origin.ok_or(SdpError::Missing("o="))?;
        let media = media.ok_or(SdpError::NoAudio)?;
        let connection = media
            .connection
            .or(session_connection)
            .ok_or(SdpError::Missing("c="))?;
        Ok(AudioSdp {
            origin,
            session_name,
            connection,
            port: media.port,
            protocol: media.protocol,
            codecs: media.codecs,
            ptime: media.ptime,
            direction: media.direction.or(session_direction).unwrap_or_default(),
            rtcp_mux: media.rtcp_mux,
            rtcp: media.rtcp,
        })
    }

    /// The payload type of telephone-event, if present.
    pub fn telephone_event(&self) -> Option<&Codec> {
        self.codecs
            .iter()
            .find(|c| c.kind == CodecKind::TelephoneEvent)
    }
}

impl fmt::Display for AudioSdp {
    /// RFC 4566 text with CRLF line ends.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.origin;
        write!(f, "v=0\r\n")?;
        write!(
            f,
            "o={} {} {} IN {} {}\r\n",
            o.username,
            o.session_id,
            o.session_version,
            ip_kind(o.address),
            o.address
        )?;
        write!(f, "s={}\r\n", self.session_name)?;
        write!(
            f,
            "c=IN {} {}\r\n",
            ip_kind(self.connection),
            self.connection
        )?;
        write!(f, "t=0 0\r\n")?;
        write!(f, "m=audio {} {}", self.port, self.protocol)?;
        if self.codecs.is_empty() {
            // An m= line needs a format; a disabled stream with nothing to list names PCMU.
            write!(f, " 0")?;
        }
        for codec in &self.codecs {
            write!(f, " {}", codec.payload_type)?;
        }
        write!(f, "\r\n")?;
        for codec in &self.codecs {
            write!(
                f,
                "a=rtpmap:{} {}/{}",
                codec.payload_type,
                codec.kind.name(),
                codec.clock_rate
            )?;
            if codec.channels != 1 {
                write!(f, "/{}", codec.channels)?;
            }
            write!(f, "\r\n")?;
            if let Some(fmtp) = &codec.fmtp {
                write!(f, "a=fmtp:{} {}\r\n", codec.payload_type, fmtp)?;
            }
        }
        if let Some(ptime) = self.ptime {
            write!(f, "a=ptime:{ptime}\r\n")?;
        }
        if let Some(rtcp) = self.rtcp {
            write!(f, "a=rtcp:{rtcp}\r\n")?;
        }
        if self.rtcp_mux {
            write!(f, "a=rtcp-mux\r\n")?;
        }
        write!(f, "a={}\r\n", self.direction.attribute())
    }
}

/// The audio section while it is being read.
struct MediaBuilder {
    port: u16,
    protocol: String,
    codecs: Vec<Codec>,
    connection: Option<IpAddr>,
    ptime: Option<u32>,
    direction: Option<Direction>,
    rtcp_mux: bool,
    rtcp: Option<u16>,
}

impl MediaBuilder {
    /// From the value of `m=audio <port>[/<count>] <proto> <fmt> ...`.
    fn new(value: &str) -> Result<Self, SdpError> {
        let mut parts = value.split_ascii_whitespace().skip(1);
        let port = parts.next().ok_or_else(|| invalid("m=", "no port"))?;
        let port = port.split('/').next().unwrap_or(port);
        let port = port.parse::<u16>().map_err(|_| invalid("m=", "bad port"))?;
        let protocol = parts
            .next()
            .ok_or_else(|| invalid("m=", "no protocol"))?
            .to_string();
        let mut codecs: Vec<Codec> = Vec::new();
        for fmt in parts {
            let pt = fmt
                .parse::<u8>()
                .ok()
                .filter(|pt| *pt <= 127)
                .ok_or_else(|| invalid("m=", "payload type is not 0..=127"))?;
            if !codecs.iter().any(|c| c.payload_type == pt) {
                codecs.push(Codec::from_static(pt));
            }
        }
        if codecs.is_empty() {
            return Err(invalid("m=", "no payload types"));
        }
        Ok(Self {
            port,
            protocol,
            codecs,
            connection: None,
            ptime: None,
            direction: None,
            rtcp_mux: false,
            rtcp: None,
        })
    }

    fn attribute(&mut self, value: &str) -> Result<(), SdpError> {
        if let Some(direction) = parse_direction(value) {
            self.direction = Some(direction);
            return Ok(());
        }
        let (name, rest) = value.split_once(':').unwrap_or((value, ""));
        match name {
            "rtcp-mux" => self.rtcp_mux = true,
            "ptime" => {
                self.ptime = Some(
                    rest.trim()
                        .parse()
                        .map_err(|_| invalid("a=ptime", "not a number"))?,
                )
            }
            "rtcp" => {
                let port = rest.split_ascii_whitespace().next().unwrap_or_default();
                self.rtcp = Some(port.parse().map_err(|_| invalid("a=rtcp", "bad port"))?);
            }
            "rtpmap" => {
                let (pt, map) = rest
                    .split_once(' ')
                    .ok_or_else(|| invalid("a=rtpmap", "no encoding"))?;
                let Some(codec) = self.codec_mut(pt) else {
                    return Ok(());
                };
                let mut fields = map.trim().split('/');
                let name = fields.next().unwrap_or_default();
                if name.is_empty() {
                    return Err(invalid("a=rtpmap", "empty encoding name"));
                }
                let rate = fields
                    .next()
                    .and_then(|r| r.parse::<u32>().ok())
                    .filter(|r| *r > 0)
                    .ok_or_else(|| invalid("a=rtpmap", "bad clock rate"))?;
                let channels = match fields.next() {
                    Some(ch) => ch
                        .parse::<u8>()
                        .ok()
                        .filter(|c| *c > 0)
                        .ok_or_else(|| invalid("a=rtpmap", "bad channel count"))?,
                    None => 1,
                };
                codec.kind = CodecKind::from_name(name);
                codec.clock_rate = rate;
                codec.channels = channels;
            }
            "fmtp" => {
                let (pt, params) = rest
                    .split_once(' ')
                    .ok_or_else(|| invalid("a=fmtp", "no parameters"))?;
                let params = params.trim();
                if let Some(codec) = self.codec_mut(pt)
                    && !params.is_empty()
                {
                    codec.fmtp = Some(params.to_string());
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The codec listed on the m= line with this payload type (attributes for others are
    /// ignored, RFC 4566 6).
    fn codec_mut(&mut self, pt: &str) -> Option<&mut Codec> {
        let pt = pt.trim().parse::<u8>().ok()?;
        self.codecs.iter_mut().find(|c| c.payload_type == pt)
    }
}

fn invalid(field: &'static str, reason: &str) -> SdpError {
    SdpError::Invalid {
        field,
        reason: reason.to_string(),
    }
}

fn ip_kind(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

fn parse_direction(value: &str) -> Option<Direction> {
    match value.trim() {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    }
}

/// `o=<username> <sess-id> <sess-version> IN <IP4|IP6> <address>`.
fn parse_origin(value: &str) -> Result<Origin, SdpError> {
    let fields: Vec<&str> = value.split_ascii_whitespace().collect();
    let [username, id, version, "IN", _, address] = fields.as_slice() else {
        return Err(invalid("o=", "expected six fields"));
    };
    Ok(Origin {
        username: (*username).to_string(),
        session_id: id.parse().map_err(|_| invalid("o=", "bad session id"))?,
        session_version: version
            .parse()
            .map_err(|_| invalid("o=", "bad session version"))?,
        address: address
            .parse()
            .map_err(|_| invalid("o=", "address is not an IP address"))?,
    })
}

/// `c=IN <IP4|IP6> <address>[/ttl]`.
fn parse_connection(value: &str) -> Result<IpAddr, SdpError> {
    let fields: Vec<&str> = value.split_ascii_whitespace().collect();
    let ["IN", _, address] = fields.as_slice() else {
        return Err(invalid("c=", "expected IN <type> <address>"));
    };
    let address = address.split('/').next().unwrap_or(address);
    address
        .parse()
        .map_err(|_| invalid("c=", "address is not an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\n\
        o=alice 2890844526 2890844526 IN IP4 198.51.100.1\r\n\
        s=-\r\n\
        c=IN IP4 198.51.100.1\r\n\
        t=0 0\r\n\
        m=audio 49170 RTP/AVP 111 0 8 101\r\n\
        a=rtpmap:111 opus/48000/2\r\n\
        a=fmtp:111 minptime=10;useinbandfec=1\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-16\r\n\
        a=ptime:20\r\n\
        a=sendonly\r\n";

    #[test]
    fn parses_offer() {
        let sdp = AudioSdp::parse(OFFER).unwrap();
        assert_eq!(sdp.port, 49170);
        assert_eq!(sdp.codecs.len(), 4);
        assert_eq!(sdp.codecs[0].kind, CodecKind::Opus);
        assert_eq!(sdp.codecs[0].channels, 2);
        assert_eq!(sdp.codecs[1], Codec::pcmu());
        assert_eq!(sdp.direction, Direction::SendOnly);
        assert_eq!(sdp.telephone_event().map(|c| c.payload_type), Some(101));
    }

    #[test]
    fn answer_picks_first_common_codec_and_keeps_events() {
        let offer = AudioSdp::parse(OFFER).unwrap();
        let local: IpAddr = "203.0.113.5".parse().unwrap();
        let supported = [CodecKind::Pcma, CodecKind::Pcmu, CodecKind::TelephoneEvent];
        let answer = AudioSdp::answer(&offer, &supported, local, 30000, 7).unwrap();
        let pts: Vec<u8> = answer.codecs.iter().map(|c| c.payload_type).collect();
        assert_eq!(pts, [0, 101]);
        assert_eq!(answer.direction, Direction::RecvOnly);
        assert_eq!(answer.connection, local);
        assert_eq!(AudioSdp::parse(&answer.to_string()).unwrap(), answer);
    }

    #[test]
    fn answer_without_common_codec_fails() {
        let offer = AudioSdp::parse(OFFER).unwrap();
        let local: IpAddr = "203.0.113.5".parse().unwrap();
        let err = AudioSdp::answer(&offer, &[CodecKind::Other("G729".into())], local, 1, 1);
        assert_eq!(err, Err(SdpError::NoCommonCodec));
        let rejection = AudioSdp::rejection(&offer, local, 1);
        assert_eq!(AudioSdp::parse(&rejection.to_string()).unwrap().port, 0);
    }
}
