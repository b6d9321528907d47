//! The WHIP resource model (RFC 9725) without an HTTP library: what a POST or PATCH asks for,
//! which status it earns, and the identifiers of the session resource it creates.
//!
//! The proxy's HTTP layer hands in the request's `Content-Type`, `If-Match` and body and maps
//! the outcome to a response: [`classify_post`] either yields a [`WhipOffer`] (go on: admission,
//! routing, [`WebRtcPeer::from_offer`](crate::WebRtcPeer::from_offer), then `201 Created` with the answer, a
//! `Location` built from a [`ResourceId`] and an [`ETag`]) or a [`WhipError`] whose
//! [`http_status`](WhipError::http_status) and [`code`](WhipError::code) make the error response.
//!
//! Decisions:
//!
//! - Media: the offer needs an `m=audio` section (port not 0) offering `opus/48000/2`. Video and
//!   data channel (`m=application`) sections are accepted and rejected in the answer with port 0
//!   (RFC 3264 6), so a browser that offers camera and microphone still gets its audio through.
//!   A second audio section is not something WHIP clients send; `rtc` answers it as it sees fit.
//! - PATCH (RFC 9725 4.3): Trickle ICE is supported and is a no-op: an ICE-lite agent learns
//!   every usable client address from the client's own connectivity checks (peer-reflexive
//!   candidates), so trickled candidates add nothing. It answers `204 No Content`. ICE restart
//!   is not supported, and since trickle is, RFC 9725 4.3.1 says such a PATCH gets `422`.
//!   `If-Match` is optional for trickle; when present it must match the session's [`ETag`] (or be
//!   `*`), else `412`. The client recovers from a lost session with a new POST.

use std::fmt;
use std::io::Cursor;

use rand::RngCore;
use rtc::sdp::SessionDescription;

/// The media type of an SDP offer or answer.
pub const SDP_CONTENT_TYPE: &str = "application/sdp";
/// The media type of a WHIP PATCH body (RFC 8840).
pub const TRICKLE_ICE_CONTENT_TYPE: &str = "application/trickle-ice-sdpfrag";
/// Largest offer accepted; a browser's audio+video offer is 5-10 KB.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;
/// Largest PATCH body accepted.
pub const MAX_PATCH_BYTES: usize = 16 * 1024;

/// Why a WHIP request is refused. Each variant maps to one HTTP status and one stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WhipError {
    /// The `Content-Type` is missing or not the one this request needs (`415`).
    #[error("content type {found:?} is not {expected}")]
    UnsupportedMediaType {
        /// What the request carried (`None`: no header).
        found: Option<String>,
        /// What it needs.
        expected: &'static str,
    },
    /// The body exceeds [`MAX_OFFER_BYTES`] or [`MAX_PATCH_BYTES`] (`413`).
    #[error("body of {len} bytes exceeds the limit of {limit}")]
    BodyTooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The body is not valid UTF-8 SDP (`400`).
    #[error("body is not valid SDP: {0}")]
    MalformedSdp(String),
    /// The offer is SDP but cannot be served: the message names what is missing (`422`).
    #[error("offer cannot be served: {0}")]
    UnsupportedOffer(MissingInOffer),
    /// A PATCH asks for an ICE restart, which is not supported (`422`, RFC 9725 4.3.1).
    #[error("ICE restart is not supported; create a new session with POST")]
    IceRestartUnsupported,
    /// `If-Match` does not match the session's ETag (`412`).
    #[error("If-Match {0:?} does not match the session")]
    PreconditionFailed(String),
}

/// What an SDP offer lacks for this gateway (the detail of [`WhipError::UnsupportedOffer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingInOffer {
    /// No `m=audio` section with a non-zero port.
    AudioSection,
    /// The audio section does not offer `opus/48000/2`.
    Opus,
    /// No `a=ice-ufrag` / `a=ice-pwd` (session or audio level).
    IceCredentials,
    /// No `a=fingerprint` (session or audio level).
    DtlsFingerprint,
}

