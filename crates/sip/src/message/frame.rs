//! Framing and validation of one message, and building rsip types from the parts.

use std::borrow::Cow;

use bytes::Bytes;

use rsip::headers::UntypedHeader;
use rsip::{Header, SipMessage};

use super::{BRANCH_MAGIC, MAX_MESSAGE_SIZE, ParseError, ViaParts, parse_method, split_cseq};

/// Longest reason text kept in [`ParseError::Malformed`] and [`ParseError::InvalidHeader`], so an
/// attacker cannot make error values (and logs) as large as the message.
const MAX_REASON_LEN: usize = 120;

pub(super) fn malformed(reason: &str) -> ParseError {
    ParseError::Malformed(truncate(reason))
}

pub(super) fn invalid(header: &'static str, reason: &str) -> ParseError {
    ParseError::InvalidHeader {
        header,
        reason: truncate(reason),
    }
}

fn truncate(reason: &str) -> String {
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, _) = needle.split_first()?;
    let mut from = 0;
    while let Some(offset) = haystack.get(from..)?.iter().position(|&b| b == first) {
        let at = from + offset;
        if haystack.get(at..at + needle.len())? == needle {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The first `\r\n\r\n` (the end of the header block), the same as
/// `find(bytes, b"\r\n\r\n")` but looking at every fourth byte only: every 4-byte window
/// contains exactly one position `i` with `i % 4 == 3`, and a window can only match when that
/// byte is CR or LF. Windows are tried in order, so the first match is returned.
pub(super) fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    const NEEDLE: &[u8] = b"\r\n\r\n";
    let mut i = NEEDLE.len() - 1;
    while i < bytes.len() {
        if matches!(bytes[i], b'\r' | b'\n') {
            for start in i + 1 - NEEDLE.len()..=i {
                if bytes.get(start..start + NEEDLE.len()) == Some(NEEDLE) {
                    return Some(start);
                }
            }
        }
        i += NEEDLE.len();
    }
    None
}

/// Canonical (long-form) header name for the RFC 3261 compact forms and common spellings, so
/// the rest of the crate and rsip see one spelling.
pub(super) fn canonical_name(name: &str) -> &str {
    if name.len() == 1 {
        match name.as_bytes()[0].to_ascii_lowercase() {
            b'i' => return "Call-ID",
            b'm' => return "Contact",
            b'e' => return "Content-Encoding",
            b'l' => return "Content-Length",
            b'c' => return "Content-Type",
            b'f' => return "From",
            b's' => return "Subject",
            b'k' => return "Supported",
            b't' => return "To",
            b'v' => return "Via",
            _ => {}
        }
    }
    name
}

pub(super) fn is_token_char(c: u8) -> bool {
    // A match rather than `b"-.!%*_+`'~".contains(&c)`, which is a memchr call per byte.
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// Where a scan of header bytes is with respect to RFC 3261 quoted strings (`"..."` with
/// `\`-escaped quoted-pairs).
#[derive(Default, Clone, Copy)]
pub(super) struct Quoting {
    open: bool,
    escaped: bool,
}

impl Quoting {
    /// Advances over `b`; true when `b` is outside any quoted string (and not a quote mark).
    pub(super) fn outside(&mut self, b: u8) -> bool {
        if self.open {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.open = false;
            }
            false
        } else if b == b'"' {
            self.open = true;
            false
        } else {
            true
        }
    }

    /// Inside an unterminated quoted string.
    fn is_open(self) -> bool {
        self.open
    }

    /// The last byte seen was the `\` of a quoted-pair.
    fn is_escaped(self) -> bool {
        self.open && self.escaped
    }
}

/// Splits a Via value on the commas that separate via-parms (none appear inside one, outside
/// quoted strings); empty parts are kept, so `a,,b` can be refused.
fn split_via_list_raw(value: &str) -> Vec<&str> {
    let mut quoting = Quoting::default();
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, b) in value.bytes().enumerate() {
        if quoting.outside(b) && b == b',' {
            parts.push(value[start..i].trim());
            start = i + 1;
        }
    }
    parts.push(value[start..].trim());
    parts
}

