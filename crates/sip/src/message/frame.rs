//! Framing and validation of one message, and building rsip types from the parts.

use std::borrow::Cow;

use bytes::Bytes;

use rsip::headers::UntypedHeader;
use rsip::{Header, SipMessage};

use super::{MAX_MESSAGE_SIZE, ParseError, ViaParts, parse_method, split_cseq};

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

/// Splits a Via value on the commas that separate via-parms (none appear inside one, outside
/// quoted strings).
pub(super) fn split_via_list(value: &str) -> impl Iterator<Item = &str> {
    let mut in_quotes = false;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in value.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                parts.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(value[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty())
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
    let mut in_quotes = false;
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                out.push(c);
            }
            ';' if !in_quotes => {
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

    if head.as_bytes().contains(&0) {
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
                value.push(' ');
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
/// microseconds each): Via must be `SIP/2.0/<transport> <sent-by>` (with a branch for
/// requests), From/To non-empty with balanced `<>`, Call-ID one token, CSeq `<u32> <method>`.
fn validate(framed: &Framed<'_>) -> Result<(), ParseError> {
    let (mut via, mut from, mut to, mut call_id, mut cseq, mut max_forwards) =
        (None, None, None, None, None, None);
    for (name, value) in &framed.headers {
        let value = value.as_ref();
        let slot = match name.len() {
            2 if name.eq_ignore_ascii_case("To") => &mut to,
            3 if name.eq_ignore_ascii_case("Via") => &mut via,
            4 if name.eq_ignore_ascii_case("From") => &mut from,
            4 if name.eq_ignore_ascii_case("CSeq") => &mut cseq,
            7 if name.eq_ignore_ascii_case("Call-ID") => &mut call_id,
            12 if name.eq_ignore_ascii_case("Max-Forwards") => &mut max_forwards,
            _ => continue,
        };
        slot.get_or_insert(value);
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
            if via.branch.is_none_or(str::is_empty) {
                return Err(invalid("Via", "no branch parameter"));
            }
            if cseq_method != method {
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

fn check_name_addr(header: &'static str, value: &str) -> Result<(), ParseError> {
    if value.is_empty() {
        return Err(invalid(header, "empty"));
    }
    match (value.find('<'), value.rfind('>')) {
        (None, None) => Ok(()),
        (Some(open), Some(close)) if open < close => Ok(()),
        _ => Err(invalid(header, "unbalanced <>")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
