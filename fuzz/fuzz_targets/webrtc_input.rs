//! Fuzzes what voxgate-webrtc reads from the network and from WHIP requests: the shared-socket
//! demux (STUN USERNAME) and the WHIP POST/PATCH classifiers. No input may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use voxgate_webrtc::whip::{SDP_CONTENT_TYPE, TRICKLE_ICE_CONTENT_TYPE};
use voxgate_webrtc::{ETag, PeerDemux, classify_patch, classify_post};

fuzz_target!(|data: &[u8]| {
    let mut demux = PeerDemux::new();
    demux.insert(1u8, "ufragA").expect("fresh demux");
    let from = "192.0.2.1:5000".parse().expect("address");
    demux.learn(1, from);
    let _ = demux.route(from, data);

    let _ = classify_post(Some(SDP_CONTENT_TYPE), data);
    let etag = ETag::random(&mut SmallRng::seed_from_u64(1));
    let _ = classify_patch(Some(TRICKLE_ICE_CONTENT_TYPE), Some("*"), &etag, "abcd", data);
});
