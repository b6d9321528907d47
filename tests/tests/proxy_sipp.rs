//! Interop through voxgate: a SIPp UAC places calls through the proxy to a SIPp UAS (its only
//! Backend). Skipped with a printed reason where sipp is not installed.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Proxy, Running, backend_toml, free_udp_port, scratch_dir, sipp, wait_for_udp_bound};

#[test]
fn sipp_uac_calls_a_sipp_uas_through_voxgate() {
    let Some(sipp) = sipp() else {
        eprintln!(
            "SKIPPED sipp_uac_calls_a_sipp_uas_through_voxgate: sipp not installed (apt-get install sip-tester)"
        );
        return;
    };
    let uas_port = free_udp_port();
    let (uas_port_s, uas_media_s) = (uas_port.to_string(), free_udp_port().to_string());
    let _uas = Running::start(
        "proxy-sipp-uas",
        &sipp,
        &[
            "-sn",
            "uas",
            "-i",
            "127.0.0.1",
            "-p",
            &uas_port_s,
            "-mi",
            "127.0.0.1",
            "-mp",
            &uas_media_s,
            "-rtp_echo",
            "-nostdin",
            "-timeout",
            "60",
        ],
    );
    wait_for_udp_bound(uas_port, Duration::from_secs(10));
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

    let (uac_port, uac_media) = (free_udp_port().to_string(), free_udp_port().to_string());
    let mut uac = Command::new(&sipp)
        .args([
            "-sn",
            "uac",
            &proxy.sip.to_string(),
            "-i",
            "127.0.0.1",
            "-p",
            &uac_port,
            "-mi",
            "127.0.0.1",
            "-mp",
            &uac_media,
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
            "20",
            "-timeout_error",
            "-trace_err",
        ])
        .current_dir(scratch_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sipp");
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    let status = loop {
        if let Some(status) = uac.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = uac.kill();
            panic!("sipp uac did not finish:\n{}", proxy.process.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = uac.wait_with_output().map(|o| o.stderr).unwrap_or_default();
    // sipp exits 0 only when every call succeeded.
    assert!(
        status.success(),
        "sipp uac failed ({status:?}): {}\n{}",
        String::from_utf8_lossy(&stderr),
        proxy.metrics()
    );
    proxy.assert_idle(Duration::from_secs(5));
    assert_eq!(proxy.counter("voxgate_sessions_started_total"), 10.0);
    assert_eq!(
        proxy.counter("voxgate_sessions_ended_total{cause=\"caller_bye\"}"),
        10.0
    );
}
