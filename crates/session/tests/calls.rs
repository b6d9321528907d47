//! Scenarios of inbound SIP calls: set up, ended by either side, refused, failed over.

mod common;

use std::time::Duration;

use common::*;
use rsip::Method;
use voxgate_session::{EndCause, Input, MediaCommand, Side};

#[test]
fn basic_call_then_caller_bye() {
    let (mut h, mut caller, backend) = connected_call();
    assert!(h.media.contains(&MediaCommand::Arm));
    assert_eq!(
        h.peer_of(Side::Caller).unwrap().rtp,
        addr("127.0.0.10:40000")
    );
    assert_eq!(
        h.peer_of(Side::Backend).unwrap().rtp,
        addr("127.0.0.21:50000")
    );
    // Topology hiding: the Backend was offered this node's address and its own relay port.
    let offered = backend.invite.as_ref().unwrap();
    let body = String::from_utf8_lossy(&offered.body);
    assert!(
        body.contains("c=IN IP4 127.0.0.1") && body.contains("m=audio 30002 "),
        "{body}"
    );
    assert_eq!(h.leases(), 1);

    let bye = caller.request(Method::Bye, None);
    h.deliver(CALLER, bye);
    assert_eq!(codes(&h.take(CALLER)), vec![200]);
    let byes = requests(&h.take(B1), Method::Bye).len();
    assert_eq!(byes, 1, "the Backend is hung up");
    let end = h.ended.unwrap();
    assert_eq!(end.cause, EndCause::CallerBye);
    assert!(end.connected);
    assert_eq!(h.leases(), 0, "the lease goes with the far dialog");
    h.assert_released();
}

#[test]
fn backend_bye_hangs_up_the_caller() {
    let (mut h, _caller, mut backend) = connected_call();
    let bye = backend.request(Method::Bye, None);
    h.deliver(B1, bye);
    assert_eq!(codes(&h.take(B1)), vec![200]);
    assert_eq!(requests(&h.take(CALLER), Method::Bye).len(), 1);
    assert_eq!(h.ended.unwrap().cause, EndCause::BackendBye);
    h.assert_released();
}

#[test]
fn a_bye_with_foreign_tags_is_refused_and_ends_nothing() {
    let (mut h, mut caller, _backend) = connected_call();
    caller.dialog.local_tag = "forged".into();
    let bye = caller.request(Method::Bye, None);
    h.deliver(CALLER, bye);
    assert_eq!(codes(&h.take(CALLER)), vec![481]);
    assert!(h.ended.is_none());
}

