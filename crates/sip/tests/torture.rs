//! RFC 4475 section 3 messages (tests/torture/*.dat) through `parse` and `validate::request`:
//! the status each one is refused with, or that it passes.

use voxgate_sip::message::error_response;
use voxgate_sip::{parse, validate};

/// (file, expected): `Ok(method)` when it parses and validates, `Err(code)` for the code of the
/// refusal, `Err(0)` when it is dropped (a response, or a bad one).
const TABLE: &[(&str, Result<&str, u16>)] = &[
    ("wsinv", Ok("INVITE")),
    ("intmeth", Err(501)),
    ("esc01", Ok("INVITE")),
    ("escnull", Ok("REGISTER")),
    ("esc02", Err(501)),
    ("lwsdisp", Ok("OPTIONS")),
    ("longreq", Ok("INVITE")),
    ("dblreq", Ok("REGISTER")),
    ("semiuri", Ok("OPTIONS")),
    ("transports", Ok("OPTIONS")),
    ("mpart01", Ok("MESSAGE")),
    ("unreason", Err(0)),
    ("noreason", Err(0)),
    ("badinv01", Err(400)),
    ("clerr", Err(400)),
    ("ncl", Err(400)),
    ("scalar02", Err(400)),
    ("scalarlg", Err(0)),
    ("quotbal", Err(400)),
    ("ltgtruri", Err(400)),
    ("lwsruri", Err(400)),
    ("lwsstart", Err(400)),
    ("trws", Err(400)),
    ("escruri", Err(400)),
    ("baddate", Ok("INVITE")),
    ("regbadct", Err(400)),
    ("badaspec", Err(400)),
    ("baddn", Err(400)),
    ("badvers", Err(505)),
    ("mismatch01", Err(400)),
    ("mismatch02", Err(501)),
    ("bigcode", Err(0)),
    ("badbranch", Err(400)),
    ("insuf", Err(400)),
    ("unkscm", Err(416)),
    ("novelsc", Err(416)),
    ("unksm2", Ok("REGISTER")),
    ("bext01", Err(420)),
    ("invut", Err(415)),
    ("regaut01", Ok("REGISTER")),
    ("multi01", Err(400)),
    ("mcl01", Err(400)),
    ("bcast", Err(0)),
    ("zeromf", Ok("OPTIONS")),
    ("cparam01", Ok("REGISTER")),
    ("cparam02", Ok("REGISTER")),
    ("regescrt", Ok("REGISTER")),
    ("sdp01", Err(406)),
    ("inv2543", Ok("INVITE")),
];

fn outcome(bytes: &[u8]) -> Result<String, u16> {
    match parse(bytes) {
        Ok(rsip::SipMessage::Request(request)) => validate::request(&request)
            .map(|()| request.method.to_string())
            .map_err(|refusal| refusal.code()),
        // A response that parses is a stray here: dropped.
        Ok(rsip::SipMessage::Response(_)) => Err(0),
        Err(err) => match error_response(bytes, &err) {
            Some(_) => Err(err.status_code()),
            None => Err(0),
        },
    }
}

#[test]
fn every_rfc4475_message_is_handled_as_the_rfc_says() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/torture");
    let files = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "dat")
        })
        .count();
    assert_eq!(files, TABLE.len(), "one table row per file in {dir}");
    for (name, want) in TABLE {
        let bytes = std::fs::read(format!("{dir}/{name}.dat")).unwrap();
        let got = outcome(&bytes);
        assert_eq!(got, want.map(str::to_owned), "{name}");
    }
}
