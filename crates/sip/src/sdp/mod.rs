//! SDP (RFC 4566) parsing and building around one audio section, and RFC 3264 offer/answer for
//! PCMU, PCMA, Opus and telephone-event.
//!
//! A small hand parser rather than webrtc-rs's `sdp` crate: voxgate needs a dozen fields of one
//! audio section (rtpmap, fmtp, ptime, direction, rtcp, rtcp-mux), which would still have to be
//! dug out of that crate's generic attribute lists, and a parser this size is easy to keep
//! panic-free under proptest and cargo-fuzz.
//!
//! [`AudioSdp`] models the first `m=audio` section and keeps the rest of the body without
//! modelling it, so that what it parses it writes back in place:
//!
//! - every other media section (video, data channels, a second audio section) as an
//!   [`OtherMedia`]: its `m=` line and all its lines verbatim, in the body's order
//!   ([`AudioSdp::other_media`], [`AudioSdp::audio_index`]);
//! - the audio section's lines it does not model (`b=`, `a=mid`, `a=rtcp-fb`, `a=ssrc`...) in
//!   [`AudioSdp::audio_lines`], and session-level ones (`b=`, `t=`, `a=group`, `a=ice-ufrag`...)
//!   in [`AudioSdp::session_lines`]. Each is written back in its RFC 4566 place; among the
//!   attributes, the kept ones follow the modelled ones.
//!
//! An answer carries every offered section, in order, the ones voxgate does not take refused
//! with port 0 (RFC 3264 6): [`AudioSdp::answer`] does it, and a B2BUA relaying another party's
//! answer calls [`AudioSdp::answer_sections_of`]. An offer voxgate makes itself
//! ([`AudioSdp::offer`], [`AudioSdp::without_other_sections`]) has the audio section only.
//! SRTP is not supported: [`AudioSdp::is_secure`] tells such offers apart, and
//! [`AudioSdp::answer`] refuses them.

mod codec;
mod parse;
mod section;

use std::fmt;
use std::net::IpAddr;

pub use codec::{Codec, CodecKind};
pub use section::OtherMedia;

use section::{ATTRIBUTE_RANK, BEFORE_CONNECTION, TIMING_RANK, media_rank, session_rank};

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
    /// The offered audio is SRTP ([`AudioSdp::is_secure`]), which voxgate cannot answer: 488.
    #[error("the offered audio profile {0} needs SRTP, which is not supported")]
    SecureProfile(String),
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

/// A session description around one audio section: the session lines, the audio section voxgate
/// uses, and everything else of the body kept verbatim (see the module doc).
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
    /// Session-level lines not modelled above, verbatim without line ends (`i=`, `b=`, `t=`
    /// and `r=` unless the timing is the plain `t=0 0` written by default, `a=group:BUNDLE`,
    /// `a=ice-ufrag`, ...). Not kept: `v=`, `o=`, `s=`, `c=` and a session-level direction,
    /// which are in the fields above.
    pub session_lines: Vec<String>,
    /// The audio section's lines not modelled above, verbatim without line ends (`b=`,
    /// `a=mid`, `a=rtcp-fb`, `a=ssrc`, `a=maxptime`, ...). An `a=rtcp-fb` for a payload type
    /// not in [`codecs`](Self::codecs) is not written.
    pub audio_lines: Vec<String>,
    /// The media sections other than the audio one, in the body's order.
    pub other_media: Vec<OtherMedia>,
    /// The audio section's place among the media sections: `other_media[..audio_index]` come
    /// before it, the rest after (an index past the end means last).
    pub audio_index: usize,
}

