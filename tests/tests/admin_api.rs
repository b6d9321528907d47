//! The admin API under `/v1` against a real voxgate: authentication, regions and nodes with their
//! lifecycle and validation errors, safe deletion, node heartbeats, capacity, the audit trail, this
//! node's maintenance and drain, and the embedded registry's state file across restarts.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Proxy, backend_toml, json_request, raw_request, sip_exchange, wait_until};
use serde_json::{Value, json};

const ADMIN_KEY: &str = "admin-key-0123456789-abcdefghijklmnop";
const NODE_KEY: &str = "node-key-0123456789-abcdefghijklmnopq";

fn start(name: &str) -> Proxy {
    let config = format!(
        "[node]\nid = \"proxy-1\"\nregion = \"US-EAST\"\n{}",
        backend_toml("b1", "127.0.0.1:9".parse().unwrap(), 10, None)
    );
    Proxy::start_with_env(
        name,
        &config,
        &[
            ("VOXGATE_CLUSTER__ADMIN_KEY", ADMIN_KEY.to_owned()),
            ("VOXGATE_CLUSTER__HEARTBEAT_TTL", "1s".to_owned()),
            ("VOXGATE_CLUSTER__STATUS_INTERVAL", "250ms".to_owned()),
        ],
    )
}

/// A request with the admin key: status and JSON body (Null when empty).
fn admin(proxy: &Proxy, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call(proxy, method, path, Some(ADMIN_KEY), body)
}

fn call(
    proxy: &Proxy,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let (status, json, _) = json_request(proxy.http, method, path, key, body.as_ref());
    (status, json)
}

/// Asserts an error answer: status and stable code.
fn expect_error(answer: (u16, Value), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["code"], code, "{}", answer.1);
    assert!(answer.1["message"].as_str().is_some_and(|m| !m.is_empty()));
}

fn reasons(public: &str) -> Option<Value> {
    Some(json!({"public_reason": public, "private_reason": "ticket OPS-1"}))
}

#[test]
fn authentication_is_required_and_checked() {
    let proxy = start("admin-auth");
    expect_error(
        call(&proxy, "GET", "/v1/regions", None, None),
        401,
        "UNAUTHORIZED",
    );
    expect_error(
        call(&proxy, "GET", "/v1/regions", Some(NODE_KEY), None),
        403,
        "FORBIDDEN",
    );
    assert_eq!(admin(&proxy, "GET", "/v1/regions", None).0, 200);
    // The admin key is not a node's key: it cannot report a node's status.
    expect_error(
        call(
            &proxy,
            "PUT",
            "/v1/nodes/b1/status",
            Some(ADMIN_KEY),
            Some(json!({"active_sessions": 0, "limit": 10})),
        ),
        403,
        "FORBIDDEN",
    );
    // Without an admin key configured the API is off.
    let off = Proxy::start("admin-off", "");
    expect_error(
        call(&off, "GET", "/v1/regions", Some(ADMIN_KEY), None),
        403,
        "ADMIN_API_DISABLED",
    );
}