/// [`split_via_list_raw`] without the empty parts.
pub(super) fn split_via_list(value: &str) -> impl Iterator<Item = &str> {
    split_via_list_raw(value)
        .into_iter()
        .filter(|p| !p.is_empty())
}

/// Drops whitespace around `;` outside quoted strings: RFC 3261 allows `<sip:a> ; tag=1`, rsip's
/// parameter tokenizer does not.
fn tighten_semicolons(value: &mut Cow<'_, str>) {
    let bytes = value.as_bytes();
    let is_space = |i: Option<usize>| {
        i.and_then(|i| bytes.get(i))
            .is_some_and(|b| *b == b' ' || *b == b'\t')
    };
    let spaced = bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b';' && (is_space(i.checked_sub(1)) || is_space(Some(i + 1))));
    if !spaced {
        return;
    }
    let mut out = String::with_capacity(value.len());
    let mut quoting = Quoting::default();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        // Every byte of a multi-byte character is >= 0x80: only ASCII moves the quoting.
        let outside = !c.is_ascii() || quoting.outside(c as u8);
        match c {
            ';' if outside => {
                while out.ends_with([' ', '\t']) {
                    out.pop();
                }
                out.push(';');
                while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
            }
            _ => out.push(c),
        }
    }
    *value = Cow::Owned(out);
}

/// A message split into its parts, with headers unfolded, compact names expanded and Via
/// lists split.
pub(crate) struct Framed<'a> {
    start: StartLine<'a>,
    headers: Vec<(&'a str, Cow<'a, str>)>,
    body: &'a [u8],
}

impl<'a> Framed<'a> {
    /// For a request other than ACK: (method, top Via branch, top Via sent-by), enough to find
    /// its server transaction without building rsip types.
    pub(crate) fn request_key(&self) -> Option<(rsip::Method, &str, &str)> {
        let StartLine::Request { method, .. } = self.start else {
            return None;
        };
        let method = parse_method(method)?;
        let via = self.header("Via")?;
        let via = ViaParts::parse(via)?;
        Some((method, via.branch?, via.sent_by))
    }

    /// The automatic `100 Trying` for this request (RFC 3261 17.2.1), serialized straight from
    /// the framed header lines: every Via, From, To (no tag added), Call-ID and CSeq in order,
    /// then `Content-Length: 0`. Byte for byte what [`super::response_for`] plus
    /// [`super::encode_response`] produce for the built request.
    pub(crate) fn trying_response(&self) -> Bytes {
        let mut out = Vec::with_capacity(320);
        out.extend_from_slice(b"SIP/2.0 100 Trying\r\n");
        for (name, value) in &self.headers {
            let Some(name) = response_header_name(name) else {
                continue;
            };
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        Bytes::from(out)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

/// The display name of the headers a response copies from its request (Via, From, To, Call-ID,
/// CSeq), as rsip writes them; `None` for every other header.
fn response_header_name(name: &str) -> Option<&'static str> {
    let is = |canonical: &str| name.eq_ignore_ascii_case(canonical);
    match name.len() {
        2 if is("To") => Some("To"),
        3 if is("Via") => Some("Via"),
        4 if is("From") => Some("From"),
        4 if is("CSeq") => Some("CSeq"),
        7 if is("Call-ID") => Some("Call-ID"),
        _ => None,
    }
}

enum StartLine<'a> {
    Request { method: &'a str, uri: &'a str },
    Response { code: u16, reason: &'a str },
}

/// Checks the size, the framing (blank line, UTF-8 head, header syntax, Content-Length) and the
/// mandatory headers, and splits the message without building rsip types yet.
pub(crate) fn frame(bytes: &[u8]) -> Result<Framed<'_>, ParseError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(ParseError::TooLarge { len: bytes.len() });
    }
    // RFC 3261 7.5: empty lines before the start line are ignored.
    let mut start = 0;
    while bytes[start..].starts_with(b"\r\n") {
        start += 2;
    }
    let bytes = &bytes[start..];
    if bytes.is_empty() {
        return Err(malformed("empty message"));
    }
    let head_end =
        find_blank_line(bytes).ok_or_else(|| malformed("no blank line after the headers"))?;
    let head = std::str::from_utf8(&bytes[..head_end]).map_err(|_| ParseError::NotUtf8)?;
    let body = &bytes[head_end + 4..];

