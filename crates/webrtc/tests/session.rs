//! A WebRtcPeer against an rtc-built browser stand-in, in memory and in simulated time.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{DTMF_PT, Harness, OPUS_PT, addr};
use rand::SeedableRng;
use rand::rngs::StdRng;
use voxgate_webrtc::{ClosedReason, PeerConfig, PeerError, PeerEvent, SendError, WebRtcPeer};

#[test]
fn answer_is_ice_lite_passive_sendrecv_opus_with_one_host_candidate() {
    let mut h = Harness::new();
    let i = h.add_pair("127.0.0.2:40000");
    let answer = h.peer(i).answer_sdp().to_owned();
    for needle in [
        "a=ice-lite",
        "a=setup:passive",
        "a=sendrecv",
        "a=rtcp-mux",
        "a=fingerprint:sha-256 ",
        "a=rtpmap:111 opus/48000/2",
        "a=rtpmap:126 telephone-event/48000",
        "udp 2130706431 127.0.0.1 3478 typ host",
        &format!("a=ice-ufrag:{}", h.peer(i).local_ufrag()),
    ] {
        assert!(
            answer.contains(needle),
            "answer lacks {needle:?}:\n{answer}"
        );
    }
    assert_eq!(h.peer(i).opus_payload_type(), OPUS_PT);
    assert_eq!(h.peer(i).telephone_event_payload_type(), Some(DTMF_PT));
}

#[test]
fn client_and_lite_server_connect_and_audio_flows_both_ways() {
    let mut h = Harness::new();
    let i = h.add_pair("127.0.0.2:40000");
    h.connect_all();
    assert!(h.events[i].contains(&PeerEvent::Connected));
    assert!(
        h.events[i].contains(&PeerEvent::RemoteAddress(addr("127.0.0.2:40000"))),
        "{:?}",
        h.events[i]
    );
    assert_eq!(h.unrouted, 0, "every datagram had an owner");

    // Client -> server: Opus and a telephone-event.
    let now = h.now;
    for n in 0..5u16 {
        let payload = [0xF8, n as u8, 0xAA];
        h.clients[i].send_opus(now, n, 960 * u32::from(n), &payload);
    }
    h.clients[i].send(now, DTMF_PT, 5, 4800, &[1, 0x80, 0, 160]);
    h.flush();
    let audio = h.audio(i);
    assert_eq!(audio.len(), 6, "{audio:?}");
    for (n, (pt, seq, ts, payload)) in audio.iter().take(5).enumerate() {
        assert_eq!(*pt, OPUS_PT);
        assert_eq!(*seq, n as u16);
        assert_eq!(*ts, 960 * n as u32);
        assert_eq!(&payload[..], &[0xF8, n as u8, 0xAA]);
    }
    assert_eq!(audio[5].0, DTMF_PT);
    assert_eq!(&audio[5].3[..], &[1, 0x80, 0, 160]);

    // Server -> client.
    for n in 0..3u32 {
        h.peer(i)
            .send_audio(
                now,
                OPUS_PT,
                1000 + 960 * n,
                n == 0,
                Bytes::from(vec![n as u8; 40]),
            )
            .expect("send_audio");
    }
    assert_eq!(
        h.peer(i)
            .send_audio(now, 99, 0, false, Bytes::from_static(b"x")),
        Err(SendError::PayloadType(99))
    );
    h.flush();
    let received = &h.clients[i].received;
    assert_eq!(received.len(), 3);
    for (n, packet) in received.iter().enumerate() {
        assert_eq!(packet.header.payload_type, OPUS_PT);
        assert_eq!(packet.header.timestamp, 1000 + 960 * n as u32);
        assert_eq!(packet.header.marker, n == 0);
        assert_eq!(&packet.payload[..], &vec![n as u8; 40][..]);
    }
    // Consecutive sequence numbers from one SSRC.
    assert_eq!(
        received[1].header.sequence_number,
        received[0].header.sequence_number.wrapping_add(1)
    );
}

#[test]
fn client_dtls_close_closes_the_server_peer() {
    let mut h = Harness::new();
    let i = h.add_pair("127.0.0.2:40000");
    h.connect_all();
    use rtc::sansio::Protocol;
    h.clients[i].pc.close().expect("client close");
    h.flush();
    assert_eq!(
        h.closed_reason(i),
        Some(ClosedReason::DtlsClose),
        "{:?}",
        h.events[i]
    );
    assert!(h.demux.is_empty(), "a closed peer leaves the demux");
    assert_eq!(h.peer(i).poll_timeout(), None);
    let now = h.now;
    assert_eq!(
        h.peer(i)
            .send_audio(now, OPUS_PT, 0, false, Bytes::from_static(b"x")),
        Err(SendError::NotConnected)
    );
}

