//! Audio SDP: parsing real-world offers, RFC 3264 answers, and property tests (no panics,
//! build -> parse round-trips, every media section kept and answered in place).

// Test helpers outside #[test] fns unwrap too; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use proptest::prelude::*;
use voxgate_sip::sdp::{AudioSdp, Codec, CodecKind, Direction, Origin, OtherMedia, SdpError};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// An offer as a SIP trunk (Asterisk-like) sends it: session-level c=, static types without
/// rtpmap, a video section to keep and refuse.
const TRUNK_OFFER: &str = "v=0\r\n\
o=root 1234 5678 IN IP4 203.0.113.9\r\n\
s=Asterisk\r\n\
c=IN IP4 203.0.113.9\r\n\
t=0 0\r\n\
m=audio 10000 RTP/AVP 8 0 18 101\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=rtcp:10001\r\n\
m=video 10002 RTP/AVP 96\r\n\
a=rtpmap:96 H264/90000\r\n\
a=recvonly\r\n";

#[test]
fn trunk_offer_with_static_types_and_video() {
    let sdp = AudioSdp::parse(TRUNK_OFFER).unwrap();
    let kinds: Vec<&CodecKind> = sdp.codecs.iter().map(|c| &c.kind).collect();
    assert_eq!(
        kinds,
        [
            &CodecKind::Pcma,
            &CodecKind::Pcmu,
            &CodecKind::Other("G729".into()),
            &CodecKind::TelephoneEvent
        ]
    );
    assert_eq!(sdp.rtcp, Some(10001));
    assert_eq!(
        sdp.direction,
        Direction::SendRecv,
        "video's recvonly is not audio's"
    );
    assert_eq!(sdp.connection, ip("203.0.113.9"));
}

#[test]
fn media_level_connection_and_direction_win() {
    let text = "v=0\no=- 1 1 IN IP6 2001:db8::1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\na=sendonly\n\
        m=audio 4000 RTP/AVP 0\nc=IN IP6 2001:db8::2\na=inactive\na=rtcp-mux\n";
    let sdp = AudioSdp::parse(text).unwrap();
    assert_eq!(sdp.connection, ip("2001:db8::2"));
    assert_eq!(sdp.direction, Direction::Inactive);
    assert!(sdp.rtcp_mux);
    let session_only = text.replace("a=inactive\n", "");
    assert_eq!(
        AudioSdp::parse(&session_only).unwrap().direction,
        Direction::SendOnly
    );
}

#[test]
fn errors_are_typed() {
    assert_eq!(AudioSdp::parse(""), Err(SdpError::Missing("v=")));
    assert_eq!(
        AudioSdp::parse("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n"),
        Err(SdpError::NoAudio)
    );
    let no_c = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\n";
    assert_eq!(AudioSdp::parse(no_c), Err(SdpError::Missing("c=")));
    let bad_pt =
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.1\r\nm=audio 1 RTP/AVP 200\r\n";
    assert!(matches!(
        AudioSdp::parse(bad_pt),
        Err(SdpError::Invalid { field: "m=", .. })
    ));
    let hostname = TRUNK_OFFER.replace("c=IN IP4 203.0.113.9", "c=IN IP4 pbx.example.com");
    assert!(matches!(
        AudioSdp::parse(&hostname),
        Err(SdpError::Invalid { field: "c=", .. })
    ));
}

#[test]
fn answer_follows_offer_order_and_mirrors_direction() {
    let mut offer = AudioSdp::parse(TRUNK_OFFER).unwrap();
    offer.direction = Direction::SendOnly;
    let supported = [
        CodecKind::Opus,
        CodecKind::Pcmu,
        CodecKind::Pcma,
        CodecKind::TelephoneEvent,
    ];
    let answer = AudioSdp::answer(&offer, &supported, ip("198.51.100.2"), 20000, 42).unwrap();
    assert_eq!(answer.codecs, [Codec::pcma(), offer.codecs[3].clone()]);
    assert_eq!(answer.direction, Direction::RecvOnly);
    assert_eq!(answer.port, 20000);
    assert_eq!(answer.origin.session_id, 42);
    assert_eq!(answer.ptime, Some(20));
    // Without telephone-event support, the events are left out.
    let answer = AudioSdp::answer(&offer, &[CodecKind::Pcmu], ip("198.51.100.2"), 1, 1).unwrap();
    assert_eq!(answer.codecs, [Codec::pcmu()]);
}

#[test]
fn opus_offer_answered_with_opus() {
    let offer = AudioSdp::offer(
        ip("192.0.2.10"),
        5004,
        vec![Codec::opus(111), Codec::pcmu(), Codec::telephone_event(126)],
        9,
    );
    let text = offer.to_string();
    assert!(text.contains("a=rtpmap:111 opus/48000/2\r\n"));
    assert!(text.ends_with("a=sendrecv\r\n"));
    let parsed = AudioSdp::parse(&text).unwrap();
    assert_eq!(parsed, offer);
    let answer = AudioSdp::answer(
        &parsed,
        &[CodecKind::Pcmu, CodecKind::Opus, CodecKind::TelephoneEvent],
        ip("192.0.2.20"),
        6000,
        1,
    )
    .unwrap();
    let pts: Vec<u8> = answer.codecs.iter().map(|c| c.payload_type).collect();
    assert_eq!(
        pts,
        [111, 126],
        "offer order wins, events keep their offered type"
    );
}