impl fmt::Display for MissingInOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AudioSection => "no m=audio section with a non-zero port",
            Self::Opus => "the m=audio section does not offer opus/48000/2",
            Self::IceCredentials => "no a=ice-ufrag and a=ice-pwd",
            Self::DtlsFingerprint => "no a=fingerprint",
        })
    }
}

impl WhipError {
    /// The HTTP status code of the error response.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::UnsupportedMediaType { .. } => 415,
            Self::BodyTooLarge { .. } => 413,
            Self::MalformedSdp(_) => 400,
            Self::UnsupportedOffer(_) | Self::IceRestartUnsupported => 422,
            Self::PreconditionFailed(_) => 412,
        }
    }

    /// A stable machine-readable code for the response body, logs and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::MalformedSdp(_) => "malformed_sdp",
            Self::UnsupportedOffer(MissingInOffer::AudioSection) => "no_audio",
            Self::UnsupportedOffer(MissingInOffer::Opus) => "no_opus",
            Self::UnsupportedOffer(MissingInOffer::IceCredentials) => "no_ice_credentials",
            Self::UnsupportedOffer(MissingInOffer::DtlsFingerprint) => "no_fingerprint",
            Self::IceRestartUnsupported => "ice_restart_unsupported",
            Self::PreconditionFailed(_) => "precondition_failed",
        }
    }
}

/// A POST body that passed [`classify_post`]: an SDP offer this gateway can answer, parsed once
/// and handed to [`WebRtcPeer::from_offer`](crate::WebRtcPeer::from_offer) as it is.
#[derive(Debug, Clone)]
pub struct WhipOffer {
    sdp: String,
    /// `sdp` parsed, its data channel sections already refused (see [`reject_data_channels`]).
    description: SessionDescription,
    remote_ufrag: String,
    opus_payload_type: u8,
    telephone_event_payload_type: Option<u8>,
    rejected_sections: usize,
}

impl WhipOffer {
    /// The offer, as received.
    pub fn sdp(&self) -> &str {
        &self.sdp
    }

    /// The offer as `rtc` is to answer it: parsed, with every `m=application` section set to
    /// port 0 and out of the BUNDLE group.
    pub(crate) fn description(&self) -> &SessionDescription {
        &self.description
    }

    /// The client's ICE ufrag (audio section, else session level).
    pub fn remote_ufrag(&self) -> &str {
        &self.remote_ufrag
    }

    /// The offer's payload type for `opus/48000/2`.
    pub fn opus_payload_type(&self) -> u8 {
        self.opus_payload_type
    }

    /// The offer's payload type for `telephone-event/48000`, if offered.
    pub fn telephone_event_payload_type(&self) -> Option<u8> {
        self.telephone_event_payload_type
    }

    /// How many `m=` sections there are besides the audio one used (video, data channels).
    pub fn rejected_sections(&self) -> usize {
        self.rejected_sections
    }
}

impl PartialEq for WhipOffer {
    fn eq(&self, other: &Self) -> bool {
        // `description` is a function of `sdp` (and `rtc`'s type has no PartialEq).
        self.sdp == other.sdp
    }
}

impl Eq for WhipOffer {}

/// Classifies a WHIP POST from its `Content-Type` header and body.
pub fn classify_post(content_type: Option<&str>, body: &[u8]) -> Result<WhipOffer, WhipError> {
    check_content_type(content_type, SDP_CONTENT_TYPE)?;
    check_len(body, MAX_OFFER_BYTES)?;
    let text = std::str::from_utf8(body)
        .map_err(|_| WhipError::MalformedSdp("body is not UTF-8".to_owned()))?;
    inspect_offer(text)
}

