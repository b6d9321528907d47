//! Scenarios of a caller's transfer (RFC 3515 REFER, blind): bridged here (the target dialled,
//! the caller's media moved to it, the Backend told in NOTIFYs and hung up), failing (the Backend
//! keeps the caller), the Backend leaving meanwhile, passed to the trunk (`transfer = "refer"`),
//! refused, and asked by an operator.

mod common;

use common::*;
use rsip::{Header, Method};
use voxgate_session::{EndCause, Progress, Side, TransferMode};

const HUMAN: &str = "sip:human@127.0.0.40:5060";

/// A REFER from the Backend in its dialog, to `refer_to` (a header line or nothing).
fn refer(backend: &mut Ua, refer_to: &str) -> rsip::Request {
    let mut request = backend.request(Method::Refer, None);
    if !refer_to.is_empty() {
        request
            .headers
            .push(Header::Other("Refer-To".into(), refer_to.into()));
    }
    request.headers.push(Header::Other(
        "Referred-By".into(),
        "<sip:agent@127.0.0.21>".into(),
    ));
    request
}

/// The sipfrag status lines of the NOTIFYs among `sent`, with their Subscription-State.
fn notified(sent: &[Sent]) -> Vec<(String, String)> {
    requests(sent, Method::Notify)
        .into_iter()
        .map(|notify| {
            let state = voxgate_sip::dialog::header_value(&notify.headers, "Subscription-State")
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&notify.body).trim().to_owned();
            assert_eq!(
                voxgate_sip::dialog::header_value(&notify.headers, "Event").as_deref(),
                Some("refer")
            );
            (body, state)
        })
        .collect()
}

/// A connected call whose Backend asked to transfer the caller to HUMAN: the harness, the caller,
/// the Backend and the target's INVITE.
fn transferring() -> (Harness, Ua, Ua, rsip::Request) {
    let (mut h, caller, mut backend) = connected_call();
    let request = refer(&mut backend, &format!("<{HUMAN}>"));
    h.deliver(B1, request);
    let to_b1 = h.take(B1);
    assert_eq!(codes(&to_b1), vec![202]);
    assert_eq!(
        notified(&to_b1),
        vec![("SIP/2.0 100 Trying".into(), "active;expires=60".into())]
    );
    // The Backend answers its NOTIFY (else it would be sent again).
    let notify = requests(&to_b1, Method::Notify)[0].clone();
    h.deliver(B1, backend.reply(&notify, 200, None));
    assert_eq!(h.transfers, vec![HUMAN.to_owned()]);
    let to_target = h.take(TARGET);
    let invite = requests(&to_target, Method::Invite)[0].clone();
    (h, caller, backend, invite)
}

#[test]
fn a_bridged_transfer_moves_the_caller_to_the_target_and_hangs_up_the_backend() {
    let (mut h, _caller, _backend, invite) = transferring();
    // The target is dialled as named, seeing the caller's identity and who referred it, and
    // offered the codec the call already uses at this node's Backend-side port.
    assert_eq!(invite.uri.to_string(), HUMAN);
    let from = voxgate_sip::dialog::header_value(&invite.headers, "From").unwrap();
    assert!(from.contains("sip:+15551230000@"), "{from}");
    assert_eq!(
        voxgate_sip::dialog::header_value(&invite.headers, "Referred-By").as_deref(),
        Some("<sip:agent@127.0.0.21>")
    );
    let offer = String::from_utf8_lossy(&invite.body);
    assert!(offer.contains("m=audio 30002 RTP/AVP 0 101"), "{offer}");
    assert_eq!(h.leases(), 2, "the Backend's and the target's");

    let target = Ua::callee(TARGET, &invite);
    h.deliver(TARGET, target.answer(180, None));
    assert_eq!(
        notified(&h.take(B1)),
        vec![("SIP/2.0 180 Ringing".into(), "active;expires=60".into())]
    );
    h.deliver(TARGET, target.answer(200, Some(sdp("127.0.0.40", 60_000))));
    let to_target = h.take(TARGET);
    assert_eq!(requests(&to_target, Method::Ack).len(), 1);
    let to_b1 = h.take(B1);
    assert_eq!(
        notified(&to_b1),
        vec![(
            "SIP/2.0 200 OK".into(),
            "terminated;reason=noresource".into()
        )]
    );
    assert_eq!(requests(&to_b1, Method::Bye).len(), 1);
    assert_eq!(h.leases(), 1, "the Backend's lease went with its leg");
    assert_eq!(
        h.peer_of(Side::Backend).unwrap().rtp,
        addr("127.0.0.40:60000")
    );
    // The caller noticed nothing: no re-INVITE, its media address unchanged.
    assert!(requests(&h.take(CALLER), Method::Invite).is_empty());
    assert!(h.progress.contains(&Progress::Transferred {
        to: HUMAN.into(),
        code: 200
    }));

    // The target is the far side now: its BYE ends the call.
    let mut target = target;
    let bye = target.request(Method::Bye, None);
    h.deliver(TARGET, bye);
    assert_eq!(requests(&h.take(CALLER), Method::Bye).len(), 1);
    assert_eq!(h.ended.unwrap().cause, EndCause::BackendBye);
    h.assert_released();
}

