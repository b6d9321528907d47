//! WebRTC clients through WHIP: admission and refusals, the shared cap, DELETE, a Backend's BYE,
//! a client that disappears, and audio both ways with aiortc (Debian's `python3-aiortc`, a WebRTC
//! stack nobody here wrote), once with Opus passed through and once transcoded to G.711.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::uac::{Uac, Uas, header_of, sdp_of};
use common::{
    Proxy, backend_toml, field, http_raw, json_request, run_loadgen, start_backend, wait_until,
};
use serde_json::{Value, json};
use voxgate_sip::sdp::{Codec, CodecKind};

/// A browser-like audio offer (Opus, telephone-event, ICE credentials, DTLS fingerprint). Nobody
/// answers its ICE checks, so a session made from it stays "connecting" until the setup timeout.
const OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 126\r\nc=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Hx4p\r\na=ice-pwd:9mHbM0lxw7cuLQIIxnVQWvQY\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 3B:2E:0C:1F:46:72:B4:3B:3A:48:5C:7C:8A:36:E5:0D:BC:7F:91:0B:44:8F:AF:D4:3A:39:6B:C4:3F:23:0C:4E\r\n\
a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:126 telephone-event/48000\r\n";

const ADMIN_KEY: &str = "admin-key-0123456789-abcdefghijklmnop";

/// A WHIP request: status, head (lowercased) and body.
fn whip(
    proxy: &Proxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let (status, head, body) = http_raw(proxy.whip, method, path, headers, body.as_bytes())
        .unwrap_or_else(|| panic!("{method} {path}: no answer"));
    (status, head.to_ascii_lowercase(), body)
}

fn post_offer(proxy: &Proxy, offer: &str) -> (u16, String, String) {
    whip(
        proxy,
        "POST",
        "/whip",
        &[("Content-Type", "application/sdp")],
        offer,
    )
}

/// The value of header `name` (lowercase) in a lowercased head.
fn head_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

