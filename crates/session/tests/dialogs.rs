//! Scenarios of the dialogs real peers send: late offer (INVITE and re-INVITE without SDP),
//! reliable provisionals (RFC 3262), UPDATE (RFC 3311) and session timers (RFC 4028).

mod common;

use std::time::Duration;

use common::*;
use rsip::{Header, Method};
use voxgate_session::{EndCause, MediaCommand, Side};
use voxgate_sip::dialog::header_value;

/// The caller ACKs our 200.
fn caller_acks(h: &mut Harness, caller: &mut Ua) {
    let ok = final_response(&h.take(CALLER));
    caller.confirm(&ok);
    let ack = caller.ack();
    h.deliver(CALLER, ack);
}

#[test]
fn late_offer_the_offer_comes_from_the_backend_and_the_answer_in_the_ack() {
    let (mut caller, mut invite) = Ua::caller(40_000);
    voxgate_sip::message::set_body(&mut invite, Vec::new(), None);
    caller.invite = Some(invite.clone());
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let to_b1 = requests(&h.take(B1), Method::Invite)[0].clone();
    assert!(to_b1.body.is_empty(), "the Backend is asked for the offer");
    let b1 = Ua::callee(B1, &to_b1);
    h.deliver(B1, b1.answer(200, Some(sdp("127.0.0.21", 50_000))));
    // No ACK yet: it waits for the caller's answer.
    assert!(requests(&h.take(B1), Method::Ack).is_empty());
    let ok = final_response(&h.take(CALLER));
    assert_eq!(ok.status_code.code(), 200);
    assert!(
        String::from_utf8_lossy(&ok.body).contains("m=audio 30000 "),
        "our offer"
    );
    caller.confirm(&ok);
    let mut ack = caller.ack();
    voxgate_sip::message::set_body(
        &mut ack,
        sdp("127.0.0.10", 40_000).into_bytes(),
        Some("application/sdp"),
    );
    h.deliver(CALLER, ack);
    let acks = requests(&h.take(B1), Method::Ack)
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(acks.len(), 1);
    let answer = String::from_utf8_lossy(&acks[0].body).into_owned();
    assert!(
        answer.contains("m=audio 30002 "),
        "the answer, rewritten: {answer}"
    );
    assert_eq!(
        h.peer_of(Side::Caller).unwrap().rtp,
        addr("127.0.0.10:40000")
    );
    assert!(h.media.contains(&MediaCommand::Arm));
    assert!(h.ended.is_none());
}

#[test]
fn late_offer_without_an_answer_in_the_ack_ends_the_call() {
    let (mut caller, mut invite) = Ua::caller(40_000);
    voxgate_sip::message::set_body(&mut invite, Vec::new(), None);
    caller.invite = Some(invite.clone());
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.deliver(B1, b1.answer(200, Some(sdp("127.0.0.21", 50_000))));
    let ok = final_response(&h.take(CALLER));
    caller.confirm(&ok);
    let ack = caller.ack();
    h.deliver(CALLER, ack);
    let to_b1 = h.take(B1);
    assert_eq!(requests(&to_b1, Method::Ack).len(), 1);
    assert_eq!(requests(&to_b1, Method::Bye).len(), 1);
    assert_eq!(requests(&h.take(CALLER), Method::Bye).len(), 1);
    assert_eq!(h.ended.unwrap().cause, EndCause::BadSdp);
    h.assert_released();
}

#[test]
fn an_offerless_reinvite_is_relayed_offerless() {
    let (mut h, mut caller, backend) = connected_call();
    let reinvite = caller.request(Method::Invite, None);
    h.deliver(CALLER, reinvite.clone());
    let relayed = requests(&h.take(B1), Method::Invite)[0].clone();
    assert!(relayed.body.is_empty());
    h.deliver(
        B1,
        backend.reply(&relayed, 200, Some(sdp("127.0.0.21", 51_000))),
    );
    assert!(
        requests(&h.take(B1), Method::Ack).is_empty(),
        "held for the answer"
    );
    let ok = final_response(&h.take(CALLER));
    assert!(String::from_utf8_lossy(&ok.body).contains("m=audio 30000 "));
    let cseq = voxgate_sip::message::cseq(&reinvite).unwrap().0;
    let mut ack = caller.dialog.ack(&mut caller.rng, cseq);
    voxgate_sip::message::set_body(
        &mut ack,
        sdp("127.0.0.10", 41_000).into_bytes(),
        Some("application/sdp"),
    );
    h.deliver(CALLER, ack);
    let acks: Vec<_> = requests(&h.take(B1), Method::Ack)
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(acks.len(), 1);
    assert!(String::from_utf8_lossy(&acks[0].body).contains("m=audio 30002 "));
    assert_eq!(
        h.peer_of(Side::Caller).unwrap().rtp,
        addr("127.0.0.10:41000")
    );
    assert_eq!(
        h.peer_of(Side::Backend).unwrap().rtp,
        addr("127.0.0.21:51000")
    );
}