#[test]
fn a_busy_target_leaves_the_caller_with_the_backend() {
    let (mut h, mut caller, _backend, invite) = transferring();
    let target = Ua::callee(TARGET, &invite);
    h.deliver(TARGET, target.answer(486, None));
    let to_b1 = h.take(B1);
    assert_eq!(
        notified(&to_b1),
        vec![(
            "SIP/2.0 486 Busy Here".into(),
            "terminated;reason=noresource".into()
        )]
    );
    assert!(requests(&to_b1, Method::Bye).is_empty());
    assert_eq!(h.leases(), 1);
    assert_eq!(
        h.peer_of(Side::Backend).unwrap().rtp,
        addr("127.0.0.21:50000")
    );
    assert!(h.ended.is_none());
    // The call goes on as before: the caller's BYE reaches the Backend.
    let bye = caller.request(Method::Bye, None);
    h.deliver(CALLER, bye);
    assert_eq!(requests(&h.take(B1), Method::Bye).len(), 1);
    assert_eq!(h.ended.unwrap().cause, EndCause::CallerBye);
    h.assert_released();
}

#[test]
fn a_silent_target_fails_the_transfer_after_the_invite_timeout() {
    let (mut h, _caller, _backend, _invite) = transferring();
    h.advance(INVITE_TIMEOUT + std::time::Duration::from_millis(10));
    let to_b1 = h.take(B1);
    assert_eq!(
        notified(&to_b1),
        vec![(
            "SIP/2.0 408 Request Timeout".into(),
            "terminated;reason=noresource".into()
        )]
    );
    assert!(h.ended.is_none());
    // The silent INVITE is followed to its transaction's end, then its lease is back.
    h.advance(std::time::Duration::from_secs(40));
    assert!(h.ended.is_none());
    assert_eq!(h.leases(), 1, "the silent target's lease is back");
}

#[test]
fn a_target_nobody_routes_fails_with_404_and_the_call_goes_on() {
    let (mut h, _caller, mut backend) = connected_call();
    h.transfer_to = None;
    let request = refer(&mut backend, "<tel:+15559990000>");
    h.deliver(B1, request);
    let to_b1 = h.take(B1);
    assert_eq!(codes(&to_b1), vec![202]);
    assert_eq!(
        notified(&to_b1),
        vec![
            ("SIP/2.0 100 Trying".into(), "active;expires=60".into()),
            (
                "SIP/2.0 404 Not Found".into(),
                "terminated;reason=noresource".into()
            )
        ]
    );
    assert!(h.ended.is_none());
}

#[test]
fn a_backend_hanging_up_after_its_refer_leaves_the_caller_waiting_for_the_target() {
    let (mut h, _caller, mut backend, invite) = transferring();
    let bye = backend.request(Method::Bye, None);
    h.deliver(B1, bye);
    assert_eq!(codes(&h.take(B1)), vec![200]);
    assert_eq!(h.leases(), 1, "only the target's lease is left");
    assert!(h.ended.is_none());
    assert!(requests(&h.take(CALLER), Method::Bye).is_empty());

    let target = Ua::callee(TARGET, &invite);
    h.deliver(TARGET, target.answer(200, Some(sdp("127.0.0.40", 60_000))));
    assert!(notified(&h.take(B1)).is_empty(), "the Backend is gone");
    assert_eq!(
        h.peer_of(Side::Backend).unwrap().rtp,
        addr("127.0.0.40:60000")
    );
    assert!(h.ended.is_none());
}