    if head.as_bytes().contains(&0) && !nuls_are_quoted_pairs(head) {
        return Err(malformed("NUL in the headers"));
    }
    // Split on the (memchr-fast) LF; every line but the last must then end in CR, and no line
    // may hold another CR: bare CR and bare LF are both rejected.
    let last_line_start = head.rfind('\n').map_or(0, |i| i + 1);
    let mut lines = head.split('\n').map(|line| {
        let is_last = line.as_ptr() as usize - head.as_ptr() as usize == last_line_start;
        let line = if is_last {
            line
        } else {
            line.strip_suffix('\r')
                .ok_or_else(|| malformed("bare LF in the headers"))?
        };
        if line.as_bytes().contains(&b'\r') {
            return Err(malformed("bare CR in the headers"));
        }
        Ok(line)
    });
    let start_line = parse_start_line(lines.next().unwrap_or(Ok(""))?)?;

    // Logical headers after unfolding: (name, value).
    let mut headers: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(16);
    for line in lines {
        let line = line?;
        if line.starts_with([' ', '\t']) {
            let Some((_, value)) = headers.last_mut() else {
                return Err(malformed("continuation line before the first header"));
            };
            let more = line.trim();
            if !more.is_empty() {
                let value = value.to_mut();
                if !value.is_empty() {
                    value.push(' ');
                }
                value.push_str(more);
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(malformed("header line without a colon"));
        };
        let name = name.trim_end_matches([' ', '\t']);
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(malformed("invalid header name"));
        }
        headers.push((canonical_name(name), Cow::Borrowed(value.trim())));
    }

    let mut declared: Option<usize> = None;
    let mut has_via_list = false;
    for (name, value) in &mut headers {
        tighten_semicolons(value);
        if name.eq_ignore_ascii_case("Content-Length") {
            let len = value
                .parse::<usize>()
                .map_err(|_| invalid("Content-Length", "not a number"))?;
            if declared.is_some_and(|d| d != len) {
                return Err(invalid("Content-Length", "conflicting values"));
            }
            declared = Some(len);
        }
        has_via_list |= name.eq_ignore_ascii_case("Via") && value.contains(',');
    }
    // Comma-joined Via values (rare) become one header per via-parm.
    let headers = if has_via_list {
        let mut split = Vec::with_capacity(headers.len() + 2);
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("Via") && value.contains(',') {
                if split_via_list_raw(&value).iter().any(|p| p.is_empty()) {
                    return Err(invalid("Via", "empty via-parm"));
                }
                match value {
                    Cow::Borrowed(value) => {
                        split.extend(split_via_list(value).map(|via| ("Via", Cow::Borrowed(via))));
                    }
                    Cow::Owned(value) => split.extend(
                        split_via_list(&value).map(|via| ("Via", Cow::Owned(via.to_string()))),
                    ),
                }
                continue;
            }
            split.push((name, value));
        }
        split
    } else {
        headers
    };
    let body = match declared {
        Some(declared) if declared > body.len() => {
            return Err(ParseError::BodyLength {
                declared,
                actual: body.len(),
            });
        }
        Some(declared) => &body[..declared],
        None => body,
    };
    let framed = Framed {
        start: start_line,
        headers,
        body,
    };
    validate(&framed)?;
    Ok(framed)
}

/// True when every NUL in `head` is the second byte of a quoted-pair inside a quoted string
/// (`"NUL:\<NUL>"`, RFC 3261 25.1 allows it; RFC 4475 "intmeth").
fn nuls_are_quoted_pairs(head: &str) -> bool {
    let mut quoting = Quoting::default();
    head.bytes().all(|b| {
        let escaped = quoting.is_escaped();
        quoting.outside(b);
        b != 0 || escaped
    })
}

