//! Interop with SIPp (Debian `sip-tester`): loadgen calls a SIPp UAS, a SIPp UAC calls the loadgen
//! echo Backend. Skipped with a printed reason where sipp is not installed.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    Running, binary, field, free_udp_port, run_calls, scratch_dir, sipp, wait_for_sip,
    wait_for_udp_bound,
};

#[test]
fn loadgen_calls_a_sipp_uas() {
    let Some(sipp) = sipp() else {
        eprintln!(
            "SKIPPED loadgen_calls_a_sipp_uas: sipp not installed (apt-get install sip-tester)"
        );
        return;
    };
    let port = free_udp_port();
    let media_port = free_udp_port();
    let (port_s, media_s) = (port.to_string(), media_port.to_string());
    let _uas = Running::start(
        "sipp-uas",
        &sipp,
        &[
            "-sn",
            "uas",
            "-i",
            "127.0.0.1",
            "-p",
            &port_s,
            "-mi",
            "127.0.0.1",
            "-mp",
            &media_s,
            "-rtp_echo",
            "-nostdin",
            "-timeout",
            "60",
        ],
    );
    let target = format!("127.0.0.1:{port}");
    wait_for_udp_bound(port, Duration::from_secs(10));
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
    let Some(sipp) = sipp() else {
        eprintln!(
            "SKIPPED sipp_uac_calls_the_loadgen_backend: sipp not installed (apt-get install sip-tester)"
        );
        return;
    };
    let port = free_udp_port();
    let backend_addr = format!("127.0.0.1:{port}");
    let _backend = Running::start(
        "backend-for-sipp",
        &binary("voxgate-loadgen"),
        &["backend", "--listen", &backend_addr, "--max-sessions", "20"],
    );
    wait_for_sip(backend_addr.parse().unwrap(), Duration::from_secs(10));
    let uac_port = free_udp_port().to_string();
    let media_port = free_udp_port().to_string();
    let output = Command::new(&sipp)
        .args([
            "-sn",
            "uac",
            &backend_addr,
            "-i",
            "127.0.0.1",
            "-p",
            &uac_port,
            "-mi",
            "127.0.0.1",
            "-mp",
            &media_port,
            "-m",
            "10",
            "-r",
            "10",
            "-l",
            "10",
            "-d",
            "500",
            "-nostdin",
            "-timeout",
            "30",
            "-timeout_error",
            "-trace_err",
        ])
        .current_dir(scratch_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .expect("run sipp");
    // sipp exits 0 only when every call succeeded.
    assert!(
        output.status.success(),
        "sipp uac failed ({:?}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