#[test]
fn regions_lifecycle_validation_and_safe_deletion() {
    let proxy = start("admin-regions");
    let (status, list) = admin(&proxy, "GET", "/v1/regions", None);
    assert_eq!(status, 200);
    assert_eq!(list["regions"][0]["id"], "US-EAST", "{list}");
    assert_eq!(list["regions"][0]["state"], "enabled", "seeded from config");

    expect_error(
        admin(&proxy, "POST", "/v1/regions", Some(json!({"id": "europe"}))),
        400,
        "INVALID_REGION_ID",
    );
    expect_error(
        admin(&proxy, "POST", "/v1/regions", Some(json!({"nope": 1}))),
        422,
        "INVALID_JSON",
    );
    let (status, region) = admin(
        &proxy,
        "POST",
        "/v1/regions",
        Some(json!({"id": "EU-WEST"})),
    );
    assert_eq!(status, 201, "{region}");
    assert_eq!(region["state"], "disabled");
    assert_eq!(region["maintenance"], true);
    expect_error(
        admin(
            &proxy,
            "POST",
            "/v1/regions",
            Some(json!({"id": "EU-WEST"})),
        ),
        409,
        "REGION_EXISTS",
    );
    expect_error(
        admin(&proxy, "GET", "/v1/regions/EU-NORTH", None),
        404,
        "REGION_NOT_FOUND",
    );

    expect_error(
        admin(&proxy, "POST", "/v1/regions/EU-WEST/enable", None),
        400,
        "REASON_REQUIRED",
    );
    expect_error(
        admin(&proxy, "POST", "/v1/regions/EU-WEST/explode", reasons("x")),
        404,
        "NOT_FOUND",
    );
    let (status, region) = admin(
        &proxy,
        "POST",
        "/v1/regions/EU-WEST/enable",
        reasons("opening Europe"),
    );
    assert_eq!(status, 200, "{region}");
    assert_eq!(region["state"], "enabled");
    assert_eq!(region["public_reason"], "opening Europe");
    assert_eq!(region["private_reason"], "ticket OPS-1");
    let (_, region) = admin(
        &proxy,
        "POST",
        "/v1/regions/EU-WEST/maintenance/off",
        reasons("ready"),
    );
    assert_eq!(region["maintenance"], false);
    expect_error(
        admin(&proxy, "DELETE", "/v1/regions/EU-WEST", None),
        409,
        "REGION_ENABLED",
    );

    // A node of the region that reports blocks the region's deletion until it goes quiet.
    let node = json!({
        "id": "eu-b1", "region": "EU-WEST", "kind": "backend",
        "endpoint": "127.0.0.1", "max_sessions": 20, "api_key": NODE_KEY,
    });
    assert_eq!(admin(&proxy, "POST", "/v1/nodes", Some(node)).0, 201);
    admin(
        &proxy,
        "POST",
        "/v1/regions/EU-WEST/disable",
        reasons("closing"),
    );
    let heartbeat = json!({"active_sessions": 0, "limit": 20});
    assert_eq!(
        call(
            &proxy,
            "PUT",
            "/v1/nodes/eu-b1/status",
            Some(NODE_KEY),
            Some(heartbeat)
        )
        .0,
        200
    );
    expect_error(
        admin(&proxy, "DELETE", "/v1/regions/EU-WEST", None),
        409,
        "NODES_ONLINE",
    );
    // Once its 1 s heartbeat TTL ran out the node is offline, and only its registration is left.
    let quiet = wait_until(Duration::from_secs(5), || {
        admin(&proxy, "GET", "/v1/nodes/eu-b1/status", None).1["online"] == false
    });
    assert!(quiet, "eu-b1 still online 5 s after its last heartbeat");
    expect_error(
        admin(&proxy, "DELETE", "/v1/regions/EU-WEST", None),
        409,
        "REGION_HAS_NODES",
    );
    assert_eq!(admin(&proxy, "DELETE", "/v1/nodes/eu-b1", None).0, 204);
    assert_eq!(admin(&proxy, "DELETE", "/v1/regions/EU-WEST", None).0, 204);
    expect_error(
        admin(&proxy, "GET", "/v1/regions/EU-WEST", None),
        404,
        "REGION_NOT_FOUND",
    );

    // Every change is in the audit trail, with who and why.
    let (_, audit) = admin(&proxy, "GET", "/v1/audit", None);
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "region.create",
            "region.enable",
            "region.maintenance_off",
            "node.add",
            "region.disable",
            "node.delete",
            "region.delete"
        ],
        "{audit}"
    );
    let enable = &audit["entries"][1];
    assert_eq!(enable["actor"], "admin");
    assert_eq!(enable["target"], "EU-WEST");
    assert_eq!(enable["public_reason"], "opening Europe");
    assert_eq!(enable["private_reason"], "ticket OPS-1");
}

