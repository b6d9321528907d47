//! Fuzzes RTP parsing and the relay's in-place rewrites: no input may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use voxgate_media::rtp::{self, RtpPacket};

fuzz_target!(|data: &[u8]| {
    let _ = rtp::is_rtcp(data);
    let Ok(packet) = RtpPacket::parse(data) else {
        return;
    };
    assert_eq!(
        packet.header_len() + packet.payload().len() + packet.padding_len(),
        data.len()
    );
    for i in 0..16 {
        let _ = packet.csrc(i);
    }
    let _ = packet.extension_data();
    let (seq, ts, ssrc, pt) = (
        packet.sequence(),
        packet.timestamp(),
        packet.ssrc(),
        packet.payload_type(),
    );

    // Rewrites keep the packet valid and change only the rewritten fields.
    let mut buf = data.to_vec();
    rtp::set_ssrc(&mut buf, !ssrc).expect("parsed packets hold a header");
    rtp::set_sequence(&mut buf, seq.wrapping_add(1)).expect("parsed packets hold a header");
    rtp::set_timestamp(&mut buf, ts.wrapping_add(160)).expect("parsed packets hold a header");
    rtp::set_payload_type(&mut buf, 127 - pt).expect("7-bit payload type");
    let again = RtpPacket::parse(&buf).expect("rewrites keep the packet valid");
    assert_eq!(again.ssrc(), !ssrc);
    assert_eq!(again.sequence(), seq.wrapping_add(1));
    assert_eq!(again.timestamp(), ts.wrapping_add(160));
    assert_eq!(again.payload_type(), 127 - pt);
    assert_eq!(again.marker(), packet.marker());
    assert_eq!(again.payload(), packet.payload());
});
