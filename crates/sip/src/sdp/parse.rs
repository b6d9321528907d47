//! The one-pass SDP text parser behind [`AudioSdp::parse`].

use std::net::IpAddr;

use super::codec::{Codec, CodecKind};
use super::section::{OtherMedia, media_rank, session_rank};
use super::{AudioSdp, Direction, MAX_SDP_SIZE, Origin, SdpError, invalid};

/// Which part of the body the line being read belongs to.
enum Part {
    Session,
    Audio,
    Other,
}

pub(super) fn parse(text: &str) -> Result<AudioSdp, SdpError> {
    if text.len() > MAX_SDP_SIZE {
        return Err(SdpError::TooLarge { len: text.len() });
    }
    let mut version_seen = false;
    let mut origin = None;
    let mut session_name = String::from("-");
    let mut session_connection = None;
    let mut session_direction = None;
    let mut session_lines: Vec<String> = Vec::new();
    let mut audio: Option<MediaBuilder> = None;
    let mut audio_index = 0;
    let mut other_media: Vec<OtherMedia> = Vec::new();
    let mut part = Part::Session;
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
            if audio.is_none() && value.starts_with("audio ") {
                audio = Some(MediaBuilder::new(value)?);
                audio_index = other_media.len();
                part = Part::Audio;
            } else {
                other_media.push(OtherMedia::new(value)?);
                part = Part::Other;
            }
            continue;
        }
        match part {
            Part::Other => {
                if let Some(section) = other_media.last_mut() {
                    section.push_line(line);
                }
            }
            Part::Audio => {
                if let Some(media) = audio.as_mut() {
                    match kind {
                        "c" => media.connection = Some(parse_connection(value)?),
                        "a" => media.attribute(value, line)?,
                        _ => media.lines.push(line.to_string()),
                    }
                }
            }
            Part::Session => match kind {
                "v" => {
                    if value != "0" {
                        return Err(invalid("v=", "version is not 0"));
                    }
                    version_seen = true;
                }
                "o" => origin = Some(parse_origin(value)?),
                "s" => session_name = value.to_string(),
                "c" => session_connection = Some(parse_connection(value)?),
                "a" if parse_direction(value).is_some() => {
                    session_direction = parse_direction(value)
                }
                _ => session_lines.push(line.to_string()),
            },
        }
    }
    if !version_seen {
        return Err(SdpError::Missing("v="));
    }
    let origin = origin.ok_or(SdpError::Missing("o="))?;
    let mut media = audio.ok_or(SdpError::NoAudio)?;
    let connection = media
        .connection
        .or(session_connection)
        .ok_or(SdpError::Missing("c="))?;
    // `t=0 0` alone is what Display writes when there is nothing to keep.
    if session_lines.iter().filter(|l| l.starts_with("t=")).count() == 1
        && session_lines.iter().any(|l| l == "t=0 0")
        && !session_lines.iter().any(|l| l.starts_with("r="))
    {
        session_lines.retain(|l| l != "t=0 0");
    }
    // Display writes each line type in its RFC 4566 place; store them in that order already.
    session_lines.sort_by_key(|l| session_rank(l));
    let lines = std::mem::take(&mut media.lines);
    media.lines = lines
        .into_iter()
        .filter(|l| is_about_listed_format(l, &media.codecs))
        .collect();
    media.lines.sort_by_key(|l| media_rank(l));
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
        session_lines,
        audio_lines: media.lines,
        other_media,
        audio_index,
    })
}

/// False for an `a=rtcp-fb:<pt>` line whose payload type is not one of `codecs`: like an rtpmap
/// for a type the `m=` line does not list, it is ignored (RFC 4566 6), and it is dropped along
/// with its codec when an answer keeps fewer. True for every other line (and for `*`).
pub(super) fn is_about_listed_format(line: &str, codecs: &[Codec]) -> bool {
    let Some(rest) = line.strip_prefix("a=rtcp-fb:") else {
        return true;
    };
    match rest.split_ascii_whitespace().next().unwrap_or_default() {
        "*" => true,
        pt => pt
            .parse::<u8>()
            .is_ok_and(|pt| codecs.iter().any(|c| c.payload_type == pt)),
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
    /// Lines not modelled, verbatim.
    lines: Vec<String>,
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
            lines: Vec::new(),
        })
    }

    /// Reads `a=<value>`; an attribute not modelled is kept as `line`.
    fn attribute(&mut self, value: &str, line: &str) -> Result<(), SdpError> {
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
                codec.rtpmap = true;
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
            _ => self.lines.push(line.to_string()),
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
