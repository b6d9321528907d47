//! Fuzzes SIP parsing and error responses: no input may panic, and any error response we build
//! must itself parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxgate_sip::message::{error_response, to_bytes};

fuzz_target!(|data: &[u8]| {
    match voxgate_sip::parse(data) {
        Ok(msg) => {
            // What we accept, we can write and read back.
            let again = voxgate_sip::parse(&to_bytes(&msg));
            assert!(again.is_ok(), "re-parse failed: {again:?}");
        }
        Err(err) => {
            let _ = err.status_code();
            let _ = error_response(data, &err);
        }
    }
});
