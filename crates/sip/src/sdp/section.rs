//! The SDP kept verbatim: media sections besides the audio one, and where kept lines go.

use std::fmt;

use super::{SdpError, invalid};

/// A media section voxgate does not use (video, a data channel, a second audio section...),
/// kept verbatim: its `m=` line and every line after it up to the next `m=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherMedia {
    /// The `m=` value as received, e.g. `video 49172 RTP/AVP 96`.
    media_line: String,
    /// The port of `media_line` (without a `/<count>` suffix).
    port: u16,
    /// The section's other lines, verbatim, without line ends.
    lines: Vec<String>,
}

impl OtherMedia {
    /// From the value of an `m=` line: `<media> <port>[/<count>] <proto> <fmt> ...`.
    pub(super) fn new(value: &str) -> Result<Self, SdpError> {
        let mut fields = value.split_ascii_whitespace();
        fields.next().ok_or_else(|| invalid("m=", "no media"))?;
        let port = fields.next().ok_or_else(|| invalid("m=", "no port"))?;
        let port = port.split('/').next().unwrap_or(port);
        let port = port.parse::<u16>().map_err(|_| invalid("m=", "bad port"))?;
        fields.next().ok_or_else(|| invalid("m=", "no protocol"))?;
        fields.next().ok_or_else(|| invalid("m=", "no formats"))?;
        Ok(Self {
            media_line: value.to_string(),
            port,
            lines: Vec::new(),
        })
    }

    pub(super) fn push_line(&mut self, line: &str) {
        self.lines.push(line.to_string());
    }

    /// The media type, e.g. `video` or `application`.
    pub fn media(&self) -> &str {
        self.field(0)
    }

    /// The port; 0 when the section is disabled.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The transport protocol, e.g. `RTP/AVP` or `UDP/DTLS/SCTP`.
    pub fn protocol(&self) -> &str {
        self.field(2)
    }

    /// The formats of the `m=` line as offered (payload types, or e.g. `webrtc-datachannel`).
    pub fn formats(&self) -> impl Iterator<Item = &str> {
        self.media_line.split_ascii_whitespace().skip(3)
    }

    /// The lines after the `m=` line (`c=`, `b=`, `a=`...), verbatim, without line ends.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// This section refused, as an answer carries it (RFC 3264 6): `m=<media> 0 <proto>
    /// <formats as offered>` and no other line.
    pub fn refused(&self) -> OtherMedia {
        let mut media_line = format!("{} 0 {}", self.media(), self.protocol());
        for format in self.formats() {
            media_line.push(' ');
            media_line.push_str(format);
        }
        Self {
            media_line,
            port: 0,
            lines: Vec::new(),
        }
    }

    fn field(&self, index: usize) -> &str {
        // `new` checked the first four fields exist.
        self.media_line
            .split_ascii_whitespace()
            .nth(index)
            .unwrap_or_default()
    }
}

impl fmt::Display for OtherMedia {
    /// The section as SDP text with CRLF line ends.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m={}\r\n", self.media_line)?;
        for line in &self.lines {
            write!(f, "{line}\r\n")?;
        }
        Ok(())
    }
}

/// Where a session-level line goes in RFC 4566's order `v o s i u e p c b t r z k a`; `v`,
/// `o`, `s` and `c` are written from the model, between these groups.
pub(super) fn session_rank(line: &str) -> u8 {
    match line.as_bytes().first() {
        Some(b'i' | b'u' | b'e' | b'p') => 0,
        // c= comes here.
        Some(b'b') => 1,
        Some(b't' | b'r') => 2,
        Some(b'z') => 3,
        Some(b'k') => 4,
        _ => 5,
    }
}

/// The session rank of `t=`/`r=` lines.
pub(super) const TIMING_RANK: u8 = 2;
/// Session ranks written before the modelled `c=` line.
pub(super) const BEFORE_CONNECTION: u8 = 0;
/// The highest session rank (attributes and unknown line types).
pub(super) const LAST_SESSION_RANK: u8 = 5;

/// Where a media-level line goes in RFC 4566's order `m i c b k a`: the modelled attributes are
/// written after `k=`, and the kept attributes after them.
pub(super) fn media_rank(line: &str) -> u8 {
    match line.as_bytes().first() {
        Some(b'i') => 0,
        Some(b'c') => 1,
        Some(b'b') => 2,
        Some(b'k') => 3,
        _ => 4,
    }
}

/// The rank at which the modelled audio attributes are written.
pub(super) const ATTRIBUTE_RANK: u8 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_section_keeps_media_protocol_and_formats() {
        let mut video = OtherMedia::new("video 49172/2 RTP/SAVPF 96  97").unwrap();
        video.push_line("a=rtpmap:96 VP8/90000");
        assert_eq!(video.port(), 49172);
        assert_eq!(video.media(), "video");
        assert_eq!(video.protocol(), "RTP/SAVPF");
        assert_eq!(video.formats().collect::<Vec<_>>(), ["96", "97"]);
        let refused = video.refused();
        assert_eq!(refused.to_string(), "m=video 0 RTP/SAVPF 96 97\r\n");
        assert_eq!(refused.port(), 0);
        assert!(refused.lines().is_empty());
    }

    #[test]
    fn malformed_m_lines_are_refused() {
        for value in [
            "",
            "video",
            "video x RTP/AVP 96",
            "video 9 RTP/AVP",
            "video 70000 a b",
        ] {
            assert!(OtherMedia::new(value).is_err(), "{value:?}");
        }
    }
}