#[test]
fn silent_client_loses_consent_after_the_consent_timeout() {
    let mut h = Harness::new();
    let i = h.add_pair("127.0.0.2:40000");
    h.connect_all();
    // Let consent checks run for a while: the session must stay up.
    let start = h.now;
    h.run_until(Duration::from_secs(60), |h| h.closed_at[0].is_some());
    assert!(
        h.closed_at[i].is_none(),
        "closed with live consent: {:?}",
        h.events[i]
    );
    assert!(h.now >= start + Duration::from_secs(60));

    h.clients[i].silent = true;
    let silent_from = h.now;
    let closed = h.run_until(Duration::from_secs(60), |h| h.closed_at[0].is_some());
    assert!(closed);
    assert_eq!(h.closed_reason(i), Some(ClosedReason::ConsentExpired));
    let after = h.closed_at[i].expect("closed") - silent_from;
    // The last accepted check was at most one client keepalive interval before the silence.
    assert!(
        after > Duration::from_secs(25) && after <= Duration::from_secs(30),
        "consent expired {after:?} after the client fell silent"
    );
}

#[test]
fn forged_binding_requests_neither_refresh_consent_nor_claim_an_address() {
    let mut h = Harness::new();
    let i = h.add_pair("127.0.0.2:40000");
    h.connect_all();
    let (from, mut forged) = h
        .binding_requests
        .last()
        .cloned()
        .expect("a check was sent");
    assert_eq!(h.demux.route(from, &forged), Some(i), "routed by ufrag");
    // Corrupt MESSAGE-INTEGRITY (the 20-byte HMAC before the 8-byte FINGERPRINT).
    let at = forged.len() - 8 - 10;
    forged[at] ^= 0xFF;

    h.clients[i].silent = true;
    let silent_from = h.now;
    let intruder = addr("127.0.0.9:1");
    for _ in 0..8 {
        h.deliver_to_server(from, &forged);
        h.deliver_to_server(intruder, &forged);
        h.run_until(Duration::from_secs(5), |h| h.closed_at[0].is_some());
    }
    assert_eq!(h.closed_reason(i), Some(ClosedReason::ConsentExpired));
    assert!(h.closed_at[i].expect("closed") - silent_from <= Duration::from_secs(30));
    assert!(!h.events[i].contains(&PeerEvent::RemoteAddress(intruder)));
}

#[test]
fn consent_timeout_is_configurable() {
    let mut h = Harness::new();
    h.config.consent_timeout = Duration::from_secs(8);
    let i = h.add_pair("127.0.0.2:40000");
    h.connect_all();
    h.clients[i].silent = true;
    let silent_from = h.now;
    assert!(h.run_until(Duration::from_secs(20), |h| h.closed_at[0].is_some()));
    assert_eq!(h.closed_reason(i), Some(ClosedReason::ConsentExpired));
    assert!(h.closed_at[i].expect("closed") - silent_from <= Duration::from_secs(8));
}

#[test]
fn peer_that_never_connects_closes_after_the_setup_timeout() {
    let mut h = Harness::new();
    let i = h.add_pair("127.0.0.2:40000");
    h.clients[i].silent = true;
    let start = h.now;
    assert!(h.run_until(Duration::from_secs(60), |h| h.closed_at[0].is_some()));
    assert_eq!(h.closed_reason(i), Some(ClosedReason::SetupTimeout));
    assert_eq!(h.closed_at[i], Some(start + Duration::from_secs(15)));
    // Nothing was sent toward a client that never proved it wanted traffic.
    assert!(h.peer(i).poll_transmit().is_none());
}

#[test]
fn local_close_sends_close_notify_and_reports_closed() {
    let mut h = Harness::new();
    let i = h.add_pair("127.0.0.2:40000");
    h.connect_all();
    let now = h.now;
    h.peer(i).close(now);
    h.peer(i).close(now);
    h.flush();
    let closes = h.events[i]
        .iter()
        .filter(|e| matches!(e, PeerEvent::Closed(_)))
        .count();
    assert_eq!(closes, 1, "Closed is emitted once");
    assert_eq!(h.closed_reason(i), Some(ClosedReason::Local));
    // The client saw the close_notify: its DTLS transport is closed.
    let sender = h.clients[i].sender;
    let state = h.clients[i]
        .pc
        .rtp_sender(sender)
        .and_then(|s| s.transport().map(|t| t.state()));
    assert_eq!(
        state,
        Some(rtc::peer_connection::transport::RTCDtlsTransportState::Closed)
    );
}

