//! Outbound calls: an INVITE from a configured Backend's address goes out through the trunk whose
//! hosts match the Request-URI, through the same B2BUA, media relay and node cap.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Proxy, field, lease_port, run_calls, start_backend};

#[test]
fn a_backend_calls_out_through_its_trunk() {
    // The "carrier" behind the trunk is an echo Backend; the Backend placing the outbound call
    // is a loadgen caller bound to the address voxgate knows as backend b1.
    let (mut carrier, carrier_addr) = start_backend("outbound-carrier", &[]);
    let backend_port = lease_port();
    let config = format!(
        "[[backends]]\nid = \"b1\"\naddress = \"127.0.0.1:{backend_port}\"\nmax_sessions = 10\n\n\
         [[trunks]]\nname = \"carrier\"\noutbound = \"{carrier_addr}\"\nhosts = [\"127.0.0.1\"]\n"
    );
    let proxy = Proxy::start("outbound-proxy", &config);
    let (output, report) = run_calls(&[
        "--target",
        &proxy.sip.to_string(),
        "--bind",
        &format!("127.0.0.1:{backend_port}"),
        "--user",
        "+15551230000",
        "--total",
        "3",
        "--rate",
        "10",
        "--hold",
        "1s",
    ]);
    assert!(output.status.success(), "{report:#}");
    assert_eq!(field(&report, &["calls", "completed"]), 3, "{report:#}");
    assert!(
        field(&report, &["rtp", "received"]) * 100 >= field(&report, &["rtp", "sent"]) * 99,
        "media not relayed through the trunk leg: {report:#}"
    );
    assert_eq!(proxy.counter("voxgate_sessions_started_total"), 3.0);
    proxy.assert_idle(Duration::from_secs(5));
    // The carrier saw the calls (its status line counts answered calls on exit).
    assert!(carrier.terminate(Duration::from_secs(10)));
    assert!(
        carrier.log().contains("answered=3"),
        "the carrier did not answer the outbound calls:\n{}",
        carrier.log()
    );
}

#[test]
fn an_outbound_call_with_no_trunk_gets_404() {
    let backend_port = lease_port();
    let config = format!(
        "[[backends]]\nid = \"b1\"\naddress = \"127.0.0.1:{backend_port}\"\nmax_sessions = 10\n"
    );
    let proxy = Proxy::start("outbound-no-trunk", &config);
    let (output, report) = run_calls(&[
        "--target",
        &proxy.sip.to_string(),
        "--bind",
        &format!("127.0.0.1:{backend_port}"),
        "--total",
        "1",
        "--hold",
        "1s",
    ]);
    assert!(output.status.success(), "{report:#}");
    assert_eq!(
        field(&report, &["calls", "rejected", "404"]),
        1,
        "{report:#}"
    );
    assert_eq!(
        proxy.counter("voxgate_sessions_rejected_total{reason=\"no_route\"}"),
        1.0
    );
    proxy.assert_idle(Duration::from_secs(5));
}