/// The checks of [`classify_post`] on an offer without its HTTP envelope. The one place a WHIP
/// offer is parsed (with `rtc`'s SDP parser, the one that answers it).
pub fn inspect_offer(text: &str) -> Result<WhipOffer, WhipError> {
    let mut parsed = SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
        .map_err(|err| WhipError::MalformedSdp(err.to_string()))?;
    if parsed.media_descriptions.is_empty() {
        return Err(WhipError::UnsupportedOffer(MissingInOffer::AudioSection));
    }
    let audio_index = parsed
        .media_descriptions
        .iter()
        .position(|m| m.media_name.media == "audio" && m.media_name.port.value != 0)
        .ok_or(WhipError::UnsupportedOffer(MissingInOffer::AudioSection))?;
    let audio = &parsed.media_descriptions[audio_index];
    let codecs = audio.codecs();
    let offered = |name: &str, rate: u32, channels: &[&str]| {
        let mut pts: Vec<u8> = audio
            .media_name
            .formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok())
            .filter(|pt| {
                codecs.get(pt).is_some_and(|c| {
                    c.name.eq_ignore_ascii_case(name)
                        && c.clock_rate == rate
                        && channels.contains(&c.encoding_parameters.as_str())
                })
            })
            .collect();
        // m= order is the offerer's preference.
        pts.truncate(1);
        pts.first().copied()
    };
    let opus_payload_type =
        offered("opus", 48000, &["2"]).ok_or(WhipError::UnsupportedOffer(MissingInOffer::Opus))?;
    let telephone_event_payload_type = offered("telephone-event", 48000, &["", "1"]);

    let value = |key: &str| {
        audio
            .attribute(key)
            .flatten()
            .or_else(|| parsed.attribute(key).map(String::as_str))
            .filter(|v| !v.is_empty())
    };
    let (Some(remote_ufrag), Some(_)) = (value("ice-ufrag"), value("ice-pwd")) else {
        return Err(WhipError::UnsupportedOffer(MissingInOffer::IceCredentials));
    };
    let has = |key: &str| parsed.has_attribute(key) || audio.has_attribute(key);
    if !has("fingerprint") {
        return Err(WhipError::UnsupportedOffer(MissingInOffer::DtlsFingerprint));
    }
    let remote_ufrag = remote_ufrag.to_owned();
    let rejected_sections = parsed.media_descriptions.len() - 1;
    reject_data_channels(&mut parsed);
    Ok(WhipOffer {
        sdp: text.to_owned(),
        description: parsed,
        remote_ufrag,
        opus_payload_type,
        telephone_event_payload_type,
        rejected_sections,
    })
}

/// Sets every `m=application` section of `offer` to port 0 and drops its mid from the BUNDLE
/// group, so that `rtc` (which would accept a data channel) answers it with port 0 too
/// (RFC 3264 6; video it refuses by itself, having no video codec).
fn reject_data_channels(offer: &mut SessionDescription) {
    let mut rejected_mids = Vec::new();
    for media in &mut offer.media_descriptions {
        if media.media_name.media == "application" {
            media.media_name.port.value = 0;
            media.media_name.port.range = None;
            if let Some(Some(mid)) = media.attribute("mid") {
                rejected_mids.push(mid.to_owned());
            }
        }
    }
    if rejected_mids.is_empty() {
        return;
    }
    for attribute in &mut offer.attributes {
        let Some(value) = attribute.value.as_mut() else {
            continue;
        };
        if attribute.key != "group" || !value.starts_with("BUNDLE") {
            continue;
        }
        let kept: Vec<&str> = value
            .split_whitespace()
            .skip(1)
            .filter(|mid| !rejected_mids.iter().any(|r| r == mid))
            .collect();
        *value = std::iter::once("BUNDLE")
            .chain(kept)
            .collect::<Vec<_>>()
            .join(" ");
    }
}

/// What an accepted PATCH does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PatchOutcome {
    /// Trickled candidates (or an end-of-candidates): nothing to apply, answer `204 No Content`.
    TrickleAccepted {
        /// How many `a=candidate` lines the fragment carried.
        candidates: usize,
    },
}

