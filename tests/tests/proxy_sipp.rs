//! Interop through voxgate: a SIPp UAC places calls through the proxy to a SIPp UAS (its only
//! Backend). Skipped with a printed reason where sipp is not installed.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::sipp::{run_uac, sipp_or_skip, start_uas};
use common::{Proxy, backend_toml};

#[test]
fn sipp_uac_calls_a_sipp_uas_through_voxgate() {
    let Some(sipp) = sipp_or_skip("sipp_uac_calls_a_sipp_uas_through_voxgate") else {
        return;
    };
    let (_uas, uas_port) = start_uas("proxy-sipp-uas", &sipp);
    // SIPp's UAS scenario does not answer OPTIONS: probe rarely so it stays up for the test.
    let config = format!(
        "[health]\ninterval = \"60s\"\nfailures_to_down = 3\n{}",
        backend_toml(
            "sipp",
            format!("127.0.0.1:{uas_port}").parse().unwrap(),
            20,
            None
        )
    );
    let proxy = Proxy::start("proxy-sipp", &config);
    let (status, stderr) = run_uac(&sipp, &proxy.sip.to_string(), Duration::from_secs(25));
    // sipp exits 0 only when every call succeeded.
    assert!(
        status.success(),
        "sipp uac failed ({status:?}): {stderr}\n{}",
        proxy.metrics()
    );
    proxy.assert_idle(Duration::from_secs(5));
    assert_eq!(proxy.counter("voxgate_sessions_started_total"), 10.0);
    assert_eq!(
        proxy.counter("voxgate_sessions_ended_total{cause=\"caller_bye\"}"),
        10.0
    );
}
