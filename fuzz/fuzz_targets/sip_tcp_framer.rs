//! Fuzzes the SIP-over-TCP stream framer: arbitrary bytes in arbitrary chunks never panic, and
//! the buffer stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxgate_endpoint::framer::StreamFramer;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk.max(1));
    let mut framer = StreamFramer::new();
    for piece in stream.chunks(chunk) {
        framer.extend(piece);
        loop {
            match framer.next_frame() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                // A framing error closes the connection in the endpoint: stop like it does.
                Err(_) => return,
            }
        }
        assert!(framer.buffered() <= 2 * voxgate_sip::MAX_MESSAGE_SIZE + chunk);
    }
});
