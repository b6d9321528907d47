//! Bounded SIP message parsing and validation on top of rsip, plus the helpers user agents need.
//!
//! rsip is lenient in some places (no compact header names, no line folding, no Content-Length
//! check, comma-joined Via values stay one header) and strict in others, so [`parse`] first
//! frames the message itself: it checks the size, splits the header block from the body, unfolds
//! continuation lines, expands compact names, splits Via lists and checks Content-Length. Only
//! that canonical text reaches rsip's tokenizer. No `catch_unwind` is used: the property tests in
//! `tests/message.rs` feed arbitrary and mutated bytes through this path.

mod encode;
mod error_response;
mod frame;

use rand::Rng;
use rsip::headers::{ToTypedHeader, UntypedHeader};
use rsip::message::HasHeaders;
use rsip::{Header, SipMessage};

pub use encode::{
    encode_request, encode_response, method_name, parse_method, reason_phrase, to_bytes,
};
pub use error_response::error_response;
use frame::is_token_char;
pub(crate) use frame::{build, frame};

/// Largest message accepted, in bytes (a UDP datagram or one framed TCP message).
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024;

/// The RFC 3261 magic cookie every compliant branch starts with.
pub const BRANCH_MAGIC: &str = "z9hG4bK";

/// Why a message was rejected by [`parse`].
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The message is longer than [`MAX_MESSAGE_SIZE`].
    #[error("message of {len} bytes exceeds the {MAX_MESSAGE_SIZE} byte limit")]
    TooLarge {
        /// Length of the rejected message.
        len: usize,
    },
    /// The start line or a header is not valid UTF-8.
    #[error("start line or headers are not valid UTF-8")]
    NotUtf8,
    /// The message is not SIP at all, or its framing is broken (no blank line after the headers,
    /// a header line without a colon, a bad start line, ...).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The start line names a SIP version other than 2.0.
    #[error("unsupported SIP version")]
    UnsupportedVersion,
    /// A well-formed request whose method this stack does not know (an extension method):
    /// RFC 3261 8.2.1 answers 501.
    #[error("unknown method {0}")]
    UnknownMethod(String),
    /// A mandatory header is absent.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A mandatory header is present but its value cannot be used.
    #[error("invalid {header} header: {reason}")]
    InvalidHeader {
        /// Canonical header name.
        header: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A header that must appear once (Call-ID, CSeq, From, To, Max-Forwards) appears twice
    /// (RFC 4475 "multi01").
    #[error("more than one {0} header")]
    DuplicateHeader(&'static str),
    /// The Request-URI scheme is not one this stack handles (`sip`, `sips`, `tel`): RFC 3261
    /// 8.2.2.1 answers 416 (RFC 4475 "unkscm", "novelsc").
    #[error("unsupported Request-URI scheme {0}")]
    UnsupportedUriScheme(String),
    /// Content-Length declares more bytes than the message carries (a truncated message).
    #[error("Content-Length {declared} but only {actual} body bytes")]
    BodyLength {
        /// The Content-Length value.
        declared: usize,
        /// Body bytes actually present.
        actual: usize,
    },
}

impl ParseError {
    /// The status code a server answers this error with, when the message was an answerable
    /// request: 513 for [`ParseError::TooLarge`], 505 for [`ParseError::UnsupportedVersion`],
    /// 501 for [`ParseError::UnknownMethod`], 416 for [`ParseError::UnsupportedUriScheme`],
    /// 400 for everything else.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => 513,
            Self::UnsupportedVersion => 505,
            Self::UnknownMethod(_) => 501,
            Self::UnsupportedUriScheme(_) => 416,
            _ => 400,
        }
    }

    /// The reason phrase of the error response: names the problem, e.g. `Missing Call-ID`.
    pub fn reason_phrase(&self) -> String {
        match self {
            Self::TooLarge { .. } => "Message Too Large".into(),
            Self::NotUtf8 => "Invalid UTF-8".into(),
            Self::Malformed(_) => "Malformed Message".into(),
            Self::UnsupportedVersion => "Version Not Supported".into(),
            Self::UnknownMethod(_) => "Not Implemented".into(),
            Self::MissingHeader(header) => format!("Missing {header}"),
            Self::InvalidHeader { header, .. } => format!("Invalid {header}"),
            Self::BodyLength { .. } => "Bad Content-Length".into(),
            Self::DuplicateHeader(header) => format!("Duplicate {header}"),
            Self::UnsupportedUriScheme(_) => "Unsupported URI Scheme".into(),
        }
    }
}

