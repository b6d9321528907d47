//! Every RFC 4475 section 3 message (tests/torture/*.dat) sent to a running voxgate over
//! loopback UDP: each is answered with the code the RFC names, or dropped when it is a
//! response, no invalid one starts a call, the valid INVITEs are answered and hung up, and
//! the proxy ends alive and idle.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{Proxy, backend_toml, start_backend};

/// Message -> handling. `Some(code)`: the final response expected; `None`: dropped (no answer).
/// The codes follow the RFC's text for each message, and voxgate's own answers where the RFC
/// leaves the application's (REGISTER and MESSAGE: 405; an INVITE with a To tag and no dialog:
/// 481; a new INVITE: the Backend's 200).
const TABLE: &[(&str, Option<u16>)] = &[
    // 3.1.1 valid
    ("wsinv", Some(481)),   // INVITE with a To tag, no such dialog
    ("intmeth", Some(501)), // unknown method
    ("esc01", Some(200)),   // call set up, then hung up
    ("escnull", Some(405)), // REGISTER
    ("esc02", Some(501)),   // RE%47IST%45R is not REGISTER
    ("lwsdisp", Some(200)), // OPTIONS
    ("longreq", Some(200)), // call (no branch on the top Via: RFC 3261 17.2.3)
    ("dblreq", Some(405)),  // the REGISTER; the INVITE after Content-Length is ignored
    ("semiuri", Some(200)), // OPTIONS
    ("transports", Some(200)),
    ("mpart01", Some(405)), // MESSAGE
    ("unreason", None),     // a response
    ("noreason", None),     // a response
    // 3.1.2 invalid
    ("badinv01", Some(400)),
    ("clerr", Some(400)),
    ("ncl", Some(400)),
    ("scalar02", Some(400)),
    ("scalarlg", None),
    ("quotbal", Some(400)),
    ("ltgtruri", Some(400)),
    ("lwsruri", Some(400)),
    ("lwsstart", Some(400)),
    ("trws", Some(400)),
    ("escruri", Some(400)),
    ("baddate", Some(200)), // the Date is not used: accepted, call set up and hung up
    ("regbadct", Some(400)),
    ("badaspec", Some(400)),
    ("baddn", Some(400)),
    ("badvers", Some(505)),
    ("mismatch01", Some(400)),
    ("mismatch02", Some(501)),
    ("bigcode", None),
    // 3.2 transaction layer
    ("badbranch", Some(400)),
    // 3.3 application layer
    ("insuf", Some(400)),
    ("unkscm", Some(416)),
    ("novelsc", Some(416)),
    ("unksm2", Some(405)), // REGISTER
    ("bext01", Some(420)),
    ("invut", Some(415)),
    ("regaut01", Some(405)), // REGISTER
    ("multi01", Some(400)),
    ("mcl01", Some(400)),
    ("bcast", None),
    ("zeromf", Some(200)), // OPTIONS: an endpoint answers it
    ("cparam01", Some(405)),
    ("cparam02", Some(405)),
    ("regescrt", Some(405)),
    ("sdp01", Some(406)),
    // 3.4 backward compatibility
    ("inv2543", Some(200)), // RFC 2543 INVITE: accepted, call set up and hung up
];

/// The message with the addresses of its body (SDP) moved from 192.0.2.x to 127.0.0.x (same
/// length, so Content-Length still holds): media stays on loopback. Headers are verbatim.
fn loopback_body(bytes: &[u8]) -> Vec<u8> {
    let Some(head) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return bytes.to_vec();
    };
    let (head, body) = bytes.split_at(head + 4);
    let mut out = head.to_vec();
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(b"192.0.2.") {
            out.extend_from_slice(b"127.0.0.");
            i += 8;
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

/// Several messages share the branch `z9hG4bKkdjuw` and a sent-by, which would make a later one a
/// retransmission of an earlier one's transaction: that branch gets the message name appended.
fn unique_branch(bytes: Vec<u8>, name: &str) -> Vec<u8> {
    let needle = b"branch=z9hG4bKkdjuw";
    let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) else {
        return bytes;
    };
    let mut out = bytes[..at + needle.len()].to_vec();
    out.extend_from_slice(format!("-{name}").as_bytes());
    out.extend_from_slice(&bytes[at + needle.len()..]);
    out
}