#[test]
fn a_caller_requiring_100rel_gets_reliable_provisionals_and_its_prack_answered() {
    let (mut caller, mut invite) = Ua::caller(40_000);
    invite.headers.push(Header::Require("100rel".into()));
    invite.headers.push(Header::Supported("100rel".into()));
    caller.invite = Some(invite.clone());
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    // The Backend does not do 100rel: a plain 180.
    h.deliver(B1, b1.answer(180, None));
    let ringing = response(&h.take(CALLER), 180);
    assert_eq!(
        header_value(&ringing.headers, "Require").as_deref(),
        Some("100rel")
    );
    let rseq: u32 = header_value(&ringing.headers, "RSeq")
        .unwrap()
        .parse()
        .unwrap();
    // Not PRACKed: sent again (T1, then doubling).
    h.advance(Duration::from_millis(600));
    let again = codes(&h.take(CALLER)).iter().filter(|c| **c == 180).count();
    assert!(again >= 1, "the reliable 180 is retransmitted");
    caller.confirm(&ringing);
    let mut prack = caller.request(Method::PRack, None);
    prack
        .headers
        .push(Header::Other("RAck".into(), format!("{rseq} 1 INVITE")));
    h.deliver(CALLER, prack);
    assert_eq!(codes(&h.take(CALLER)), vec![200], "the PRACK is answered");
    h.advance(Duration::from_secs(2));
    assert!(
        !codes(&h.take(CALLER)).contains(&180),
        "no more retransmissions"
    );
    h.deliver(B1, b1.answer(200, Some(sdp("127.0.0.21", 50_000))));
    assert_eq!(final_response(&h.take(CALLER)).status_code.code(), 200);
}