/// Parses one SIP message (a whole UDP datagram, or one framed TCP message) and validates it.
///
/// Checks, in order: size <= [`MAX_MESSAGE_SIZE`]; a blank line ends the headers; start line and
/// headers are UTF-8; SIP/2.0; Content-Length (if present) is a number not larger than the body
/// (extra bytes are dropped, RFC 3261 18.3); rsip can tokenize it; Via (with a branch for
/// requests), From, To, Call-ID and CSeq are present and parse, and a request's CSeq method is
/// its method. Max-Forwards may be absent but must be a number when present.
pub fn parse(bytes: &[u8]) -> Result<SipMessage, ParseError> {
    build(frame(bytes)?)
}

/// The Call-ID of a message, if present.
pub fn call_id<M: HasHeaders>(msg: &M) -> Option<&str> {
    msg.headers().iter().find_map(|h| match h {
        Header::CallId(c) => Some(c.value()),
        _ => None,
    })
}

/// The branch parameter of the top Via, if present.
pub fn top_branch<M: HasHeaders>(msg: &M) -> Option<String> {
    top_via_parts(msg)?.branch.map(str::to_string)
}

/// The top Via header in rsip's typed form, if present and parseable (slow: microseconds; the
/// transaction layer uses [`top_via_parts`]).
pub fn top_via<M: HasHeaders>(msg: &M) -> Option<rsip::typed::Via> {
    first_via(msg)?.typed().ok()
}

/// The parts of a Via value the transaction layer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViaParts<'a> {
    /// Transport of the sent-protocol, e.g. `UDP`.
    pub transport: &'a str,
    /// `host[:port]`.
    pub sent_by: &'a str,
    /// The branch parameter, if any.
    pub branch: Option<&'a str>,
}

impl<'a> ViaParts<'a> {
    /// Splits one via-parm (`SIP/2.0/UDP host:port;branch=...`) without rsip's typed parser,
    /// which costs microseconds per call. `None` when it is not shaped like a SIP/2.0 via-parm.
    /// RFC 3261 25.1 allows linear whitespace around the `/` of the sent-protocol
    /// (`SIP / 2.0 / UDP`, RFC 4475 "wsinv").
    pub fn parse(value: &'a str) -> Option<Self> {
        let (version, parts) = Self::parse_any_version(value)?;
        (version == "2.0").then_some(parts)
    }

    /// [`ViaParts::parse`] for any `SIP/<version>`: the version and the parts. For answering a
    /// request that names another SIP version with 505.
    pub(crate) fn parse_any_version(value: &'a str) -> Option<(&'a str, Self)> {
        fn token(s: &str) -> Option<(&str, &str)> {
            let s = s.trim_start();
            let end = s.bytes().position(|b| !is_token_char(b)).unwrap_or(s.len());
            (end > 0).then(|| s.split_at(end))
        }
        fn slash(s: &str) -> Option<&str> {
            s.trim_start().strip_prefix('/')
        }
        let (name, rest) = token(value)?;
        let (version, rest) = token(slash(rest)?)?;
        let (transport, rest) = token(slash(rest)?)?;
        if !name.eq_ignore_ascii_case("SIP") || !rest.starts_with([' ', '\t']) {
            return None;
        }
        let rest = rest.trim_start();
        let (sent_by, params) = rest.split_once(';').unwrap_or((rest, ""));
        let sent_by = sent_by.trim();
        if sent_by.is_empty() || sent_by.contains(char::is_whitespace) {
            return None;
        }
        let branch = params.split(';').find_map(|param| {
            let (key, value) = param.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("branch")
                .then(|| value.trim())
        });
        Some((
            version,
            Self {
                transport,
                sent_by,
                branch,
            },
        ))
    }
}

/// The top Via split into transport, sent-by and branch, if present and well formed.
pub fn top_via_parts<M: HasHeaders>(msg: &M) -> Option<ViaParts<'_>> {
    ViaParts::parse(first_via(msg)?.value())
}

fn first_via<M: HasHeaders>(msg: &M) -> Option<&rsip::headers::Via> {
    msg.headers().iter().find_map(|h| match h {
        Header::Via(v) => Some(v),
        _ => None,
    })
}

/// CSeq number and method, if present and parseable.
pub fn cseq<M: HasHeaders>(msg: &M) -> Option<(u32, rsip::Method)> {
    let cseq = msg.headers().iter().find_map(|h| match h {
        Header::CSeq(c) => Some(c),
        _ => None,
    })?;
    let (seq, method) = split_cseq(cseq.value())?;
    Some((seq, parse_method(method)?))
}