/// The first final response within `wait`, as text ("" on silence).
fn final_response(socket: &UdpSocket, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65_536];
    while Instant::now() < deadline {
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            if !text.starts_with("SIP/2.0 1") {
                return text;
            }
        }
    }
    String::new()
}

fn header<'a>(message: &'a str, name: &str) -> &'a str {
    message
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .unwrap_or_else(|| panic!("no {name} in {message}"))
}

/// ACK then BYE for the call `ok` answered, from `socket`; the BYE must get 200.
fn hang_up(socket: &UdpSocket, proxy: SocketAddr, ok: &str, name: &str) {
    let local = socket.local_addr().unwrap();
    let contact = header(ok, "Contact");
    let target = contact.trim_start_matches('<').split('>').next().unwrap();
    let number: u32 = header(ok, "CSeq")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let request = |method: &str, seq: u32| {
        format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{name}{method}\r\n\
             Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {seq} {method}\r\n\
             Content-Length: 0\r\n\r\n",
            header(ok, "From"),
            header(ok, "To"),
            header(ok, "Call-ID"),
        )
    };
    socket
        .send_to(request("ACK", number).as_bytes(), proxy)
        .unwrap();
    socket
        .send_to(request("BYE", number + 1).as_bytes(), proxy)
        .unwrap();
    let answer = final_response(socket, Duration::from_secs(2));
    assert!(answer.starts_with("SIP/2.0 200 "), "{name} BYE: {answer}");
}

#[test]
fn rfc4475_messages_are_answered_as_the_rfc_says() {
    let started = Instant::now();
    let (_backend, addr) = start_backend("torture-b1", &[]);
    let config = format!(
        "[health]\ninterval = \"1s\"\n{}",
        backend_toml("b1", addr, 10, None)
    );
    let mut proxy = Proxy::start("torture-proxy", &config);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/torture");
    let files = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "dat")
        })
        .count();
    assert_eq!(files, TABLE.len(), "one table row per message file");

    let mut calls = 0.0;
    for (name, want) in TABLE {
        let bytes = loopback_body(&std::fs::read(format!("{dir}/{name}.dat")).unwrap());
        let bytes = unique_branch(bytes, name);
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        socket.send_to(&bytes, proxy.sip).unwrap();
        let wait = Duration::from_millis(if want.is_some() { 2000 } else { 400 });
        let answer = final_response(&socket, wait);
        match want {
            None => assert_eq!(answer, "", "{name} must be dropped"),
            Some(code) => {
                assert!(
                    answer.starts_with(&format!("SIP/2.0 {code} ")),
                    "{name}: want {code}, got {answer:?}"
                );
                if *code == 420 {
                    let unsupported = header(&answer, "Unsupported");
                    assert!(unsupported.contains("nothingSupportsThis"), "{answer}");
                    assert!(
                        unsupported.contains("nothingSupportsThisEither"),
                        "{answer}"
                    );
                }
                if *code == 415 {
                    assert_eq!(header(&answer, "Accept"), "application/sdp", "{answer}");
                }
            }
        }
        if answer.starts_with("SIP/2.0 200 ") && header(&answer, "CSeq").ends_with("INVITE") {
            calls += 1.0;
            hang_up(&socket, proxy.sip, &answer, name);
        }
        proxy.assert_alive();
        assert_eq!(
            proxy.counter("voxgate_sessions_started_total"),
            calls,
            "{name}: a call was started by a message that should not start one"
        );
    }
    assert_eq!(calls, 4.0, "esc01, longreq, baddate and inv2543 are calls");
    proxy.assert_idle(Duration::from_secs(5));
    proxy.assert_alive();
    eprintln!("torture run took {:?}", started.elapsed());
}
