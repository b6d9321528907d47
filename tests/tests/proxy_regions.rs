//! Regions: a trunk's source network places its calls in its region (the most specific prefix:
//! the `local` trunk, of the node's region, takes the rest of loopback); a full region spills over only where configured, else the caller gets 503.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use common::{Proxy, backend_toml, field, run_calls, start_backend, wait_until};

fn config(de: SocketAddr, us: SocketAddr, spillover: bool) -> String {
    let spill = if spillover {
        "\n[routing.spillover]\n\"DE-FRA\" = [\"US-EAST\"]\n"
    } else {
        ""
    };
    format!(
        "[node]\nregion = \"US-EAST\"\n[health]\ninterval = \"1s\"\n{spill}{}{}\n[[trunks]]\nname = \"frankfurt\"\nregion = \"DE-FRA\"\nsources = [\"127.0.0.2/32\"]\n\
         [[trunks]]\nname = \"local\"\nsources = [\"127.0.0.0/8\"]\n",
        backend_toml("de", de, 1, Some("DE-FRA")),
        backend_toml("us", us, 10, Some("US-EAST")),
    )
}

/// One held call from `source` in the background.
fn held_call(
    proxy: &Proxy,
    source: &str,
    hold: &str,
) -> JoinHandle<(std::process::Output, serde_json::Value)> {
    let (target, bind, hold) = (
        proxy.sip.to_string(),
        format!("{source}:0"),
        hold.to_owned(),
    );
    std::thread::spawn(move || {
        run_calls(&[
            "--target", &target, "--bind", &bind, "--total", "1", "--hold", &hold,
        ])
    })
}

fn on(proxy: &Proxy, backend: &str, region: &str) -> f64 {
    proxy.metric(&format!(
        "voxgate_backend_sessions_active{{backend=\"{backend}\",region=\"{region}\"}}"
    ))
}

fn wait_active(proxy: &Proxy, n: f64) {
    let reached = wait_until(Duration::from_secs(3), || {
        proxy.metric("voxgate_sessions_active") == n
    });
    assert!(reached, "not {n} active:\n{}", proxy.metrics());
}

#[test]
fn trunk_region_routes_and_spills_over_when_full() {
    let (_de, de_addr) = start_backend("region-de", &[]);
    let (_us, us_addr) = start_backend("region-us", &[]);
    let proxy = Proxy::start("region-proxy", &config(de_addr, us_addr, true));

    // From the `local` trunk: the node's region, although DE-FRA has room.
    let first = held_call(&proxy, "127.0.0.1", "3s");
    wait_active(&proxy, 1.0);
    assert_eq!(
        (on(&proxy, "de", "DE-FRA"), on(&proxy, "us", "US-EAST")),
        (0.0, 1.0)
    );
    // From the trunk's network: DE-FRA.
    let second = held_call(&proxy, "127.0.0.2", "3s");
    wait_active(&proxy, 2.0);
    assert_eq!(
        (on(&proxy, "de", "DE-FRA"), on(&proxy, "us", "US-EAST")),
        (1.0, 1.0)
    );
    // DE-FRA is full (its Backend's cap is 1): the next trunk call spills over to US-EAST.
    let third = held_call(&proxy, "127.0.0.2", "2s");
    wait_active(&proxy, 3.0);
    assert_eq!(
        (on(&proxy, "de", "DE-FRA"), on(&proxy, "us", "US-EAST")),
        (1.0, 2.0)
    );

    for call in [first, second, third] {
        let (output, report) = call.join().unwrap();
        assert!(output.status.success(), "{report:#}");
        assert_eq!(field(&report, &["calls", "completed"]), 1, "{report:#}");
    }
    proxy.assert_idle(Duration::from_secs(5));
}

#[test]
fn full_region_without_spillover_answers_503() {
    let (_de, de_addr) = start_backend("nospill-de", &[]);
    let (_us, us_addr) = start_backend("nospill-us", &[]);
    let proxy = Proxy::start("nospill-proxy", &config(de_addr, us_addr, false));
    let (output, report) = run_calls(&[
        "--target",
        &proxy.sip.to_string(),
        "--bind",
        "127.0.0.2:0",
        "--total",
        "2",
        "--concurrency",
        "2",
        "--rate",
        "20",
        "--hold",
        "1s",
    ]);
    assert!(output.status.success(), "{report:#}");
    assert_eq!(field(&report, &["calls", "completed"]), 1, "{report:#}");
    assert_eq!(
        field(&report, &["calls", "rejected", "503"]),
        1,
        "{report:#}"
    );
    assert_eq!(
        proxy.counter("voxgate_sessions_rejected_total{reason=\"no_backend\"}"),
        1.0
    );
    proxy.assert_idle(Duration::from_secs(5));
    assert_eq!(on(&proxy, "us", "US-EAST"), 0.0);
}