#[test]
fn nodes_validation_heartbeats_and_safe_deletion() {
    let proxy = start("admin-nodes");
    let node = |id: &str, key: &str| {
        json!({
            "id": id, "region": "US-EAST", "kind": "backend",
            "endpoint": "127.0.0.1", "sip_port": 5099, "max_sessions": 20, "api_key": key,
        })
    };
    expect_error(
        admin(&proxy, "POST", "/v1/nodes", Some(node("n1", "too-short"))),
        400,
        "API_KEY_TOO_SHORT",
    );
    expect_error(
        admin(&proxy, "POST", "/v1/nodes", Some(node("bad id!", NODE_KEY))),
        400,
        "INVALID_NODE_ID",
    );
    let mut elsewhere = node("n1", NODE_KEY);
    elsewhere["region"] = json!("AP-SOUTH");
    expect_error(
        admin(&proxy, "POST", "/v1/nodes", Some(elsewhere)),
        404,
        "REGION_NOT_FOUND",
    );
    let (status, added) = admin(&proxy, "POST", "/v1/nodes", Some(node("n1", NODE_KEY)));
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["state"], "disabled");
    assert_eq!(added["maintenance"], true);
    assert_eq!(added["online"], false);
    assert!(
        added.get("api_key").is_none(),
        "the key is never shown: {added}"
    );
    expect_error(
        admin(
            &proxy,
            "POST",
            "/v1/nodes",
            Some(node("n1", "another-key-0123456789-abcdefghijkl")),
        ),
        409,
        "NODE_EXISTS",
    );
    expect_error(
        admin(&proxy, "POST", "/v1/nodes", Some(node("n2", NODE_KEY))),
        409,
        "API_KEY_REUSED",
    );
    let (status, updated) = admin(
        &proxy,
        "PATCH",
        "/v1/nodes/n1",
        Some(json!({"max_sessions": 40})),
    );
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["max_sessions"], 40);

    // Heartbeat with the node's own key; it is online until the TTL runs out.
    let heartbeat = json!({"active_sessions": 3, "limit": 40, "cpu_percent": 12.5});
    expect_error(
        call(
            &proxy,
            "PUT",
            "/v1/nodes/n1/status",
            None,
            Some(heartbeat.clone()),
        ),
        401,
        "UNAUTHORIZED",
    );
    let (status, _) = call(
        &proxy,
        "PUT",
        "/v1/nodes/n1/status",
        Some(NODE_KEY),
        Some(heartbeat),
    );
    assert_eq!(status, 200);
    let (_, status) = admin(&proxy, "GET", "/v1/nodes/n1/status", None);
    assert_eq!(status["online"], true, "{status}");
    assert_eq!(status["status"]["active_sessions"], 3);
    expect_error(
        admin(&proxy, "DELETE", "/v1/nodes/n1", None),
        409,
        "NODE_REPORTING",
    );
    assert_eq!(
        admin(&proxy, "POST", "/v1/nodes/n1/enable", reasons("in service")).0,
        200
    );
    let offline = wait_until(Duration::from_secs(5), || {
        admin(&proxy, "GET", "/v1/nodes/n1/status", None).1["online"] == false
    });
    let (_, status) = admin(&proxy, "GET", "/v1/nodes/n1/status", None);
    assert!(
        offline,
        "still online 5 s after its last heartbeat (TTL 1 s): {status}"
    );
    assert!(status["status"].is_null(), "offline yet a status: {status}");
    expect_error(
        admin(&proxy, "DELETE", "/v1/nodes/n1", None),
        409,
        "NODE_NOT_DISABLED",
    );
    admin(&proxy, "POST", "/v1/nodes/n1/disable", reasons("retired"));
    assert_eq!(admin(&proxy, "DELETE", "/v1/nodes/n1", None).0, 204);
    expect_error(
        admin(&proxy, "GET", "/v1/nodes/n1", None),
        404,
        "NODE_NOT_FOUND",
    );
}