/// The Max-Forwards value, if present and numeric.
pub fn max_forwards<M: HasHeaders>(msg: &M) -> Option<u32> {
    msg.headers().iter().find_map(|h| match h {
        Header::MaxForwards(m) => m.value().trim().parse().ok(),
        _ => None,
    })
}

/// The tag parameter of the From header, if present.
pub fn from_tag<M: HasHeaders>(msg: &M) -> Option<String> {
    let from = msg.headers().iter().find_map(|h| match h {
        Header::From(f) => Some(f),
        _ => None,
    })?;
    tag_param(from.value()).map(str::to_string)
}

/// The tag parameter of the To header, if present.
pub fn to_tag<M: HasHeaders>(msg: &M) -> Option<String> {
    let to = msg.headers().iter().find_map(|h| match h {
        Header::To(t) => Some(t),
        _ => None,
    })?;
    tag_param(to.value()).map(str::to_string)
}

/// The `tag` parameter of a From/To value: the header parameters start after the `>` of a
/// name-addr, or at the first `;` of a bare addr-spec.
fn tag_param(value: &str) -> Option<&str> {
    let params = match value.rfind('>') {
        Some(end) => &value[end + 1..],
        None => value.split_once(';').map_or("", |(_, params)| params),
    };
    params.split(';').find_map(|param| {
        let (key, value) = param.split_once('=')?;
        let value = value.trim();
        (key.trim().eq_ignore_ascii_case("tag") && !value.is_empty()).then_some(value)
    })
}

