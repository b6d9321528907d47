//! The loadgen's caller against its echo Backend on loopback: calls, media echo, the cap, bad input.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::{
    Running, backend_status, binary, field, field_f64, lease_port, run_calls, sip_exchange,
    wait_for_sip, wait_until,
};

fn start_backend(name: &str, max_sessions: u32) -> (Running, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], lease_port()));
    let backend = Running::start(
        name,
        &binary("voxgate-loadgen"),
        &[
            "backend",
            "--listen",
            &addr.to_string(),
            "--max-sessions",
            &max_sessions.to_string(),
            "--retry-after",
            "7s",
            "--status-every",
            "100ms",
        ],
    );
    wait_for_sip(addr, Duration::from_secs(10));
    (backend, addr)
}

#[test]
fn calls_complete_with_media_echoed() {
    let (mut backend, addr) = start_backend("echo-basic", 50);
    let (output, report) = run_calls(&[
        "--target",
        &addr.to_string(),
        "--rate",
        "20",
        "--concurrency",
        "10",
        "--total",
        "20",
        "--hold",
        "1s",
        "--max-failure-rate",
        "0",
        "--max-loss",
        "0.01",
    ]);
    assert!(output.status.success(), "loadgen failed: {report:#}");
    assert_eq!(field(&report, &["calls", "attempted"]), 20);
    assert_eq!(field(&report, &["calls", "completed"]), 20, "{report:#}");
    let sent = field(&report, &["rtp", "sent"]);
    let received = field(&report, &["rtp", "received"]);
    // 1 s of 20 ms packets per call.
    assert!(sent >= 20 * 45, "too few RTP packets sent: {report:#}");
    assert!(received * 100 >= sent * 99, "echo lost: {report:#}");
    assert!(field(&report, &["media_rtt_ms", "count"]) >= received / 2);
    assert!(field_f64(&report, &["setup_ms", "p50"]) > 0.0);
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("verdict   PASS"), "{summary}");
    assert!(
        backend.terminate(Duration::from_secs(10)),
        "backend did not exit 0:\n{}",
        backend.log()
    );
}

#[test]
fn backend_cap_answers_503_with_retry_after() {
    let (backend, addr) = start_backend("echo-cap", 3);
    let (output, report) = run_calls(&[
        "--target",
        &addr.to_string(),
        "--rate",
        "100",
        "--concurrency",
        "6",
        "--total",
        "6",
        "--hold",
        "2s",
    ]);
    assert!(output.status.success(), "{report:#}");
    assert_eq!(field(&report, &["calls", "answered"]), 3, "{report:#}");
    assert_eq!(
        field(&report, &["calls", "rejected", "503"]),
        3,
        "{report:#}"
    );

    // The 503 itself carries Retry-After. Fill the cap again with held calls, then probe by hand.
    let holder = std::thread::spawn(move || {
        run_calls(&[
            "--target",
            &addr.to_string(),
            "--rate",
            "100",
            "--concurrency",
            "3",
            "--total",
            "3",
            "--hold",
            "3s",
        ])
    });
    // Full again once the held calls are answered (3 answered before them) and up.
    let full = wait_until(Duration::from_secs(5), || {
        let log = backend.log();
        backend_status(&log, "answered") == Some(6) && backend_status(&log, "active") == Some(3)
    });
    assert!(
        full,
        "the held calls never filled the cap:\n{}",
        backend.log()
    );
    let response = sip_exchange(
        "127.0.0.1",
        addr,
        invite(addr, "cap-probe").as_bytes(),
        Duration::from_secs(2),
    );
    assert!(response.starts_with("SIP/2.0 503 "), "{response}");
    assert!(response.contains("Retry-After: 7"), "{response}");
    let (_, held) = holder.join().unwrap();
    assert_eq!(field(&held, &["calls", "completed"]), 3, "{held:#}");
}

#[test]
fn garbage_gets_400_or_silence_and_the_backend_keeps_working() {
    let (mut backend, addr) = start_backend("echo-garbage", 10);
    // A request missing its Call-ID can be answered (it has a Via): 400.
    let no_call_id = invite(addr, "x").replace("Call-ID: x@test\r\n", "");
    let response = sip_exchange(
        "127.0.0.1",
        addr,
        no_call_id.as_bytes(),
        Duration::from_secs(2),
    );
    assert!(response.starts_with("SIP/2.0 400 "), "{response}");
    assert!(
        response.contains("branch=z9hG4bKtest"),
        "response lost the Via: {response}"
    );
    // Binary noise, a truncated message and an oversized one get no answer at all or a 4xx/5xx.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .send_to(&[0xff, 0x00, 0x13, 0x37, 0x80], addr)
        .unwrap();
    let truncated = &invite(addr, "trunc")[..120];
    socket.send_to(truncated.as_bytes(), addr).unwrap();
    let mut huge = invite(addr, "huge");
    huge.insert_str(
        huge.find("Max-Forwards").unwrap(),
        &format!("X-Pad: {}\r\n", "a".repeat(17_000)),
    );
    let answer = sip_exchange("127.0.0.1", addr, huge.as_bytes(), Duration::from_secs(2));
    assert!(answer.starts_with("SIP/2.0 513 "), "{answer}");
    // Still alive and answering.
    wait_for_sip(addr, Duration::from_secs(2));
    let (output, report) = run_calls(&[
        "--target",
        &addr.to_string(),
        "--total",
        "2",
        "--rate",
        "10",
        "--hold",
        "300ms",
    ]);
    assert!(output.status.success());
    assert_eq!(field(&report, &["calls", "completed"]), 2, "{report:#}");
    assert!(
        backend.terminate(Duration::from_secs(10)),
        "{}",
        backend.log()
    );
    assert!(!backend.log().contains("panicked"), "{}", backend.log());
}

fn invite(addr: SocketAddr, call_id: &str) -> String {
    let body = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    format!(
        "INVITE sip:echo@{addr} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKtest{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=t1\r\nTo: <sip:echo@{addr}>\r\n\
         Call-ID: {call_id}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:t@127.0.0.1:9>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}