#[test]
fn disabled_stream_and_no_common_codec() {
    let mut offer = AudioSdp::parse(TRUNK_OFFER).unwrap();
    let local = ip("198.51.100.2");
    assert_eq!(
        AudioSdp::answer(&offer, &[CodecKind::Opus], local, 1, 1),
        Err(SdpError::NoCommonCodec)
    );
    let rejection = AudioSdp::rejection(&offer, local, 1);
    assert_eq!(rejection.port, 0);
    offer.port = 0;
    assert_eq!(
        AudioSdp::answer(&offer, &[CodecKind::Pcma], local, 1, 1),
        Err(SdpError::StreamDisabled)
    );
}

#[test]
fn trunk_offer_answer_keeps_video_refused_in_place() {
    let offer = AudioSdp::parse(TRUNK_OFFER).unwrap();
    assert_eq!(offer.other_media.len(), 1);
    assert_eq!(offer.audio_index, 0);
    let answer = AudioSdp::answer(&offer, &[CodecKind::Pcma], ip("198.51.100.2"), 1, 1).unwrap();
    let text = answer.to_string();
    let m_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("m=")).collect();
    assert_eq!(m_lines, ["m=audio 1 RTP/AVP 8", "m=video 0 RTP/AVP 96"]);
    // PCMA came without an rtpmap; the answer names it the same way.
    assert!(!text.contains("a=rtpmap:8"), "{text}");
    // The offer itself is written back with its video section whole.
    let written = offer.to_string();
    assert!(
        written.ends_with("m=video 10002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=recvonly\r\n")
    );
}

#[test]
fn video_first_offer_answered_by_a_relayed_answer() {
    let offer_text = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
        m=video 6000 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n\
        m=audio 6002 RTP/AVP 0 8\r\na=x-unknown:1\r\n";
    let offer = AudioSdp::parse(offer_text).unwrap();
    assert_eq!((offer.port, offer.audio_index), (6002, 1));
    assert_eq!(offer.audio_lines, ["a=x-unknown:1"]);
    // What the far side gets: audio only; what it answers, relayed back with the offer's sections.
    let to_far_side = offer.without_other_sections().to_string();
    assert_eq!(to_far_side.matches("m=").count(), 1);
    let far_answer = AudioSdp::answer(
        &AudioSdp::parse(&to_far_side).unwrap(),
        &[CodecKind::Pcma],
        ip("198.51.100.7"),
        7000,
        5,
    )
    .unwrap();
    let mut relayed = far_answer.clone();
    relayed.connection = ip("203.0.113.1");
    relayed.port = 40000;
    relayed.answer_sections_of(&offer);
    let text = relayed.to_string();
    let m_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("m=")).collect();
    assert_eq!(m_lines, ["m=video 0 RTP/AVP 96", "m=audio 40000 RTP/AVP 8"]);
}

#[test]
fn srtp_offer_is_told_apart() {
    let savp = TRUNK_OFFER.replace("m=audio 10000 RTP/AVP", "m=audio 10000 RTP/SAVP");
    let offer = AudioSdp::parse(&savp).unwrap();
    assert!(offer.is_secure());
    assert!(matches!(
        AudioSdp::answer(&offer, &[CodecKind::Pcma], ip("198.51.100.2"), 1, 1),
        Err(SdpError::SecureProfile(_))
    ));
    assert!(!AudioSdp::parse(TRUNK_OFFER).unwrap().is_secure());
}

fn ip_strategy() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn codec_strategy() -> impl Strategy<Value = Codec> {
    let kind = prop_oneof![
        Just(CodecKind::Pcmu),
        Just(CodecKind::Pcma),
        Just(CodecKind::Opus),
        Just(CodecKind::TelephoneEvent),
        "[A-Za-z][A-Za-z0-9.-]{0,10}".prop_filter_map("known name", |name| {
            let known = ["pcmu", "pcma", "opus", "telephone-event"];
            (!known.contains(&name.to_ascii_lowercase().as_str())).then_some(CodecKind::Other(name))
        }),
    ];
    (
        0u8..=127,
        kind,
        1u32..200_000,
        1u8..=8,
        proptest::option::of("[!-~][ -~]{0,30}[!-~]"),
    )
        .prop_map(|(payload_type, kind, clock_rate, channels, fmtp)| Codec {
            payload_type,
            kind,
            clock_rate,
            channels,
            fmtp,
            rtpmap: true,
        })
}