#[test]
fn capacity_reports_this_node_and_the_advisor() {
    let proxy = start("admin-capacity");
    let ready = wait_until(Duration::from_secs(3), || {
        let (_, capacity) = admin(&proxy, "GET", "/v1/capacity", None);
        capacity["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["kind"] == "proxy" && n["online"] == 1)
    });
    assert!(ready, "this proxy never showed as online");
    let (status, capacity) = admin(&proxy, "GET", "/v1/capacity", None);
    assert_eq!(status, 200);
    assert_eq!(capacity["sessions"]["total"], 0, "{capacity}");
    let (status, region) = admin(&proxy, "GET", "/v1/regions/US-EAST/capacity", None);
    assert_eq!(status, 200, "{region}");
    let proxies = region["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "proxy")
        .unwrap_or_else(|| panic!("no proxy capacity: {region}"))
        .clone();
    assert_eq!(proxies["limit"], 150, "{proxies}");
    assert_eq!(proxies["nodes_online"], 1);
    // An idle region of one node: required = ceil(0 x 1.5 / 150) + 1 = 1.
    assert_eq!(proxies["advice"]["required_nodes"], 1, "{proxies}");
    assert!(
        proxies["advice"]["reason"]
            .as_str()
            .unwrap()
            .contains("required")
    );
    let labels = "{region=\"US-EAST\",kind=\"proxy\"}";
    assert_eq!(
        proxy.metric(&format!("voxgate_region_sessions_limit{labels}")),
        150.0
    );
    assert_eq!(
        proxy.metric(&format!("voxgate_region_nodes_online{labels}")),
        1.0
    );
    assert_eq!(
        proxy.metric(&format!("voxgate_region_desired_nodes{labels}")),
        1.0
    );
}

#[test]
fn maintenance_holds_this_node_out_and_drain_exits() {
    let mut proxy = start("admin-maint");
    let sent = std::sync::atomic::AtomicU32::new(0);
    let options = || {
        let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let call_id = format!("maint-options-{n}");
        let request = raw_request("OPTIONS", proxy.sip, "127.0.0.1:9", &call_id, "");
        sip_exchange(
            "127.0.0.1",
            proxy.sip,
            request.as_bytes(),
            Duration::from_secs(2),
        )
    };
    assert!(options().starts_with("SIP/2.0 200 "));
    let (status, _) = admin(
        &proxy,
        "POST",
        "/v1/nodes/proxy-1/maintenance/on",
        reasons("kernel upgrade"),
    );
    assert_eq!(status, 200);
    let (ready, body) = proxy.get("/readyz");
    assert_eq!(ready, 503);
    assert!(body.contains("kernel upgrade"), "{body}");
    let answer = options();
    assert!(
        answer.starts_with("SIP/2.0 503 "),
        "OPTIONS in maintenance: {answer}"
    );
    let mut uac = common::uac::Uac::new("127.0.0.1", proxy.sip);
    uac.send_invite();
    let (_, refused) = uac
        .final_response(rsip::Method::Invite, Duration::from_secs(3))
        .expect("no answer to an INVITE in maintenance");
    assert_eq!(refused.status_code.code(), 503, "{refused}");
    assert!(common::uac::header(&refused, "Retry-After").is_some());
    admin(
        &proxy,
        "POST",
        "/v1/nodes/proxy-1/maintenance/off",
        reasons("done"),
    );
    assert_eq!(proxy.get("/readyz").0, 200);

    expect_error(
        admin(&proxy, "POST", "/v1/nodes/b1/drain", None),
        409,
        "NOT_THIS_NODE",
    );
    let (status, drain) = admin(&proxy, "POST", "/v1/nodes/proxy-1/drain", None);
    assert_eq!(status, 202, "{drain}");
    assert_eq!(drain["remaining_sessions"], 0);
    assert!(
        proxy.process.wait_exit(Duration::from_secs(5)),
        "voxgate did not exit 0 after the drain:\n{}",
        proxy.process.log()
    );
}

#[test]
fn embedded_registry_survives_restart_and_refuses_a_corrupt_file() {
    let mut proxy = start("admin-restart");
    admin(
        &proxy,
        "POST",
        "/v1/regions",
        Some(json!({"id": "EU-WEST"})),
    );
    assert!(proxy.process.terminate(Duration::from_secs(10)));

    let proxy = start("admin-restart");
    let (status, region) = admin(&proxy, "GET", "/v1/regions/EU-WEST", None);
    assert_eq!(
        status, 200,
        "the region did not survive the restart: {region}"
    );
    drop(proxy);

    let state =
        common::scratch_dir().join(format!("admin-restart-{}-state.json", std::process::id()));
    std::fs::write(
        &state,
        "{\"format\": \"voxgate-state\", \"version\": 1, \"state\": {",
    )
    .unwrap();
    let output = std::process::Command::new(common::binary("voxgate"))
        .env("VOXGATE_CLUSTER__STATE_FILE", &state)
        .env(
            "VOXGATE_SIP__LISTEN_UDP",
            format!("127.0.0.1:{}", common::lease_port()),
        )
        .env("VOXGATE_SIP__LISTEN_TCP", "")
        .env(
            "VOXGATE_HTTP__LISTEN",
            format!("127.0.0.1:{}", common::lease_port()),
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&state.display().to_string()),
        "the error does not name the file: {stderr}"
    );
    // The file is left as it was for the operator to look at.
    assert!(std::fs::read_to_string(&state).unwrap().ends_with("{"));
}

#[test]
fn sessions_are_found_by_dialog_and_by_relay_port() {
    let (_backend, addr) = common::start_backend("sessions-b1", &[]);
    let config = format!(
        "[node]\nid = \"proxy-1\"\nregion = \"US-EAST\"\n{}",
        backend_toml("b1", addr, 10, None)
    );
    let proxy = Proxy::start_with_env(
        "admin-sessions",
        &config,
        &[("VOXGATE_CLUSTER__ADMIN_KEY", ADMIN_KEY.to_owned())],
    );
    let (mut uac, ok) = common::uac::Uac::answered("127.0.0.1", proxy.sip);

    let (status, list) = admin(&proxy, "GET", "/v1/sessions", None);
    assert_eq!(status, 200);
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{list}");
    let session = &sessions[0];
    assert_eq!(session["caller_call_id"], uac.dialog.call_id.as_str());
    assert_eq!(session["peer"], "b1");
    // The port the caller was told to send to is the session's caller-side relay port.
    let port = common::uac::media_addr(&common::uac::sdp_of(&ok.body)).port();
    assert_eq!(session["ports"]["caller"], port);
    let backend_call_id = session["backend_call_id"].as_str().unwrap().to_owned();
    for query in [
        format!("/v1/sessions?port={port}"),
        format!("/v1/sessions?port={}", session["ports"]["backend"]),
        format!("/v1/sessions?call_id={}", uac.dialog.call_id),
        format!("/v1/sessions?call_id={backend_call_id}"),
    ] {
        let (status, found) = admin(&proxy, "GET", &query, None);
        assert_eq!(status, 200, "{query}: {found}");
        assert_eq!(found["id"], session["id"], "{query}");
    }
    expect_error(
        admin(&proxy, "GET", "/v1/sessions?port=1", None),
        404,
        "SESSION_NOT_FOUND",
    );

    let bye = uac
        .in_dialog(rsip::Method::Bye, None, Duration::from_secs(3))
        .expect("no answer to BYE");
    assert_eq!(bye.status_code.code(), 200);
    proxy.assert_idle(Duration::from_secs(3));
    let (_, list) = admin(&proxy, "GET", "/v1/sessions", None);
    assert_eq!(list["sessions"], json!([]), "{list}");
    let (status, _) = admin(&proxy, "GET", &format!("/v1/sessions?port={port}"), None);
    assert_eq!(status, 404, "the port index forgets ended sessions");
}
