//! Application-level checks of a parsed request before a UAS acts on it (RFC 3261 8.2).
//!
//! [`crate::parse`] already refuses what is malformed (400), a wrong version (505), an unknown
//! method (501) and an unsupported Request-URI scheme (416). [`request`] adds the checks that
//! depend on what this stack supports: Max-Forwards (483), the Request-URI scheme of a request
//! built elsewhere (416), `Require` (420 with `Unsupported`), and for an INVITE the body type
//! (415 with `Accept`) and `Accept` (406). No I/O; the caller sends the answer.

use rsip::headers::UntypedHeader;
use rsip::{Header, Method};

use crate::message::max_forwards;

/// Option tags (RFC 3261 19.2) this stack supports; `Require` naming any other is refused 420:
/// reliable provisionals (RFC 3262) and session timers (RFC 4028), both done by the session
/// engine on each leg.
pub const SUPPORTED_EXTENSIONS: &[&str] = &["100rel", "timer"];

/// The one body type an INVITE may carry, and the one its answer needs `Accept` to allow.
const SDP: &str = "application/sdp";

/// Why a request is refused, and how: [`Refusal::code`], [`Refusal::reason`] and
/// [`Refusal::headers`] make the response.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Max-Forwards is 0 on a request this UAS would forward (RFC 3261 16.3): 483.
    #[error("Max-Forwards is 0")]
    TooManyHops,
    /// The Request-URI scheme is not `sip`, `sips` or `tel` (RFC 3261 8.2.2.1): 416.
    #[error("unsupported Request-URI scheme {0}")]
    UnsupportedUriScheme(String),
    /// `Require` names option tags not in [`SUPPORTED_EXTENSIONS`] (RFC 3261 8.2.2.3): 420
    /// listing them in `Unsupported`.
    #[error("unsupported extensions required: {}", .0.join(", "))]
    BadExtension(Vec<String>),
    /// An INVITE body that is not SDP (RFC 3261 8.2.3): 415 with `Accept: application/sdp`.
    #[error("unsupported body type {0}")]
    UnsupportedMediaType(String),
    /// An INVITE whose `Accept` excludes SDP, so no answer can be given (RFC 3261 21.4.7,
    /// RFC 4475 "sdp01"): 406.
    #[error("Accept does not allow application/sdp")]
    NotAcceptable,
}

impl Refusal {
    /// The status code to answer with.
    pub fn code(&self) -> u16 {
        match self {
            Self::TooManyHops => 483,
            Self::UnsupportedUriScheme(_) => 416,
            Self::BadExtension(_) => 420,
            Self::UnsupportedMediaType(_) => 415,
            Self::NotAcceptable => 406,
        }
    }

    /// The reason phrase.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooManyHops => "Too Many Hops",
            Self::UnsupportedUriScheme(_) => "Unsupported URI Scheme",
            Self::BadExtension(_) => "Bad Extension",
            Self::UnsupportedMediaType(_) => "Unsupported Media Type",
            Self::NotAcceptable => "Not Acceptable",
        }
    }

    /// Headers the response must carry: `Unsupported` for 420, `Accept` for 415.
    pub fn headers(&self) -> Vec<Header> {
        match self {
            Self::BadExtension(tags) => vec![Header::Unsupported(tags.join(", ").into())],
            Self::UnsupportedMediaType(_) => vec![Header::Accept(SDP.into())],
            _ => Vec::new(),
        }
    }
}

/// Checks `request` in RFC 3261 8.2 order. ACK is never refused (it gets no response); CANCEL
/// and ACK ignore `Require` (8.2.2.3); OPTIONS is answered here whatever its Max-Forwards (the
/// UAS answers it itself, RFC 4475 "zeromf"); only INVITE has its body and `Accept` checked.
pub fn request(request: &rsip::Request) -> Result<(), Refusal> {
    let method = request.method;
    if method == Method::Ack {
        return Ok(());
    }
    if method != Method::Options && max_forwards(request) == Some(0) {
        return Err(Refusal::TooManyHops);
    }
    match &request.uri.scheme {
        // rsip leaves the scheme of a `tel:` URI empty.
        None | Some(rsip::Scheme::Sip | rsip::Scheme::Sips) => {}
        Some(rsip::Scheme::Other(scheme)) if scheme.eq_ignore_ascii_case("tel") => {}
        Some(other) => return Err(Refusal::UnsupportedUriScheme(other.to_string())),
    }
    if method != Method::Cancel {
        let unsupported: Vec<String> = values(request, |h| match h {
            Header::Require(r) => Some(r.value()),
            _ => None,
        })
        .filter(|tag| {
            !SUPPORTED_EXTENSIONS
                .iter()
                .any(|s| s.eq_ignore_ascii_case(tag))
        })
        .map(str::to_owned)
        .collect();
        if !unsupported.is_empty() {
            return Err(Refusal::BadExtension(unsupported));
        }
    }
    if method == Method::Invite {
        if !request.body.is_empty() {
            let content_type = request.headers.iter().find_map(|h| match h {
                Header::ContentType(c) => Some(c.value()),
                _ => None,
            });
            let media = content_type.map(media_type).unwrap_or_default();
            if !media.eq_ignore_ascii_case(SDP) {
                return Err(Refusal::UnsupportedMediaType(media.to_owned()));
            }
        }
        let mut accepts = values(request, |h| match h {
            Header::Accept(a) => Some(a.value()),
            _ => None,
        })
        .peekable();
        // No Accept header means application/sdp (RFC 3261 20.1); an empty one allows nothing.
        let has_accept = request
            .headers
            .iter()
            .any(|h| matches!(h, Header::Accept(_)));
        if has_accept && accepts.peek().is_some() {
            let allows_sdp = accepts.any(|range| {
                let range = media_type(range);
                range == "*/*"
                    || range.eq_ignore_ascii_case("application/*")
                    || range.eq_ignore_ascii_case(SDP)
            });
            if !allows_sdp {
                return Err(Refusal::NotAcceptable);
            }
        }
    }
    Ok(())
}