#[test]
fn two_peers_on_one_server_address_are_demultiplexed() {
    let mut h = Harness::new();
    let a = h.add_pair("127.0.0.2:40000");
    let b = h.add_pair("127.0.0.3:40000");
    let ufrag_a = h.peer(a).local_ufrag().to_owned();
    assert_ne!(ufrag_a, h.peer(b).local_ufrag());
    h.connect_all();
    let now = h.now;
    h.clients[a].send_opus(now, 1, 960, b"from-a");
    h.clients[b].send_opus(now, 1, 960, b"from-b");
    h.clients[b].send_opus(now, 2, 1920, b"from-b2");
    h.flush();
    let payloads = |i: usize| {
        h.audio(i)
            .into_iter()
            .map(|(_, _, _, p)| p)
            .collect::<Vec<_>>()
    };
    assert_eq!(payloads(a), vec![Bytes::from_static(b"from-a")]);
    assert_eq!(
        payloads(b),
        vec![
            Bytes::from_static(b"from-b"),
            Bytes::from_static(b"from-b2")
        ]
    );

    h.peer(a)
        .send_audio(now, OPUS_PT, 7, false, Bytes::from_static(b"to-a"))
        .expect("send a");
    h.peer(b)
        .send_audio(now, OPUS_PT, 7, false, Bytes::from_static(b"to-b"))
        .expect("send b");
    h.flush();
    assert_eq!(&h.clients[a].received[0].payload[..], b"to-a");
    assert_eq!(&h.clients[b].received[0].payload[..], b"to-b");
    assert_eq!(h.clients[a].received.len(), 1);

    // Closing one leaves the other running.
    use rtc::sansio::Protocol;
    h.clients[a].pc.close().expect("close a");
    h.flush();
    assert_eq!(h.closed_reason(a), Some(ClosedReason::DtlsClose));
    assert_eq!(h.closed_reason(b), None);
    assert!(h.peer(b).is_connected());
    assert_eq!(h.demux.len(), 1);
}

#[test]
fn garbage_and_unservable_offers_are_refused_with_their_status() {
    let now = common::origin();
    let mut rng = StdRng::seed_from_u64(7);
    let local = addr("127.0.0.1:3478");
    let err = WebRtcPeer::new("garbage", local, PeerConfig::default(), &mut rng, now)
        .expect_err("garbage");
    assert!(matches!(err, PeerError::Offer(_)));
    assert_eq!((err.http_status(), err.code()), (400, "malformed_sdp"));

    let mut client = common::Client::new(addr("127.0.0.2:40000"), 1, now);
    let offer = client.offer(now).replace("opus/48000/2", "PCMU/8000");
    let err =
        WebRtcPeer::new(&offer, local, PeerConfig::default(), &mut rng, now).expect_err("no opus");
    assert_eq!((err.http_status(), err.code()), (422, "no_opus"));
}

#[test]
fn video_in_the_offer_is_rejected_with_port_zero() {
    let now = common::origin();
    let mut rng = StdRng::seed_from_u64(7);
    let mut client = common::Client::new(addr("127.0.0.2:40000"), 1, now);
    let offer = client.offer(now);
    // Append a video section to the client's bundle, the way a camera+mic browser offers.
    let video_mid = "a=mid:1\r\n";
    let mut with_video = offer.replace("a=group:BUNDLE 0", "a=group:BUNDLE 0 1");
    with_video
        .push_str("m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=setup:actpass\r\n");
    with_video.push_str(video_mid);
    for line in offer.lines() {
        if line.starts_with("a=ice-ufrag") || line.starts_with("a=ice-pwd") {
            with_video.push_str(line);
            with_video.push_str("\r\n");
        }
    }
    with_video.push_str("a=sendrecv\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n");
    let peer = WebRtcPeer::new(
        &with_video,
        addr("127.0.0.1:3478"),
        PeerConfig::default(),
        &mut rng,
        now,
    )
    .expect("audio+video offer is answered");
    let answer = peer.answer_sdp();
    assert!(answer.contains("m=audio 9 "), "{answer}");
    assert!(answer.contains("m=video 0 "), "{answer}");
}

#[test]
fn data_channel_in_the_offer_is_rejected_and_audio_still_connects() {
    let mut h = Harness::new();
    let i = h.add_pair_with("127.0.0.2:40000", |client| {
        client
            .pc
            .create_data_channel("chat", None)
            .expect("data channel");
    });
    let answer = h.peer(i).answer_sdp().to_owned();
    assert!(answer.contains("m=application 0 "), "{answer}");
    assert!(answer.contains("a=group:BUNDLE 0\r\n"), "{answer}");
    h.connect_all();
    let now = h.now;
    h.clients[i].send_opus(now, 1, 960, b"still audio");
    h.flush();
    assert_eq!(h.audio(i).len(), 1);
}

#[test]
fn random_datagrams_from_the_client_address_do_not_break_the_session() {
    use rand::{Rng, RngCore};
    let mut h = Harness::new();
    let i = h.add_pair("127.0.0.2:40000");
    h.connect_all();
    let client = addr("127.0.0.2:40000");
    let mut rng = StdRng::seed_from_u64(99);
    for n in 0..3000 {
        let len = rng.random_range(0..300);
        let mut datagram = vec![0u8; len];
        rng.fill_bytes(&mut datagram);
        // Steer the first byte through each RFC 7983 range: STUN, DTLS, RTP/RTCP.
        if let Some(first) = datagram.first_mut() {
            *first = [0, 1, 20, 22, 23, 128, 144, 200][n % 8];
        }
        let now = h.now;
        h.peer(i).handle_receive(now, client, &datagram);
    }
    h.flush();
    assert!(h.peer(i).is_connected(), "{:?}", h.closed_reason(i));
    let now = h.now;
    h.clients[i].send_opus(now, 9, 9600, b"after the noise");
    h.flush();
    assert!(
        h.audio(i)
            .iter()
            .any(|(_, _, _, p)| &p[..] == b"after the noise")
    );
}
