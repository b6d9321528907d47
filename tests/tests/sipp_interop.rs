//! Interop with SIPp (Debian `sip-tester`): loadgen calls a SIPp UAS, a SIPp UAC calls the loadgen
//! echo Backend. Skipped with a printed reason where sipp is not installed.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::sipp::{run_uac, sipp_or_skip, start_uas};
use common::{field, run_calls, start_backend};

#[test]
fn loadgen_calls_a_sipp_uas() {
    let Some(sipp) = sipp_or_skip("loadgen_calls_a_sipp_uas") else {
        return;
    };
    let (_uas, port) = start_uas("sipp-uas", &sipp);
    let target = format!("127.0.0.1:{port}");
    let (output, report) = run_calls(&[
        "--target",
        &target,
        "--rate",
        "10",
        "--concurrency",
        "5",
        "--total",
        "5",
        "--hold",
        "1s",
        "--user",
        "service",
        "--max-failure-rate",
        "0",
    ]);
    assert!(output.status.success(), "{report:#}");
    assert_eq!(field(&report, &["calls", "completed"]), 5, "{report:#}");
    // sipp -rtp_echo reflects our probe stream.
    assert!(
        field(&report, &["rtp", "received"]) > 0,
        "no echo from sipp: {report:#}"
    );
}

#[test]
fn sipp_uac_calls_the_loadgen_backend() {
    let Some(sipp) = sipp_or_skip("sipp_uac_calls_the_loadgen_backend") else {
        return;
    };
    let (_backend, backend) = start_backend("backend-for-sipp", &["--max-sessions", "20"]);
    let (status, stderr) = run_uac(&sipp, &backend.to_string(), Duration::from_secs(35));
    // sipp exits 0 only when every call succeeded.
    assert!(status.success(), "sipp uac failed ({status:?}): {stderr}");
}
