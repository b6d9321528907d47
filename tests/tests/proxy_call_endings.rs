//! How calls end: CANCEL before the answer, a re-INVITE mid-call, BYE from the Backend, and the
//! proxy's media timeout; each leaves no session or media port behind and is counted by cause.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::uac::{Uac, media_addr, sdp_of};
use common::{Proxy, backend_status, backend_toml, start_backend, wait_until};

fn proxy_for(name: &str, backend: std::net::SocketAddr, media_timeout: &str) -> Proxy {
    let config = format!(
        "[media]\ntimeout = \"{media_timeout}\"\n[health]\ninterval = \"1s\"\n{}",
        backend_toml("b1", backend, 10, None)
    );
    Proxy::start(name, &config)
}

fn ended(proxy: &Proxy, cause: &str) -> f64 {
    proxy.counter(&format!(
        "voxgate_sessions_ended_total{{cause=\"{cause}\"}}"
    ))
}

#[test]
fn cancel_before_answer_gets_487_and_cancels_the_backend() {
    let (mut backend, addr) = start_backend(
        "cancel-b1",
        &["--answer-delay", "3s", "--status-every", "100ms"],
    );
    let proxy = proxy_for("cancel-proxy", addr, "60s");
    let mut uac = Uac::new("127.0.0.1", proxy.sip);
    uac.send_invite();
    uac.wait_response(rsip::Method::Invite, 180, Duration::from_secs(3))
        .expect("no 180 Ringing relayed");
    assert_eq!(proxy.metric("voxgate_sessions_active"), 1.0);
    uac.cancel();
    let (_, cancelled) = uac
        .final_response(rsip::Method::Cancel, Duration::from_secs(3))
        .expect("no final response to CANCEL");
    assert_eq!(cancelled.status_code.code(), 200, "{cancelled}");
    let (_, terminated) = uac
        .final_response(rsip::Method::Invite, Duration::from_secs(3))
        .expect("no final response to the cancelled INVITE");
    assert_eq!(terminated.status_code.code(), 487, "{terminated}");
    uac.ack_failure(&terminated);
    proxy.assert_idle(Duration::from_secs(3));
    assert_eq!(ended(&proxy, "cancelled"), 1.0, "{}", proxy.metrics());
    assert_eq!(proxy.counter("voxgate_sessions_started_total"), 0.0);

    // The CANCEL reached the Backend within its 3 s answer delay and the call ended there
    // unanswered: it cannot be answered any more.
    let cancelled = wait_until(Duration::from_secs(3), || {
        let log = backend.log();
        backend_status(&log, "cancelled") == Some(1) && backend_status(&log, "ended") == Some(1)
    });
    assert!(
        cancelled,
        "the Backend has not seen the CANCEL:\n{}",
        backend.log()
    );
    assert!(
        backend.terminate(Duration::from_secs(10)),
        "{}",
        backend.log()
    );
    let log = backend.log();
    assert_eq!(backend_status(&log, "answered"), Some(0), "{log}");
    assert_eq!(backend_status(&log, "cancelled"), Some(1), "{log}");
    assert_eq!(backend_status(&log, "ended"), Some(1), "{log}");
    assert!(
        uac.recv_request(rsip::Method::Bye, Duration::from_millis(100))
            .is_none(),
        "a cancelled call was answered and hung up"
    );
}

#[test]
fn a_cancel_right_behind_its_invite_is_never_answered_481_nor_the_call_set_up() {
    // The CANCEL leaves before any answer, so it reaches the proxy while the INVITE's session is
    // being set up: it must find the call all the same (it used to get 481, and the call was
    // then answered).
    let (mut backend, addr) = start_backend("race-b1", &["--answer-delay", "2s"]);
    // Room for every call: a cancelled INVITE holds its Backend lease until the Backend's 487.
    let config = format!(
        "[health]\ninterval = \"1s\"\n{}",
        backend_toml("b1", addr, 50, None)
    );
    let proxy = Proxy::start("race-proxy", &config);
    const CALLS: usize = 20;
    let mut uacs: Vec<Uac> = (0..CALLS)
        .map(|_| {
            let mut uac = Uac::new("127.0.0.1", proxy.sip);
            uac.send_invite();
            uac.cancel();
            uac
        })
        .collect();
    for uac in &mut uacs {
        let (_, cancelled) = uac
            .final_response(rsip::Method::Cancel, Duration::from_secs(3))
            .expect("no final response to CANCEL");
        assert_eq!(cancelled.status_code.code(), 200, "{cancelled}");
        let (_, terminated) = uac
            .final_response(rsip::Method::Invite, Duration::from_secs(3))
            .expect("no final response to the cancelled INVITE");
        assert_eq!(terminated.status_code.code(), 487, "{terminated}");
        uac.ack_failure(&terminated);
    }
    proxy.assert_idle(Duration::from_secs(5));
    assert_eq!(
        ended(&proxy, "cancelled"),
        CALLS as f64,
        "{}",
        proxy.metrics()
    );
    assert_eq!(proxy.counter("voxgate_sessions_started_total"), 0.0);
    // Every INVITE forwarded to the Backend has had its final answer there: the proxy holds a
    // Backend's lease until then (a 200 crossing a CANCEL included).
    let settled = wait_until(Duration::from_secs(5), || {
        proxy.metric("voxgate_backend_sessions_active{backend=\"b1\",region=\"US-EAST\"}") == 0.0
    });
    assert!(
        settled,
        "INVITEs still out to the Backend:\n{}",
        proxy.metrics()
    );
    // Stopping the Backend waits for its calls (up to 5 s, past the 2 s answer delay), so its
    // last status line counts every call it got: none answered, each one cancelled.
    assert!(
        backend.terminate(Duration::from_secs(10)),
        "{}",
        backend.log()
    );
    let log = backend.log();
    assert_eq!(backend_status(&log, "answered"), Some(0), "{log}");
    assert_eq!(
        backend_status(&log, "cancelled"),
        backend_status(&log, "ended"),
        "{log}"
    );
    // Nothing was answered, so nothing was hung up on either side.
    for uac in &mut uacs {
        assert!(
            uac.recv_request(rsip::Method::Bye, Duration::from_millis(10))
                .is_none(),
            "a cancelled call was answered and hung up"
        );
    }
}

