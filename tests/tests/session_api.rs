//! The session API (`/v1/sessions/{id}`) end to end: view, hang-up, transfer and DTMF on a SIP
//! call in and on an originated call, with every error: unknown (404), ended (409), bad input
//! (400/422), not connected or already transferring (409) and authentication (401/403). DTMF is
//! checked at the caller's own RTP socket, decoded with the media crate's RFC 4733 detector.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::uac::{Uac, Uas, sdp_of};
use common::{Proxy, backend_toml, http_exchange, json_request, start_backend, wait_until};
use serde_json::{Value, json};
use voxgate_media::dtmf::DtmfDetector;
use voxgate_sip::sdp::{AudioSdp, Codec};

const ADMIN_KEY: &str = "admin-key-0123456789-abcdefghijklmnop";
const OTHER_KEY: &str = "not-the-admin-key-0123456789-abcdefg";

fn start_proxy(name: &str, config: &str) -> Proxy {
    Proxy::start_with_env(
        name,
        config,
        &[("VOXGATE_CLUSTER__ADMIN_KEY", ADMIN_KEY.to_owned())],
    )
}

fn api(proxy: &Proxy, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (status, json, _) = json_request(proxy.http, method, path, Some(ADMIN_KEY), body.as_ref());
    (status, json)
}

/// Asserts an error answer: status and stable code.
fn expect_error(answer: (u16, Value), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["code"], code, "{}", answer.1);
}

/// A trunk "carrier-in" whose calls come from 127.0.0.6, and a trunk "pbx" that takes
/// `sip:...@pbx.test` to `addr` (a transfer target).
fn trunks(addr: SocketAddr) -> String {
    format!(
        "\n[[trunks]]\nname = \"carrier-in\"\nsources = [\"127.0.0.6/32\"]\n\
         \n[[trunks]]\nname = \"pbx\"\noutbound = \"{addr}\"\nhosts = [\"pbx.test\"]\n"
    )
}

/// A caller offering PCMU and telephone-event/8000 on 101; returns it once answered and ACKed.
fn call_in(ip: &str, proxy: SocketAddr) -> Uac {
    let mut uac = Uac::new(ip, proxy);
    let port = uac.rtp.local_addr().unwrap().port();
    let sdp = AudioSdp::offer(
        uac.local.ip(),
        port,
        vec![Codec::pcmu(), Codec::telephone_event(101)],
        1,
    )
    .to_string();
    let invite = uac.dialog.invite(&mut uac.rng, sdp);
    uac.send(&invite.to_string());
    uac.invite = Some(invite);
    let (_, ok) = uac
        .final_response(rsip::Method::Invite, Duration::from_secs(5))
        .expect("no final answer");
    assert_eq!(ok.status_code.code(), 200, "{ok}");
    uac.ack(&ok);
    uac
}

