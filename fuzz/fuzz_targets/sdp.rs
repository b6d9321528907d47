//! Fuzzes the audio SDP parser: no panic, and whatever parses survives build -> parse and can be
//! answered without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxgate_sip::sdp::{AudioSdp, CodecKind};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sdp) = AudioSdp::parse(text) {
        let again = AudioSdp::parse(&sdp.to_string());
        assert!(again.is_ok(), "re-parse failed: {again:?}");
        let supported = [CodecKind::Opus, CodecKind::Pcmu, CodecKind::Pcma, CodecKind::TelephoneEvent];
        let _ = AudioSdp::answer(&sdp, &supported, sdp.connection, 4000, 1);
    }
});
