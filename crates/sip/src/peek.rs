//! A look at a request's bytes before it is parsed: its method, whether it is inside a dialog
//! (a To tag) and its User-Agent, for the edge guard that drops what should cost nothing.
//!
//! Only the start line and the header lines are scanned, at most [`crate::MAX_MESSAGE_SIZE`]
//! bytes; nothing is allocated. It is not a parser: a message it misreads is parsed properly
//! (and refused, if need be) by the transaction layer.

/// What [`request`] sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek<'a> {
    /// The method token of the start line (`INVITE`, `OPTIONS`, ...).
    pub method: &'a str,
    /// The To header carries a tag: the request belongs to a dialog.
    pub in_dialog: bool,
    /// The User-Agent header's value.
    pub user_agent: Option<&'a str>,
}

impl Peek<'_> {
    /// Whether this request may open a dialog or stand alone (not ACK or CANCEL, which belong
    /// to an INVITE transaction, and without a To tag).
    pub fn out_of_dialog(&self) -> bool {
        !self.in_dialog && self.method != "ACK" && self.method != "CANCEL"
    }
}

/// The request in `bytes`; `None` for a response or for bytes that do not start like a request.
pub fn request(bytes: &[u8]) -> Option<Peek<'_>> {
    let bytes = &bytes[..bytes.len().min(crate::MAX_MESSAGE_SIZE)];
    let mut lines = bytes.split(|&b| b == b'\n');
    let start = lines.next()?;
    if start.starts_with(b"SIP/") {
        return None;
    }
    let end = start.iter().position(|&b| b == b' ')?;
    let method = &start[..end];
    if method.is_empty() || method.len() > 16 || !method.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    let method = std::str::from_utf8(method).ok()?;
    let mut peek = Peek {
        method,
        in_dialog: false,
        user_agent: None,
    };
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"To") || name.eq_ignore_ascii_case(b"t") {
            peek.in_dialog = has_tag(value);
        } else if name.eq_ignore_ascii_case(b"User-Agent") {
            peek.user_agent = std::str::from_utf8(value).ok();
        }
    }
    Some(peek)
}

/// Whether a To value has a `tag` parameter outside its `<...>` and quotes.
fn has_tag(value: &[u8]) -> bool {
    let params = match value.iter().rposition(|&b| b == b'>') {
        Some(end) => &value[end + 1..],
        None => value,
    };
    params.split(|&b| b == b';').skip(1).any(|param| {
        trim(param)
            .get(..3)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"tag"))
    })
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_method_dialog_and_user_agent() {
        let invite = b"INVITE sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
            To: <sip:1@h>\r\nUser-Agent: friendly-scanner\r\n\r\nv=0\r\nTo: x;tag=body\r\n";
        let peek = request(invite).expect("a request");
        assert_eq!(peek.method, "INVITE");
        assert!(!peek.in_dialog);
        assert!(peek.out_of_dialog());
        assert_eq!(peek.user_agent, Some("friendly-scanner"));

        let bye = b"BYE sip:1@h SIP/2.0\nt: \"a;tag=no\" <sip:1@h;tag=uri>;tag=abc\n\n";
        let peek = request(bye).expect("a request");
        assert!(peek.in_dialog);
        assert!(!peek.out_of_dialog());
        assert_eq!(peek.user_agent, None);

        let no_tag = b"OPTIONS sip:h SIP/2.0\r\nTo: <sip:h;tag=inside>;x=1\r\n\r\n";
        assert!(!request(no_tag).expect("a request").in_dialog);
        let cancel = b"CANCEL sip:h SIP/2.0\r\nTo: <sip:h>\r\n\r\n";
        assert!(!request(cancel).expect("a request").out_of_dialog());
    }

    #[test]
    fn responses_and_noise_are_not_requests() {
        assert_eq!(request(b"SIP/2.0 200 OK\r\n\r\n"), None);
        assert_eq!(request(b"\x00\x01\x02"), None);
        assert_eq!(request(b""), None);
        assert_eq!(request(b"invite sip:h SIP/2.0\r\n"), None);
        assert_eq!(request(b"\r\n\r\n"), None);
    }
}