/// Request-URI checks the rsip parser does not make: no `<>` or quotes around or in it
/// (RFC 4475 "ltgtruri"), a scheme this stack handles (else 416, "unkscm"), and no escaped
/// headers in a SIP URI (RFC 3261 19.1.5, "escruri").
fn check_request_uri(uri: &str) -> Result<(), ParseError> {
    if uri.bytes().any(|b| matches!(b, b'<' | b'>' | b'"')) {
        return Err(malformed("bad Request-URI"));
    }
    let Some((scheme, _)) = uri.split_once(':') else {
        return Err(malformed("bad Request-URI"));
    };
    let well_formed = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !well_formed {
        return Err(malformed("bad Request-URI"));
    }
    let sip = scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips");
    if !sip && !scheme.eq_ignore_ascii_case("tel") {
        return Err(ParseError::UnsupportedUriScheme(truncate(scheme)));
    }
    // Headers start at a `?` after the host (the user part may hold one: RFC 4475 "intmeth").
    let after_user = uri.split_once('@').map_or(uri, |(_, host)| host);
    if sip && after_user.contains('?') {
        return Err(malformed("headers in the Request-URI"));
    }
    Ok(())
}

fn parse_start_line(line: &str) -> Result<StartLine<'_>, ParseError> {
    let mut parts = line.splitn(3, ' ');
    let first = parts.next().unwrap_or_default();
    if first.starts_with("SIP/") {
        if first != "SIP/2.0" {
            return Err(ParseError::UnsupportedVersion);
        }
        let code = parts.next().unwrap_or_default();
        if code.len() != 3 || !code.bytes().all(|c| c.is_ascii_digit()) || code.starts_with('0') {
            return Err(malformed("bad status code"));
        }
        let code = code.parse().map_err(|_| malformed("bad status code"))?;
        let reason = parts.next().unwrap_or_default();
        return Ok(StartLine::Response { code, reason });
    }
    let (Some(uri), Some(version)) = (parts.next(), parts.next()) else {
        return Err(malformed(
            "start line is neither a request line nor a status line",
        ));
    };
    if first.is_empty() || !first.bytes().all(is_token_char) || uri.is_empty() {
        return Err(malformed("bad request line"));
    }
    if !version.starts_with("SIP/") || version.contains(' ') {
        return Err(malformed("bad request line"));
    }
    if version != "SIP/2.0" {
        return Err(ParseError::UnsupportedVersion);
    }
    check_request_uri(uri)?;
    Ok(StartLine::Request { method: first, uri })
}

/// Turns the framed parts into rsip types. Done here rather than through rsip's message
/// tokenizer, which costs several microseconds on a typical INVITE and would redo the framing.
pub(crate) fn build(framed: Framed<'_>) -> Result<SipMessage, ParseError> {
    let headers: Vec<Header> = framed
        .headers
        .into_iter()
        .map(|(name, value)| to_header(name, value))
        .collect();
    let body = framed.body.to_vec();
    Ok(match framed.start {
        StartLine::Request { method, uri } => SipMessage::Request(rsip::Request {
            method: parse_method(method)
                .ok_or_else(|| ParseError::UnknownMethod(method.to_owned()))?,
            uri: rsip::Uri::try_from(uri).map_err(|_| malformed("bad Request-URI"))?,
            version: rsip::Version::V2,
            headers: headers.into(),
            body,
        }),
        StartLine::Response { code, reason } => {
            let status_code = match rsip::StatusCode::from(code) {
                rsip::StatusCode::Other(code, _) => {
                    rsip::StatusCode::Other(code, reason.to_string())
                }
                known => known,
            };
            SipMessage::Response(rsip::Response {
                status_code,
                version: rsip::Version::V2,
                headers: headers.into(),
                body,
            })
        }
    })
}