/// The comma-separated, trimmed, non-empty values of the headers `pick` selects.
fn values<'a>(
    request: &'a rsip::Request,
    pick: impl Fn(&'a Header) -> Option<&'a str> + 'a,
) -> impl Iterator<Item = &'a str> + 'a {
    request
        .headers
        .iter()
        .filter_map(pick)
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// `type/subtype` of a media type or range, without parameters.
fn media_type(value: &str) -> &str {
    value.split(';').next().unwrap_or_default().trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, extra: &str, body: &str) -> rsip::Request {
        let text = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKv\r\n\
             Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: v\r\n\
             CSeq: 1 {method}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        match crate::parse(text.as_bytes()).unwrap() {
            rsip::SipMessage::Request(request) => request,
            rsip::SipMessage::Response(_) => unreachable!(),
        }
    }

    fn check(method: &str, extra: &str, body: &str) -> Result<(), Refusal> {
        super::request(&request(method, "sip:b@y", extra, body))
    }

    #[test]
    fn plain_requests_pass() {
        assert_eq!(
            check("INVITE", "Content-Type: application/sdp\r\n", "v=0\r\n"),
            Ok(())
        );
        assert_eq!(check("OPTIONS", "", ""), Ok(()));
        assert_eq!(
            super::request(&request("INVITE", "tel:+123", "", "")),
            Ok(())
        );
    }

    #[test]
    fn zero_max_forwards_is_483_except_for_options_and_ack() {
        let zero = |method| check(method, "", "").map_err(|r| r.code());
        let text = |method: &str| {
            request(method, "sip:b@y", "", "")
                .to_string()
                .replace("Max-Forwards: 70", "Max-Forwards: 0")
        };
        for (method, want) in [("INVITE", Err(483)), ("OPTIONS", Ok(())), ("ACK", Ok(()))] {
            let rsip::SipMessage::Request(r) = crate::parse(text(method).as_bytes()).unwrap()
            else {
                unreachable!()
            };
            assert_eq!(super::request(&r).map_err(|r| r.code()), want, "{method}");
        }
        assert_eq!(zero("BYE"), Ok(()));
    }

    #[test]
    fn unknown_required_option_is_420_listing_it() {
        let refusal = check("OPTIONS", "Require: foo, Bar\r\n", "").unwrap_err();
        assert_eq!(refusal.code(), 420);
        assert_eq!(
            refusal,
            Refusal::BadExtension(vec!["foo".into(), "Bar".into()])
        );
        let headers = refusal.headers();
        assert!(matches!(&headers[..], [Header::Unsupported(u)] if u.value() == "foo, Bar"));
        // Proxy-Require is for proxies; a UAS ignores it.
        assert_eq!(check("OPTIONS", "Proxy-Require: foo\r\n", ""), Ok(()));
    }

    #[test]
    fn cancel_and_ack_ignore_require() {
        assert_eq!(check("CANCEL", "Require: foo\r\n", ""), Ok(()));
        assert_eq!(check("ACK", "Require: foo\r\n", ""), Ok(()));
        assert_eq!(
            check("BYE", "Require: foo\r\n", "").map_err(|r| r.code()),
            Err(420)
        );
    }

    #[test]
    fn unsupported_uri_scheme_is_416() {
        let mut invite = request("INVITE", "sip:b@y", "", "");
        invite.uri.scheme = Some(rsip::Scheme::Other("soap.beep".into()));
        assert_eq!(super::request(&invite).map_err(|r| r.code()), Err(416));
    }

    #[test]
    fn invite_body_must_be_sdp() {
        let refusal =
            check("INVITE", "Content-Type: application/unknownformat\r\n", "x").unwrap_err();
        assert_eq!(refusal.code(), 415);
        assert!(matches!(&refusal.headers()[..], [Header::Accept(a)] if a.value() == SDP));
        assert_eq!(check("INVITE", "", "x").map_err(|r| r.code()), Err(415));
        // Other methods' bodies are not this check's business.
        assert_eq!(check("INFO", "Content-Type: text/plain\r\n", "x"), Ok(()));
    }

    #[test]
    fn invite_accept_must_allow_sdp() {
        let accept = |value: &str| check("INVITE", &format!("Accept: {value}\r\n"), "");
        assert_eq!(
            accept("text/nobodyKnowsThis").map_err(|r| r.code()),
            Err(406)
        );
        assert_eq!(accept("text/plain, application/sdp;level=1"), Ok(()));
        assert_eq!(accept("application/*"), Ok(()));
        assert_eq!(accept("*/*"), Ok(()));
        assert_eq!(check("OPTIONS", "Accept: text/plain\r\n", ""), Ok(()));
    }
}
