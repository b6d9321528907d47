//! The edge's looks at untrusted bytes: the request peek and the digest `Authorization` parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(peek) = voxgate_sip::peek::request(data) {
        let _ = peek.out_of_dialog();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = voxgate_sip::digest::Credentials::parse(text);
    }
});