fn error_code(body: &str) -> String {
    let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    json["code"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn whip_answers_preflight_and_refuses_bad_requests() {
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let proxy = Proxy::start("whip-bad", &backend_toml("b1", backend, 10, None));

    let (status, head, _) = whip(&proxy, "OPTIONS", "/whip", &[], "");
    assert_eq!(status, 204, "{head}");
    assert_eq!(head_value(&head, "accept-post"), Some("application/sdp"));
    assert_eq!(head_value(&head, "access-control-allow-origin"), Some("*"));
    assert!(
        head_value(&head, "access-control-allow-methods").is_some_and(|m| m.contains("post")),
        "{head}"
    );

    let refusals: [(&str, &str, u16, &str); 3] = [
        ("text/plain", OFFER, 415, "unsupported_media_type"),
        ("application/sdp", "hello", 400, "malformed_sdp"),
        (
            "application/sdp",
            &OFFER.replace("opus/48000/2", "PCMU/8000"),
            422,
            "no_opus",
        ),
    ];
    for (content_type, body, expected, code) in refusals {
        let (status, head, answer) = whip(
            &proxy,
            "POST",
            "/whip",
            &[("Content-Type", content_type)],
            body,
        );
        assert_eq!(
            (status, error_code(&answer)),
            (expected, code.to_owned()),
            "{answer}"
        );
        // Errors carry CORS too, so a page can read them.
        assert_eq!(head_value(&head, "access-control-allow-origin"), Some("*"));
    }
    let (status, _, answer) = whip(&proxy, "DELETE", "/whip/0123456789abcdef", &[], "");
    assert_eq!((status, error_code(&answer)), (404, "not_found".to_owned()));
    assert_eq!(
        proxy.counter("voxgate_sessions_rejected_total{reason=\"bad_offer\"}"),
        3.0
    );

    // With tokens configured, a POST without one (or with another) is refused.
    let token = "whip-token-0123456789-abcdefghijklmn";
    let config = format!(
        "{}\n[[webrtc.tokens]]\ntoken = \"{token}\"\n",
        backend_toml("b1", backend, 10, None)
    );
    let guarded = Proxy::start("whip-token", &config);
    for auth in [None, Some("Bearer not-the-token")] {
        let mut headers = vec![("Content-Type", "application/sdp")];
        headers.extend(auth.map(|a| ("Authorization", a)));
        let (status, head, answer) = whip(&guarded, "POST", "/whip", &headers, OFFER);
        assert_eq!(
            (status, error_code(&answer)),
            (401, "unauthorized".to_owned())
        );
        assert_eq!(head_value(&head, "www-authenticate"), Some("bearer"));
    }
}

#[test]
fn whip_sessions_share_the_node_cap_with_sip_calls() {
    let (_backend, backend_addr) = start_backend("whip-cap-backend", &[]);
    let config = format!(
        "[node]\nid = \"proxy-1\"\nregion = \"US-EAST\"\n\n[limits]\nmax_sessions = 1\n{}",
        backend_toml("b1", backend_addr, 10, None)
    );
    let proxy = Proxy::start_with_env(
        "whip-cap",
        &config,
        &[
            ("VOXGATE_CLUSTER__ADMIN_KEY", ADMIN_KEY.to_owned()),
            ("VOXGATE_CLUSTER__STATUS_INTERVAL", "250ms".to_owned()),
            ("VOXGATE_CLUSTER__HEARTBEAT_TTL", "1s".to_owned()),
        ],
    );

    let (status, head, answer) = post_offer(&proxy, OFFER);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(head_value(&head, "content-type"), Some("application/sdp"));
    let location = head_value(&head, "location").unwrap().to_owned();
    assert!(
        location.starts_with("/whip/") && location.len() == "/whip/".len() + 32,
        "{location}"
    );
    let etag = head_value(&head, "etag").unwrap().to_owned();
    assert!(answer.contains("a=ice-lite"), "{answer}");
    assert!(answer.contains("a=setup:passive"), "{answer}");
    assert!(answer.contains("a=sendrecv"), "{answer}");
    assert!(answer.contains("typ host"), "{answer}");

    // The one slot is taken: another WHIP session and a SIP call are both refused.
    let (status, head, refused) = post_offer(&proxy, OFFER);
    assert_eq!((status, error_code(&refused)), (503, "capacity".to_owned()));
    assert!(head_value(&head, "retry-after").is_some(), "{head}");
    let mut caller = Uac::new("127.0.0.1", proxy.sip);
    caller.send_invite();
    let (_, refused) = caller
        .final_response(rsip::Method::Invite, Duration::from_secs(3))
        .unwrap();
    assert_eq!(refused.status_code.code(), 503);
    assert_eq!(proxy.metric("voxgate_sessions_active"), 1.0);

    // Trickle candidates are accepted; a stale If-Match is not.
    let frag = "a=ice-ufrag:Hx4p\r\na=ice-pwd:9mHbM0lxw7cuLQIIxnVQWvQY\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n";
    let trickle = [("Content-Type", "application/trickle-ice-sdpfrag")];
    let (status, _, body) = whip(&proxy, "PATCH", &location, &trickle, frag);
    assert_eq!(status, 204, "{body}");
    let stale = [trickle[0], ("If-Match", "\"0000\"")];
    let (status, _, _) = whip(&proxy, "PATCH", &location, &stale, frag);
    assert_eq!(status, 412);
    let matching = [trickle[0], ("If-Match", etag.as_str())];
    assert_eq!(whip(&proxy, "PATCH", &location, &matching, frag).0, 204);

    // DELETE ends the session and gives the slot back.
    let (status, _, _) = whip(&proxy, "DELETE", &location, &[], "");
    assert_eq!(status, 200);
    proxy.assert_idle(Duration::from_secs(5));
    assert_eq!(whip(&proxy, "DELETE", &location, &[], "").0, 404);
    assert_eq!(
        proxy.counter("voxgate_sessions_ended_total{cause=\"whip_delete\"}"),
        1.0
    );

    // In maintenance, WHIP is refused like SIP.
    let reason = json!({"public_reason": "upgrade"});
    let (status, body, _) = json_request(
        proxy.http,
        "POST",
        "/v1/nodes/proxy-1/maintenance/on",
        Some(ADMIN_KEY),
        Some(&reason),
    );
    assert_eq!(status, 200, "{body}");
    let mut last = String::new();
    let refused = wait_until(Duration::from_secs(3), || {
        let (status, _, body) = post_offer(&proxy, OFFER);
        last = body;
        status == 503
    });
    assert!(refused, "WHIP still admitted in maintenance: {last}");
    assert_eq!(error_code(&last), "not_accepting");
}

#[test]
fn the_backend_is_called_once_the_client_connects_and_its_bye_ends_the_session() {
    let mut backend = Uas::new("127.0.0.6");
    let config = backend_toml("b1", backend.uac.local, 10, None);
    let proxy = Proxy::start("whip-backend-bye", &config);
    backend.uac.proxy = proxy.sip;

    // A client that never connects costs a slot but no Backend call.
    let (status, head, _) = post_offer(&proxy, OFFER);
    assert_eq!(status, 201);
    let idle = head_value(&head, "location").unwrap().to_owned();
    assert!(
        backend
            .uac
            .recv_request(rsip::Method::Invite, Duration::from_millis(500))
            .is_none(),
        "the Backend was called before the client connected"
    );
    assert_eq!(whip(&proxy, "DELETE", &idle, &[], "").0, 200);

    // A real client (the loadgen's) connects; then the Backend gets an ordinary SIP call.
    let mut client = Command::new(common::binary("voxgate-loadgen"))
        .args([
            "whip",
            "--quiet",
            "--target",
            &format!("http://{}/whip", proxy.whip),
        ])
        .args(["--concurrency", "1", "--hold", "10s", "--bind", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let invite = backend.invite();
    let offer = sdp_of(&invite.body);
    let kinds: Vec<&CodecKind> = offer.codecs.iter().map(|c| &c.kind).collect();
    assert_eq!(
        kinds[..3],
        [&CodecKind::Opus, &CodecKind::Pcmu, &CodecKind::Pcma]
    );
    assert!(
        offer
            .codecs
            .iter()
            .any(|c| c.kind == CodecKind::TelephoneEvent && c.clock_rate == 48_000)
    );
    assert!(header_of(&invite, "X-Voxgate-Whip").is_some_and(|id| id.len() == 32));
    let mut dialog = backend.answer(&invite, vec![Codec::opus(111)]);
    assert_eq!(proxy.metric("voxgate_sessions_active"), 1.0);
    backend.bye(&mut dialog);
    proxy.assert_idle(Duration::from_secs(5));
    assert_eq!(
        proxy.counter("voxgate_sessions_ended_total{cause=\"backend_bye\"}"),
        1.0
    );
    // The client saw its session end early: it fails (no audio came back), and exits.
    let status = client.wait().unwrap();
    assert!(!status.success());
}

/// The interop client found the 1 kHz tone in what came back (its FFT bins are not exact).
fn assert_tone(result: &Value, what: &str) {
    let found = result["dominant_hz"].as_f64();
    assert!(
        found.is_some_and(|hz| (hz - 1000.0).abs() < 30.0),
        "{what}: the tone did not come back: {result:#}"
    );
}

/// `tests/interop/whip_aiortc.py` run by Debian's python with python3-aiortc; `None` (after
/// saying why) when that is not installed, a failure under CI. `scripts/test.sh` installs it.
fn aiortc_client() -> Option<Command> {
    let python = PathBuf::from("/usr/bin/python3");
    let ready = Command::new(&python)
        .args(["-c", "import aiortc, numpy"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        common::peer_missing(
            "aiortc interop",
            "python3-aiortc",
            "apt-get install python3-aiortc python3-numpy",
        );
        return None;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/whip_aiortc.py");
    let mut command = Command::new(python);
    command.arg(script);
    Some(command)
}

/// One aiortc session of `seconds` sending a 1 kHz tone; its JSON result.
fn aiortc_session(proxy: &Proxy, seconds: u32) -> Option<Value> {
    let mut client = aiortc_client()?;
    let output = client
        .args([
            "--url",
            &format!("http://{}/whip", proxy.whip),
            "--seconds",
            &seconds.to_string(),
            "--tone",
            "1000",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| {
            panic!(
                "aiortc printed no JSON ({e}):\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    assert!(output.status.success(), "aiortc session failed: {result:#}");
    Some(result)
}

#[test]
fn aiortc_audio_round_trip_with_opus_passthrough_and_with_g711_transcoding() {
    for (name, codecs, transcoded) in [
        ("whip-passthrough", "opus,telephone-event", false),
        ("whip-transcode", "pcmu,telephone-event", true),
    ] {
        let (_backend, backend_addr) =
            start_backend(&format!("{name}-backend"), &["--codecs", codecs]);
        let proxy = Proxy::start(name, &backend_toml("b1", backend_addr, 10, None));
        let Some(result) = aiortc_session(&proxy, 3) else {
            return;
        };
        assert_eq!(result["status"], 201, "{result:#}");
        assert_tone(&result, name);
        assert_eq!(result["delete_status"], 200, "{result:#}");
        let frames =
            proxy.counter("voxgate_webrtc_transcoded_frames_total{direction=\"to_client\"}");
        assert_eq!(
            frames > 0.0,
            transcoded,
            "{name}: {frames} frames transcoded"
        );
        proxy.assert_idle(Duration::from_secs(5));
        assert_eq!(
            proxy.counter("voxgate_sessions_ended_total{cause=\"whip_delete\"}"),
            1.0
        );
    }
}

#[test]
fn loadgen_whip_sessions_carry_the_tone_both_ways_passed_through_and_transcoded() {
    for (name, codecs, transcoded) in [
        ("whip-lg-passthrough", "opus,telephone-event", false),
        ("whip-lg-transcode", "pcma,telephone-event", true),
    ] {
        let (_backend, backend_addr) =
            start_backend(&format!("{name}-backend"), &["--codecs", codecs]);
        let proxy = Proxy::start(name, &backend_toml("b1", backend_addr, 10, None));
        let target = format!("http://{}/whip", proxy.whip);
        let (output, report) = run_loadgen(
            "whip",
            &[
                "--target",
                &target,
                "--concurrency",
                "3",
                "--hold",
                "3s",
                "--bind",
                "127.0.0.1",
            ],
        );
        assert!(output.status.success(), "{name}: {report:#}");
        assert_eq!(field(&report, &["sessions", "completed"]), 3, "{report:#}");
        assert_eq!(field(&report, &["tone", "passed"]), 3, "{report:#}");
        assert_eq!(field(&report, &["rtp", "lost"]), 0, "{report:#}");
        let frames =
            proxy.counter("voxgate_webrtc_transcoded_frames_total{direction=\"to_backend\"}");
        assert_eq!(
            frames > 0.0,
            transcoded,
            "{name}: {frames} frames transcoded"
        );
        proxy.assert_idle(Duration::from_secs(5));
    }
}

#[test]
fn a_client_that_disappears_is_detected_by_consent_and_its_slot_released() {
    let (_backend, backend_addr) = start_backend("whip-gone-backend", &[]);
    let proxy = Proxy::start_with_env(
        "whip-gone",
        &backend_toml("b1", backend_addr, 10, None),
        &[("VOXGATE_WEBRTC__CONSENT_TIMEOUT", "5s".to_owned())],
    );
    let Some(mut client) = aiortc_client() else {
        return;
    };
    let mut child = client
        .args([
            "--url",
            &format!("http://{}/whip", proxy.whip),
            // The client's longest run; it is killed long before.
            "--seconds",
            "20",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let connected = wait_until(Duration::from_secs(15), || {
        proxy.counter("voxgate_webrtc_connect_seconds_count") >= 1.0
    });
    // Gone without a word: no DTLS close, no DELETE.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(connected, "the aiortc client never connected");
    assert_eq!(proxy.metric("voxgate_sessions_active"), 1.0);
    let released = wait_until(Duration::from_secs(12), || {
        proxy.metric("voxgate_sessions_active") == 0.0
    });
    assert!(released, "the session outlived its consent");
    assert_eq!(
        proxy.counter("voxgate_webrtc_closed_total{reason=\"consent_expired\"}"),
        1.0
    );
    proxy.assert_idle(Duration::from_secs(5));
}

#[test]
fn headless_chromium_completes_a_whip_session_with_audio_both_ways() {
    let chromium = PathBuf::from("/usr/lib/chromium/chromium");
    let unshare = Command::new("unshare")
        .args(["-rn", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !chromium.exists() || !unshare {
        common::peer_missing(
            "headless_chromium_completes_a_whip_session_with_audio_both_ways",
            "Debian's chromium, or unshare -rn for a loopback-only network namespace",
            "apt-get install chromium",
        );
        return;
    }
    let voxgate = common::binary("voxgate");
    common::binary("voxgate-loadgen");
    let bin_dir = voxgate.parent().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/chromium_e2e.sh");
    for (codecs, transcoded) in [
        ("opus,telephone-event", false),
        ("pcmu,telephone-event", true),
    ] {
        let output = Command::new(&script)
            .arg(bin_dir)
            .arg(codecs)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("no JSON from Chromium ({e}):\n{stdout}\n{stderr}"));
        assert!(output.status.success(), "{codecs}: {result:#}\n{stderr}");
        assert_eq!(result["status"], 201, "{result:#}");
        assert_tone(&result, codecs);
        // The script prints voxgate's metrics on stderr after the session.
        assert!(stderr.contains("voxgate_sessions_active 0"), "{stderr}");
        assert_eq!(
            stderr.contains("voxgate_webrtc_transcoded_frames_total"),
            transcoded,
            "{codecs}: {stderr}"
        );
    }
}
