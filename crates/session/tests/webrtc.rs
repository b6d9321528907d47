//! Scenarios of WebRTC (WHIP) sessions: the Backend is called only once the client connected.

mod common;

use common::*;
use rsip::Method;
use voxgate_session::{EndCause, Input};

#[test]
fn the_backend_is_called_once_the_client_connected() {
    let mut h = Harness::new(config(), Harness::webrtc());
    assert_eq!(h.picks, 0, "no Backend lease before the client connects");
    assert_eq!(h.leases(), 0);
    h.input(Input::ClientConnected);
    let invite = requests(&h.take(B1), Method::Invite)[0].clone();
    let body = String::from_utf8_lossy(&invite.body);
    assert!(
        body.contains("opus/48000/2") && body.contains("m=audio 30002 "),
        "{body}"
    );
    let mut b1 = Ua::callee(B1, &invite);
    h.deliver(B1, b1.answer(200, Some(sdp("127.0.0.21", 50_000))));
    assert_eq!(
        h.answered.len(),
        1,
        "the driver gets the answer to build its bridge"
    );
    let bye = b1.request(Method::Bye, None);
    h.deliver(B1, bye);
    assert_eq!(h.ended.unwrap().cause, EndCause::BackendBye);
    h.assert_released();
}

#[test]
fn a_client_gone_before_connecting_costs_no_backend() {
    let mut h = Harness::new(config(), Harness::webrtc());
    h.input(Input::ClientGone(EndCause::WebRtcClosed));
    assert_eq!(h.picks, 0);
    assert_eq!(h.ended.unwrap().cause, EndCause::WebRtcClosed);
    h.assert_released();
}

#[test]
fn a_client_gone_while_the_backend_rings_cancels_it() {
    let mut h = Harness::new(config(), Harness::webrtc());
    h.input(Input::ClientConnected);
    let b1 = Ua::callee(B1, requests(&h.take(B1), Method::Invite)[0]);
    h.deliver(B1, b1.answer(180, None));
    h.input(Input::ClientGone(EndCause::WhipDelete));
    assert_eq!(requests(&h.take(B1), Method::Cancel).len(), 1);
    h.deliver(B1, b1.answer(487, None));
    assert_eq!(h.ended.unwrap().cause, EndCause::WhipDelete);
    h.assert_released();
}

#[test]
fn a_backend_reinvite_is_answered_by_the_bridge() {
    let mut h = Harness::new(config(), Harness::webrtc());
    h.input(Input::ClientConnected);
    let invite = requests(&h.take(B1), Method::Invite)[0].clone();
    let mut b1 = Ua::callee(B1, &invite);
    h.deliver(B1, b1.answer(200, Some(sdp("127.0.0.21", 50_000))));
    let _ = h.take(B1);
    // A new address, same codec: the bridge follows, the media moves.
    let reinvite = b1.request(Method::Invite, Some(sdp("127.0.0.21", 51_000)));
    h.deliver(B1, reinvite);
    assert_eq!(h.reoffers.len(), 1);
    assert_eq!(codes(&h.take(B1)).last(), Some(&200));
    assert_eq!(
        h.peer_of(voxgate_session::Side::Backend).unwrap().rtp,
        addr("127.0.0.21:51000")
    );
    // A codec the bridge cannot follow: 488, the media stays.
    h.bridge_follows = false;
    let reinvite = b1.request(Method::Invite, Some(sdp("127.0.0.21", 52_000)));
    h.deliver(B1, reinvite);
    assert_eq!(codes(&h.take(B1)).last(), Some(&488));
    assert_eq!(
        h.peer_of(voxgate_session::Side::Backend).unwrap().rtp,
        addr("127.0.0.21:51000")
    );
    assert!(h.ended.is_none());
}