#[test]
fn a_backend_gone_and_a_failed_transfer_end_the_call() {
    let (mut h, _caller, mut backend, invite) = transferring();
    let bye = backend.request(Method::Bye, None);
    h.deliver(B1, bye);
    let target = Ua::callee(TARGET, &invite);
    h.deliver(TARGET, target.answer(603, None));
    assert_eq!(requests(&h.take(CALLER), Method::Bye).len(), 1);
    let end = h.ended.unwrap();
    assert_eq!((end.cause, end.code), (EndCause::TransferFailed, Some(603)));
    h.assert_released();
}

#[test]
fn the_caller_hanging_up_cancels_the_ringing_target() {
    let (mut h, mut caller, _backend, invite) = transferring();
    let target = Ua::callee(TARGET, &invite);
    h.deliver(TARGET, target.answer(180, None));
    let bye = caller.request(Method::Bye, None);
    h.deliver(CALLER, bye);
    assert_eq!(requests(&h.take(TARGET), Method::Cancel).len(), 1);
    assert_eq!(requests(&h.take(B1), Method::Bye).len(), 1);
    h.deliver(TARGET, target.answer(487, None));
    assert_eq!(h.ended.unwrap().cause, EndCause::CallerBye);
    h.assert_released();
}

#[test]
fn refers_that_cannot_be_done_are_refused() {
    let (mut h, mut caller, mut backend) = connected_call();
    let replaces = "<sip:bob@127.0.0.40?Replaces=abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2>";
    for (refer_to, code) in [("", 400), ("<mailto:a@b>", 400), (replaces, 501)] {
        let request = refer(&mut backend, refer_to);
        h.deliver(B1, request);
        assert_eq!(codes(&h.take(B1)), vec![code], "{refer_to}");
    }
    // The caller's side does not transfer the Backend.
    let mut from_caller = caller.request(Method::Refer, None);
    from_caller
        .headers
        .push(Header::Other("Refer-To".into(), format!("<{HUMAN}>")));
    h.deliver(CALLER, from_caller);
    assert_eq!(codes(&h.take(CALLER)), vec![403]);
    assert!(h.transfers.is_empty());
    // One transfer at a time.
    let first = refer(&mut backend, &format!("<{HUMAN}>"));
    h.deliver(B1, first);
    let second = refer(&mut backend, &format!("<{HUMAN}>"));
    h.deliver(B1, second);
    assert_eq!(codes(&h.take(B1)), vec![202, 491]);
}

#[test]
fn in_refer_mode_the_refer_and_its_notifies_cross_to_the_trunk() {
    let mut config = config();
    config.transfer = TransferMode::Refer;
    let (mut caller, invite) = Ua::caller(40_000);
    let mut h = Harness::new(config, Harness::inbound(&invite));
    let invites = requests(&h.take(B1), Method::Invite)
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    let mut backend = Ua::callee(B1, &invites[0]);
    h.deliver(B1, backend.answer(200, Some(sdp("127.0.0.21", 50_000))));
    let ok = response(&h.take(CALLER), 200);
    caller.confirm(&ok);
    let ack = caller.ack();
    h.deliver(CALLER, ack);

    let request = refer(&mut backend, "<tel:+15559990000>");
    h.deliver(B1, request);
    assert!(h.transfers.is_empty(), "nothing dialled here");
    let to_caller = h.take(CALLER);
    let relayed = requests(&to_caller, Method::Refer)[0].clone();
    let header = |request: &rsip::Request, name: &str| {
        voxgate_sip::dialog::header_value(&request.headers, name).unwrap_or_default()
    };
    assert_eq!(header(&relayed, "Refer-To"), "<tel:+15559990000>");
    assert_eq!(header(&relayed, "Referred-By"), "<sip:agent@127.0.0.21>");
    h.deliver(CALLER, caller.reply(&relayed, 202, None));
    assert_eq!(codes(&h.take(B1)), vec![202]);

    let mut notify = caller.request(Method::Notify, None);
    notify
        .headers
        .push(Header::Other("Event".into(), "refer".into()));
    notify.headers.push(Header::Other(
        "Subscription-State".into(),
        "terminated;reason=noresource".into(),
    ));
    voxgate_sip::message::set_body(
        &mut notify,
        b"SIP/2.0 200 OK\r\n".to_vec(),
        Some("message/sipfrag;version=2.0"),
    );
    h.deliver(CALLER, notify);
    assert_eq!(
        notified(&h.take(B1)),
        vec![(
            "SIP/2.0 200 OK".into(),
            "terminated;reason=noresource".into()
        )]
    );
}

