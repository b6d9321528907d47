//! Scenarios of API-originated calls: the number is dialled first, then bridged to a Backend.

mod common;

use std::time::Duration;

use common::*;
use rsip::Method;
use voxgate_session::{EndCause, Progress, Side};

#[test]
fn an_answered_number_is_bridged_to_a_backend() {
    let mut h = Harness::new(config(), Harness::dialled("+15551112222"));
    let dialled = requests(&h.take(TRUNK), Method::Invite)[0].clone();
    assert_eq!(dialled.uri.to_string(), "sip:+15551112222@pstn.test");
    let mut trunk = Ua::callee(TRUNK, &dialled);
    h.deliver(TRUNK, trunk.answer(200, Some(sdp("127.0.0.30", 20_000))));
    assert_eq!(requests(&h.take(TRUNK), Method::Ack).len(), 1);
    assert!(h.progress.contains(&Progress::Bridging));
    assert_eq!(
        h.peer_of(Side::Caller).unwrap().rtp,
        addr("127.0.0.30:20000")
    );
    let to_b1 = requests(&h.take(B1), Method::Invite)[0].clone();
    let from = voxgate_sip::dialog::header_value(&to_b1.headers, "From").unwrap();
    assert!(
        from.contains("+15551112222"),
        "the Backend sees the dialled party: {from}"
    );
    let b1 = Ua::callee(B1, &to_b1);
    h.deliver(B1, b1.answer(200, Some(sdp("127.0.0.21", 50_000))));
    assert!(h.progress.contains(&Progress::Connected));
    let bye = trunk.request(Method::Bye, None);
    h.deliver(TRUNK, bye);
    assert_eq!(requests(&h.take(B1), Method::Bye).len(), 1);
    let end = h.ended.unwrap();
    assert_eq!(end.cause, EndCause::CallerBye);
    assert!(end.connected);
    h.assert_released();
}

#[test]
fn a_busy_number_ends_with_its_code() {
    let mut h = Harness::new(config(), Harness::dialled("+15551112222"));
    let trunk = Ua::callee(TRUNK, requests(&h.take(TRUNK), Method::Invite)[0]);
    h.deliver(TRUNK, trunk.answer(486, None));
    let end = h.ended.unwrap();
    assert_eq!(
        (end.cause, end.code, end.caller_up),
        (EndCause::Rejected, Some(486), false)
    );
    assert_eq!(h.picks, 0);
    h.assert_released();
}

#[test]
fn a_silent_trunk_ends_the_dialling() {
    let mut h = Harness::new(config(), Harness::dialled("+15551112222"));
    h.advance(INVITE_TIMEOUT);
    assert_eq!(h.ended.unwrap().cause, EndCause::Silent);
    h.assert_released();
}

#[test]
fn hang_up_while_the_backend_rings_bye_the_number_and_cancel_the_backend() {
    let mut h = Harness::new(config(), Harness::dialled("+15551112222"));
    let trunk = Ua::callee(TRUNK, requests(&h.take(TRUNK), Method::Invite)[0]);
    h.deliver(TRUNK, trunk.answer(200, Some(sdp("127.0.0.30", 20_000))));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.deliver(B1, b1.answer(180, None));
    h.input(voxgate_session::Input::HangUp);
    assert_eq!(requests(&h.take(TRUNK), Method::Bye).len(), 1);
    assert_eq!(requests(&h.take(B1), Method::Cancel).len(), 1);
    h.deliver(B1, b1.answer(487, None));
    let end = h.ended.unwrap();
    assert_eq!(
        (end.cause, end.caller_up, end.connected),
        (EndCause::HungUp, true, false)
    );
    h.advance(Duration::from_secs(1));
    h.assert_released();
}
