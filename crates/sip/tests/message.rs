//! Message parsing and validation: RFC 4475-style torture samples, error responses, and
//! property tests that no input panics.

// Test helpers outside #[test] fns unwrap too; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Instant;

use proptest::prelude::*;
use voxgate_sip::message::{call_id, cseq, error_response, from_tag, top_branch};
use voxgate_sip::{MAX_MESSAGE_SIZE, ParseError, TimerConfig, Transactions, Transport, parse};

const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bKnashds8\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 149\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\n\
s=-\r\n\
c=IN IP4 192.0.2.101\r\n\
t=0 0\r\n\
m=audio 49172 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

fn without_header(text: &str, name: &str) -> String {
    text.split("\r\n")
        .filter(|line| !line.starts_with(name))
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn status_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.split("\r\n").next().unwrap_or_default().to_string()
}

#[test]
fn valid_invite_with_sdp() {
    assert_eq!(INVITE.len() - INVITE.find("\r\n\r\n").unwrap() - 4, 149);
    let msg = parse(INVITE.as_bytes()).unwrap();
    assert_eq!(msg.body().len(), 149);
    assert_eq!(
        call_id(&msg),
        Some("a84b4c76e66710@pc33.atlanta.example.com")
    );
    assert_eq!(cseq(&msg), Some((314159, rsip::Method::Invite)));
    assert_eq!(top_branch(&msg).as_deref(), Some("z9hG4bKnashds8"));
    assert_eq!(from_tag(&msg).as_deref(), Some("1928301774"));
}

#[test]
fn truncated_body_is_rejected_and_answered() {
    let truncated = &INVITE[..INVITE.len() - 40];
    let err = parse(truncated.as_bytes()).unwrap_err();
    assert_eq!(
        err,
        ParseError::BodyLength {
            declared: 149,
            actual: 109
        }
    );
    let response = error_response(truncated.as_bytes(), &err).unwrap();
    assert_eq!(status_line(&response), "SIP/2.0 400 Bad Content-Length");
}

#[test]
fn content_length_too_big_or_not_a_number() {
    let big = INVITE.replace("Content-Length: 149", "Content-Length: 9999");
    assert!(matches!(
        parse(big.as_bytes()),
        Err(ParseError::BodyLength { declared: 9999, .. })
    ));
    let nan = INVITE.replace("Content-Length: 149", "Content-Length: lots");
    assert!(matches!(
        parse(nan.as_bytes()),
        Err(ParseError::InvalidHeader {
            header: "Content-Length",
            ..
        })
    ));
}

#[test]
fn extra_body_bytes_are_dropped() {
    let longer = format!("{INVITE}garbage after the body");
    assert_eq!(parse(longer.as_bytes()).unwrap().body().len(), 149);
}

#[test]
fn huge_header_is_too_large_with_513() {
    let huge = INVITE.replace(
        "Contact:",
        &format!("X-Padding: {}\r\nContact:", "a".repeat(MAX_MESSAGE_SIZE)),
    );
    let err = parse(huge.as_bytes()).unwrap_err();
    assert!(matches!(err, ParseError::TooLarge { .. }));
    assert_eq!(err.status_code(), 513);
    let response = error_response(huge.as_bytes(), &err).unwrap();
    assert_eq!(status_line(&response), "SIP/2.0 513 Message Too Large");
}

