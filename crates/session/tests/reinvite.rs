//! Scenarios of a confirmed call: re-INVITE relayed (success, failure with the media restored,
//! glare), INFO relayed, and BYE crossing either.

mod common;

use common::*;
use rsip::Method;
use voxgate_session::{EndCause, Side};

#[test]
fn a_reinvite_is_relayed_and_the_media_re_pointed() {
    let (mut h, mut caller, backend) = connected_call();
    let reinvite = caller.request(Method::Invite, Some(sdp("127.0.0.10", 41_000)));
    h.deliver(CALLER, reinvite);
    assert_eq!(
        h.peer_of(Side::Caller).unwrap().rtp,
        addr("127.0.0.10:41000")
    );
    let to_b1 = h.take(B1);
    let relayed = requests(&to_b1, Method::Invite)[0].clone();
    let body = String::from_utf8_lossy(&relayed.body);
    assert!(
        body.contains("m=audio 30002 "),
        "the Backend sees only this node: {body}"
    );
    h.deliver(
        B1,
        backend.reply(&relayed, 200, Some(sdp("127.0.0.21", 51_000))),
    );
    assert_eq!(
        requests(&h.take(B1), Method::Ack).len(),
        1,
        "we ACK the Backend's 2xx"
    );
    assert_eq!(
        h.peer_of(Side::Backend).unwrap().rtp,
        addr("127.0.0.21:51000")
    );
    let ok = final_response(&h.take(CALLER));
    assert_eq!(ok.status_code.code(), 200);
    assert!(String::from_utf8_lossy(&ok.body).contains("m=audio 30000 "));
    assert!(h.ended.is_none());
}

#[test]
fn a_failed_reinvite_restores_the_media() {
    let (mut h, mut caller, backend) = connected_call();
    let before = h.peer_of(Side::Caller).unwrap();
    let reinvite = caller.request(Method::Invite, Some(sdp("127.0.0.10", 41_000)));
    h.deliver(CALLER, reinvite);
    let relayed = requests(&h.take(B1), Method::Invite)[0].clone();
    h.deliver(B1, backend.reply(&relayed, 488, None));
    assert_eq!(codes(&h.take(CALLER)).last(), Some(&488));
    assert_eq!(h.peer_of(Side::Caller).unwrap(), before, "media restored");
    assert!(h.ended.is_none(), "the call goes on");
}

#[test]
fn reinvite_glare_is_answered_491() {
    let (mut h, mut caller, mut backend) = connected_call();
    let reinvite = caller.request(Method::Invite, Some(sdp("127.0.0.10", 41_000)));
    h.deliver(CALLER, reinvite);
    let theirs = backend.request(Method::Invite, Some(sdp("127.0.0.21", 52_000)));
    h.deliver(B1, theirs);
    assert!(codes(&h.take(B1)).contains(&491));
    assert!(h.ended.is_none());
}

#[test]
fn a_bye_crossing_a_reinvite_ends_both_legs() {
    let (mut h, mut caller, mut backend) = connected_call();
    let reinvite = caller.request(Method::Invite, Some(sdp("127.0.0.10", 41_000)));
    h.deliver(CALLER, reinvite);
    let _ = h.take(B1);
    let bye = backend.request(Method::Bye, None);
    h.deliver(B1, bye);
    assert!(codes(&h.take(B1)).contains(&200));
    let to_caller = h.take(CALLER);
    assert!(
        codes(&to_caller).contains(&487),
        "the pending re-INVITE is answered"
    );
    assert_eq!(
        requests(&to_caller, Method::Bye).len(),
        1,
        "and the caller hung up"
    );
    assert_eq!(h.ended.unwrap().cause, EndCause::BackendBye);
    h.assert_released();
}

#[test]
fn a_bye_crossing_an_info_ends_both_legs() {
    let (mut h, mut caller, backend) = connected_call();
    let mut info = caller.request(Method::Info, None);
    voxgate_sip::message::set_body(
        &mut info,
        b"Signal=5\r\nDuration=160\r\n".to_vec(),
        Some("application/dtmf-relay"),
    );
    h.deliver(CALLER, info);
    let relayed = requests(&h.take(B1), Method::Info)[0].clone();
    assert_eq!(relayed.body, b"Signal=5\r\nDuration=160\r\n");
    let bye = caller.request(Method::Bye, None);
    h.deliver(CALLER, bye);
    let to_caller = codes(&h.take(CALLER));
    assert!(to_caller.contains(&200), "{to_caller:?}");
    assert_eq!(requests(&h.take(B1), Method::Bye).len(), 1);
    // The Backend's late answer to the INFO finds nothing to do.
    h.deliver(B1, backend.reply(&relayed, 200, None));
    assert_eq!(h.ended.unwrap().cause, EndCause::CallerBye);
    h.assert_released();
}

#[test]
fn an_info_answer_is_mapped_back() {
    let (mut h, _caller, mut backend) = connected_call();
    let info = backend.request(Method::Info, None);
    h.deliver(B1, info);
    let relayed = requests(&h.take(CALLER), Method::Info)[0].clone();
    // The caller side's 503 is never passed on as such.
    let caller_dialog = Ua::callee(CALLER, &relayed);
    h.deliver(CALLER, caller_dialog.reply(&relayed, 503, None));
    assert_eq!(codes(&h.take(B1)).last(), Some(&500));
}

#[test]
fn an_info_of_ours_goes_to_the_caller_in_its_dialog_and_needs_nothing_back() {
    let (mut h, caller, _backend) = connected_call();
    let _ = h.take(B1);
    let body = "Signal=5\r\nDuration=160\r\n";
    h.info_to_caller("application/dtmf-relay", body).unwrap();
    let to_caller = h.take(CALLER);
    let info = requests(&to_caller, Method::Info)[0].clone();
    assert_eq!(String::from_utf8_lossy(&info.body), body);
    assert_eq!(
        voxgate_sip::dialog::header_value(&info.headers, "Content-Type").as_deref(),
        Some("application/dtmf-relay")
    );
    assert_eq!(
        voxgate_sip::message::call_id(&info),
        caller.dialog.call_id.as_str().into()
    );
    h.deliver(CALLER, caller.reply(&info, 200, None));
    assert!(h.take(B1).is_empty(), "the Backend hears nothing of it");
    assert!(h.ended.is_none());

    // Not before the caller is answered.
    let (_, invite) = Ua::caller(40_000);
    let mut ringing = Harness::new(config(), Harness::inbound(&invite));
    assert!(
        ringing
            .info_to_caller("application/dtmf-relay", body)
            .is_err()
    );
}
