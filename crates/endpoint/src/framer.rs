//! Cuts a TCP byte stream into SIP messages (RFC 3261 18.3) and keep-alive pings (RFC 5626), sans-I/O.
//!
//! The framer only finds message boundaries: the header section ends at the first CRLFCRLF and
//! the body is exactly Content-Length (or compact `l`) bytes. Validating the message is left to
//! `voxgate_sip`'s parser. Anything that makes the boundary unknowable (no or a bad
//! Content-Length, a header section or message above [`MAX_MESSAGE_SIZE`]) is a [`FrameError`],
//! after which the stream cannot be resynchronised and the connection must be closed.
//!
//! Framing depends only on the bytes, never on how they were chunked: a CRLF that may be the
//! start of a CRLFCRLF ping is held until the next bytes decide.

use bytes::{Buf as _, Bytes, BytesMut};
use voxgate_sip::MAX_MESSAGE_SIZE;

const CRLF: &[u8] = b"\r\n";
const PING: &[u8] = b"\r\n\r\n";

/// One unit cut from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole SIP message: header section, blank line and exactly Content-Length body bytes.
    Message(Bytes),
    /// A CRLFCRLF keep-alive ping between messages; RFC 5626 3.5.1 answers it with one CRLF.
    Ping,
}

/// Why the stream cannot be framed any further.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// No CRLFCRLF within [`MAX_MESSAGE_SIZE`] bytes, or one after it.
    #[error("header section longer than {MAX_MESSAGE_SIZE} bytes")]
    HeaderTooLarge,
    /// Header section plus Content-Length exceeds [`MAX_MESSAGE_SIZE`].
    #[error("message of {len} bytes exceeds the {MAX_MESSAGE_SIZE} byte limit")]
    MessageTooLarge {
        /// Declared length of the whole message.
        len: usize,
    },
    /// The header section has no Content-Length, which a stream transport requires.
    #[error("message without Content-Length")]
    MissingContentLength,
    /// Content-Length is not a number, or two Content-Length headers disagree.
    #[error("invalid Content-Length")]
    InvalidContentLength,
}

/// Incremental framer for one connection's inbound bytes.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: BytesMut,
    /// How far `buf` was searched for CRLFCRLF without finding it, so byte-at-a-time input stays
    /// linear.
    scanned: usize,
    /// Total length of the message whose header section is complete.
    pending: Option<usize>,
}

impl StreamFramer {
    /// An empty framer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The receive buffer, to read into directly (`AsyncReadExt::read_buf`).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed. Call until `Ok(None)`
    /// after every [`Self::extend`]; after an error the framer must be dropped.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let total = match self.pending {
            Some(total) => total,
            None => {
                if let Some(frame) = self.skip_keep_alives() {
                    return Ok(frame);
                }
                match self.header_section()? {
                    Some(total) => {
                        self.pending = Some(total);
                        total
                    }
                    None => return Ok(None),
                }
            }
        };
        if self.buf.len() < total {
            return Ok(None);
        }
        self.pending = None;
        self.scanned = 0;
        Ok(Some(Frame::Message(self.buf.split_to(total).freeze())))
    }

    /// Consumes CRLFs before a message. `Some(Some(Ping))` for a CRLFCRLF, `Some(None)` when a
    /// CRLF may still become a ping, `None` when a message starts here.
    fn skip_keep_alives(&mut self) -> Option<Option<Frame>> {
        loop {
            if self.buf.starts_with(PING) {
                self.buf.advance(PING.len());
                self.scanned = 0;
                return Some(Some(Frame::Ping));
            }
            if self.buf.len() < PING.len() && PING.starts_with(&self.buf) && !self.buf.is_empty() {
                return Some(None);
            }
            if !self.buf.starts_with(CRLF) {
                return None;
            }
            // A lone CRLF: a pong, or stray line ends before a start line (RFC 3261 7.5).
            self.buf.advance(CRLF.len());
            self.scanned = 0;
        }
    }

    /// The total length of the message at the start of `buf` once its header section is complete.
    fn header_section(&mut self) -> Result<Option<usize>, FrameError> {
        let from = self.scanned.saturating_sub(PING.len() - 1);
        let Some(at) = find(&self.buf[from..], PING).map(|at| from + at) else {
            if self.buf.len() > MAX_MESSAGE_SIZE {
                return Err(FrameError::HeaderTooLarge);
            }
            self.scanned = self.buf.len();
            return Ok(None);
        };
        let head_len = at + PING.len();
        if head_len > MAX_MESSAGE_SIZE {
            return Err(FrameError::HeaderTooLarge);
        }
        let body_len = content_length(&self.buf[..at])?;
        let len = head_len.saturating_add(body_len);
        if len > MAX_MESSAGE_SIZE {
            return Err(FrameError::MessageTooLarge { len });
        }
        Ok(Some(len))
    }
}

