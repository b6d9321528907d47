//! Two voxgate Proxies and loadgen Backends sharing one real Redis: a change made through one
//! Proxy's admin API takes effect on the other within 2 s; a Backend's sessions placed by one
//! Proxy steer the other's choices; a Backend that stops heartbeating is offline within its TTL
//! and gets no calls; a Proxy killed with SIGKILL leaves no stale session counted after the TTL.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{
    Proxy, RedisServer, backend_toml, field, http_request, run_calls, start_backend, wait_until,
};
use serde_json::{Value, json};

const ADMIN_KEY: &str = "fleet-admin-key-0123456789-abcdefghij";
const B1_KEY: &str = "backend-one-key-0123456789-abcdefghij";

/// A Proxy `id` of the shared registry with Backends b1 and b2 (cap 10 each).
fn proxy(id: &str, redis: &RedisServer, b1: SocketAddr, b2: SocketAddr) -> Proxy {
    let config = format!(
        "[node]\nid = \"{id}\"\nregion = \"US-EAST\"\n[limits]\nmax_sessions = 50\n\
         [health]\ninterval = \"1s\"\n{}{}",
        backend_toml("b1", b1, 10, None),
        backend_toml("b2", b2, 10, None),
    );
    Proxy::start_with_env(
        id,
        &config,
        &[
            ("VOXGATE_CLUSTER__REGISTRY", redis.url()),
            ("VOXGATE_CLUSTER__ADMIN_KEY", ADMIN_KEY.to_owned()),
            ("VOXGATE_CLUSTER__STATUS_INTERVAL", "250ms".to_owned()),
            ("VOXGATE_CLUSTER__HEARTBEAT_TTL", "1s".to_owned()),
        ],
    )
}

fn admin(proxy: &Proxy, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let (status, text) =
        http_request(proxy.http, method, path, Some(ADMIN_KEY), body.as_deref()).unwrap();
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, json)
}

fn maintenance(proxy: &Proxy, node: &str, on: bool) {
    let switch = if on { "on" } else { "off" };
    let (status, body) = admin(
        proxy,
        "POST",
        &format!("/v1/nodes/{node}/maintenance/{switch}"),
        Some(json!({"public_reason": "test", "private_reason": "cluster_redis"})),
    );
    assert_eq!(status, 200, "{body}");
}

/// This proxy's own sessions on `backend`.
fn placed(proxy: &Proxy, backend: &str) -> f64 {
    proxy.metric(&format!(
        "voxgate_backend_sessions_active{{backend=\"{backend}\",region=\"US-EAST\"}}"
    ))
}

/// The Backends of US-EAST as `proxy`'s last registry sync applied them: (online, sessions,
/// session limit). The sync computes these after applying the registry to routing, so a value
/// here is one routing already has.
fn backends_seen(proxy: &Proxy) -> (f64, f64, f64) {
    let text = proxy.metrics();
    let gauge = |name: &str| {
        common::sample(
            &text,
            &format!("{name}{{region=\"US-EAST\",kind=\"backend\"}}"),
        )
        .unwrap_or(-1.0)
    };
    (
        gauge("voxgate_region_nodes_online"),
        gauge("voxgate_region_sessions_active"),
        gauge("voxgate_region_sessions_limit"),
    )
}

/// Calls through `proxy` held for `hold`, in a thread; joined by the caller.
fn calls(
    proxy: &Proxy,
    count: u32,
    hold: &str,
) -> std::thread::JoinHandle<(std::process::Output, Value)> {
    let target = proxy.sip.to_string();
    let count = count.to_string();
    let hold = hold.to_owned();
    std::thread::spawn(move || {
        run_calls(&[
            "--target",
            &target,
            "--concurrency",
            &count,
            "--rate",
            "100",
            "--total",
            &count,
            "--hold",
            &hold,
        ])
    })
}