/// Classifies a WHIP PATCH on a session whose ETag is `etag` and whose client ICE ufrag (from
/// its offer) is `remote_ufrag`.
///
/// A fragment carrying an `a=ice-ufrag` other than `remote_ufrag` is an ICE restart (refused);
/// anything else is trickle (accepted, a no-op; see the module doc).
pub fn classify_patch(
    content_type: Option<&str>,
    if_match: Option<&str>,
    etag: &ETag,
    remote_ufrag: &str,
    body: &[u8],
) -> Result<PatchOutcome, WhipError> {
    check_content_type(content_type, TRICKLE_ICE_CONTENT_TYPE)?;
    check_len(body, MAX_PATCH_BYTES)?;
    let text = std::str::from_utf8(body)
        .map_err(|_| WhipError::MalformedSdp("body is not UTF-8".to_owned()))?;
    let mut candidates = 0;
    let mut ufrag = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let Some((kind, value)) = line.split_once('=') else {
            return Err(WhipError::MalformedSdp(format!(
                "fragment line {line:?} is not <type>=<value>"
            )));
        };
        if kind.len() != 1 {
            return Err(WhipError::MalformedSdp(format!(
                "fragment line {line:?} has no one-letter type"
            )));
        }
        if let Some(u) = value.strip_prefix("ice-ufrag:") {
            ufrag = Some(u.trim());
        } else if value.starts_with("candidate:") {
            candidates += 1;
        }
    }
    // A restart MUST carry If-Match: * (RFC 9725 4.3.2); refuse it before judging If-Match.
    if ufrag.is_some_and(|u| u != remote_ufrag) {
        return Err(WhipError::IceRestartUnsupported);
    }
    if let Some(value) = if_match
        && !etag.matches(value)
    {
        return Err(WhipError::PreconditionFailed(value.to_owned()));
    }
    Ok(PatchOutcome::TrickleAccepted { candidates })
}

fn check_content_type(found: Option<&str>, expected: &'static str) -> Result<(), WhipError> {
    let matches = found.is_some_and(|value| {
        let media_type = value.split(';').next().unwrap_or(value).trim();
        media_type.eq_ignore_ascii_case(expected)
    });
    if matches {
        Ok(())
    } else {
        Err(WhipError::UnsupportedMediaType {
            found: found.map(str::to_owned),
            expected,
        })
    }
}

fn check_len(body: &[u8], limit: usize) -> Result<(), WhipError> {
    if body.len() > limit {
        return Err(WhipError::BodyTooLarge {
            len: body.len(),
            limit,
        });
    }
    Ok(())
}

/// The id of a WHIP session resource: 128 random bits as 32 lowercase hex digits, safe in a URL
/// path and unguessable (the `Location` is the only credential for PATCH and DELETE besides
/// the bearer token).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(String);

impl ResourceId {
    /// A fresh id from `rng`: pass an OS-backed generator in production
    /// (`rand::rngs::StdRng::from_os_rng()` or `rand::rngs::OsRng.unwrap_err()`), a seeded one in tests.
    pub fn random(rng: &mut impl RngCore) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        Self(hex(&bytes))
    }

    /// Parses an id from a request path segment: exactly 32 lowercase hex digits.
    pub fn parse(segment: &str) -> Option<Self> {
        let valid = segment.len() == 32
            && segment
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| Self(segment.to_owned()))
    }

    /// The id as it appears in the `Location` path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The entity tag of a WHIP session's ICE session (RFC 9725 4.3): a strong, quoted, random tag,
/// sent in the `ETag` header of the `201` and checked against `If-Match` on PATCH.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ETag(String);

impl ETag {
    /// A fresh tag of 64 random bits from `rng`.
    pub fn random(rng: &mut impl RngCore) -> Self {
        let mut bytes = [0u8; 8];
        rng.fill_bytes(&mut bytes);
        Self(format!("\"{}\"", hex(&bytes)))
    }

    /// The header value, quotes included.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether an `If-Match` value selects this tag: `*`, or a comma-separated list containing
    /// it (strong comparison, RFC 9110 13.1.1; a weak `W/` tag never matches).
    pub fn matches(&self, if_match: &str) -> bool {
        let if_match = if_match.trim();
        if_match == "*" || if_match.split(',').any(|tag| tag.trim() == self.0)
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xF)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    /// A browser-like audio+video offer (Chrome's shape, trimmed).
    const BROWSER_OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=msid-semantic: WMS\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\n\
a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=sendrecv\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\n\
a=rtpmap:126 telephone-event/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\n\
a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\n\
a=mid:1\r\n\
a=sendrecv\r\n\
a=rtcp-mux\r\n\
a=rtpmap:96 VP8/90000\r\n";

