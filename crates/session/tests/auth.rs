//! Scenarios of a carrier that challenges our INVITE (RFC 3261 22.2): answered once with the
//! trunk's credentials on the dialled leg (originated calls) and on the far leg (a Backend's call
//! out), refused when there is nothing to answer with.

mod common;

use common::*;
use rsip::{Header, Method};
use voxgate_session::{EndCause, TrunkCredentials};
use voxgate_sip::digest::{Algorithm, Credentials, response};

fn with_credentials() -> voxgate_session::SessionConfig {
    let mut config = config();
    config.trunk_credentials = Some(TrunkCredentials {
        username: "acct123".into(),
        password: "s3cret".into(),
    });
    config
}

/// The trunk's challenge to `invite`: `code` 401 or 407 with a Digest challenge.
fn challenge(trunk: &Ua, code: u16) -> rsip::Response {
    let mut reply = trunk.answer(code, None);
    let name = if code == 407 {
        "Proxy-Authenticate"
    } else {
        "WWW-Authenticate"
    };
    reply.headers.push(Header::Other(
        name.into(),
        "Digest realm=\"carrier.test\", nonce=\"abc123\", qop=\"auth\", algorithm=MD5".into(),
    ));
    reply
}

/// Checks `invite` carries `header` with a right answer for acct123 / s3cret.
fn assert_answers(invite: &rsip::Request, header: &str) {
    let value = voxgate_sip::dialog::header_value(&invite.headers, header)
        .unwrap_or_else(|| panic!("no {header} in {invite}"));
    let credentials = Credentials::parse(&value).expect("digest credentials");
    assert_eq!(credentials.username, "acct123");
    assert_eq!(credentials.realm, "carrier.test");
    assert_eq!(credentials.uri, invite.uri.to_string());
    let expected = response(
        Algorithm::Md5,
        "acct123",
        "carrier.test",
        "s3cret",
        "INVITE",
        &credentials.uri,
        "abc123",
        Some((
            credentials.nc.as_deref().expect("nc"),
            credentials.cnonce.as_deref().expect("cnonce"),
        )),
    );
    assert_eq!(credentials.response, expected);
}

#[test]
fn a_dialled_number_behind_a_challenge_is_called_again_with_credentials() {
    let mut h = Harness::new(with_credentials(), Harness::dialled("+15551112222"));
    let first = requests(&h.take(TRUNK), Method::Invite)[0].clone();
    let trunk = Ua::callee(TRUNK, &first);
    h.deliver(TRUNK, challenge(&trunk, 407));
    let sent = h.take(TRUNK);
    assert_eq!(requests(&sent, Method::Ack).len(), 1, "the 407 is ACKed");
    let second = requests(&sent, Method::Invite)[0].clone();
    assert_answers(&second, "Proxy-Authorization");
    // Same dialog, next CSeq, new transaction, same offer.
    let call_id = |r: &rsip::Request| voxgate_sip::message::call_id(r).unwrap().to_owned();
    assert_eq!(call_id(&second), call_id(&first));
    assert_eq!(voxgate_sip::message::cseq(&second).unwrap().0, 2);
    assert_ne!(
        voxgate_sip::message::top_branch(&second),
        voxgate_sip::message::top_branch(&first)
    );
    assert_eq!(second.body, first.body);

    let mut trunk = Ua::callee(TRUNK, &second);
    h.deliver(TRUNK, trunk.answer(200, Some(sdp("127.0.0.30", 20_000))));
    assert_eq!(requests(&h.take(B1), Method::Invite).len(), 1, "bridged");
    let bye = trunk.request(Method::Bye, None);
    h.deliver(TRUNK, bye);
    h.assert_released();
}

#[test]
fn a_second_challenge_or_no_credentials_ends_the_call_with_it() {
    let mut h = Harness::new(with_credentials(), Harness::dialled("+15551112222"));
    let first = requests(&h.take(TRUNK), Method::Invite)[0].clone();
    h.deliver(TRUNK, challenge(&Ua::callee(TRUNK, &first), 401));
    let second = requests(&h.take(TRUNK), Method::Invite)[0].clone();
    assert_answers(&second, "Authorization");
    h.deliver(TRUNK, challenge(&Ua::callee(TRUNK, &second), 401));
    let end = h.ended.unwrap();
    assert_eq!((end.cause, end.code), (EndCause::Rejected, Some(401)));
    assert!(requests(&h.take(TRUNK), Method::Invite).is_empty());
    h.assert_released();

    let mut h = Harness::new(config(), Harness::dialled("+15551112222"));
    let first = requests(&h.take(TRUNK), Method::Invite)[0].clone();
    h.deliver(TRUNK, challenge(&Ua::callee(TRUNK, &first), 407));
    assert_eq!(h.ended.unwrap().code, Some(407));
    h.assert_released();
}

#[test]
fn a_backends_challenge_is_not_answered_with_the_trunks_credentials() {
    let (caller, invite) = Ua::caller(40_000);
    let _ = caller;
    let mut h = Harness::new(with_credentials(), Harness::inbound(&invite));
    let to_b1 = requests(&h.take(B1), Method::Invite)[0].clone();
    h.deliver(B1, challenge(&Ua::callee(B1, &to_b1), 407));
    assert!(
        requests(&h.take(B1), Method::Invite).is_empty(),
        "credentials go to trunks only"
    );
    assert_eq!(h.ended.unwrap().code, Some(407));
}