#[test]
fn a_backend_requiring_100rel_is_pracked_once_per_rseq() {
    let (_caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let to_b1 = requests(&h.take(B1), Method::Invite)[0].clone();
    let supported = header_value(&to_b1.headers, "Supported").unwrap();
    assert!(
        supported.contains("100rel") && supported.contains("timer"),
        "{supported}"
    );
    let b1 = Ua::callee(B1, &to_b1);
    let mut reliable = b1.answer(183, Some(sdp("127.0.0.21", 50_000)));
    reliable.headers.push(Header::Require("100rel".into()));
    reliable
        .headers
        .push(Header::Other("RSeq".into(), "7".into()));
    h.deliver(B1, reliable.clone());
    h.deliver(B1, reliable);
    let pracks: Vec<_> = requests(&h.take(B1), Method::PRack)
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(
        pracks.len(),
        1,
        "one PRACK for RSeq 7, none for its retransmission"
    );
    assert_eq!(
        header_value(&pracks[0].headers, "RAck").as_deref(),
        Some("7 1 INVITE")
    );
    let to_tag = voxgate_sip::message::to_tag(&pracks[0]);
    assert_eq!(
        to_tag,
        Some(b1.dialog.local_tag.clone()),
        "in the early dialog"
    );
    // The caller (no 100rel) got a plain 183 with the early media.
    let early = h.take(CALLER);
    assert!(codes(&early).contains(&183));
}

#[test]
fn update_in_the_confirmed_dialog_is_relayed_with_the_sdp_rewritten() {
    let (mut h, mut caller, backend) = connected_call();
    let update = caller.request(Method::Update, Some(sdp("127.0.0.10", 42_000)));
    h.deliver(CALLER, update);
    let relayed = requests(&h.take(B1), Method::Update)[0].clone();
    assert!(String::from_utf8_lossy(&relayed.body).contains("m=audio 30002 "));
    h.deliver(
        B1,
        backend.reply(&relayed, 200, Some(sdp("127.0.0.21", 52_000))),
    );
    assert!(
        requests(&h.take(B1), Method::Ack).is_empty(),
        "UPDATE has no ACK"
    );
    let ok = final_response(&h.take(CALLER));
    assert_eq!(ok.status_code.code(), 200);
    assert!(String::from_utf8_lossy(&ok.body).contains("m=audio 30000 "));
    assert_eq!(
        h.peer_of(Side::Caller).unwrap().rtp,
        addr("127.0.0.10:42000")
    );
    assert_eq!(
        h.peer_of(Side::Backend).unwrap().rtp,
        addr("127.0.0.21:52000")
    );
}

#[test]
fn update_in_the_early_dialogs_is_relayed() {
    let (mut caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.deliver(B1, b1.answer(183, Some(sdp("127.0.0.21", 50_000))));
    let early = response(&h.take(CALLER), 183);
    caller.confirm(&early);
    let update = caller.request(Method::Update, Some(sdp("127.0.0.10", 43_000)));
    h.deliver(CALLER, update);
    let relayed = requests(&h.take(B1), Method::Update)[0].clone();
    assert_eq!(
        voxgate_sip::message::to_tag(&relayed),
        Some(b1.dialog.local_tag.clone()),
        "in the Backend's early dialog"
    );
    h.deliver(B1, b1.reply(&relayed, 200, Some(sdp("127.0.0.21", 53_000))));
    let to_caller = h.take(CALLER);
    assert!(codes(&to_caller).contains(&200), "{:?}", codes(&to_caller));
    assert_eq!(
        h.peer_of(Side::Caller).unwrap().rtp,
        addr("127.0.0.10:43000")
    );
    // Then the INVITE is answered as usual.
    h.deliver(B1, b1.answer(200, Some(sdp("127.0.0.21", 53_000))));
    assert!(h.progress.contains(&voxgate_session::Progress::Connected));
}

#[test]
fn a_caller_asking_for_a_too_short_session_interval_gets_422() {
    let (_caller, mut invite) = Ua::caller(40_000);
    invite.headers.push(Header::Supported("timer".into()));
    invite
        .headers
        .push(Header::Other("Session-Expires".into(), "30".into()));
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let refusal = final_response(&h.take(CALLER));
    assert_eq!(refusal.status_code.code(), 422);
    assert_eq!(
        header_value(&refusal.headers, "Min-SE").as_deref(),
        Some("90")
    );
    assert_eq!(h.picks, 0);
    h.assert_released();
}

#[test]
fn a_caller_that_refreshes_keeps_the_call_and_one_that_does_not_is_hung_up() {
    let (mut caller, mut invite) = Ua::caller(40_000);
    invite.headers.push(Header::Supported("timer".into()));
    invite.headers.push(Header::Other(
        "Session-Expires".into(),
        "90;refresher=uac".into(),
    ));
    caller.invite = Some(invite.clone());
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.deliver(B1, b1.answer(200, Some(sdp("127.0.0.21", 50_000))));
    let ok = final_response(&h.take(CALLER));
    let granted = header_value(&ok.headers, "Session-Expires").unwrap();
    assert_eq!(granted, "90;refresher=uac");
    assert_eq!(
        header_value(&ok.headers, "Require").as_deref(),
        Some("timer")
    );
    caller.confirm(&ok);
    let ack = caller.ack();
    h.deliver(CALLER, ack);
    // A refresh at half the interval (UPDATE without SDP) is answered here.
    h.advance(Duration::from_secs(45));
    let refresh = caller.request(Method::Update, None);
    h.deliver(CALLER, refresh);
    let answer = final_response(&h.take(CALLER));
    assert_eq!(answer.status_code.code(), 200);
    assert!(header_value(&answer.headers, "Session-Expires").is_some());
    assert!(
        requests(&h.take(B1), Method::Update).is_empty(),
        "not relayed"
    );
    // Then no refresh: both legs are hung up 32 s before the expiry... min(32, 90/3) = 30 s.
    h.advance(Duration::from_secs(59));
    assert!(h.ended.is_none());
    h.advance(Duration::from_secs(1));
    assert_eq!(h.ended.unwrap().cause, EndCause::SessionExpired);
    assert_eq!(requests(&h.take(CALLER), Method::Bye).len(), 1);
    assert_eq!(requests(&h.take(B1), Method::Bye).len(), 1);
    h.assert_released();
}

#[test]
fn this_node_refreshes_the_backend_leg_with_update_when_allowed() {
    let (mut caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let to_b1 = requests(&h.take(B1), Method::Invite)[0].clone();
    assert_eq!(
        header_value(&to_b1.headers, "Session-Expires").as_deref(),
        Some("1800;refresher=uac")
    );
    let b1 = Ua::callee(B1, &to_b1);
    let mut ok = b1.answer(200, Some(sdp("127.0.0.21", 50_000)));
    ok.headers.push(Header::Other(
        "Session-Expires".into(),
        "120;refresher=uac".into(),
    ));
    ok.headers
        .push(Header::Allow("INVITE, ACK, BYE, UPDATE".into()));
    h.deliver(B1, ok);
    caller_acks(&mut h, &mut caller);
    let _ = h.take(B1);
    h.advance(Duration::from_secs(60));
    let refresh = requests(&h.take(B1), Method::Update)[0].clone();
    assert!(refresh.body.is_empty());
    h.deliver(B1, b1.reply(&refresh, 200, None));
    // Refreshed: nothing ends at the first expiry.
    h.advance(Duration::from_secs(70));
    assert!(h.ended.is_none());
    // A refresh that gets 481 ends the session.
    let refresh = requests(&h.take(B1), Method::Update)[0].clone();
    h.deliver(B1, b1.reply(&refresh, 481, None));
    assert_eq!(h.ended.unwrap().cause, EndCause::SessionExpired);
}

#[test]
fn a_backend_without_update_is_refreshed_with_a_reinvite() {
    let (mut caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    let mut ok = b1.answer(200, Some(sdp("127.0.0.21", 50_000)));
    ok.headers
        .push(Header::Other("Session-Expires".into(), "90".into()));
    h.deliver(B1, ok);
    caller_acks(&mut h, &mut caller);
    let _ = h.take(B1);
    h.advance(Duration::from_secs(45));
    let reinvites: Vec<_> = requests(&h.take(B1), Method::Invite)
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(reinvites.len(), 1);
    assert!(String::from_utf8_lossy(&reinvites[0].body).contains("m=audio 30002 "));
    h.deliver(
        B1,
        b1.reply(&reinvites[0], 200, Some(sdp("127.0.0.21", 50_000))),
    );
    assert_eq!(
        requests(&h.take(B1), Method::Ack).len(),
        1,
        "the refresh is ACKed"
    );
    assert!(h.ended.is_none());
}

#[test]
fn a_huge_session_interval_is_lowered_not_a_panic() {
    let (mut caller, mut invite) = Ua::caller(40_000);
    invite.headers.push(Header::Supported("timer".into()));
    invite.headers.push(Header::Other(
        "Session-Expires".into(),
        "18446744073709551615;refresher=uac".into(),
    ));
    caller.invite = Some(invite.clone());
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    let mut ok = b1.answer(200, Some(sdp("127.0.0.21", 50_000)));
    ok.headers.push(Header::Other(
        "Session-Expires".into(),
        "99999999999999".into(),
    ));
    h.deliver(B1, ok);
    let granted = final_response(&h.take(CALLER));
    assert_eq!(
        header_value(&granted.headers, "Session-Expires").as_deref(),
        Some("86400;refresher=uac")
    );
    assert!(h.session.poll_timeout().is_some());
    h.advance(Duration::from_secs(3600));
}

#[test]
fn a_refresh_from_the_backend_is_answered_as_its_uas() {
    let (mut caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let mut b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    let mut ok = b1.answer(200, Some(sdp("127.0.0.21", 50_000)));
    // The Backend takes the refresher role.
    ok.headers.push(Header::Other(
        "Session-Expires".into(),
        "120;refresher=uas".into(),
    ));
    h.deliver(B1, ok);
    caller_acks(&mut h, &mut caller);
    h.advance(Duration::from_secs(60));
    assert!(
        requests(&h.take(B1), Method::Update).is_empty(),
        "not ours to refresh"
    );
    let mut refresh = b1.request(Method::Update, None);
    refresh.headers.push(Header::Other(
        "Session-Expires".into(),
        "120;refresher=uac".into(),
    ));
    h.deliver(B1, refresh);
    let answer = final_response(&h.take(B1));
    assert_eq!(answer.status_code.code(), 200);
    assert_eq!(
        header_value(&answer.headers, "Session-Expires").as_deref(),
        Some("120;refresher=uac"),
        "the requester (the Backend) stays the refresher"
    );
    assert_eq!(
        header_value(&answer.headers, "Require").as_deref(),
        Some("timer")
    );
    // Refreshed at 60 s: nothing ends at the first interval's deadline (80 s).
    h.advance(Duration::from_secs(30));
    assert!(h.ended.is_none());
    // No refresh after that: the call ends before 60 + 120 s.
    h.advance(Duration::from_secs(60));
    assert_eq!(h.ended.unwrap().cause, EndCause::SessionExpired);
}

#[test]
fn an_offerless_far_invite_does_not_offer_100rel() {
    let (mut caller, mut invite) = Ua::caller(40_000);
    voxgate_sip::message::set_body(&mut invite, Vec::new(), None);
    caller.invite = Some(invite.clone());
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let to_b1 = requests(&h.take(B1), Method::Invite)[0].clone();
    assert_eq!(
        header_value(&to_b1.headers, "Supported").as_deref(),
        Some("timer")
    );
}

#[test]
fn the_2xx_waits_for_the_prack_of_a_reliable_provisional_with_sdp() {
    let (mut caller, mut invite) = Ua::caller(40_000);
    invite.headers.push(Header::Require("100rel".into()));
    caller.invite = Some(invite.clone());
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.deliver(B1, b1.answer(183, Some(sdp("127.0.0.21", 50_000))));
    let early = response(&h.take(CALLER), 183);
    let rseq = header_value(&early.headers, "RSeq").unwrap();
    h.deliver(B1, b1.answer(200, Some(sdp("127.0.0.21", 50_000))));
    assert!(!codes(&h.take(CALLER)).contains(&200), "held for the PRACK");
    caller.confirm(&early);
    let mut prack = caller.request(Method::PRack, None);
    prack
        .headers
        .push(Header::Other("RAck".into(), format!("{rseq} 1 INVITE")));
    h.deliver(CALLER, prack);
    let after = codes(&h.take(CALLER));
    assert_eq!(
        after.iter().filter(|c| **c == 200).count(),
        2,
        "PRACK's then INVITE's: {after:?}"
    );
}

#[test]
fn a_2xx_from_another_fork_is_acked_and_hung_up() {
    let (mut h, _caller, backend) = connected_call();
    let _ = h.take(B1);
    let mut fork = backend.answer(200, Some(sdp("127.0.0.23", 50_000)));
    for header in fork.headers.iter_mut() {
        if let Header::To(to) = header {
            let value = to
                .to_string()
                .replace(&backend.dialog.local_tag, "otherfork");
            *header = Header::To(value.trim_start_matches("To: ").to_owned().into());
        }
    }
    h.deliver(B1, fork);
    let to_b1 = h.take(B1);
    let bye = requests(&to_b1, Method::Bye);
    assert_eq!(bye.len(), 1, "the fork is hung up");
    assert_eq!(
        voxgate_sip::message::to_tag(bye[0]).as_deref(),
        Some("otherfork")
    );
    assert!(h.ended.is_none(), "the call with the first fork goes on");
}

#[test]
fn our_refresh_waits_for_an_exchange_in_flight_on_that_leg() {
    let (mut caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    let mut ok = b1.answer(200, Some(sdp("127.0.0.21", 50_000)));
    ok.headers.push(Header::Other(
        "Session-Expires".into(),
        "120;refresher=uac".into(),
    ));
    ok.headers
        .push(Header::Allow("INVITE, ACK, BYE, UPDATE".into()));
    h.deliver(B1, ok);
    caller_acks(&mut h, &mut caller);
    h.advance(Duration::from_secs(59));
    // The caller re-INVITEs just before our refresh of the Backend leg is due.
    let reinvite = caller.request(Method::Invite, Some(sdp("127.0.0.10", 41_000)));
    h.deliver(CALLER, reinvite);
    let relayed = requests(&h.take(B1), Method::Invite)[0].clone();
    h.advance(Duration::from_secs(2));
    assert!(
        requests(&h.take(B1), Method::Update).is_empty(),
        "no refresh across the re-INVITE"
    );
    // Its 2xx refreshes the leg: the next refresh is half an interval later.
    h.deliver(B1, b1.reply(&relayed, 200, Some(sdp("127.0.0.21", 50_000))));
    h.advance(Duration::from_secs(58));
    assert!(requests(&h.take(B1), Method::Update).is_empty());
    h.advance(Duration::from_secs(2));
    assert_eq!(requests(&h.take(B1), Method::Update).len(), 1);
    assert!(h.ended.is_none());
}