#[test]
fn failover_on_5xx_then_answered_by_the_next() {
    let (_caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let first = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.deliver(B1, first.answer(500, None));
    assert!(h.cooldowns.is_empty(), "a 500 cools nobody down");
    let second = Ua::callee(B2, requests(&h.take(B2), Method::Invite)[0]);
    h.deliver(B2, second.answer(200, Some(sdp("127.0.0.22", 50_000))));
    assert!(codes(&h.take(CALLER)).contains(&200));
    assert_eq!(h.leases(), 1, "only the answering Backend's lease is held");
}

#[test]
fn a_503_cools_the_backend_down_for_its_retry_after() {
    let (_caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let first = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    let mut busy = first.answer(503, None);
    busy.headers.push(rsip::Header::RetryAfter("30".into()));
    h.deliver(B1, busy);
    assert_eq!(h.cooldowns.len(), 1);
    assert_eq!(h.cooldowns[0].0.as_str(), "b1");
    assert_eq!(h.cooldowns[0].1, h.now + Duration::from_secs(30));
    assert_eq!(
        requests(&h.take(B2), Method::Invite).len(),
        1,
        "failed over to b2"
    );
    // b2 is full too: every Backend tried, the caller gets this node's own 503.
    let second = Ua::callee(
        B2,
        requests(&h.wire.clone(), Method::Invite).last().unwrap(),
    );
    h.deliver(B2, second.answer(503, None));
    assert_eq!(
        h.cooldowns[1].1,
        h.now + Duration::from_secs(5),
        "default cooldown"
    );
    let sent = h.take(CALLER);
    let refusal = sent
        .iter()
        .filter_map(Sent::response)
        .find(|r| r.status_code.code() == 503);
    let refusal = refusal.expect("503 to the caller");
    assert!(refusal.to_string().contains("Retry-After: 4"), "{refusal}");
    assert_eq!(h.ended.unwrap().cause, EndCause::NoBackend);
    h.assert_released();
}

#[test]
fn a_silent_backend_is_cooled_down_and_its_late_answer_hung_up() {
    let (_caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let silent = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.advance(INVITE_TIMEOUT);
    assert_eq!(h.cooldowns.len(), 1, "the silent Backend is held out");
    let second = Ua::callee(B2, requests(&h.take(B2), Method::Invite)[0]);
    h.deliver(B2, second.answer(200, Some(sdp("127.0.0.22", 50_000))));
    assert!(codes(&h.take(CALLER)).contains(&200));
    // The silent one answers at last: ACKed and hung up at once, its lease released.
    h.deliver(B1, silent.answer(200, Some(sdp("127.0.0.21", 50_000))));
    let late = h.take(B1);
    assert_eq!(requests(&late, Method::Ack).len(), 1);
    assert_eq!(requests(&late, Method::Bye).len(), 1);
    assert_eq!(h.leases(), 1);
    assert!(h.ended.is_none());
}

#[test]
fn a_backend_whose_invite_times_out_is_replaced() {
    let (_caller, invite) = Ua::caller(40_000);
    let mut cfg = config();
    // Longer than Timer B: the transaction layer's 408 comes first.
    cfg.invite_timeout = Duration::from_secs(60);
    let mut h = Harness::new(cfg, Harness::inbound(&invite));
    h.advance(Duration::from_secs(33));
    assert_eq!(
        requests(&h.take(B2), Method::Invite).len(),
        1,
        "failed over after Timer B"
    );
    assert_eq!(h.leases(), 1);
}

#[test]
fn no_eligible_backend_is_a_503_with_retry_after() {
    let (_caller, invite) = Ua::caller(40_000);
    let mut h = Harness::with_backends(config(), &[], Harness::inbound(&invite));
    assert_eq!(codes(&h.take(CALLER)).last(), Some(&503));
    assert_eq!(h.ended.unwrap().cause, EndCause::NoBackend);
    h.assert_released();
}

#[test]
fn a_refusal_is_mapped_and_a_redirect_hidden() {
    for (backend_code, caller_code) in [(486, 486), (302, 480), (404, 404)] {
        let (_caller, invite) = Ua::caller(40_000);
        let mut h = Harness::new(config(), Harness::inbound(&invite));
        let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
        h.deliver(B1, b1.answer(backend_code, None));
        assert_eq!(codes(&h.take(CALLER)).last(), Some(&caller_code));
        let end = h.ended.unwrap();
        assert_eq!(
            (end.cause, end.code),
            (EndCause::Rejected, Some(backend_code))
        );
        h.assert_released();
    }
}

#[test]
fn a_backend_answer_without_media_is_hung_up_and_the_caller_told_502() {
    let (_caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.deliver(B1, b1.answer(200, None));
    let to_b1 = h.take(B1);
    assert_eq!(requests(&to_b1, Method::Ack).len(), 1);
    assert_eq!(requests(&to_b1, Method::Bye).len(), 1);
    assert_eq!(codes(&h.take(CALLER)).last(), Some(&502));
    h.assert_released();
}

#[test]
fn media_timeout_shutdown_and_hang_up_end_both_legs() {
    for (input, cause) in [
        (Input::MediaTimeout(Side::Caller), EndCause::MediaTimeout),
        (Input::Shutdown, EndCause::Shutdown),
        (Input::HangUp, EndCause::HungUp),
        (Input::MediaLost, EndCause::MediaFailure),
    ] {
        let (mut h, _caller, _backend) = connected_call();
        h.input(input);
        assert_eq!(requests(&h.take(CALLER), Method::Bye).len(), 1);
        assert_eq!(requests(&h.take(B1), Method::Bye).len(), 1);
        assert_eq!(h.ended.unwrap().cause, cause);
        h.assert_released();
    }
}

#[test]
fn shutdown_while_ringing_cancels_the_backend_and_refuses_503() {
    let (_caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.deliver(B1, b1.answer(180, None));
    h.input(Input::Shutdown);
    assert_eq!(codes(&h.take(CALLER)).last(), Some(&503));
    assert_eq!(requests(&h.take(B1), Method::Cancel).len(), 1);
    h.deliver(B1, b1.answer(487, None));
    h.assert_released();
}

#[test]
fn the_caller_missing_ack_ends_the_call() {
    let (_caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.deliver(B1, b1.answer(200, Some(sdp("127.0.0.21", 50_000))));
    // No ACK: RFC 6026 Timer L (64 * T1).
    h.advance(Duration::from_secs(33));
    assert_eq!(h.ended.unwrap().cause, EndCause::AckTimeout);
    assert_eq!(requests(&h.take(B1), Method::Bye).len(), 1);
    h.assert_released();
}

#[test]
fn every_offered_stream_is_answered_and_only_audio_crosses() {
    let (_caller, mut invite) = Ua::caller(40_000);
    let mut body = String::from_utf8(invite.body.clone()).unwrap();
    body.push_str("m=video 40002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=mid:v\r\n");
    voxgate_sip::message::set_body(&mut invite, body.into_bytes(), Some("application/sdp"));
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let to_b1 = requests(&h.take(B1), Method::Invite)[0].clone();
    let offered = String::from_utf8_lossy(&to_b1.body).into_owned();
    assert!(
        !offered.contains("m=video") && !offered.contains("a=mid"),
        "{offered}"
    );
    let b1 = Ua::callee(B1, &to_b1);
    h.deliver(B1, b1.answer(200, Some(sdp("127.0.0.21", 50_000))));
    let ok = response(&h.take(CALLER), 200);
    let answer = String::from_utf8_lossy(&ok.body).into_owned();
    let m_lines: Vec<&str> = answer.lines().filter(|l| l.starts_with("m=")).collect();
    assert_eq!(m_lines.len(), 2, "{answer}");
    assert!(m_lines[0].starts_with("m=audio 30000 "), "{answer}");
    assert!(m_lines[1].starts_with("m=video 0 RTP/AVP 96"), "{answer}");
}

#[test]
fn an_srtp_offer_is_refused_488_until_srtp_exists() {
    let (_caller, mut invite) = Ua::caller(40_000);
    let body = String::from_utf8(invite.body.clone())
        .unwrap()
        .replace("RTP/AVP", "RTP/SAVP");
    voxgate_sip::message::set_body(&mut invite, body.into_bytes(), Some("application/sdp"));
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    assert_eq!(codes(&h.take(CALLER)).last(), Some(&488));
    assert_eq!(h.picks, 0);
    h.assert_released();
}
