//! Scenarios of the caller's identity crossing to the Backend: the trunk's policy decides which
//! of the caller's headers the far INVITE carries, on every attempt.

mod common;

use common::*;
use rsip::{Header, Method};
use voxgate_session::IdentityPolicy;
use voxgate_sip::dialog::header_values;

fn carrier_invite() -> rsip::Request {
    let (_caller, mut invite) = Ua::caller(40_000);
    for header in invite.headers.iter_mut() {
        if let Header::From(from) = header {
            let value = from.to_string();
            let value = value
                .split_once(':')
                .map_or("", |(_, v)| v.trim())
                .to_owned();
            *header = Header::From(format!("\"Alice\" {value}").into());
        }
    }
    for (name, value) in [
        ("P-Asserted-Identity", "<sip:+15552223333@carrier.test>"),
        ("Privacy", "id"),
        (
            "Diversion",
            "<sip:+15559998888@carrier.test>;reason=unconditional",
        ),
        ("X-Account", "42"),
        ("X-Secret", "nope"),
        ("X-Voxgate-Trunk", "forged"),
    ] {
        invite
            .headers
            .push(Header::Other(name.into(), value.into()));
    }
    invite
}

fn policy() -> IdentityPolicy {
    IdentityPolicy {
        identity: true,
        trunk: Some("carrier".into()),
        pass_headers: vec!["X-Acc*".into()],
    }
}

#[test]
fn the_backend_invite_carries_the_identity_the_policy_passes_on_every_attempt() {
    let mut config = config();
    config.identity = policy();
    let invite = carrier_invite();
    let mut h = Harness::new(config, Harness::inbound(&invite));
    let first = requests(&h.take(B1), Method::Invite)[0].clone();
    // The first Backend fails: the next one is told the same.
    let b1 = Ua::callee(B1, &first);
    h.deliver(B1, b1.answer(500, None));
    let second = requests(&h.take(B2), Method::Invite)[0].clone();
    for far in [&first, &second] {
        let values = |name| header_values(&far.headers, name);
        assert_eq!(
            values("P-Asserted-Identity"),
            ["<sip:+15552223333@carrier.test>"]
        );
        assert_eq!(values("Privacy"), ["id"]);
        assert_eq!(values("Diversion").len(), 1);
        assert_eq!(values("X-Account"), ["42"]);
        assert!(values("X-Secret").is_empty(), "not in pass_headers");
        assert_eq!(
            values("X-Voxgate-Trunk"),
            ["carrier"],
            "ours, not the caller's"
        );
        assert_eq!(values("X-Voxgate-Request-URI"), [invite.uri.to_string()]);
        assert!(
            values("From")[0].starts_with("\"Alice\" <sip:"),
            "{:?}",
            values("From")
        );
    }
}

#[test]
fn without_a_policy_nothing_crosses() {
    let invite = carrier_invite();
    let mut h = Harness::new(config(), Harness::inbound(&invite));
    let far = requests(&h.take(B1), Method::Invite)[0].clone();
    for name in [
        "P-Asserted-Identity",
        "Privacy",
        "Diversion",
        "X-Account",
        "X-Voxgate-Trunk",
    ] {
        assert!(header_values(&far.headers, name).is_empty(), "{name}");
    }
}
