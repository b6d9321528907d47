//! Calls through voxgate: loadgen calls reach two echo Backends with media relayed both ways, the
//! proxy's counters agree with the loadgen's, and the caller sees only the proxy (topology hiding).

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::uac::{Uac, header, media_addr, sdp_of};
use common::{Proxy, backend_toml, field, numbers_in, run_calls, start_backend, udp_ports_of};

#[test]
fn calls_are_relayed_both_ways_and_counted() {
    let (_b1, a1) = start_backend("calls-b1", &["--max-sessions", "50"]);
    let (_b2, a2) = start_backend("calls-b2", &["--max-sessions", "50"]);
    let config = format!(
        "[limits]\nmax_sessions = 50\n[routing]\nseed = 7\n[health]\ninterval = \"1s\"\n{}{}",
        backend_toml("b1", a1, 50, None),
        backend_toml("b2", a2, 50, None)
    );
    let mut proxy = Proxy::start("calls-proxy", &config);
    let (output, report) = run_calls(&[
        "--target",
        &proxy.sip.to_string(),
        "--rate",
        "20",
        "--concurrency",
        "10",
        "--total",
        "10",
        "--hold",
        "1500ms",
        "--max-failure-rate",
        "0",
        "--max-loss",
        "0.01",
    ]);
    assert!(output.status.success(), "loadgen failed: {report:#}");
    assert_eq!(field(&report, &["calls", "completed"]), 10, "{report:#}");
    let sent = field(&report, &["rtp", "sent"]);
    let received = field(&report, &["rtp", "received"]);
    assert!(sent >= 10 * 70, "too few RTP packets sent: {report:#}");
    assert!(received * 100 >= sent * 99, "echo lost: {report:#}");

    // The proxy saw the same calls and relayed at least what came back to the loadgen.
    proxy.assert_idle(Duration::from_secs(5));
    let answered = field(&report, &["calls", "answered"]) as f64;
    assert_eq!(proxy.counter("voxgate_sessions_started_total"), answered);
    assert_eq!(
        proxy.counter("voxgate_sessions_ended_total{cause=\"caller_bye\"}"),
        answered
    );
    for direction in ["caller_to_backend", "backend_to_caller"] {
        let name = format!("voxgate_rtp_packets_total{{direction=\"{direction}\"}}");
        // Relays flush their counts about once a second.
        let counted = common::wait_until(Duration::from_secs(3), || {
            proxy.counter(&name) >= received as f64
        });
        assert!(
            counted,
            "{name} = {} < loadgen received {received}\n{}",
            proxy.counter(&name),
            proxy.metrics()
        );
    }
    assert_eq!(
        proxy.counter("voxgate_sip_messages_total{method=\"INVITE\",direction=\"in\"}"),
        10.0
    );
    proxy.assert_alive();
}

#[test]
fn caller_sees_only_the_proxy() {
    let (backend, addr) = start_backend("topo-b1", &["--answer-delay", "300ms"]);
    let config = format!(
        "[health]\ninterval = \"1s\"\n{}",
        backend_toml("b1", addr, 10, None)
    );
    let mut proxy = Proxy::start("topo-proxy", &config);
    let mut uac = Uac::new("127.0.0.1", proxy.sip);
    uac.send_invite();
    let (provisional, ok) = uac
        .final_response(rsip::Method::Invite, Duration::from_secs(5))
        .expect("no final response to the INVITE");
    assert_eq!(ok.status_code.code(), 200, "{ok}");
    let codes: Vec<u16> = provisional.iter().map(|r| r.status_code.code()).collect();
    assert!(codes.contains(&100), "no 100 Trying: {codes:?}");
    assert!(codes.contains(&180), "180 Ringing not relayed: {codes:?}");

    // Every port the Backend has open (SIP and the RTP socket of this call) is hidden.
    let backend_ports = udp_ports_of(backend.child.id());
    assert!(
        backend_ports.contains(&addr.port()) && backend_ports.len() >= 2,
        "cannot see the Backend's sockets: {backend_ports:?}"
    );
    for message in &uac.received {
        for port in &backend_ports {
            assert!(
                !numbers_in(message).contains(&u64::from(*port)),
                "the caller saw Backend port {port}:\n{message}"
            );
        }
        assert!(
            !message.contains("voxgate-loadgen"),
            "Backend's agent leaked:\n{message}"
        );
    }
    let contact = header(&ok, "Contact").expect("200 has a Contact");
    assert!(
        contact.contains(&format!("@{}>", proxy.sip)),
        "Contact is not the proxy: {contact}"
    );
    let answer = sdp_of(&ok.body);
    assert_eq!(answer.connection, proxy.sip.ip());
    assert!(
        (proxy.media.0..=proxy.media.1).contains(&answer.port),
        "m= port {} outside the proxy's media range {:?}",
        answer.port,
        proxy.media
    );

    // Media through the proxy's address comes back from the echo Backend.
    uac.ack(&ok);
    uac.send_rtp(media_addr(&answer), 10, 0x1234);
    let echoed = uac.recv_rtp(10, Duration::from_secs(2));
    assert!(echoed >= 8, "only {echoed} of 10 RTP packets echoed");

    let bye = uac
        .in_dialog(rsip::Method::Bye, None, Duration::from_secs(5))
        .expect("no answer to BYE");
    assert_eq!(bye.status_code.code(), 200, "{bye}");
    proxy.assert_idle(Duration::from_secs(5));
    assert_eq!(
        proxy.counter("voxgate_sessions_ended_total{cause=\"caller_bye\"}"),
        1.0
    );
    proxy.assert_alive();
}