impl AudioSdp {
    /// An offer for `codecs` (in preference order): sendrecv, 20 ms, RTP/AVP, no rtcp-mux, the
    /// audio section only.
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
            session_lines: Vec::new(),
            audio_lines: Vec::new(),
            other_media: Vec::new(),
            audio_index: 0,
        }
    }

    /// The RFC 3264 answer to `offer`: the first offered codec whose kind is in `supported`,
    /// plus the offered telephone-event (same payload type) when both sides have it; direction
    /// mirrored; rtcp-mux accepted when offered; the offer's ptime and protocol; every other
    /// offered media section refused with port 0, in the offer's order
    /// ([`answer_sections_of`](Self::answer_sections_of)).
    ///
    /// Fails with [`SdpError::StreamDisabled`] when the offered audio has port 0, then with
    /// [`SdpError::SecureProfile`] when it is SRTP ([`is_secure`](Self::is_secure)).
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
        if offer.is_secure() {
            return Err(SdpError::SecureProfile(offer.protocol.clone()));
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
        let mut answer = AudioSdp {
            protocol: offer.protocol.clone(),
            ptime: offer.ptime,
            direction: offer.direction.mirrored(),
            rtcp_mux: offer.rtcp_mux,
            ..AudioSdp::offer(local_ip, local_port, codecs, session_id)
        };
        answer.answer_sections_of(offer);
        Ok(answer)
    }

    /// An answer that declines the offered audio stream (port 0, the offer's payload types),
    /// and every other offered section too, in the offer's order.
    pub fn rejection(offer: &AudioSdp, local_ip: IpAddr, session_id: u64) -> AudioSdp {
        let mut rejection = AudioSdp {
            protocol: offer.protocol.clone(),
            ptime: None,
            direction: offer.direction.mirrored(),
            ..AudioSdp::offer(local_ip, 0, offer.codecs.clone(), session_id)
        };
        rejection.answer_sections_of(offer);
        rejection
    }

    /// Parses an SDP body: the first `m=audio` section into the fields, the rest kept verbatim
    /// (module doc). Never panics; a body it accepts, [`Display`](fmt::Display) writes back in
    /// a form it accepts again.
    pub fn parse(text: &str) -> Result<AudioSdp, SdpError> {
        parse::parse(text)
    }

    /// The payload type of telephone-event, if present.
    pub fn telephone_event(&self) -> Option<&Codec> {
        self.codecs
            .iter()
            .find(|c| c.kind == CodecKind::TelephoneEvent)
    }

    /// Whether the audio section's protocol is an SRTP profile: `RTP/SAVP`, `RTP/SAVPF`,
    /// `UDP/TLS/RTP/SAVP`, `UDP/TLS/RTP/SAVPF` (any profile whose last part is `SAVP` or
    /// `SAVPF`), in any case. voxgate has no SRTP on its SIP legs, so a B2BUA answers such an
    /// offer with 488 Not Acceptable Here; answering it with plain RTP would be an answer the
    /// offerer must reject (RFC 3264 6: the answer's protocol is the offer's).
    pub fn is_secure(&self) -> bool {
        let profile = self.protocol.rsplit('/').next().unwrap_or_default();
        profile.eq_ignore_ascii_case("SAVP") || profile.eq_ignore_ascii_case("SAVPF")
    }

    /// Gives this answer exactly the media sections of `offer`, in the offer's order (RFC 3264
    /// 6: an answer has one section per offered section, in the same order).
    ///
    /// For a B2BUA: `self` is the answer made from the other party's answer (to an audio-only
    /// offer) and already rewritten to our address. Afterwards it has its audio section where
    /// `offer` has its audio section, and every other section of `offer` refused as
    /// `m=<media> 0 <proto> <formats as offered>` with no other line. Sections `self` had
    /// besides its audio are dropped. Only the media sections change: the audio section and the
    /// session lines stay as they are.
    pub fn answer_sections_of(&mut self, offer: &AudioSdp) {
        self.other_media = offer.other_media.iter().map(OtherMedia::refused).collect();
        self.audio_index = offer.audio_index.min(self.other_media.len());
    }

    /// This description with its audio section only: what to offer a far side that is to get
    /// just audio. The other media sections are dropped, and so are session-level
    /// `a=group:` lines (they name sections by `a=mid`, and a group of the audio alone says
    /// nothing); other session and audio lines are kept.
    pub fn without_other_sections(&self) -> AudioSdp {
        let mut audio = self.clone();
        audio.other_media.clear();
        audio.audio_index = 0;
        audio.session_lines.retain(|l| !l.starts_with("a=group:"));
        audio
    }

    /// Writes the audio section.
    fn write_audio(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m=audio {} {}", self.port, self.protocol)?;
        if self.codecs.is_empty() {
            // An m= line needs a format; a disabled stream with nothing to list names PCMU.
            write!(f, " 0")?;
        }
        for codec in &self.codecs {
            write!(f, " {}", codec.payload_type)?;
        }
        write!(f, "\r\n")?;
        let kept = |below_attributes: bool| {
            self.audio_lines.iter().filter(move |l| {
                (media_rank(l) < ATTRIBUTE_RANK) == below_attributes
                    && parse::is_about_listed_format(l, &self.codecs)
            })
        };
        for line in kept(true) {
            write!(f, "{line}\r\n")?;
        }
        for codec in &self.codecs {
            if codec.rtpmap {
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
            }
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
        write!(f, "a={}\r\n", self.direction.attribute())?;
        for line in kept(false) {
            write!(f, "{line}\r\n")?;
        }
        Ok(())
    }
}