#[test]
fn binary_noise_is_not_answered() {
    let noise: Vec<u8> = (0..600u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let err = parse(&noise).unwrap_err();
    assert_eq!(error_response(&noise, &err), None);
    assert_eq!(error_response(b"", &err), None);
}

#[test]
fn missing_call_id_gets_400_copying_via() {
    let text = without_header(INVITE, "Call-ID");
    let err = parse(text.as_bytes()).unwrap_err();
    assert_eq!(err, ParseError::MissingHeader("Call-ID"));
    assert_eq!(err.status_code(), 400);
    let response = error_response(text.as_bytes(), &err).unwrap();
    let response_text = std::str::from_utf8(&response).unwrap();
    assert_eq!(status_line(&response), "SIP/2.0 400 Missing Call-ID");
    assert!(
        response_text.contains(
            "\r\nVia: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bKnashds8\r\n"
        )
    );
    assert!(response_text.contains("\r\nCSeq: 314159 INVITE\r\n"));
    assert!(response_text.contains("\r\nTo: Bob <sip:bob@biloxi.example.com>;tag="));
    assert!(response_text.ends_with("Content-Length: 0\r\n\r\n"));
}

#[test]
fn error_response_for_complete_headers_is_a_valid_response() {
    let text = INVITE.replace("CSeq: 314159 INVITE", "CSeq: 314159 BYE");
    let err = parse(text.as_bytes()).unwrap_err();
    assert!(matches!(
        err,
        ParseError::InvalidHeader { header: "CSeq", .. }
    ));
    let response = error_response(text.as_bytes(), &err).unwrap();
    let parsed = parse(&response).unwrap();
    assert!(parsed.is_response());
}

#[test]
fn each_missing_mandatory_header_is_named() {
    for (header, name) in [
        ("Via", "Via"),
        ("From", "From"),
        ("To", "To"),
        ("CSeq", "CSeq"),
    ] {
        let text = without_header(INVITE, header);
        assert_eq!(
            parse(text.as_bytes()),
            Err(ParseError::MissingHeader(name)),
            "{header}"
        );
    }
    // Max-Forwards may be absent.
    parse(without_header(INVITE, "Max-Forwards").as_bytes()).unwrap();
    // No Via: cannot be answered.
    let text = without_header(INVITE, "Via");
    let err = parse(text.as_bytes()).unwrap_err();
    assert_eq!(error_response(text.as_bytes(), &err), None);
}

#[test]
fn responses_and_acks_with_errors_are_not_answered() {
    let response = "SIP/2.0 200 OK\r\n\
        Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
        From: <sip:a@example.com>;tag=1\r\n\
        To: <sip:b@example.com>;tag=2\r\n\
        CSeq: 1 INVITE\r\n\
        Content-Length: 0\r\n\r\n";
    let err = parse(response.as_bytes()).unwrap_err();
    assert_eq!(err, ParseError::MissingHeader("Call-ID"));
    assert_eq!(error_response(response.as_bytes(), &err), None);

    let ack = without_header(&INVITE.replace("INVITE", "ACK"), "Call-ID");
    let err = parse(ack.as_bytes()).unwrap_err();
    assert_eq!(error_response(ack.as_bytes(), &err), None);
}

#[test]
fn via_without_branch_and_bad_version() {
    // No branch: an RFC 2543 client, accepted (RFC 3261 17.2.3 matches it otherwise).
    let text = INVITE.replace(";branch=z9hG4bKnashds8", "");
    assert!(parse(text.as_bytes()).is_ok());
    // The magic cookie and nothing else, or an empty branch: refused (RFC 4475 "badbranch").
    for branch in [";branch=z9hG4bK", ";branch="] {
        let text = INVITE.replace(";branch=z9hG4bKnashds8", branch);
        assert!(matches!(
            parse(text.as_bytes()),
            Err(ParseError::InvalidHeader { header: "Via", .. })
        ));
    }
    let text = INVITE.replace("SIP/2.0\r\n", "SIP/7.0\r\n");
    let err = parse(text.as_bytes()).unwrap_err();
    assert_eq!(err, ParseError::UnsupportedVersion);
    let response = error_response(text.as_bytes(), &err).unwrap();
    assert_eq!(status_line(&response), "SIP/2.0 505 Version Not Supported");
}

#[test]
fn no_blank_line_or_bare_lf_is_malformed() {
    let text = INVITE.split("\r\n\r\n").next().unwrap();
    assert!(matches!(
        parse(text.as_bytes()),
        Err(ParseError::Malformed(_))
    ));
    let lf = INVITE.replace("\r\n", "\n");
    assert!(matches!(
        parse(lf.as_bytes()),
        Err(ParseError::Malformed(_))
    ));
}

/// RFC 4475 3.1.1.1-style: odd but valid whitespace, case, compact forms and folding.
#[test]
fn tortuous_but_valid_messages_parse() {
    let text = "\r\nINVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n\
        TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n\
        from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n\
        MaX-fOrWaRdS: 0068\r\n\
        Call-ID: wsinv.ndaksdj@192.0.2.1\r\n\
        Content-Length   : 0\r\n\
        cseq: 0009\r\n  INVITE\r\n\
        Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n\
        s :\r\n\
        NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n\
        UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n\
        m:\"Quoted string\\\"\\\"\"<sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n  secondparam ; q = 0.33\r\n\r\n";
    // rsip rejects some of 4475's wilder spellings (spaces inside "SIP / 2.0", "tag = x"); what
    // matters is a typed error, never a panic. The simpler valid forms below must parse.
    let _ = parse(text.as_bytes());
    let simple = "INVITE sip:bob@example.com SIP/2.0\r\n\
        v: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK390skdjuw\r\n\
        t: <sip:bob@example.com>\r\n\
        f: \"Alice\" <sip:alice@example.com>\r\n ;tag=98asjd8\r\n\
        max-forwards: 68\r\n\
        i: wsinv.ndaksdj@192.0.2.1\r\n\
        CSEQ: 9 INVITE\r\n\
        NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n\
        l: 0\r\n\r\n";
    let msg = parse(simple.as_bytes()).unwrap();
    assert_eq!(from_tag(&msg).as_deref(), Some("98asjd8"));
    assert_eq!(cseq(&msg), Some((9, rsip::Method::Invite)));
}

fn addr() -> SocketAddr {
    "198.51.100.7:5060".parse().unwrap()
}

fn exercise(bytes: &[u8]) {
    if let Err(err) = parse(bytes) {
        let _ = err.status_code();
        if let Some(response) = error_response(bytes, &err) {
            // The answer carries the error's status code; it may lack headers the request lacked
            // (a missing Call-ID), so it need not parse, but it must not panic either.
            let status = format!("SIP/2.0 {} ", err.status_code());
            assert!(
                response.starts_with(status.as_bytes()),
                "{response:?} for {err:?}"
            );
            let _ = parse(&response);
        }
    } else if let Ok(msg) = parse(bytes) {
        // What we accept, we can write and read back.
        let again = parse(&voxgate_sip::message::to_bytes(&msg));
        assert!(again.is_ok(), "re-parse of {msg:?} failed: {again:?}");
    }
    // The anchor is the only clock read; time here is irrelevant.
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    let mut tx = Transactions::new(TimerConfig::default());
    let _ = tx.handle_datagram(now, addr(), Transport::Udp, bytes);
    let _ = tx.handle_datagram(now, addr(), Transport::Tcp, bytes);
    tx.handle_timeout(now + std::time::Duration::from_secs(100));
    while tx.poll_transmit().is_some() {}
    while tx.poll_event().is_some() {}
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let token = prop::sample::select(vec![
        b"\r\n".to_vec(),
        b":".to_vec(),
        b";".to_vec(),
        b",".to_vec(),
        b" ".to_vec(),
        b"\"".to_vec(),
        b"<".to_vec(),
        b"\r\n\r\n".to_vec(),
        b";tag=".to_vec(),
        b"%".to_vec(),
        vec![0xff],
        vec![0],
    ]);
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), token).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Flip(i, b) => {
                if !bytes.is_empty() {
                    let i = i % len;
                    bytes[i] = *b;
                }
            }
            Mutation::Insert(i, t) => {
                let i = i % (bytes.len() + 1);
                bytes.splice(i..i, t.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let i = i % len;
                let end = (i + n).min(bytes.len());
                if i < end {
                    bytes.drain(i..end);
                }
            }
            Mutation::Truncate(i) => bytes.truncate(i % len),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&bytes);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "[ -~\r\n]{0,600}") {
        exercise(text.as_bytes());
        let with_start = format!("INVITE sip:a@b SIP/2.0\r\n{text}");
        exercise(with_start.as_bytes());
    }

    #[test]
    fn mutated_messages_never_panic(mutations in prop::collection::vec(mutation(), 1..8)) {
        exercise(&apply(INVITE.as_bytes().to_vec(), &mutations));
        let response = "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
            From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\
            Content-Length: 0\r\n\r\n";
        exercise(&apply(response.as_bytes().to_vec(), &mutations));
    }
}