/// The live session whose caller dialog is `call_id`.
fn session_of(proxy: &Proxy, call_id: &str) -> u64 {
    let (status, body) = api(
        proxy,
        "GET",
        &format!("/v1/sessions?call_id={call_id}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    body["id"].as_u64().unwrap()
}

/// Waits until `GET /v1/sessions/{id}` satisfies `check`; returns the last view.
fn wait_view(proxy: &Proxy, id: u64, mut check: impl FnMut(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let reached = wait_until(Duration::from_secs(10), || {
        last = api(proxy, "GET", &format!("/v1/sessions/{id}"), None).1;
        check(&last)
    });
    assert!(reached, "session {id} never got there: {last:#}");
    last
}

/// The DTMF digits (PT `pt`) arriving at `socket` until `want` digits or `timeout`.
fn received_digits(socket: &std::net::UdpSocket, pt: u8, want: usize, timeout: Duration) -> String {
    let mut detector = DtmfDetector::new();
    let mut digits = String::new();
    let mut buf = [0u8; 2048];
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    while digits.len() < want && Instant::now() < deadline {
        if let Ok((len, _)) = socket.recv_from(&mut buf)
            && let Some(event) = detector.receive_packet(pt, &buf[..len])
        {
            digits.extend(event.digit);
        }
    }
    digits
}

/// 401 without a key and 403 with another key, on every route of session `id`.
fn check_auth(proxy: &Proxy, id: u64) {
    let routes = [
        ("GET", format!("/v1/sessions/{id}"), None),
        ("DELETE", format!("/v1/sessions/{id}"), None),
        (
            "POST",
            format!("/v1/sessions/{id}/transfer"),
            Some(json!({"to": "sip:a@pbx.test"})),
        ),
        (
            "POST",
            format!("/v1/sessions/{id}/dtmf"),
            Some(json!({"digits": "1"})),
        ),
    ];
    for (method, path, body) in routes {
        let none = json_request(proxy.http, method, &path, None, body.as_ref());
        expect_error((none.0, none.1), 401, "UNAUTHORIZED");
        let wrong = json_request(proxy.http, method, &path, Some(OTHER_KEY), body.as_ref());
        expect_error((wrong.0, wrong.1), 403, "FORBIDDEN");
    }
}

/// 404 on every route for an id this node never had.
fn check_unknown(proxy: &Proxy) {
    for id in ["999999", "not-a-number"] {
        expect_error(
            api(proxy, "GET", &format!("/v1/sessions/{id}"), None),
            404,
            "SESSION_NOT_FOUND",
        );
        expect_error(
            api(proxy, "DELETE", &format!("/v1/sessions/{id}"), None),
            404,
            "SESSION_NOT_FOUND",
        );
    }
    expect_error(
        api(
            proxy,
            "POST",
            "/v1/sessions/999999/transfer",
            Some(json!({"to": "sip:a@pbx.test"})),
        ),
        404,
        "SESSION_NOT_FOUND",
    );
    expect_error(
        api(
            proxy,
            "POST",
            "/v1/sessions/999999/dtmf",
            Some(json!({"digits": "1"})),
        ),
        404,
        "SESSION_NOT_FOUND",
    );
}

/// 409 `SESSION_ENDED` on every route of the ended session `id`.
fn check_ended(proxy: &Proxy, id: u64) {
    let path = format!("/v1/sessions/{id}");
    expect_error(api(proxy, "GET", &path, None), 409, "SESSION_ENDED");
    expect_error(api(proxy, "DELETE", &path, None), 409, "SESSION_ENDED");
    expect_error(
        api(
            proxy,
            "POST",
            &format!("{path}/transfer"),
            Some(json!({"to": "sip:a@pbx.test"})),
        ),
        409,
        "SESSION_ENDED",
    );
    expect_error(
        api(
            proxy,
            "POST",
            &format!("{path}/dtmf"),
            Some(json!({"digits": "1"})),
        ),
        409,
        "SESSION_ENDED",
    );
}

/// 400 for a body that is not JSON, 422 for wrong fields and bad values.
fn check_bad_input(proxy: &Proxy, id: u64) {
    let dtmf = format!("/v1/sessions/{id}/dtmf");
    let transfer = format!("/v1/sessions/{id}/transfer");
    let (status, _, body) =
        http_exchange(proxy.http, "POST", &dtmf, Some(ADMIN_KEY), Some("{digits")).unwrap();
    expect_error(
        (status, serde_json::from_str(&body).unwrap()),
        400,
        "INVALID_JSON",
    );
    let (status, _, body) =
        http_exchange(proxy.http, "POST", &transfer, Some(ADMIN_KEY), Some("")).unwrap();
    expect_error(
        (status, serde_json::from_str(&body).unwrap()),
        400,
        "INVALID_JSON",
    );
    expect_error(
        api(proxy, "POST", &dtmf, Some(json!({"tones": "1"}))),
        422,
        "INVALID_JSON",
    );
    for digits in ["", "12x", "1 2", &"1".repeat(33)] {
        expect_error(
            api(proxy, "POST", &dtmf, Some(json!({ "digits": digits }))),
            422,
            "INVALID_DIGITS",
        );
    }
    for to in [
        "",
        "http://example.com",
        "sip:",
        "sip:a@b\r\nX: y",
        "sip:<a@b>",
    ] {
        expect_error(
            api(proxy, "POST", &transfer, Some(json!({ "to": to }))),
            422,
            "INVALID_TARGET",
        );
    }
}

#[test]
fn a_sip_call_in_can_be_viewed_sent_dtmf_transferred_and_hung_up() {
    let (_backend, backend_addr) = start_backend("sessions-backend", &[]);
    // The transfer target behind the "pbx" trunk, answering by hand.
    let mut target = Uas::new("127.0.0.7");
    let config = format!(
        "[node]\nid = \"proxy-1\"\nregion = \"US-EAST\"\n{}{}",
        backend_toml("b1", backend_addr, 10, None),
        trunks(target.uac.local)
    );
    let proxy = start_proxy("sessions-in", &config);
    target.uac.proxy = proxy.sip;
    check_unknown(&proxy);

    let mut caller = call_in("127.0.0.6", proxy.sip);
    let call_id = caller.dialog.call_id.clone();
    let id = session_of(&proxy, &call_id);
    check_auth(&proxy, id);
    check_bad_input(&proxy, id);

    let view = wait_view(&proxy, id, |v| v["state"] == "connected");
    assert_eq!(view["id"], id);
    assert_eq!(view["kind"], "sip", "{view:#}");
    assert_eq!(view["trunk"], "carrier-in", "{view:#}");
    assert_eq!(view["backend"], "b1", "{view:#}");
    assert_eq!(view["region"], "US-EAST", "{view:#}");
    assert_eq!(
        view["legs"]["caller"]["call_id"],
        call_id.as_str(),
        "{view:#}"
    );
    assert_eq!(view["legs"]["caller"]["codec"], "PCMU/8000", "{view:#}");
    assert!(view["legs"]["backend"]["call_id"].is_string(), "{view:#}");

    // Media counters: what the caller sends is counted on its leg.
    let relay_port = u16::try_from(view["ports"]["caller"].as_u64().unwrap()).unwrap();
    let relay = SocketAddr::from(([127, 0, 0, 1], relay_port));
    caller.send_rtp(relay, 10, 0x5eed);
    let view = wait_view(&proxy, id, |v| {
        v["legs"]["caller"]["media"]["packets"].as_u64() >= Some(10)
    });
    assert!(
        view["legs"]["caller"]["media"]["bytes"].as_u64() >= Some(1720),
        "{view:#}"
    );

    // DTMF toward the caller, as RFC 4733 events on its telephone-event type.
    let (status, body) = api(
        &proxy,
        "POST",
        &format!("/v1/sessions/{id}/dtmf"),
        Some(json!({"digits": "12#"})),
    );
    assert_eq!(status, 202, "{body}");
    let digits = received_digits(&caller.rtp, 101, 3, Duration::from_secs(5));
    assert_eq!(digits, "12#");

    // A transfer to the pbx: the target rings, a second transfer is refused meanwhile, the
    // target refuses and the caller stays with the Backend.
    let transfer = format!("/v1/sessions/{id}/transfer");
    let (status, body) = api(
        &proxy,
        "POST",
        &transfer,
        Some(json!({"to": "sip:+15550100@pbx.test"})),
    );
    assert_eq!(status, 202, "{body}");
    let invite = target.invite();
    assert!(invite.uri.to_string().contains("+15550100"), "{invite}");
    wait_view(&proxy, id, |v| v["state"] == "transferring");
    expect_error(
        api(
            &proxy,
            "POST",
            &transfer,
            Some(json!({"to": "sip:+15550101@pbx.test"})),
        ),
        409,
        "TRANSFER_IN_PROGRESS",
    );
    target.uac.respond(&invite, 486);
    wait_view(&proxy, id, |v| v["state"] == "connected");

    // Hang-up: the caller gets a BYE, the session is gone and then reported ended.
    let (status, body) = api(&proxy, "DELETE", &format!("/v1/sessions/{id}"), None);
    assert_eq!(status, 202, "{body}");
    let bye = caller
        .recv_request(rsip::Method::Bye, Duration::from_secs(5))
        .expect("no BYE to the caller");
    caller.respond(&bye, 200);
    assert!(wait_until(Duration::from_secs(5), || {
        api(&proxy, "GET", &format!("/v1/sessions/{id}"), None).0 == 409
    }));
    check_ended(&proxy, id);
    proxy.assert_idle(Duration::from_secs(5));
}

#[test]
fn a_session_not_yet_answered_refuses_transfer_and_dtmf_and_is_cancelled() {
    // The Backend answers by hand, and never does.
    let mut backend = Uas::new("127.0.0.8");
    let config = format!(
        "[node]\nid = \"proxy-1\"\nregion = \"US-EAST\"\n{}",
        backend_toml("b1", backend.uac.local, 10, None)
    );
    let proxy = start_proxy("sessions-ringing", &config);
    backend.uac.proxy = proxy.sip;
    let mut caller = Uac::new("127.0.0.6", proxy.sip);
    caller.send_invite();
    let invite = backend.invite();
    // A CANCEL may only follow a provisional answer (RFC 3261 9.1).
    backend.uac.respond(&invite, 180);
    let call_id = caller.dialog.call_id.clone();
    let id = session_of(&proxy, &call_id);
    let view = wait_view(&proxy, id, |v| v["state"] == "ringing");
    assert!(view["legs"]["backend"]["call_id"].is_string(), "{view:#}");

    expect_error(
        api(
            &proxy,
            "POST",
            &format!("/v1/sessions/{id}/transfer"),
            Some(json!({"to": "sip:a@pbx.test"})),
        ),
        409,
        "NOT_CONNECTED",
    );
    expect_error(
        api(
            &proxy,
            "POST",
            &format!("/v1/sessions/{id}/dtmf"),
            Some(json!({"digits": "1"})),
        ),
        409,
        "NOT_CONNECTED",
    );

    // Hang-up before the answer: CANCEL toward the Backend, a final error to the caller.
    let (status, body) = api(&proxy, "DELETE", &format!("/v1/sessions/{id}"), None);
    assert_eq!(status, 202, "{body}");
    let cancel = backend
        .uac
        .recv_request(rsip::Method::Cancel, Duration::from_secs(5))
        .expect("no CANCEL to the Backend");
    backend.uac.respond(&cancel, 200);
    backend.uac.respond(&invite, 487);
    let (_, refused) = caller
        .final_response(rsip::Method::Invite, Duration::from_secs(5))
        .expect("no final answer to the caller");
    assert!(refused.status_code.code() >= 400, "{refused}");
    caller.ack_failure(&refused);
    assert!(wait_until(Duration::from_secs(5), || {
        api(&proxy, "GET", &format!("/v1/sessions/{id}"), None).0 == 409
    }));
    check_ended(&proxy, id);
}

#[test]
fn an_originated_call_gets_dtmf_toward_the_number_and_is_hung_up() {
    let (_backend, backend_addr) = start_backend("sessions-originate-backend", &[]);
    let mut carrier = Uas::new("127.0.0.5");
    let config = format!(
        "{}\n[[trunks]]\nname = \"carrier\"\noutbound = \"{}\"\nhosts = [\"pstn.test\"]\n",
        backend_toml("b1", backend_addr, 10, None),
        carrier.uac.local
    );
    let proxy = start_proxy("sessions-originate", &config);
    carrier.uac.proxy = proxy.sip;

    let (status, accepted) = api(
        &proxy,
        "POST",
        "/v1/calls",
        Some(json!({"to": "+15550001"})),
    );
    assert_eq!(status, 202, "{accepted:#}");
    let call = accepted["id"].as_str().unwrap().to_owned();
    let invite = carrier.invite();
    let offer = sdp_of(&invite.body);
    assert!(offer.telephone_event().is_some(), "{offer}");
    let dialog = carrier.answer(&invite, vec![Codec::pcmu(), Codec::telephone_event(101)]);
    let mut id = None;
    assert!(wait_until(Duration::from_secs(10), || {
        let record = api(&proxy, "GET", &format!("/v1/calls/{call}"), None).1;
        id = record["session"].as_u64();
        record["state"] == "connected"
    }));
    let id = id.expect("the call names its session");
    check_auth(&proxy, id);

    let view = wait_view(&proxy, id, |v| v["state"] == "connected");
    assert_eq!(view["kind"], "originated", "{view:#}");
    assert_eq!(view["trunk"], "carrier", "{view:#}");
    assert_eq!(
        view["legs"]["caller"]["call_id"],
        dialog.call_id.as_str(),
        "{view:#}"
    );

    let (status, body) = api(
        &proxy,
        "POST",
        &format!("/v1/sessions/{id}/dtmf"),
        Some(json!({"digits": "*0D"})),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        received_digits(&carrier.uac.rtp, 101, 3, Duration::from_secs(5)),
        "*0D"
    );

    let (status, body) = api(&proxy, "DELETE", &format!("/v1/sessions/{id}"), None);
    assert_eq!(status, 202, "{body}");
    let bye = carrier
        .uac
        .recv_request(rsip::Method::Bye, Duration::from_secs(5))
        .expect("no BYE to the number");
    carrier.uac.respond(&bye, 200);
    assert!(wait_until(Duration::from_secs(5), || {
        api(&proxy, "GET", &format!("/v1/calls/{call}"), None).1["state"] == "ended"
    }));
    check_ended(&proxy, id);
    proxy.assert_idle(Duration::from_secs(5));
}

#[test]
fn a_webrtc_session_can_be_viewed_and_hung_up() {
    let (_backend, backend_addr) = start_backend("sessions-whip-backend", &[]);
    let config = format!(
        "[node]\nid = \"proxy-1\"\nregion = \"US-EAST\"\n{}",
        backend_toml("b1", backend_addr, 10, None)
    );
    let proxy = start_proxy("sessions-whip", &config);
    let mut client = std::process::Command::new(common::binary("voxgate-loadgen"))
        .args([
            "whip",
            "--quiet",
            "--target",
            &format!("http://{}/whip", proxy.whip),
        ])
        .args(["--concurrency", "1", "--hold", "20s", "--bind", "127.0.0.1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut id = None;
    assert!(wait_until(Duration::from_secs(10), || {
        let list = api(&proxy, "GET", "/v1/sessions", None).1;
        id = list["sessions"].as_array().and_then(|all| {
            all.iter()
                .find(|s| {
                    s["caller_call_id"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("whip:"))
                })
                .and_then(|s| s["id"].as_u64())
        });
        id.is_some()
    }));
    let id = id.unwrap();
    check_auth(&proxy, id);
    let view = wait_view(&proxy, id, |v| v["state"] == "connected");
    assert_eq!(view["kind"], "webrtc", "{view:#}");
    assert_eq!(view["backend"], "b1", "{view:#}");
    assert_eq!(view["legs"]["caller"]["codec"], "opus/48000", "{view:#}");
    assert!(view["legs"]["backend"]["call_id"].is_string(), "{view:#}");
    check_bad_input(&proxy, id);
    // DTMF toward a WebRTC client is not sent by this node: refused, not dropped.
    expect_error(
        api(
            &proxy,
            "POST",
            &format!("/v1/sessions/{id}/dtmf"),
            Some(json!({"digits": "1"})),
        ),
        409,
        "DTMF_UNAVAILABLE",
    );

    let (status, body) = api(&proxy, "DELETE", &format!("/v1/sessions/{id}"), None);
    assert_eq!(status, 202, "{body}");
    assert!(wait_until(Duration::from_secs(5), || {
        api(&proxy, "GET", &format!("/v1/sessions/{id}"), None).0 == 409
    }));
    check_ended(&proxy, id);
    proxy.assert_idle(Duration::from_secs(5));
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
fn dtmf_reaches_a_caller_of_an_info_trunk_as_sip_info() {
    let test = "dtmf_reaches_a_caller_of_an_info_trunk_as_sip_info";
    let Some(sipp) = common::sipp::sipp_or_skip(test) else {
        return;
    };
    let (_backend, addr) = start_backend("api-info-b1", &[]);
    let config = format!(
        "{}\n[[trunks]]\nname = \"carrier\"\nsources = [\"127.0.0.1/32\"]\ndtmf = \"info\"\n",
        backend_toml("b1", addr, 10, None)
    );
    let proxy = start_proxy("api-info", &config);
    // A SIPp caller from the trunk: it checks the three INFOs itself (dtmf_info_uac.xml).
    let mut caller = common::sipp::ScenarioPeer::uac(
        &format!("{test}-uac"),
        &sipp,
        "dtmf_info_uac.xml",
        proxy.sip,
        proxy.media,
    );
    let mut id = None;
    let up = wait_until(Duration::from_secs(10), || {
        let (_, list) = api(&proxy, "GET", "/v1/sessions", None);
        id = list["sessions"][0]["id"].as_u64();
        id.is_some_and(|id| {
            api(&proxy, "GET", &format!("/v1/sessions/{id}"), None).1["state"] == "connected"
        })
    });
    assert!(up, "no connected session:\n{}", proxy.process.log());
    let id = id.unwrap();
    let (status, body) = api(
        &proxy,
        "POST",
        &format!("/v1/sessions/{id}/dtmf"),
        Some(json!({ "digits": "12#" })),
    );
    assert_eq!(status, 202, "{body}");
    let status = caller.wait(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "caller {status:?}\n{}\n==== voxgate log\n{}",
        caller.report(),
        proxy.process.log()
    );
    proxy.assert_idle(Duration::from_secs(5));
}