impl fmt::Display for AudioSdp {
    /// RFC 4566 text with CRLF line ends: the session lines, then every media section in order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let session = |rank: u8| {
            self.session_lines
                .iter()
                .filter(move |l| session_rank(l) == rank)
        };
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
        for line in session(BEFORE_CONNECTION) {
            write!(f, "{line}\r\n")?;
        }
        write!(
            f,
            "c=IN {} {}\r\n",
            ip_kind(self.connection),
            self.connection
        )?;
        for rank in BEFORE_CONNECTION + 1..=section::LAST_SESSION_RANK {
            if rank == TIMING_RANK && !self.session_lines.iter().any(|l| l.starts_with("t=")) {
                write!(f, "t=0 0\r\n")?;
            }
            for line in session(rank) {
                write!(f, "{line}\r\n")?;
            }
        }
        let audio_index = self.audio_index.min(self.other_media.len());
        for (index, media) in self.other_media.iter().enumerate() {
            if index == audio_index {
                self.write_audio(f)?;
            }
            write!(f, "{media}")?;
        }
        if audio_index == self.other_media.len() {
            self.write_audio(f)?;
        }
        Ok(())
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

    /// Video first, then audio with attributes voxgate does not model, then a data channel.
    const AV_OFFER: &str = "v=0\r\n\
        o=- 7 7 IN IP4 192.0.2.1\r\n\
        s=-\r\n\
        b=AS:256\r\n\
        t=0 0\r\n\
        a=group:BUNDLE 0 1 2\r\n\
        m=video 5002 RTP/AVP 96 97\r\n\
        c=IN IP4 192.0.2.1\r\n\
        a=rtpmap:96 H264/90000\r\n\
        a=mid:0\r\n\
        m=audio 5000 RTP/AVP 0 13 101\r\n\
        c=IN IP4 192.0.2.1\r\n\
        b=AS:64\r\n\
        a=mid:1\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=rtcp-fb:101 nack\r\n\
        a=maxptime:40\r\n\
        a=sendrecv\r\n\
        m=application 5004 UDP/DTLS/SCTP webrtc-datachannel\r\n\
        a=mid:2\r\n";

    fn local() -> IpAddr {
        "203.0.113.5".parse().unwrap()
    }

    #[test]
    fn audio_section_is_found_after_video_and_the_rest_is_kept() {
        let sdp = AudioSdp::parse(AV_OFFER).unwrap();
        assert_eq!(sdp.port, 5000);
        assert_eq!(sdp.audio_index, 1);
        let media: Vec<&str> = sdp.other_media.iter().map(OtherMedia::media).collect();
        assert_eq!(media, ["video", "application"]);
        assert_eq!(sdp.other_media[0].lines()[1], "a=rtpmap:96 H264/90000");
        assert_eq!(
            sdp.audio_lines,
            ["b=AS:64", "a=mid:1", "a=rtcp-fb:101 nack", "a=maxptime:40"]
        );
        assert_eq!(sdp.session_lines, ["b=AS:256", "a=group:BUNDLE 0 1 2"]);
        let text = sdp.to_string();
        let m_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(m_lines.len(), 3);
        assert!(m_lines[1].starts_with("m=audio 5000"));
        // RFC 4566 order: b= before t=, media b= before the attributes.
        assert!(text.contains("c=IN IP4 192.0.2.1\r\nb=AS:256\r\nt=0 0\r\na=group"));
        assert!(text.contains("m=audio 5000 RTP/AVP 0 13 101\r\nb=AS:64\r\na=rtpmap:101"));
        assert_eq!(AudioSdp::parse(&text).unwrap(), sdp);
    }

    #[test]
    fn static_payload_type_without_rtpmap_is_written_without() {
        let sdp = AudioSdp::parse(AV_OFFER).unwrap();
        let cn = &sdp.codecs[1];
        assert_eq!((cn.payload_type, cn.rtpmap), (13, false));
        let text = sdp.to_string();
        assert!(!text.contains("a=rtpmap:13"), "{text}");
        assert!(!text.contains("a=rtpmap:0 "), "{text}");
        let with_map = AV_OFFER.replace("a=mid:1\r\n", "a=mid:1\r\na=rtpmap:0 PCMU/8000\r\n");
        let text = AudioSdp::parse(&with_map).unwrap().to_string();
        assert!(text.contains("a=rtpmap:0 PCMU/8000\r\n"), "{text}");
        let rejection = AudioSdp::rejection(&sdp, local(), 1).to_string();
        assert!(!rejection.contains("a=rtpmap:13"), "{rejection}");
    }

    #[test]
    fn answer_refuses_the_other_sections_in_place() {
        let offer = AudioSdp::parse(AV_OFFER).unwrap();
        let supported = [CodecKind::Pcmu, CodecKind::TelephoneEvent];
        let answer = AudioSdp::answer(&offer, &supported, local(), 30000, 1).unwrap();
        let text = answer.to_string();
        let m_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m_lines,
            [
                "m=video 0 RTP/AVP 96 97",
                "m=audio 30000 RTP/AVP 0 101",
                "m=application 0 UDP/DTLS/SCTP webrtc-datachannel"
            ]
        );
        assert!(
            !text.contains("a=mid"),
            "answer lines are voxgate's own: {text}"
        );
        assert!(!text.contains("a=rtcp-fb"), "{text}");
        let reparsed = AudioSdp::parse(&text).unwrap();
        assert_eq!(reparsed, answer);
    }

    #[test]
    fn answer_sections_of_follows_the_offer_and_drops_extras() {
        let offer = AudioSdp::parse(AV_OFFER).unwrap();
        // The far side answered an audio-only offer with a section of its own.
        let far = "v=0\r\no=- 1 1 IN IP4 198.51.100.9\r\ns=-\r\nc=IN IP4 198.51.100.9\r\nt=0 0\r\n\
            m=audio 7000 RTP/AVP 0\r\nm=video 7002 RTP/AVP 31\r\n";
        let mut answer = AudioSdp::parse(far).unwrap();
        answer.connection = local();
        answer.answer_sections_of(&offer);
        assert_eq!(answer.audio_index, 1);
        let ports: Vec<u16> = answer.other_media.iter().map(OtherMedia::port).collect();
        assert_eq!(ports, [0, 0]);
        assert_eq!(
            answer.other_media[0].to_string(),
            "m=video 0 RTP/AVP 96 97\r\n"
        );
        // Audio-only offer: the answer is audio-only too.
        answer.answer_sections_of(&offer.without_other_sections());
        assert!(answer.other_media.is_empty());
        assert_eq!(answer.audio_index, 0);
    }

    #[test]
    fn without_other_sections_keeps_the_audio_only() {
        let sdp = AudioSdp::parse(AV_OFFER).unwrap();
        let audio = sdp.without_other_sections();
        let text = audio.to_string();
        assert_eq!(text.matches("m=").count(), 1);
        assert!(!text.contains("a=group"), "{text}");
        assert!(text.contains("a=mid:1\r\n"), "{text}");
        let fresh = AudioSdp::offer(local(), 4000, vec![Codec::pcmu()], 1);
        assert_eq!(fresh.without_other_sections(), fresh);
        assert_eq!(fresh.to_string().matches("m=").count(), 1);
    }

    #[test]
    fn srtp_profiles_are_secure_and_not_answered() {
        let mut sdp = AudioSdp::parse(OFFER).unwrap();
        assert!(!sdp.is_secure());
        for protocol in [
            "RTP/SAVP",
            "RTP/SAVPF",
            "UDP/TLS/RTP/SAVP",
            "UDP/TLS/RTP/SAVPF",
            "rtp/savp",
        ] {
            sdp.protocol = protocol.into();
            assert!(sdp.is_secure(), "{protocol}");
            assert_eq!(
                AudioSdp::answer(&sdp, &[CodecKind::Pcmu], local(), 1, 1),
                Err(SdpError::SecureProfile(protocol.into()))
            );
        }
        for protocol in ["RTP/AVP", "RTP/AVPF", "UDP/TLS/RTP/AVPF", "SAVP-ish"] {
            sdp.protocol = protocol.into();
            assert!(!sdp.is_secure(), "{protocol}");
        }
    }

    #[test]
    fn timing_other_than_the_default_is_kept() {
        let text = OFFER.replace("t=0 0", "t=3034423619 3042462419\r\nr=7d 1h 0 25h");
        let sdp = AudioSdp::parse(&text).unwrap();
        assert_eq!(
            sdp.session_lines,
            ["t=3034423619 3042462419", "r=7d 1h 0 25h"]
        );
        let written = sdp.to_string();
        assert!(!written.contains("t=0 0"), "{written}");
        assert_eq!(AudioSdp::parse(&written).unwrap(), sdp);
        assert!(AudioSdp::parse(OFFER).unwrap().session_lines.is_empty());
    }
}