    #[test]
    fn browser_offer_is_accepted_and_video_rejected() {
        let offer = classify_post(
            Some("application/sdp; charset=utf-8"),
            BROWSER_OFFER.as_bytes(),
        )
        .unwrap();
        assert_eq!(offer.opus_payload_type(), 111);
        // telephone-event/8000 is not the 48 kHz one the Opus clock needs.
        assert_eq!(offer.telephone_event_payload_type(), None);
        assert_eq!(offer.rejected_sections(), 1);
        assert_eq!(offer.sdp(), BROWSER_OFFER);

        let with_dtmf =
            BROWSER_OFFER.replace("126 telephone-event/8000", "126 telephone-event/48000");
        let offer = classify_post(Some("application/sdp"), with_dtmf.as_bytes()).unwrap();
        assert_eq!(offer.telephone_event_payload_type(), Some(126));
    }

    #[test]
    fn data_channels_are_refused_in_the_parsed_offer() {
        let with_data = format!(
            "{}m=application 9/2 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\na=sctp-port:5000\r\n",
            BROWSER_OFFER.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2")
        );
        let offer = inspect_offer(&with_data).unwrap();
        assert_eq!(offer.rejected_sections(), 2);
        assert_eq!(offer.sdp(), with_data, "the text stays as received");
        let answerable = offer.description().marshal();
        assert!(
            answerable.contains("a=group:BUNDLE 0 1\r\n"),
            "{answerable}"
        );
        assert!(
            answerable.contains("m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\n"),
            "{answerable}"
        );
        assert!(answerable.contains("m=audio 9 UDP/TLS/RTP/SAVPF 111 63 126\r\n"));
        // Without a data channel, nothing is changed.
        let plain = inspect_offer(BROWSER_OFFER)
            .unwrap()
            .description()
            .marshal();
        assert!(plain.contains("a=group:BUNDLE 0 1\r\n"), "{plain}");
    }

    #[test]
    fn wrong_content_type_is_415() {
        for ct in [None, Some("text/plain"), Some("application/sdpx")] {
            let err = classify_post(ct, BROWSER_OFFER.as_bytes()).unwrap_err();
            assert_eq!(err.http_status(), 415, "{ct:?}");
            assert_eq!(err.code(), "unsupported_media_type");
        }
        assert!(classify_post(Some("Application/SDP"), BROWSER_OFFER.as_bytes()).is_ok());
    }

    #[test]
    fn garbage_is_400_and_oversize_is_413() {
        for body in [&b"hello"[..], b"\xff\xfe", b"v=0\r\nm=audio\r\n"] {
            let err = classify_post(Some(SDP_CONTENT_TYPE), body).unwrap_err();
            assert_eq!(err.http_status(), 400, "{body:?}: {err}");
            assert_eq!(err.code(), "malformed_sdp");
        }
        let big = vec![b'a'; MAX_OFFER_BYTES + 1];
        let err = classify_post(Some(SDP_CONTENT_TYPE), &big).unwrap_err();
        assert_eq!((err.http_status(), err.code()), (413, "body_too_large"));
    }

    #[test]
    fn offers_without_audio_or_opus_are_422_naming_what_is_missing() {
        let video_only = BROWSER_OFFER.replace("m=audio 9", "m=audio 0");
        let err = classify_post(Some(SDP_CONTENT_TYPE), video_only.as_bytes()).unwrap_err();
        assert_eq!((err.http_status(), err.code()), (422, "no_audio"));
        assert!(err.to_string().contains("m=audio"), "{err}");

        let no_opus = BROWSER_OFFER.replace("opus/48000/2", "PCMU/8000");
        let err = classify_post(Some(SDP_CONTENT_TYPE), no_opus.as_bytes()).unwrap_err();
        assert_eq!((err.http_status(), err.code()), (422, "no_opus"));
        assert!(err.to_string().contains("opus/48000/2"), "{err}");

        let no_fp = BROWSER_OFFER
            .lines()
            .filter(|l| !l.starts_with("a=fingerprint"))
            .map(|l| format!("{l}\r\n"))
            .collect::<String>();
        let err = classify_post(Some(SDP_CONTENT_TYPE), no_fp.as_bytes()).unwrap_err();
        assert_eq!((err.http_status(), err.code()), (422, "no_fingerprint"));
    }