/// `"<number> <method>"`.
fn split_cseq(value: &str) -> Option<(u32, &str)> {
    let mut parts = value.split_ascii_whitespace();
    let (seq, method) = (parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((seq.parse().ok()?, method))
}

/// A stand-in branch for a request whose top Via has none (an RFC 2543 client): RFC 3261
/// 17.2.3 matches such requests by Request-URI, From tag, Call-ID, CSeq number and top Via
/// (the Via is the sent-by the key adds). The method is left out so CANCEL and ACK find
/// their INVITE; the To tag too, since the ACK of a non-2xx carries the one we added.
pub fn rfc2543_branch(request: &rsip::Request) -> String {
    let (number, _) = cseq(request).unwrap_or((0, rsip::Method::Invite));
    let uri = request.uri.to_string();
    let from = from_tag(request).unwrap_or_default();
    let parts = [
        uri.as_bytes(),
        from.as_bytes(),
        call_id(request).unwrap_or_default().as_bytes(),
        &number.to_be_bytes(),
    ];
    let hash = parts.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, part| {
        part.iter().chain(&[0xff]).fold(hash, |hash, &b| {
            (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    });
    format!("rfc2543-{hash:016x}")
}

/// A fresh RFC 3261 branch: the magic cookie followed by 16 random hex digits.
pub fn new_branch(rng: &mut impl Rng) -> String {
    format!("{BRANCH_MAGIC}{:016x}", rng.random::<u64>())
}

/// A fresh From/To tag: 16 random hex digits.
pub fn new_tag(rng: &mut impl Rng) -> String {
    format!("{:016x}", rng.random::<u64>())
}

/// A fresh Call-ID: 32 random hex digits `@host`.
pub fn new_call_id(rng: &mut impl Rng, host: &str) -> String {
    format!("{:032x}@{host}", rng.random::<u128>())
}

/// A response to `request` (RFC 3261 8.2.6): copies every Via, From, To, Call-ID and CSeq, adds
/// `to_tag` to To when given and To has no tag yet, and sets `Content-Length: 0`. The caller adds
/// Contact, a body (then fixes Content-Length with [`set_body`]) and anything else.
pub fn response_for(request: &rsip::Request, status: u16, to_tag: Option<&str>) -> rsip::Response {
    let mut headers = rsip::Headers::default();
    for header in request.headers.iter() {
        match header {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(header.clone())
            }
            Header::To(to) => match to_tag {
                Some(tag) if tag_param(to.value()).is_none() => headers.push(Header::To(
                    rsip::headers::To::new(format!("{};tag={tag}", to.value())),
                )),
                _ => headers.push(header.clone()),
            },
            _ => {}
        }
    }
    headers.push(Header::ContentLength(rsip::headers::ContentLength::from(0)));
    rsip::Response {
        status_code: status.into(),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

/// A message whose body can be replaced: [`rsip::Request`], [`rsip::Response`], [`SipMessage`].
pub trait WithBody: HasHeaders {
    /// The body bytes.
    fn body_vec(&mut self) -> &mut Vec<u8>;
}

impl WithBody for rsip::Request {
    fn body_vec(&mut self) -> &mut Vec<u8> {
        &mut self.body
    }
}

impl WithBody for rsip::Response {
    fn body_vec(&mut self) -> &mut Vec<u8> {
        &mut self.body
    }
}

impl WithBody for SipMessage {
    fn body_vec(&mut self) -> &mut Vec<u8> {
        self.body_mut()
    }
}

/// Replaces the body of `msg` and its Content-Length (and Content-Type when given).
pub fn set_body<M: WithBody>(msg: &mut M, body: Vec<u8>, content_type: Option<&str>) {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    *msg.body_vec() = body;
    let headers = msg.headers_mut();
    headers.retain(|h| {
        let replaced = matches!(h, Header::ContentLength(_))
            || (content_type.is_some() && matches!(h, Header::ContentType(_)));
        !replaced
    });
    if let Some(content_type) = content_type {
        headers.push(Header::ContentType(rsip::headers::ContentType::new(
            content_type,
        )));
    }
    headers.push(Header::ContentLength(len.into()));
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n\
        Max-Forwards: 70\r\n\
        To: Bob <sip:bob@example.com>\r\n\
        From: Alice <sip:alice@example.com>;tag=1928301774\r\n\
        Call-ID: a84b4c76e66710@pc33.example.com\r\n\
        CSeq: 314159 INVITE\r\n\
        Contact: <sip:alice@192.0.2.1>\r\n\
        Content-Length: 0\r\n\r\n";

    #[test]
    fn parses_valid_invite() {
        let msg = parse(INVITE.as_bytes()).unwrap();
        assert_eq!(call_id(&msg), Some("a84b4c76e66710@pc33.example.com"));
        assert_eq!(top_branch(&msg).as_deref(), Some("z9hG4bK776asdhds"));
        assert_eq!(cseq(&msg), Some((314159, rsip::Method::Invite)));
        assert_eq!(from_tag(&msg).as_deref(), Some("1928301774"));
        assert_eq!(to_tag(&msg), None);
    }

    #[test]
    fn compact_and_folded_headers() {
        let text = "OPTIONS sip:bob@example.com SIP/2.0\r\n\
            v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa, SIP/2.0/UDP 192.0.2.2;branch=z9hG4bKb\r\n\
            t: <sip:bob@example.com>\r\n\
            f: <sip:alice@example.com>\r\n  ;tag=77\r\n\
            i: abc\r\n\
            CSeq: 1 OPTIONS\r\n\
            l: 0\r\n\r\n";
        let msg = parse(text.as_bytes()).unwrap();
        assert_eq!(from_tag(&msg).as_deref(), Some("77"));
        let vias = msg
            .headers()
            .iter()
            .filter(|h| matches!(h, Header::Via(_)))
            .count();
        assert_eq!(vias, 2);
    }

    #[test]
    fn framed_trying_matches_rsip_round_trip() {
        let folded = "INVITE sip:bob@example.com SIP/2.0\r\n\
            v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa , SIP/2.0/TCP 192.0.2.2;branch=z9hG4bKb\r\n\
            VIA: SIP/2.0/UDP 192.0.2.3 ; branch=z9hG4bKc\r\n\
            t: <sip:bob@example.com>\r\n\
            f: <sip:alice@example.com>\r\n  ;tag=77\r\n\
            i: abc\r\n\
            cseq: 1 INVITE\r\n\
            Allow: INVITE, ACK\r\n\
            X-Custom: 1\r\n\
            x-call-id: second\r\n\
            l: 0\r\n\r\n";
        let tagged = INVITE.replace("To: Bob <sip:bob@example.com>", "To: <sip:b@x>;tag=9");
        for text in [INVITE, folded, tagged.as_str()] {
            let framed = frame(text.as_bytes()).unwrap();
            let fast = framed.trying_response();
            let SipMessage::Request(request) = build(framed).unwrap() else {
                panic!("not a request");
            };
            let slow = encode_response(&response_for(&request, 100, None));
            assert_eq!(fast, slow, "{text}");
        }
    }

    #[test]
    fn new_ids_have_expected_shape() {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        assert!(new_branch(&mut rng).starts_with(BRANCH_MAGIC));
        assert_eq!(new_tag(&mut rng).len(), 16);
        assert!(new_call_id(&mut rng, "h").ends_with("@h"));
    }
}