fn sdp_strategy() -> impl Strategy<Value = AudioSdp> {
    let direction = prop_oneof![
        Just(Direction::SendRecv),
        Just(Direction::SendOnly),
        Just(Direction::RecvOnly),
        Just(Direction::Inactive),
    ];
    (
        ("[!-~]{1,12}", any::<u64>(), any::<u64>(), ip_strategy()),
        "[!-~][ -~]{0,20}[!-~]",
        ip_strategy(),
        any::<u16>(),
        prop::collection::vec(codec_strategy(), 1..6),
        proptest::option::of(any::<u32>()),
        direction,
        any::<bool>(),
        proptest::option::of(any::<u16>()),
    )
        .prop_map(
            |(
                (username, session_id, session_version, address),
                session_name,
                connection,
                port,
                codecs,
                ptime,
                direction,
                rtcp_mux,
                rtcp,
            )| {
                let mut unique: Vec<Codec> = Vec::new();
                for codec in codecs {
                    if !unique.iter().any(|c| c.payload_type == codec.payload_type) {
                        unique.push(codec);
                    }
                }
                AudioSdp {
                    origin: Origin {
                        username,
                        session_id,
                        session_version,
                        address,
                    },
                    session_name,
                    connection,
                    port,
                    protocol: "RTP/AVP".into(),
                    codecs: unique,
                    ptime,
                    direction,
                    rtcp_mux,
                    rtcp,
                    ..AudioSdp::offer(connection, port, Vec::new(), 0)
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn parse_never_panics(text in "[ -~\r\n]{0,800}") {
        let _ = AudioSdp::parse(&text);
        let _ = AudioSdp::parse(&format!("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.1\r\n{text}"));
    }

    #[test]
    fn parse_never_panics_on_line_soup(lines in prop::collection::vec(
        prop_oneof![
            Just("v=0".to_string()),
            Just("o=- 1 1 IN IP4 192.0.2.1".to_string()),
            Just("c=IN IP4 192.0.2.1".to_string()),
            "m=audio [0-9]{1,6} RTP/AVP( [0-9]{1,4}){0,4}",
            "a=rtpmap:[0-9]{1,3} [a-zA-Z]{0,5}(/[0-9]{0,6}){0,3}",
            "a=fmtp:[0-9]{1,3} ?[ -~]{0,10}",
            "a=(ptime|rtcp|rtcp-mux|sendonly|recvonly|inactive)(:[ -~]{0,8})?",
            "[a-z]=[ -~]{0,20}",
        ],
        0..20,
    )) {
        let text = lines.join("\r\n");
        if let Ok(sdp) = AudioSdp::parse(&text) {
            // Anything we accept, we can write and read back.
            let again = AudioSdp::parse(&sdp.to_string());
            prop_assert!(again.is_ok(), "{:?}", again);
            let _ = AudioSdp::answer(&sdp, &[CodecKind::Pcmu, CodecKind::Opus, CodecKind::TelephoneEvent], sdp.connection, 1, 1);
        }
    }

    #[test]
    fn parse_never_panics_on_sections(lines in prop::collection::vec(
        prop_oneof![
            Just("v=0".to_string()),
            Just("o=- 1 1 IN IP4 192.0.2.1".to_string()),
            Just("c=IN IP4 192.0.2.1".to_string()),
            Just("m=audio 4000 RTP/AVP 0 8 101".to_string()),
            "m=(audio|video|application|text) [0-9]{1,6}(/[0-9])? (RTP/AVP|RTP/SAVPF|UDP/DTLS/SCTP)( [0-9a-z-]{1,4}){0,3}",
            "a=(rtpmap|fmtp|rtcp-fb):[0-9*]{1,3} [ -~]{0,12}",
            "a=(mid|group|ssrc|x-[a-z]{1,4})(:[ -~]{0,8})?",
            "[a-z]=[ -~]{0,20}",
        ],
        0..24,
    )) {
        let text = format!("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.1\r\n{}", lines.join("\r\n"));
        if let Ok(sdp) = AudioSdp::parse(&text) {
            // Written once, the text is stable: parse -> write keeps every section.
            let written = sdp.to_string();
            let again = AudioSdp::parse(&written);
            prop_assert!(again.is_ok(), "{:?}\n{}", again, written);
            let again = again.unwrap();
            prop_assert_eq!(again.other_media.len(), sdp.other_media.len());
            prop_assert_eq!(&again.to_string(), &written);
            // An answer has one section per offered section, the audio in the offer's place.
            if let Ok(answer) = AudioSdp::answer(&sdp, &[CodecKind::Pcmu, CodecKind::Opus], sdp.connection, 1, 1) {
                let answer = AudioSdp::parse(&answer.to_string()).unwrap();
                prop_assert_eq!(answer.other_media.len(), sdp.other_media.len());
                prop_assert_eq!(answer.audio_index, sdp.audio_index.min(sdp.other_media.len()));
                prop_assert!(answer.other_media.iter().all(|m| m.port() == 0 && m.lines().is_empty()));
                let offered: Vec<&str> = sdp.other_media.iter().map(OtherMedia::media).collect();
                let answered: Vec<&str> = answer.other_media.iter().map(OtherMedia::media).collect();
                prop_assert_eq!(offered, answered);
            }
        }
    }

    #[test]
    fn build_then_parse_round_trips(sdp in sdp_strategy()) {
        let text = sdp.to_string();
        prop_assert_eq!(AudioSdp::parse(&text), Ok(sdp));
    }
}
