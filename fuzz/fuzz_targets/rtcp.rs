//! Fuzzes RTCP compound parsing: no input may panic, and what parses re-serializes to an equal value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use voxgate_media::rtcp::{self, CompoundIter};

fuzz_target!(|data: &[u8]| {
    let _ = rtcp::parse_compound(data);
    for _ in CompoundIter::new(data) {}
    let Ok(packets) = rtcp::parse_lenient(data) else {
        return;
    };
    // What parses re-serializes to the same values, unless it cannot be written as it stands
    // (a lossy BYE reason grown past 255 bytes, an opaque body unaligned once its padding is
    // gone). Padding and profile-specific SR/RR extensions are dropped, so bytes may differ.
    if let Ok(bytes) = rtcp::write_compound(&packets) {
        let again = rtcp::parse_lenient(&bytes).expect("written packets parse");
        assert_eq!(again, packets);
    }
});
