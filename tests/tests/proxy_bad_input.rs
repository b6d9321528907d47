//! Bad input at the SIP listener: oversized and binary datagrams, Max-Forwards 0, a missing
//! Call-ID, unknown dialogs, unsupported methods and unusable SDP are each answered as RFC 3261
//! says or dropped, and the proxy keeps working with no slot or port leaked.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Proxy, backend_toml, field, raw_request, run_calls, sip_exchange, start_backend};

const WAIT: Duration = Duration::from_secs(2);
const LOCAL: &str = "127.0.0.1:9";

#[test]
fn bad_input_is_answered_or_dropped_and_leaks_nothing() {
    let (_backend, addr) = start_backend("bad-b1", &[]);
    let config = format!(
        "[health]\ninterval = \"1s\"\n{}",
        backend_toml("b1", addr, 10, None)
    );
    let mut proxy = Proxy::start("bad-proxy", &config);
    let send = |message: &[u8]| sip_exchange("127.0.0.1", proxy.sip, message, WAIT);

    // Over 16 KiB: refused (513) or dropped, never processed.
    let mut huge = raw_request("INVITE", proxy.sip, LOCAL, "huge", "");
    huge.insert_str(
        huge.find("Max-Forwards").unwrap(),
        &format!("X-Pad: {}\r\n", "a".repeat(17 * 1024)),
    );
    let answer = send(huge.as_bytes());
    assert!(
        answer.starts_with("SIP/2.0 513 "),
        "17 KiB datagram: {answer}"
    );

    // Binary noise: no answer at all. A truncated request with a readable Via: 400 or nothing.
    let noise = sip_exchange(
        "127.0.0.1",
        proxy.sip,
        &[0xff, 0x00, 0x13, 0x37, 0x80, 0x00, 0xfe],
        Duration::from_millis(700),
    );
    assert_eq!(noise, "");
    let truncated = raw_request("INVITE", proxy.sip, LOCAL, "trunc", "");
    let answer = send(&truncated.as_bytes()[..100]);
    assert!(answer.starts_with("SIP/2.0 400 "), "truncated: {answer}");

    // Max-Forwards 0: 483.
    let looped = raw_request("INVITE", proxy.sip, LOCAL, "loop", "")
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    let answer = send(looped.as_bytes());
    assert!(answer.starts_with("SIP/2.0 483 "), "{answer}");

    // No Call-ID: 400 naming the problem, with our Via so it reaches us.
    let no_call_id =
        raw_request("INVITE", proxy.sip, LOCAL, "nocid", "").replace("Call-ID: nocid@test\r\n", "");
    let answer = send(no_call_id.as_bytes());
    assert!(
        answer.starts_with("SIP/2.0 400 Missing Call-ID"),
        "{answer}"
    );
    assert!(answer.contains("branch=z9hG4bKnocid"), "{answer}");

    // In-dialog requests for no dialog: 481.
    for method in ["BYE", "INFO"] {
        let stray = raw_request(method, proxy.sip, LOCAL, &format!("stray-{method}"), "").replace(
            &format!("To: <sip:echo@{}>", proxy.sip),
            &format!("To: <sip:echo@{}>;tag=gone", proxy.sip),
        );
        let answer = send(stray.as_bytes());
        assert!(answer.starts_with("SIP/2.0 481 "), "{method}: {answer}");
    }

    // REGISTER is not for us: 405 with Allow.
    let answer = send(raw_request("REGISTER", proxy.sip, LOCAL, "reg", "").as_bytes());
    assert!(answer.starts_with("SIP/2.0 405 "), "{answer}");
    let allow = answer
        .lines()
        .find_map(|l| l.strip_prefix("Allow:"))
        .unwrap_or_else(|| panic!("405 without Allow: {answer}"));
    assert!(allow.contains("INVITE") && allow.contains("BYE"), "{allow}");

    // An INVITE whose SDP is unusable: 488, and its slot is released.
    let body = "v=0\r\nthis is not sdp\r\n";
    let bad_sdp = raw_request(
        "INVITE",
        proxy.sip,
        LOCAL,
        "badsdp",
        "Content-Type: application/sdp\r\n",
    )
    .replace(
        "Content-Length: 0\r\n\r\n",
        &format!("Content-Length: {}\r\n\r\n{body}", body.len()),
    );
    let answer = send(bad_sdp.as_bytes());
    assert!(answer.starts_with("SIP/2.0 488 "), "{answer}");

    proxy.assert_alive();
    proxy.assert_idle(Duration::from_secs(2));
    assert_eq!(proxy.counter("voxgate_sessions_started_total"), 0.0);

    // Still taking calls.
    let (output, report) = run_calls(&[
        "--target",
        &proxy.sip.to_string(),
        "--total",
        "2",
        "--rate",
        "10",
        "--hold",
        "300ms",
        "--max-failure-rate",
        "0",
    ]);
    assert!(output.status.success(), "{report:#}");
    assert_eq!(field(&report, &["calls", "completed"]), 2, "{report:#}");
    proxy.assert_idle(Duration::from_secs(3));
    assert_eq!(proxy.counter("voxgate_sessions_started_total"), 2.0);
    proxy.assert_alive();
}

#[test]
fn unknown_method_gets_501() {
    let (_backend, addr) = start_backend("frob-b1", &[]);
    let config = format!(
        "[health]\ninterval = \"1s\"\n{}",
        backend_toml("b1", addr, 10, None)
    );
    let proxy = Proxy::start("frob-proxy", &config);
    let request = raw_request("FROB", proxy.sip, LOCAL, "frob", "");
    let answer = sip_exchange("127.0.0.1", proxy.sip, request.as_bytes(), WAIT);
    assert!(answer.starts_with("SIP/2.0 501 "), "{answer}");
}
