//! Fuzzes the SDP parser: no panic, whatever parses is written back stably with every media
//! section, and can be answered without panicking, with one answer section per offered one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxgate_sip::sdp::{AudioSdp, CodecKind};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sdp) = AudioSdp::parse(text) {
        let written = sdp.to_string();
        let again = AudioSdp::parse(&written);
        assert!(again.is_ok(), "re-parse failed: {again:?}");
        if let Ok(again) = again {
            assert_eq!(again.other_media.len(), sdp.other_media.len());
            assert_eq!(again.to_string(), written, "writing is not stable");
        }
        let supported = [
            CodecKind::Opus,
            CodecKind::Pcmu,
            CodecKind::Pcma,
            CodecKind::TelephoneEvent,
        ];
        if let Ok(answer) = AudioSdp::answer(&sdp, &supported, sdp.connection, 4000, 1) {
            assert_eq!(answer.other_media.len(), sdp.other_media.len());
        }
        let _ = sdp.without_other_sections().to_string();
        let _ = sdp.is_secure();
    }
});