#[test]
fn reinvite_moves_media_and_keeps_the_proxy_in_the_path() {
    let (_backend, addr) = start_backend("reinvite-b1", &[]);
    let proxy = proxy_for("reinvite-proxy", addr, "60s");
    let (mut uac, ok) = Uac::answered("127.0.0.1", proxy.sip);
    let first = media_addr(&sdp_of(&ok.body));
    uac.send_rtp(first, 5, 0xabc);
    assert!(
        uac.recv_rtp(5, Duration::from_secs(2)) >= 4,
        "no echo before the re-INVITE"
    );

    // Move our media to a new port.
    uac.rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let new_port = uac.rtp.local_addr().unwrap().port();
    let offer = uac.offer(new_port);
    let answer = uac
        .in_dialog(rsip::Method::Invite, Some(offer), Duration::from_secs(5))
        .expect("no answer to the re-INVITE");
    assert_eq!(answer.status_code.code(), 200, "{answer}");
    uac.ack(&answer);
    let sdp = sdp_of(&answer.body);
    assert_eq!(
        sdp.connection,
        proxy.sip.ip(),
        "re-INVITE answer is not the proxy's"
    );
    assert_eq!(media_addr(&sdp), first, "the proxy's media address changed");
    uac.send_rtp(first, 10, 0xabc);
    let echoed = uac.recv_rtp(10, Duration::from_secs(2));
    assert!(echoed >= 8, "only {echoed} of 10 echoed to the new port");

    let bye = uac
        .in_dialog(rsip::Method::Bye, None, Duration::from_secs(5))
        .expect("no answer to BYE");
    assert_eq!(bye.status_code.code(), 200);
    proxy.assert_idle(Duration::from_secs(5));
    assert_eq!(ended(&proxy, "caller_bye"), 1.0);
}

#[test]
fn backend_bye_reaches_the_caller() {
    // The echo Backend hangs up after 1 s without RTP; the proxy's own timeout is far away.
    let (_backend, addr) = start_backend("bbye-b1", &["--media-timeout", "1s"]);
    let proxy = proxy_for("bbye-proxy", addr, "60s");
    let (mut uac, _) = Uac::answered("127.0.0.1", proxy.sip);
    let bye = uac
        .recv_request(rsip::Method::Bye, Duration::from_secs(5))
        .expect("the Backend's BYE did not reach the caller");
    assert_eq!(
        common::uac::header_of(&bye, "Call-ID"),
        Some(uac.dialog.call_id.clone()),
        "BYE is not in the caller's dialog"
    );
    uac.respond(&bye, 200);
    proxy.assert_idle(Duration::from_secs(3));
    assert_eq!(ended(&proxy, "backend_bye"), 1.0, "{}", proxy.metrics());
}

#[test]
fn media_timeout_hangs_up_both_sides() {
    let (backend, addr) = start_backend(
        "mto-b1",
        &["--media-timeout", "60s", "--status-every", "300ms"],
    );
    let proxy = proxy_for("mto-proxy", addr, "1s");
    let (mut uac, _) = Uac::answered("127.0.0.1", proxy.sip);
    let started = std::time::Instant::now();
    let bye = uac
        .recv_request(rsip::Method::Bye, Duration::from_secs(5))
        .expect("no BYE after the media timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "BYE after {:?}, before the 1 s media timeout",
        started.elapsed()
    );
    uac.respond(&bye, 200);
    proxy.assert_idle(Duration::from_secs(3));
    assert_eq!(ended(&proxy, "media_timeout"), 1.0, "{}", proxy.metrics());
    // The Backend's leg was hung up too.
    let hung_up = wait_until(Duration::from_secs(3), || {
        let log = backend.log();
        backend_status(&log, "answered") == Some(1) && backend_status(&log, "ended") == Some(1)
    });
    assert!(hung_up, "Backend still has the call:\n{}", backend.log());
}
