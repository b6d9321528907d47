//! Stateless error responses for requests that failed to parse.

use std::fmt::Write as _;

use bytes::Bytes;

use super::frame::{canonical_name, find, is_token_char, split_via_list};
use super::{MAX_MESSAGE_SIZE, ParseError, ViaParts};

/// Builds the error response for a request that failed [`parse`](super::parse) with `err`, as bytes.
///
/// Needs a request start line (not ACK, which is never answered) and a top Via rsip can parse;
/// copies every Via, From, To (adding a tag), Call-ID and CSeq it can recover. Returns `None`
/// when the message cannot be answered (a response, binary noise, no usable Via): the caller
/// drops it and counts it.
pub fn error_response(bytes: &[u8], err: &ParseError) -> Option<Bytes> {
    let scan = LenientScan::new(&bytes[..bytes.len().min(MAX_MESSAGE_SIZE)])?;
    let top_via = scan.vias.first()?;
    let top_via_value = split_via_list(top_via).next()?;
    // Any SIP version: a request naming SIP/7.0 in its start line and Via gets its 505.
    let (_, top_via) = ViaParts::parse_any_version(top_via_value)?;
    let branch = top_via.branch.unwrap_or_default();

    let mut out = String::with_capacity(512);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "SIP/2.0 {} {}\r\n",
        err.status_code(),
        err.reason_phrase()
    );
    for via in &scan.vias {
        let _ = write!(out, "Via: {via}\r\n");
    }
    if let Some(from) = scan.from {
        let _ = write!(out, "From: {from}\r\n");
    }
    if let Some(to) = scan.to {
        if super::tag_param(to).is_some() {
            let _ = write!(out, "To: {to}\r\n");
        } else {
            let _ = write!(out, "To: {to};tag={:016x}\r\n", fnv1a(branch.as_bytes()));
        }
    }
    if let Some(call_id) = scan.call_id {
        let _ = write!(out, "Call-ID: {call_id}\r\n");
    }
    if let Some(cseq) = scan.cseq {
        let _ = write!(out, "CSeq: {cseq}\r\n");
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    Some(Bytes::from(out))
}

/// What [`error_response`] can recover from a message that failed to parse: a request start
/// line plus the header values needed to address a response.
struct LenientScan<'a> {
    vias: Vec<&'a str>,
    from: Option<&'a str>,
    to: Option<&'a str>,
    call_id: Option<&'a str>,
    cseq: Option<&'a str>,
}

impl<'a> LenientScan<'a> {
    fn new(bytes: &'a [u8]) -> Option<Self> {
        let mut start = 0;
        while bytes[start..].starts_with(b"\r\n") {
            start += 2;
        }
        let bytes = &bytes[start..];
        let head = match find(bytes, b"\r\n\r\n") {
            Some(end) => &bytes[..end],
            None => bytes,
        };
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let start_line = std::str::from_utf8(lines.next()?).ok()?;
        // Lenient about the spaces (RFC 4475 "lwsstart", "lwsruri"): a method, something, and
        // a SIP version last.
        let (method, rest) = start_line.split_once(' ')?;
        let (uri, version) = rest.trim_end().rsplit_once(' ')?;
        if method.is_empty()
            || uri.trim().is_empty()
            || !method.bytes().all(is_token_char)
            || method.eq_ignore_ascii_case("ACK")
            || !version.starts_with("SIP/")
        {
            return None;
        }
        let mut scan = Self {
            vias: Vec::new(),
            from: None,
            to: None,
            call_id: None,
            cseq: None,
        };
        for line in lines {
            // Lines that are not UTF-8, folded or without a colon are skipped: this is best effort.
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            if line.starts_with([' ', '\t']) || line.contains(['\r', '\0']) {
                continue;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            let name = canonical_name(name.trim());
            if name.eq_ignore_ascii_case("Via") {
                scan.vias.push(value);
            } else if name.eq_ignore_ascii_case("From") {
                scan.from.get_or_insert(value);
            } else if name.eq_ignore_ascii_case("To") {
                scan.to.get_or_insert(value);
            } else if name.eq_ignore_ascii_case("Call-ID") {
                scan.call_id.get_or_insert(value);
            } else if name.eq_ignore_ascii_case("CSeq") {
                scan.cseq.get_or_insert(value);
            }
        }
        Some(scan)
    }
}

/// FNV-1a, for a deterministic To tag in stateless error responses (retransmissions of the same
/// bad request get the same tag).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