/// The rsip header for a (canonical name, value) pair: the usual headers directly (moving the
/// value, one allocation at most), the rest through rsip's own name table. Matching is
/// case-insensitive, as in rsip's table, so the result is the same either way.
fn to_header(name: &str, value: Cow<'_, str>) -> Header {
    use rsip::headers as h;
    let is = |canonical: &str| name.eq_ignore_ascii_case(canonical);
    let value = match name.len() {
        2 if is("To") => return Header::To(h::To::new(value)),
        3 if is("Via") => return Header::Via(h::Via::new(value)),
        4 if is("From") => return Header::From(h::From::new(value)),
        4 if is("CSeq") => return Header::CSeq(h::CSeq::new(value)),
        5 if is("Allow") => return Header::Allow(h::Allow::new(value)),
        5 if is("Route") => return Header::Route(h::Route::new(value)),
        7 if is("Call-ID") => return Header::CallId(h::CallId::new(value)),
        7 if is("Contact") => return Header::Contact(h::Contact::new(value)),
        7 if is("Require") => return Header::Require(h::Require::new(value)),
        7 if is("Expires") => return Header::Expires(h::Expires::new(value)),
        9 if is("Supported") => return Header::Supported(h::Supported::new(value)),
        10 if is("User-Agent") => return Header::UserAgent(h::UserAgent::new(value)),
        12 if is("Max-Forwards") => return Header::MaxForwards(h::MaxForwards::new(value)),
        12 if is("Content-Type") => return Header::ContentType(h::ContentType::new(value)),
        12 if is("Record-Route") => return Header::RecordRoute(h::RecordRoute::new(value)),
        14 if is("Content-Length") => {
            return Header::ContentLength(h::ContentLength::new(value));
        }
        _ => value,
    };
    let tokenizer = h::header::Tokenizer {
        name: name.as_bytes(),
        value: value.as_bytes(),
    };
    // Only fails on non-UTF-8, which the framing already excluded.
    tokenizer
        .try_into()
        .unwrap_or_else(|_| Header::Other(name.to_string(), value.into_owned()))
}

/// Checks the mandatory headers. Deliberately lighter than rsip's typed parsers (which cost
/// microseconds each): Via must be `SIP/2.0/<transport> <sent-by>` with no empty parameter and,
/// for requests, a branch that is either absent (RFC 2543, matched as RFC 3261 17.2.3 says) or
/// more than the bare magic cookie; From/To/Contact are well-formed name-addr or addr-spec
/// values; Call-ID is one token; CSeq is `<u32> <method>`; and none of Call-ID, CSeq, From,
/// To and Max-Forwards appears twice.
fn validate(framed: &Framed<'_>) -> Result<(), ParseError> {
    let (mut via, mut from, mut to, mut call_id, mut cseq, mut max_forwards) =
        (None, None, None, None, None, None);
    for (name, value) in &framed.headers {
        let value = value.as_ref();
        let (slot, canonical) = match name.len() {
            2 if name.eq_ignore_ascii_case("To") => (&mut to, "To"),
            3 if name.eq_ignore_ascii_case("Via") => {
                check_via_params(value)?;
                via.get_or_insert(value);
                continue;
            }
            4 if name.eq_ignore_ascii_case("From") => (&mut from, "From"),
            4 if name.eq_ignore_ascii_case("CSeq") => (&mut cseq, "CSeq"),
            7 if name.eq_ignore_ascii_case("Call-ID") => (&mut call_id, "Call-ID"),
            7 if name.eq_ignore_ascii_case("Contact") => {
                check_contact(value)?;
                continue;
            }
            12 if name.eq_ignore_ascii_case("Max-Forwards") => (&mut max_forwards, "Max-Forwards"),
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(ParseError::DuplicateHeader(canonical));
        }
    }
    let via = via.ok_or(ParseError::MissingHeader("Via"))?;
    let via =
        ViaParts::parse(via).ok_or_else(|| invalid("Via", "not SIP/2.0/<transport> <sent-by>"))?;
    check_name_addr("From", from.ok_or(ParseError::MissingHeader("From"))?)?;
    check_name_addr("To", to.ok_or(ParseError::MissingHeader("To"))?)?;
    let call_id = call_id.ok_or(ParseError::MissingHeader("Call-ID"))?;
    if call_id.is_empty() || call_id.contains(char::is_whitespace) {
        return Err(invalid("Call-ID", "empty or contains whitespace"));
    }
    let cseq = cseq.ok_or(ParseError::MissingHeader("CSeq"))?;
    let (_, cseq_method) =
        split_cseq(cseq).ok_or_else(|| invalid("CSeq", "not <number> <method>"))?;
    if let Some(max_forwards) = max_forwards
        && max_forwards.parse::<u8>().is_err()
    {
        return Err(invalid("Max-Forwards", "not a number in 0..=255"));
    }
    match framed.start {
        StartLine::Request { method, .. } => {
            if via
                .branch
                .is_some_and(|b| b.is_empty() || b == BRANCH_MAGIC)
            {
                return Err(invalid("Via", "branch without a transaction id"));
            }
            // An unknown method is answered 501 (RFC 4475 "mismatch02" prefers it to 400).
            if cseq_method != method && parse_method(method).is_some() {
                return Err(invalid("CSeq", "method does not match the request method"));
            }
        }
        StartLine::Response { .. } => {
            if parse_method(cseq_method).is_none() {
                return Err(invalid("CSeq", "unknown method"));
            }
        }
    }
    Ok(())
}

