//! The outbound pipeline: `POST /v1/calls` dials a number through a trunk and bridges it to a
//! Backend, waiting in a bounded queue while no slot is free.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::uac::{Uas, sdp_of};
use common::{Proxy, backend_toml, json_request, start_backend, wait_until};
use serde_json::{Value, json};
use voxgate_sip::sdp::Codec;

const ADMIN_KEY: &str = "admin-key-0123456789-abcdefghijklmnop";

fn start_proxy(name: &str, config: &str) -> Proxy {
    Proxy::start_with_env(
        name,
        config,
        &[("VOXGATE_CLUSTER__ADMIN_KEY", ADMIN_KEY.to_owned())],
    )
}

fn api(proxy: &Proxy, method: &str, path: &str, body: Option<Value>) -> (u16, Value, String) {
    json_request(proxy.http, method, path, Some(ADMIN_KEY), body.as_ref())
}

fn originate(proxy: &Proxy, body: Value) -> (u16, Value, String) {
    api(proxy, "POST", "/v1/calls", Some(body))
}

/// The request `id` once `check` holds for it (panics after 10 s).
fn wait_for_call(proxy: &Proxy, id: &str, mut check: impl FnMut(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let reached = wait_until(Duration::from_secs(10), || {
        last = api(proxy, "GET", &format!("/v1/calls/{id}"), None).1;
        check(&last)
    });
    assert!(reached, "call {id} never got there: {last:#}");
    last
}

fn trunk_toml(carrier: SocketAddr) -> String {
    format!("\n[[trunks]]\nname = \"carrier\"\noutbound = \"{carrier}\"\nhosts = [\"pstn.test\"]\n")
}

#[test]
fn an_originated_call_is_dialled_bridged_and_carries_media() {
    let (_backend, backend_addr) = start_backend("originate-backend", &[]);
    // The number's side, answering by hand behind the trunk.
    let mut carrier = Uas::new("127.0.0.5");
    let config = format!(
        "{}{}",
        backend_toml("b1", backend_addr, 10, None),
        trunk_toml(carrier.uac.local)
    );
    let proxy = start_proxy("originate-proxy", &config);
    carrier.uac.proxy = proxy.sip;

    let (status, accepted, head) =
        originate(&proxy, json!({"to": "+15550001", "from": "+15559999"}));
    assert_eq!(status, 202, "{accepted:#}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("location: /v1/calls/{id}")),
        "{head}"
    );
    let invite = carrier.invite();
    assert_eq!(invite.uri.to_string(), "sip:+15550001@pstn.test");
    let offer = sdp_of(&invite.body);
    assert!(
        offer.codecs.iter().any(|c| c.kind.name() == "PCMU"),
        "{offer}"
    );
    let relay = SocketAddr::new(offer.connection, offer.port);
    let mut dialog = carrier.answer(&invite, vec![Codec::pcmu(), Codec::telephone_event(101)]);

    let connected = wait_for_call(&proxy, &id, |call| call["state"] == "connected");
    assert_eq!(connected["backend"], "b1", "{connected:#}");
    assert_eq!(connected["to"], "+15550001");
    // Media: what the number says comes back from the (echo) Backend through the relay.
    carrier.uac.send_rtp(relay, 50, 0x0c0ffee);
    let echoed = carrier.uac.recv_rtp(50, Duration::from_secs(3));
    assert!(echoed >= 45, "only {echoed} of 50 RTP packets came back");

    // The number hangs up: the Backend is hung up too and the request ends "completed".
    carrier.bye(&mut dialog);
    let ended = wait_for_call(&proxy, &id, |call| call["state"] == "ended");
    assert_eq!(ended["outcome"], "completed", "{ended:#}");
    assert_eq!(ended["end_cause"], "caller_bye", "{ended:#}");
    proxy.assert_idle(Duration::from_secs(5));
    assert_eq!(
        proxy.counter("voxgate_outbound_calls_total{outcome=\"completed\"}"),
        1.0
    );

    // A busy number: the trunk's 486 is the outcome, and nothing is left behind.
    let (status, busy, _) = originate(&proxy, json!({"to": "+15550002"}));
    assert_eq!(status, 202, "{busy:#}");
    let id = busy["id"].as_str().unwrap().to_owned();
    let invite = carrier.invite();
    carrier.uac.respond(&invite, 486);
    let ended = wait_for_call(&proxy, &id, |call| call["state"] == "ended");
    assert_eq!(ended["outcome"], "busy", "{ended:#}");
    assert_eq!(ended["sip_code"], 486, "{ended:#}");
    proxy.assert_idle(Duration::from_secs(5));
}

#[test]
fn requests_wait_for_a_slot_and_a_full_queue_answers_429() {
    // One slot, room for two waiting. The Backend ends a call after 3 s without RTP.
    let (_backend, backend_addr) = start_backend("queue-backend", &["--media-timeout", "3s"]);
    let (_carrier, carrier_addr) = start_backend("queue-carrier", &[]);
    let config = format!(
        "[limits]\nmax_sessions = 1\n\n[outbound]\nqueue_size = 2\n{}{}",
        backend_toml("b1", backend_addr, 10, None),
        trunk_toml(carrier_addr)
    );
    let proxy = start_proxy("queue-proxy", &config);
    let submit = |to: &str| originate(&proxy, json!({"to": to}));

    let (status, first, _) = submit("+1001");
    assert_eq!(status, 202, "{first:#}");
    let first = first["id"].as_str().unwrap().to_owned();
    wait_for_call(&proxy, &first, |call| call["state"] != "pending");
    let ids: Vec<String> = ["+1002", "+1003"]
        .iter()
        .map(|to| {
            let (status, body, _) = submit(to);
            assert_eq!(status, 202, "{body:#}");
            assert_eq!(body["state"], "pending", "{body:#}");
            body["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let (status, full, head) = submit("+1004");
    assert_eq!(status, 429, "{full:#}");
    assert_eq!(full["code"], "QUEUE_FULL", "{full:#}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: "),
        "{head}"
    );

    let capacity = api(&proxy, "GET", "/v1/capacity", None).1;
    assert_eq!(capacity["outbound"]["pending"], 2, "{capacity:#}");
    assert_eq!(capacity["outbound"]["processing"], 1, "{capacity:#}");
    assert_eq!(proxy.metric("voxgate_outbound_queue_pending"), 2.0);

    // Cancel the last waiting one: it leaves the queue.
    let (status, cancelled, _) = api(&proxy, "DELETE", &format!("/v1/calls/{}", ids[1]), None);
    assert_eq!(status, 200, "{cancelled:#}");
    assert_eq!(cancelled["outcome"], "cancelled");

    // Hang up the one that is up: both legs get BYE, and the second is dialled in its slot.
    wait_for_call(&proxy, &first, |call| call["state"] == "connected");
    let (status, hanging_up, _) = api(&proxy, "DELETE", &format!("/v1/calls/{first}"), None);
    assert_eq!(status, 202, "{hanging_up:#}");
    let done = wait_for_call(&proxy, &first, |call| call["state"] == "ended");
    assert_eq!(done["outcome"], "completed", "{done:#}");
    assert_eq!(done["end_cause"], "hung_up", "{done:#}");
    let (status, ended, _) = api(&proxy, "DELETE", &format!("/v1/calls/{first}"), None);
    assert_eq!((status, ended["code"].as_str()), (409, Some("CALL_ENDED")));
    // The second ends by itself (its Backend hangs up after 3 s without RTP).
    let second = wait_for_call(&proxy, &ids[0], |call| call["state"] == "ended");
    assert_eq!(second["outcome"], "completed", "{second:#}");
    assert_eq!(second["end_cause"], "backend_bye", "{second:#}");
    assert!(
        second["waited_s"].as_f64().unwrap() > 0.0,
        "the second call did not wait for the slot: {second:#}"
    );
    proxy.assert_idle(Duration::from_secs(5));
    let stats = api(&proxy, "GET", "/v1/calls", None).1;
    assert_eq!(stats["queue"]["pending"], 0, "{stats:#}");
    assert_eq!(stats["queue"]["processing"], 0, "{stats:#}");
    assert_eq!(stats["queue"]["outcomes"]["completed"], 2, "{stats:#}");
    assert_eq!(stats["queue"]["outcomes"]["cancelled"], 1, "{stats:#}");
    assert_eq!(
        proxy.counter("voxgate_outbound_refused_total{reason=\"queue_full\"}"),
        1.0
    );
    assert_eq!(
        proxy.counter("voxgate_outbound_queue_wait_seconds_count"),
        3.0
    );
}

#[test]
fn bad_originate_requests_get_json_errors() {
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let with_trunk = format!(
        "{}{}",
        backend_toml("b1", backend, 10, None),
        trunk_toml("127.0.0.1:9".parse().unwrap())
    );
    let proxy = start_proxy("originate-bad", &with_trunk);
    let expect = |body: Value, status: u16, code: &str| {
        let (got, answer, _) = originate(&proxy, body.clone());
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer:#}"
        );
    };
    expect(json!({"to": "+1 555"}), 422, "INVALID_NUMBER");
    expect(json!({"to": "sip:x@y"}), 422, "INVALID_NUMBER");
    expect(
        json!({"to": "+1555", "from": "a b"}),
        422,
        "INVALID_CALLER_ID",
    );
    expect(
        json!({"to": "+1555", "trunk": "other"}),
        422,
        "UNKNOWN_TRUNK",
    );
    expect(
        json!({"to": "+1555", "backend": "b9"}),
        422,
        "UNKNOWN_BACKEND",
    );
    expect(
        json!({"to": "+1555", "region": "EU-WEST"}),
        422,
        "NO_BACKEND_IN_REGION",
    );
    expect(
        json!({"to": "+1555", "region": "nope"}),
        400,
        "INVALID_REGION_ID",
    );
    expect(json!({"number": "+1555"}), 422, "INVALID_JSON");
    let (status, _, _) = json_request(
        proxy.http,
        "POST",
        "/v1/calls",
        None,
        Some(&json!({"to": "+1"})),
    );
    assert_eq!(status, 401);
    let (status, missing, _) = api(&proxy, "GET", "/v1/calls/0000000000000000", None);
    assert_eq!(
        (status, missing["code"].as_str()),
        (404, Some("CALL_NOT_FOUND"))
    );

    let no_trunk = start_proxy("originate-no-trunk", &backend_toml("b1", backend, 10, None));
    let (status, answer, _) = originate(&no_trunk, json!({"to": "+1555"}));
    assert_eq!(
        (status, answer["code"].as_str()),
        (422, Some("NO_TRUNK")),
        "{answer:#}"
    );
}
