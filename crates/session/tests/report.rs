//! Scenarios of what a session reports for its call record: ringing, each far attempt's
//! outcome, who ended the session and the caller leg's final status.

mod common;

use common::*;
use rsip::Method;
use voxgate_core::NodeId;
use voxgate_session::{EndCause, Progress, Side};

fn attempts(h: &Harness) -> Vec<(Option<String>, Option<u16>)> {
    h.progress
        .iter()
        .filter_map(|p| match p {
            Progress::Attempted { backend, code } => {
                Some((backend.as_ref().map(NodeId::to_string), *code))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_failed_over_call_reports_each_attempt_ringing_once_and_the_caller_bye() {
    let (mut caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let first = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.deliver(B1, first.answer(180, None));
    h.deliver(B1, first.answer(500, None));
    let second = Ua::callee(B2, requests(&h.take(B2), Method::Invite)[0]);
    h.deliver(B2, second.answer(180, None));
    h.deliver(B2, second.answer(200, Some(sdp("127.0.0.22", 50_000))));
    let ok = response(&h.take(CALLER), 200);
    caller.confirm(&ok);
    let ack = caller.ack();
    h.deliver(CALLER, ack);
    let bye = caller.request(Method::Bye, None);
    h.deliver(CALLER, bye);

    assert_eq!(
        attempts(&h),
        vec![
            (Some("b1".into()), Some(500)),
            (Some("b2".into()), Some(200))
        ]
    );
    let ringing = h.progress.iter().filter(|p| **p == Progress::Ringing);
    assert_eq!(ringing.count(), 1, "{:?}", h.progress);
    let end = h.ended.unwrap();
    assert_eq!(end.cause, EndCause::CallerBye);
    assert_eq!(end.by, Some(Side::Caller));
    assert_eq!(end.caller_code, Some(200));
}

#[test]
fn a_backend_bye_is_the_backends_end() {
    let (mut h, _caller, mut backend) = connected_call();
    let bye = backend.request(Method::Bye, None);
    h.deliver(B1, bye);
    let end = h.ended.unwrap();
    assert_eq!((end.by, end.caller_code), (Some(Side::Backend), Some(200)));
}

#[test]
fn a_refusal_is_the_backends_and_the_caller_code_is_what_the_caller_got() {
    let (_caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.deliver(B1, b1.answer(302, None));
    let end = h.ended.unwrap();
    assert_eq!(end.cause, EndCause::Rejected);
    assert_eq!(end.code, Some(302));
    assert_eq!(end.by, Some(Side::Backend));
    // The redirect is hidden: the caller got 480.
    assert_eq!(end.caller_code, Some(480));
    assert_eq!(attempts(&h), vec![(Some("b1".into()), Some(302))]);
}

#[test]
fn a_cancel_is_the_callers_and_the_pending_attempt_has_no_code() {
    let (caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.deliver(B1, b1.answer(180, None));
    h.deliver(CALLER, caller.cancel());
    let end = h.ended.unwrap();
    assert_eq!(end.cause, EndCause::Cancelled);
    assert_eq!((end.by, end.caller_code), (Some(Side::Caller), Some(487)));
    assert_eq!(attempts(&h), vec![(Some("b1".into()), None)]);
    assert!(h.progress.contains(&Progress::Ringing));
}

#[test]
fn no_backend_is_this_nodes_end_with_a_503() {
    let (_caller, invite) = Ua::caller(40_000);
    let mut h = Harness::with_backends(config(), &[], Harness::inbound(&invite));
    let end = h.ended.unwrap();
    assert_eq!(end.cause, EndCause::NoBackend);
    assert_eq!((end.by, end.caller_code), (None, Some(503)));
    assert!(attempts(&h).is_empty());
    assert!(!h.progress.contains(&Progress::Ringing));
    h.assert_released();
}