#[test]
fn an_operator_transfers_without_notifies() {
    let (mut h, _caller, _backend) = connected_call();
    h.transfer(HUMAN).unwrap();
    assert_eq!(h.transfer(HUMAN), Err("a transfer is already under way"));
    assert!(notified(&h.take(B1)).is_empty());
    let invite = requests(&h.take(TARGET), Method::Invite)[0].clone();
    assert!(voxgate_sip::dialog::header_value(&invite.headers, "Referred-By").is_none());
    let target = Ua::callee(TARGET, &invite);
    h.deliver(TARGET, target.answer(200, Some(sdp("127.0.0.40", 60_000))));
    let to_b1 = h.take(B1);
    assert!(notified(&to_b1).is_empty());
    assert_eq!(requests(&to_b1, Method::Bye).len(), 1);
    assert_eq!(
        h.peer_of(Side::Backend).unwrap().rtp,
        addr("127.0.0.40:60000")
    );

    // Not before the call is up.
    let (_, invite) = Ua::caller(40_000);
    let mut ringing = Harness::new(config(), Harness::inbound(&invite));
    assert_eq!(ringing.transfer(HUMAN), Err("the session is not connected"));
}

#[test]
fn a_transferor_gone_quiet_is_not_a_media_timeout_while_the_target_rings() {
    let (mut h, _caller, mut backend, invite) = transferring();
    let bye = backend.request(Method::Bye, None);
    h.deliver(B1, bye);
    // The far side's media is marked silent on purpose, and its silence ends nothing.
    assert!(!h.peer_of(Side::Backend).unwrap().sends);
    h.input(voxgate_session::Input::MediaTimeout(Side::Backend));
    assert!(h.ended.is_none());
    let target = Ua::callee(TARGET, &invite);
    h.deliver(TARGET, target.answer(200, Some(sdp("127.0.0.40", 60_000))));
    assert!(h.peer_of(Side::Backend).unwrap().sends);
    // Once connected again, silence counts.
    h.input(voxgate_session::Input::MediaTimeout(Side::Backend));
    assert_eq!(h.ended.unwrap().cause, EndCause::MediaTimeout);
}

#[test]
fn a_caller_reinvite_in_flight_when_the_target_answers_is_refused_not_answered_on_the_new_leg() {
    let (mut h, mut caller, _backend, invite) = transferring();
    let reinvite = caller.request(Method::Invite, Some(sdp("127.0.0.10", 41_000)));
    h.deliver(CALLER, reinvite);
    assert_eq!(
        requests(&h.take(B1), Method::Invite).len(),
        1,
        "relayed to the Backend"
    );
    let target = Ua::callee(TARGET, &invite);
    h.deliver(TARGET, target.answer(200, Some(sdp("127.0.0.40", 60_000))));
    let to_caller = h.take(CALLER);
    let finals: Vec<u16> = codes(&to_caller)
        .into_iter()
        .filter(|c| *c >= 200)
        .collect();
    assert_eq!(finals, vec![500], "refused, to be retried");
    // Its media re-pointing is undone; nothing for the caller's re-INVITE went to the target.
    assert_eq!(
        h.peer_of(Side::Caller).unwrap().rtp,
        addr("127.0.0.10:40000")
    );
    assert!(requests(&h.take(TARGET), Method::Invite).is_empty());
}

#[test]
fn a_target_backend_that_takes_no_session_fails_the_transfer_with_480() {
    let (mut h, _caller, mut backend) = connected_call();
    h.transfer_to = None;
    h.transfer_refusal = 480;
    let request = refer(&mut backend, "<sip:agent@127.0.0.22:5080>");
    h.deliver(B1, request);
    let to_b1 = h.take(B1);
    assert_eq!(
        notified(&to_b1).last().unwrap().0,
        "SIP/2.0 480 Temporarily Unavailable"
    );
    assert!(h.progress.contains(&Progress::Transferred {
        to: "sip:agent@127.0.0.22:5080".into(),
        code: 480
    }));
    assert!(h.ended.is_none());
}
