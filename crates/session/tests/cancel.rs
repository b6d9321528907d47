//! Scenarios of a caller giving up, and of the ring deadline: CANCEL at every moment, and a far
//! side that rings for ever.

mod common;

use std::time::Duration;

use common::*;
use rsip::Method;
use voxgate_session::EndCause;

#[test]
fn cancel_before_the_backend_said_anything() {
    let (caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.deliver(CALLER, caller.cancel());
    // The CANCEL is answered 200 and the INVITE 487; the caller is never answered 200.
    let to_caller = codes(&h.take(CALLER));
    assert!(
        to_caller.contains(&200) && to_caller.contains(&487),
        "{to_caller:?}"
    );
    assert_eq!(h.ended.unwrap().cause, EndCause::Cancelled);
    // RFC 3261 9.1: the Backend's INVITE is cancelled once it is provisional.
    assert!(requests(&h.take(B1), Method::Cancel).is_empty());
    h.deliver(B1, b1.answer(180, None));
    assert_eq!(requests(&h.take(B1), Method::Cancel).len(), 1);
    h.deliver(B1, b1.answer(487, None));
    assert!(h.session.is_finished());
    assert_eq!(h.leases(), 0);
    assert!(!codes(&h.take(CALLER)).contains(&200));
}

#[test]
fn cancel_while_the_backend_rings() {
    let (caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.deliver(B1, b1.answer(180, None));
    assert!(codes(&h.take(CALLER)).contains(&180), "ringing is relayed");
    h.deliver(CALLER, caller.cancel());
    assert!(codes(&h.take(CALLER)).contains(&487));
    assert_eq!(requests(&h.take(B1), Method::Cancel).len(), 1);
    // The Backend's 200 crossed the CANCEL: ACKed and hung up, the caller is not answered.
    h.deliver(B1, b1.answer(200, Some(sdp("127.0.0.21", 50_000))));
    let to_b1 = h.take(B1);
    assert_eq!(requests(&to_b1, Method::Ack).len(), 1);
    assert_eq!(requests(&to_b1, Method::Bye).len(), 1);
    assert!(!codes(&h.take(CALLER)).contains(&200));
    h.assert_released();
}

#[test]
fn cancel_while_the_trunk_rings() {
    // A Backend calling out: the far side is a trunk, which rings.
    let (caller, invite) = Ua::caller(40_000);
    let mut h = Harness::with_backends(config(), &[("trunk", TRUNK)], Harness::inbound(&invite));
    let trunk = Ua::callee(TRUNK, requests(&h.take(TRUNK), Method::Invite)[0]);
    h.deliver(TRUNK, trunk.answer(183, Some(sdp("127.0.0.30", 20_000))));
    assert_eq!(
        h.peer_of(voxgate_session::Side::Backend).unwrap().rtp,
        addr("127.0.0.30:20000")
    );
    h.deliver(CALLER, caller.cancel());
    assert_eq!(requests(&h.take(TRUNK), Method::Cancel).len(), 1);
    h.deliver(TRUNK, trunk.answer(487, None));
    assert_eq!(h.ended.unwrap().cause, EndCause::Cancelled);
    h.assert_released();
}

#[test]
fn a_bye_on_the_early_dialog_cancels_the_call() {
    let (mut caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.deliver(B1, b1.answer(180, None));
    let ringing = response(&h.take(CALLER), 180);
    caller.confirm(&ringing);
    let bye = caller.request(Method::Bye, None);
    h.deliver(CALLER, bye);
    let to_caller = codes(&h.take(CALLER));
    assert!(
        to_caller.contains(&200) && to_caller.contains(&487),
        "{to_caller:?}"
    );
    assert_eq!(requests(&h.take(B1), Method::Cancel).len(), 1);
    h.deliver(B1, b1.answer(487, None));
    h.assert_released();
}

#[test]
fn the_ring_deadline_cancels_the_backend_and_answers_408() {
    let (_caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    let started = h.now;
    h.deliver(B1, b1.answer(180, None));
    h.advance(RING_TIMEOUT - Duration::from_secs(1));
    assert!(h.ended.is_none(), "still within the deadline");
    h.advance(Duration::from_secs(1));
    let end = h.ended.expect("ended at the ring deadline");
    assert_eq!(end.cause, EndCause::RingTimeout);
    assert_eq!(h.ended_at.unwrap() - started, RING_TIMEOUT);
    assert_eq!(codes(&h.take(CALLER)).last(), Some(&408));
    let cancel = requests(&h.take(B1), Method::Cancel)[0].clone();
    // The 200 to the CANCEL is not an answer to the INVITE: nothing is ACKed or hung up.
    h.deliver(B1, voxgate_sip::message::response_for(&cancel, 200, None));
    let after = h.take(B1);
    assert!(requests(&after, Method::Ack).is_empty() && requests(&after, Method::Bye).is_empty());
    // Even if the Backend never answers the CANCEL, everything is released.
    h.assert_released();
}

#[test]
fn a_dialled_number_that_rings_for_ever_ends_no_answer() {
    let mut h = Harness::new(config(), Harness::dialled("+15551112222"));
    let trunk = Ua::callee(TRUNK, requests(&h.take(TRUNK), Method::Invite)[0]);
    h.deliver(TRUNK, trunk.answer(180, None));
    h.advance(Duration::from_secs(60));
    let end = h.ended.expect("ended at the dialled ring deadline");
    assert_eq!(end.cause, EndCause::RingTimeout);
    assert!(!end.caller_up);
    assert_eq!(requests(&h.take(TRUNK), Method::Cancel).len(), 1);
    assert_eq!(h.picks, 0, "no Backend is called for an unanswered number");
    h.assert_released();
}