/// The Content-Length of a header section (start line and headers, without the blank line).
/// Folded continuation lines are joined to the header they continue.
fn content_length(head: &[u8]) -> Result<usize, FrameError> {
    let mut found: Option<usize> = None;
    let mut lines = head.split(|&b| b == b'\n').skip(1).peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let mut value = line[colon + 1..].trim_ascii().to_vec();
        while let Some(next) =
            lines.next_if(|l| l.first().is_some_and(|&b| b == b' ' || b == b'\t'))
        {
            let next = next.strip_suffix(b"\r").unwrap_or(next);
            value.extend_from_slice(next.trim_ascii());
        }
        let len = parse_length(&value)?;
        if found.is_some_and(|earlier| earlier != len) {
            return Err(FrameError::InvalidContentLength);
        }
        found = Some(len);
    }
    found.ok_or(FrameError::MissingContentLength)
}

/// A decimal length; anything above [`MAX_MESSAGE_SIZE`] is clamped just above it (the caller
/// rejects it as too large) so huge numbers cannot overflow.
fn parse_length(value: &[u8]) -> Result<usize, FrameError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(FrameError::InvalidContentLength);
    }
    let mut len = 0usize;
    for digit in value {
        len = len * 10 + usize::from(digit - b'0');
        if len > MAX_MESSAGE_SIZE {
            return Ok(MAX_MESSAGE_SIZE + 1);
        }
    }
    Ok(len)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn message(method: &str, body: &str, content_length_name: &str) -> Vec<u8> {
        format!(
            "{method} sip:bob@example.com SIP/2.0\r\n\
             Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK{method}\r\n\
             Call-ID: {method}@test\r\n\
             CSeq: 1 {method}\r\n\
             {content_length_name}: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn frames(framer: &mut StreamFramer) -> Result<Vec<Frame>, FrameError> {
        let mut out = Vec::new();
        while let Some(frame) = framer.next_frame()? {
            out.push(frame);
        }
        Ok(out)
    }

    fn feed_all(chunks: &[&[u8]]) -> Result<Vec<Frame>, FrameError> {
        let mut framer = StreamFramer::new();
        let mut out = Vec::new();
        for chunk in chunks {
            framer.extend(chunk);
            out.extend(frames(&mut framer)?);
        }
        Ok(out)
    }

    #[test]
    fn pipelined_messages_with_bodies() {
        let a = message("INVITE", "v=0\r\n\r\nnot a boundary", "Content-Length");
        let b = message("OPTIONS", "", "l");
        let stream = [a.clone(), b.clone()].concat();
        assert_eq!(
            feed_all(&[&stream]),
            Ok(vec![Frame::Message(a.into()), Frame::Message(b.into())])
        );
    }

    #[test]
    fn compact_and_case_insensitive_content_length() {
        for name in [
            "content-length",
            "CONTENT-LENGTH",
            "L",
            "l ",
            "Content-Length\t",
        ] {
            let m = message("BYE", "abc", name);
            assert_eq!(
                feed_all(&[&m]),
                Ok(vec![Frame::Message(m.into())]),
                "{name}"
            );
        }
    }

    #[test]
    fn folded_content_length() {
        let m = b"BYE sip:a SIP/2.0\r\nContent-Length:\r\n 2\r\n\r\nhi".to_vec();
        assert_eq!(feed_all(&[&m]), Ok(vec![Frame::Message(m.into())]));
    }

    #[test]
    fn keep_alives_between_messages() {
        let m = message("OPTIONS", "", "Content-Length");
        let stream = [b"\r\n\r\n".as_slice(), b"\r\n", &m, b"\r\n\r\n\r\n\r\n"].concat();
        let expected = vec![
            Frame::Ping,
            Frame::Message(m.into()),
            Frame::Ping,
            Frame::Ping,
        ];
        assert_eq!(feed_all(&[&stream]), Ok(expected.clone()));
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(feed_all(&bytes), Ok(expected));
    }

    #[test]
    fn lone_crlf_waits_for_the_next_bytes() {
        let mut framer = StreamFramer::new();
        framer.extend(b"\r\n");
        assert_eq!(framer.next_frame(), Ok(None));
        framer.extend(b"\r\n");
        assert_eq!(framer.next_frame(), Ok(Some(Frame::Ping)));
        assert_eq!(framer.buffered(), 0);
    }

    #[test]
    fn missing_or_bad_content_length_is_fatal() {
        let no_length = b"OPTIONS sip:a SIP/2.0\r\nCall-ID: x\r\n\r\n";
        assert_eq!(
            feed_all(&[no_length]),
            Err(FrameError::MissingContentLength)
        );
        let bad = b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 1x\r\n\r\n";
        assert_eq!(feed_all(&[bad]), Err(FrameError::InvalidContentLength));
        let conflict = b"OPTIONS sip:a SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(feed_all(&[conflict]), Err(FrameError::InvalidContentLength));
        let huge = b"OPTIONS sip:a SIP/2.0\r\nl: 99999999999999999999999999\r\n\r\n";
        assert!(matches!(
            feed_all(&[huge]),
            Err(FrameError::MessageTooLarge { .. })
        ));
    }

    #[test]
    fn oversized_header_section_is_fatal() {
        let mut framer = StreamFramer::new();
        framer.extend(b"OPTIONS sip:a SIP/2.0\r\nX: ");
        let filler = vec![b'a'; 1024];
        let mut result = Ok(None);
        for _ in 0..20 {
            framer.extend(&filler);
            result = framer.next_frame();
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(FrameError::HeaderTooLarge));
    }

    #[test]
    fn message_at_the_size_limit_passes_and_above_it_fails() {
        let head = b"MESSAGE sip:a SIP/2.0\r\nContent-Length: 00000\r\n\r\n".len();
        let body_len = MAX_MESSAGE_SIZE - head;
        let at_limit = [
            format!("MESSAGE sip:a SIP/2.0\r\nContent-Length: {body_len:05}\r\n\r\n").into_bytes(),
            vec![b'x'; body_len],
        ]
        .concat();
        assert_eq!(at_limit.len(), MAX_MESSAGE_SIZE);
        assert_eq!(
            feed_all(&[&at_limit]),
            Ok(vec![Frame::Message(at_limit.into())])
        );
        let over = format!(
            "MESSAGE sip:a SIP/2.0\r\nContent-Length: {:05}\r\n\r\n",
            body_len + 1
        );
        assert_eq!(
            feed_all(&[over.as_bytes()]),
            Err(FrameError::MessageTooLarge {
                len: MAX_MESSAGE_SIZE + 1
            })
        );
    }

    fn arb_message() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::sample::select(vec!["INVITE", "OPTIONS", "BYE", "ACK"]),
            prop::collection::vec(any::<u8>(), 0..300),
            prop::sample::select(vec!["Content-Length", "l", "content-LENGTH"]),
            any::<bool>(),
        )
            .prop_map(|(method, body, name, keep_alive)| {
                let head = format!(
                    "{method} sip:bob@example.com SIP/2.0\r\nCall-ID: x\r\n{name}: {}\r\nCSeq: 1 {method}\r\n\r\n",
                    body.len()
                );
                let ping: &[u8] = if keep_alive { b"\r\n\r\n" } else { b"" };
                [ping, head.as_bytes(), &body].concat()
            })
    }

    proptest! {
        #[test]
        fn chunking_does_not_change_frames(
            messages in prop::collection::vec(arb_message(), 1..6),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let stream = messages.concat();
            let whole = feed_all(&[&stream]);
            prop_assert!(whole.is_ok());
            let message_count = whole
                .as_ref()
                .map(|f| f.iter().filter(|f| matches!(f, Frame::Message(_))).count())
                .unwrap_or_default();
            prop_assert_eq!(message_count, messages.len());

            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                chunks.push(&stream[start..cut]);
                start = cut;
            }
            prop_assert_eq!(feed_all(&chunks), whole);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..2048), 0..16),
        ) {
            let mut framer = StreamFramer::new();
            for chunk in &chunks {
                framer.extend(chunk);
                match frames(&mut framer) {
                    Ok(frames) => {
                        for frame in frames {
                            if let Frame::Message(m) = frame {
                                prop_assert!(m.len() <= MAX_MESSAGE_SIZE);
                            }
                        }
                    }
                    Err(_) => break,
                }
                prop_assert!(framer.buffered() <= MAX_MESSAGE_SIZE + 2048);
            }
        }

        #[test]
        fn arbitrary_bytes_after_a_header_never_panic(
            tail in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut framer = StreamFramer::new();
            framer.extend(b"INVITE sip:a SIP/2.0\r\n");
            framer.extend(&tail);
            framer.extend(b"\r\n\r\n");
            let _ = frames(&mut framer);
        }
    }
}