/// Every via-parm of a Via value has the sent-protocol shape and no empty parameter
/// (`;;`, a trailing `;`, `branch=`): RFC 4475 "badinv01".
fn check_via_params(value: &str) -> Result<(), ParseError> {
    if ViaParts::parse_any_version(value).is_none() {
        return Err(invalid("Via", "not SIP/<version>/<transport> <sent-by>"));
    }
    for param in value.split(';').skip(1) {
        let (key, val) = match param.split_once('=') {
            Some((key, val)) => (key.trim(), Some(val.trim())),
            None => (param.trim(), None),
        };
        if key.is_empty() || !key.bytes().all(is_token_char) || val == Some("") {
            return Err(invalid("Via", "empty or malformed parameter"));
        }
    }
    Ok(())
}

/// Each entry of a Contact list (or `*`) is a well-formed name-addr or addr-spec.
fn check_contact(value: &str) -> Result<(), ParseError> {
    if value == "*" {
        return Ok(());
    }
    let mut quoting = Quoting::default();
    let (mut start, mut in_angle) = (0, false);
    for (i, b) in value.bytes().enumerate() {
        if !quoting.outside(b) {
            continue;
        }
        match b {
            b'<' => in_angle = true,
            b'>' => in_angle = false,
            b',' if !in_angle => {
                check_name_addr("Contact", value[start..i].trim())?;
                start = i + 1;
            }
            _ => {}
        }
    }
    check_name_addr("Contact", value[start..].trim())
}