#[test]
fn a_change_through_one_proxy_applies_on_the_other_within_two_seconds() {
    let redis = RedisServer::start("fleet1-redis");
    let (_b1, b1) = start_backend("fleet1-b1", &[]);
    let (_b2, b2) = start_backend("fleet1-b2", &[]);
    let a = proxy("proxy-a", &redis, b1, b2);
    let b = proxy("proxy-b", &redis, b1, b2);
    assert_eq!(b.get("/readyz").0, 200);

    maintenance(&a, "proxy-b", true);
    assert!(
        wait_until(Duration::from_secs(2), || b.get("/readyz").0 == 503),
        "proxy-b not held out 2 s after the change on proxy-a"
    );
    maintenance(&a, "proxy-b", false);
    assert!(
        wait_until(Duration::from_secs(2), || b.get("/readyz").0 == 200),
        "proxy-b not back 2 s after the change on proxy-a"
    );
    // Both see both Proxies online.
    let (_, capacity) = admin(&b, "GET", "/v1/capacity", None);
    let proxies = capacity["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["kind"] == "proxy" && n["region"] == "US-EAST")
        .unwrap()
        .clone();
    assert_eq!(proxies["online"], 2, "{capacity}");
}

#[test]
fn sessions_placed_by_one_proxy_steer_the_other() {
    let redis = RedisServer::start("fleet2-redis");
    let (_b1, b1) = start_backend("fleet2-b1", &[]);
    let (_b2, b2) = start_backend("fleet2-b2", &[]);
    let a = proxy("proxy-a", &redis, b1, b2);
    let b = proxy("proxy-b", &redis, b1, b2);

    // Six calls through proxy-a, all on b1 (b2 held out meanwhile).
    maintenance(&a, "b2", true);
    assert!(wait_until(Duration::from_secs(2), || {
        admin(&a, "GET", "/v1/nodes/b2", None).1["maintenance"] == true
    }));
    // proxy-a's routing has it once a sync applied it: both Backends up, only b1's 10 offered.
    assert!(
        wait_until(Duration::from_secs(5), || backends_seen(&a)
            == (2.0, 0.0, 10.0)),
        "proxy-a never applied b2's maintenance:\n{}",
        a.metrics()
    );
    let first = calls(&a, 6, "6s");
    assert!(
        wait_until(Duration::from_secs(4), || placed(&a, "b1") == 6.0),
        "{}",
        a.metrics()
    );
    maintenance(&a, "b2", false);
    // proxy-b learns about proxy-a's six within a sync or two.
    assert!(
        wait_until(Duration::from_secs(2), || {
            admin(&b, "GET", "/v1/nodes/b1", None).1["sessions_placed_by_proxies"] == 6
        }),
        "proxy-b never saw proxy-a's sessions on b1"
    );
    // ... and its routing has them, with b2 back: a sync applied both.
    assert!(
        wait_until(Duration::from_secs(5), || backends_seen(&b)
            == (2.0, 6.0, 20.0)),
        "proxy-b's routing never had proxy-a's sessions and b2 back:\n{}",
        b.metrics()
    );

    // b1 is at 6/10 for the fleet, b2 at 0/10: proxy-b's four calls all go to b2.
    let second = calls(&b, 4, "2s");
    assert!(
        wait_until(Duration::from_secs(4), || placed(&b, "b2") == 4.0),
        "{}",
        b.metrics()
    );
    assert_eq!(placed(&b, "b1"), 0.0, "proxy-b ignored proxy-a's load");
    for handle in [second, first] {
        let (output, report) = handle.join().unwrap();
        assert!(output.status.success(), "{report:#}");
        assert_eq!(field(&report, &["calls", "failed"]), 0, "{report:#}");
    }
}

#[test]
fn a_backend_that_stops_heartbeating_is_offline_and_gets_no_calls() {
    let redis = RedisServer::start("fleet3-redis");
    let (_b1, b1) = start_backend("fleet3-b1", &[]);
    let (_b2, b2) = start_backend("fleet3-b2", &[]);
    let a = proxy("proxy-a", &redis, b1, b2);
    let b = proxy("proxy-b", &redis, b1, b2);

    // b1 gets a known key (through proxy-a) and heartbeats (through proxy-b: same registry).
    let (status, body) = admin(
        &a,
        "PATCH",
        "/v1/nodes/b1",
        Some(json!({ "api_key": B1_KEY })),
    );
    assert_eq!(status, 200, "{body}");
    // It reports 2 sessions: proxy-a counts them only once a sync took b1 as heartbeating (a
    // probed Backend counts what the proxies placed on it: none).
    let beat = || {
        let body = json!({"active_sessions": 2, "limit": 10}).to_string();
        let (status, text) = http_request(
            b.http,
            "PUT",
            "/v1/nodes/b1/status",
            Some(B1_KEY),
            Some(&body),
        )
        .unwrap();
        assert_eq!(status, 200, "{text}");
    };
    beat();
    assert!(wait_until(Duration::from_secs(2), || {
        admin(&a, "GET", "/v1/nodes/b1/status", None).1["online"] == true
    }));
    // Beating on until proxy-a's routing follows the heartbeat rather than its probes.
    assert!(
        wait_until(Duration::from_secs(5), || {
            beat();
            backends_seen(&a).1 == 2.0
        }),
        "proxy-a never took b1's heartbeat:\n{}",
        a.metrics()
    );
    // It stops: offline within its 1 s TTL (plus a sync), and proxy-a sends it nothing.
    assert!(
        wait_until(Duration::from_secs(2), || {
            admin(&a, "GET", "/v1/nodes/b1/status", None).1["online"] == false
        }),
        "b1 still online after its TTL"
    );
    // proxy-a's next sync marks it down.
    assert!(
        wait_until(Duration::from_secs(3), || {
            a.metric("voxgate_backend_up{backend=\"b1\",region=\"US-EAST\"}") == 0.0
        }),
        "proxy-a still routes to b1:\n{}",
        a.metrics()
    );
    let load = calls(&a, 4, "1s");
    assert!(wait_until(Duration::from_secs(4), || placed(&a, "b2") == 4.0));
    assert_eq!(placed(&a, "b1"), 0.0, "a call went to the offline Backend");
    let (output, report) = load.join().unwrap();
    assert!(output.status.success(), "{report:#}");
}

#[test]
fn a_killed_proxy_leaves_no_stale_sessions_after_its_ttl() {
    let redis = RedisServer::start("fleet4-redis");
    let (_b1, b1) = start_backend("fleet4-b1", &[]);
    let (_b2, b2) = start_backend("fleet4-b2", &[]);
    let a = proxy("proxy-a", &redis, b1, b2);
    let b = proxy("proxy-b", &redis, b1, b2);

    let load = calls(&a, 4, "20s");
    let seen = wait_until(Duration::from_secs(4), || {
        let (_, capacity) = admin(&b, "GET", "/v1/capacity", None);
        capacity["sessions"]["total"] == 4
    });
    assert!(seen, "proxy-b never saw proxy-a's four sessions");

    a.process.signal("KILL");
    let cleared = wait_until(Duration::from_secs(3), || {
        let (_, capacity) = admin(&b, "GET", "/v1/capacity", None);
        let b1 = admin(&b, "GET", "/v1/nodes/b1", None).1;
        let b2 = admin(&b, "GET", "/v1/nodes/b2", None).1;
        capacity["sessions"]["total"] == 0
            && b1["sessions_placed_by_proxies"] == 0
            && b2["sessions_placed_by_proxies"] == 0
    });
    assert!(cleared, "stale sessions of the killed proxy still counted");
    let (_, capacity) = admin(&b, "GET", "/v1/capacity", None);
    let proxies = capacity["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["kind"] == "proxy")
        .unwrap()
        .clone();
    assert_eq!(proxies["online"], 1, "{capacity}");
    assert_eq!(proxies["offline"], json!(["proxy-a"]), "{capacity}");
    // The loadgen's calls died with proxy-a; only its exit matters no more.
    drop(load);
}