    #[test]
    fn resource_ids_are_128_bit_url_safe_and_seeded() {
        let mut rng = StdRng::seed_from_u64(42);
        let a = ResourceId::random(&mut rng);
        let b = ResourceId::random(&mut rng);
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert_eq!(ResourceId::parse(a.as_str()), Some(a.clone()));
        assert_eq!(ResourceId::random(&mut StdRng::seed_from_u64(42)), a);
        assert_eq!(ResourceId::parse("../etc/passwd"), None);
        assert_eq!(ResourceId::parse(&a.as_str().to_uppercase()), None);
    }

    #[test]
    fn etag_matching() {
        let etag = ETag::random(&mut StdRng::seed_from_u64(1));
        assert!(etag.as_str().starts_with('"') && etag.as_str().ends_with('"'));
        assert!(etag.matches("*"));
        assert!(etag.matches(etag.as_str()));
        assert!(etag.matches(&format!("\"x\", {etag}")));
        assert!(!etag.matches("\"other\""));
        assert!(!etag.matches(&format!("W/{etag}")));
    }

    #[test]
    fn patch_trickle_is_accepted_restart_is_422() {
        let etag = ETag::random(&mut StdRng::seed_from_u64(1));
        let trickle = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host\r\na=end-of-candidates\r\n";
        let outcome = classify_patch(
            Some(TRICKLE_ICE_CONTENT_TYPE),
            Some(etag.as_str()),
            &etag,
            "abcd",
            trickle.as_bytes(),
        )
        .unwrap();
        assert_eq!(outcome, PatchOutcome::TrickleAccepted { candidates: 1 });
        // If-Match is optional for trickle, but must match when present.
        assert!(
            classify_patch(
                Some(TRICKLE_ICE_CONTENT_TYPE),
                None,
                &etag,
                "abcd",
                trickle.as_bytes()
            )
            .is_ok()
        );
        let err = classify_patch(
            Some(TRICKLE_ICE_CONTENT_TYPE),
            Some("\"stale\""),
            &etag,
            "abcd",
            trickle.as_bytes(),
        )
        .unwrap_err();
        assert_eq!(
            (err.http_status(), err.code()),
            (412, "precondition_failed")
        );

        let restart = trickle.replace("ice-ufrag:abcd", "ice-ufrag:new1");
        let err = classify_patch(
            Some(TRICKLE_ICE_CONTENT_TYPE),
            Some("*"),
            &etag,
            "abcd",
            restart.as_bytes(),
        )
        .unwrap_err();
        assert_eq!(
            (err.http_status(), err.code()),
            (422, "ice_restart_unsupported")
        );

        let err = classify_patch(
            Some(SDP_CONTENT_TYPE),
            None,
            &etag,
            "abcd",
            trickle.as_bytes(),
        )
        .unwrap_err();
        assert_eq!(err.http_status(), 415);
        let err = classify_patch(
            Some(TRICKLE_ICE_CONTENT_TYPE),
            None,
            &etag,
            "abcd",
            b"not a fragment",
        )
        .unwrap_err();
        assert_eq!(err.http_status(), 400);
    }

    proptest! {
        #[test]
        fn classify_never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = classify_post(Some(SDP_CONTENT_TYPE), &body);
            let etag = ETag::random(&mut StdRng::seed_from_u64(1));
            let _ = classify_patch(Some(TRICKLE_ICE_CONTENT_TYPE), Some("*"), &etag, "abcd", &body);
        }

        #[test]
        fn classify_never_panics_on_damaged_offers(
            cut in 0..BROWSER_OFFER.len(),
            junk in "[a-z=:/ 0-9\r\n]{0,40}",
        ) {
            let mut offer = BROWSER_OFFER.as_bytes()[..cut].to_vec();
            offer.extend_from_slice(junk.as_bytes());
            offer.extend_from_slice(&BROWSER_OFFER.as_bytes()[cut..]);
            let _ = classify_post(Some(SDP_CONTENT_TYPE), &offer);
        }
    }
}