/// One From, To or Contact value: `display-name <uri>;params` where the display name is a
/// quoted string or tokens (RFC 4475 "baddn", "quotbal") and the URI has no surrounding spaces
/// ("badaspec"), or `uri;params` where the URI has no `?` or `,` (RFC 3261 20; "regbadct").
fn check_name_addr(header: &'static str, value: &str) -> Result<(), ParseError> {
    if value.is_empty() {
        return Err(invalid(header, "empty"));
    }
    let mut quoting = Quoting::default();
    let mut open = None;
    for (i, b) in value.bytes().enumerate() {
        if quoting.outside(b) && b == b'<' {
            open = Some(i);
            break;
        }
    }
    if open.is_none() && quoting.is_open() {
        return Err(invalid(header, "unterminated quoted string"));
    }
    let Some(open) = open else {
        if value.contains('>') {
            return Err(invalid(header, "unbalanced <>"));
        }
        let uri = value.split(';').next().unwrap_or_default().trim_end();
        if uri.is_empty() || uri.contains(['?', ',', ' ', '\t', '"']) {
            return Err(invalid(
                header,
                "addr-spec with reserved characters outside <>",
            ));
        }
        return Ok(());
    };
    let display = value[..open].trim();
    let quoted = display.len() >= 2 && display.starts_with('"') && display.ends_with('"');
    let tokens = display
        .bytes()
        .all(|b| is_token_char(b) || b == b' ' || b == b'\t');
    if !quoted && !tokens {
        return Err(invalid(header, "display name neither quoted nor tokens"));
    }
    let rest = &value[open + 1..];
    let Some(close) = rest.find('>') else {
        return Err(invalid(header, "unbalanced <>"));
    };
    let uri = &rest[..close];
    if uri.is_empty() || uri.trim() != uri || uri.contains('<') {
        return Err(invalid(header, "malformed URI in <>"));
    }
    let params = rest[close + 1..].trim_start();
    if !(params.is_empty() || params.starts_with(';')) || params.contains(['<', '>']) {
        return Err(invalid(header, "text after the URI is not parameters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addr_rules() {
        for ok in [
            "<sip:a@x>;tag=1",
            "Bob <sip:a@x>",
            "caller<sip:a@x>;tag=3",
            r#""J Rosenberg \\\"" <sip:a@x>;tag=9"#,
            r#""Bell, Alexander" <sip:a@x>"#,
            "sip:a@x;tag=1",
            "isbn:2983792873",
        ] {
            assert_eq!(check_name_addr("To", ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            r#""Mr. J. User <sip:a@x>"#,
            "Bell, Alexander <sip:a@x>",
            r#""W" < sip:a@x >"#,
            "<sip:a@x",
            "sip:a@x?Route=%3Csip:b%3E",
            "<sip:a@x> <sip:b@y>",
        ] {
            assert!(check_name_addr("To", bad).is_err(), "{bad}");
        }
        assert_eq!(check_contact("*"), Ok(()));
        assert_eq!(
            check_contact(r#"<sip:a@x>, "b, c" <sip:b@y>;q=0.5"#),
            Ok(())
        );
        assert!(check_contact("<sip:a@x>, sip:b@y?h=v").is_err());
    }

    #[test]
    fn via_rules() {
        let via = ViaParts::parse("SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!((via.transport, via.sent_by), ("UDP", "192.0.2.2"));
        assert_eq!(via.branch, Some("390skdjuw"));
        assert!(ViaParts::parse("SIP/7.0/UDP h;branch=z9hG4bKx").is_none());
        assert!(ViaParts::parse_any_version("SIP/7.0/UDP h;branch=z9hG4bKx").is_some());
        assert_eq!(
            check_via_params("SIP/2.0/UDP h;rport;branch=z9hG4bKx"),
            Ok(())
        );
        for bad in [
            "SIP/2.0/UDP h;;",
            "SIP/2.0/UDP h;branch=",
            "SIP/2.0/UDP h;",
            ";",
        ] {
            assert!(check_via_params(bad).is_err(), "{bad}");
        }
        assert!(split_via_list_raw("a;x, ,b").iter().any(|p| p.is_empty()));
    }

    #[test]
    fn request_uri_rules() {
        assert_eq!(check_request_uri("sip:a@x;lr"), Ok(()));
        assert_eq!(check_request_uri("tel:+1234"), Ok(()));
        assert_eq!(check_request_uri("sip:we?ird@x"), Ok(()));
        assert!(matches!(
            check_request_uri("soap.beep://192.0.2.103:3002"),
            Err(ParseError::UnsupportedUriScheme(s)) if s == "soap.beep"
        ));
        for bad in ["<sip:a@x>", "sip:a@x?Route=%3Csip:b%3E", "1x:y", "nocolon"] {
            assert!(
                matches!(check_request_uri(bad), Err(ParseError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn nul_only_as_a_quoted_pair() {
        assert!(nuls_are_quoted_pairs("To: \"NUL:\\\0\" <sip:a@x>"));
        assert!(!nuls_are_quoted_pairs("To: \0<sip:a@x>"));
        assert!(!nuls_are_quoted_pairs("To: \"\0\" <sip:a@x>"));
    }

    #[test]
    fn single_value_headers_appear_once() {
        let text = "OPTIONS sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\n\
            From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nt: <sip:c@x>\r\nCall-ID: c\r\n\
            CSeq: 1 OPTIONS\r\n\r\n";
        assert_eq!(
            frame(text.as_bytes()).err(),
            Some(ParseError::DuplicateHeader("To"))
        );
    }

    #[test]
    fn find_blank_line_matches_find() {
        let samples: [&[u8]; 9] = [
            b"",
            b"\r\n\r",
            b"\r\n\r\n",
            b"a\r\n\r\n",
            b"ab\r\n\r\nx",
            b"abc\r\r\n\r\n",
            b"\n\r\n\r\n\r\n",
            b"INVITE x SIP/2.0\r\nA: b\r\n\r\nbody\r\n\r\n",
            b"no blank line\r\n\r",
        ];
        for sample in samples {
            assert_eq!(
                find_blank_line(sample),
                find(sample, b"\r\n\r\n"),
                "{sample:?}"
            );
        }
        // Every position and misalignment.
        for pad in 0..9 {
            for tail in 0..5 {
                let mut bytes = vec![b'x'; pad];
                bytes.extend_from_slice(b"\r\n\r\n");
                bytes.extend(std::iter::repeat_n(b'\r', tail));
                assert_eq!(find_blank_line(&bytes), Some(pad));
            }
        }
    }
}
