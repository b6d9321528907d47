//! SIPp (Debian `sip-tester`) as a peer: its built-in UAS with RTP echo, and its built-in UAC.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{Running, free_udp_port, scratch_dir, wait_for_udp_bound};

/// The sipp binary, or `None` after printing why `test` is skipped.
pub fn sipp_or_skip(test: &str) -> Option<PathBuf> {
    let found = super::sipp();
    if found.is_none() {
        eprintln!("SKIPPED {test}: sipp not installed (apt-get install sip-tester)");
    }
    found
}

/// Starts `sipp -sn uas -rtp_echo` on a free loopback port; returns it and that port.
pub fn start_uas(name: &str, sipp: &Path) -> (Running, u16) {
    let port = free_udp_port();
    let (port_s, media_s) = (port.to_string(), free_udp_port().to_string());
    let uas = Running::start(
        name,
        sipp,
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
    wait_for_udp_bound(port, Duration::from_secs(10));
    (uas, port)
}

/// Runs `sipp -sn uac` placing 10 calls (10/s, 500 ms each) to `target`, killed after `limit`;
/// returns its exit status (0 only when every call succeeded) and stderr.
pub fn run_uac(sipp: &Path, target: &str, limit: Duration) -> (ExitStatus, String) {
    let (port, media) = (free_udp_port().to_string(), free_udp_port().to_string());
    let timeout = limit.as_secs().saturating_sub(5).max(5).to_string();
    let mut uac = Command::new(sipp)
        .args([
            "-sn",
            "uac",
            target,
            "-i",
            "127.0.0.1",
            "-p",
            &port,
            "-mi",
            "127.0.0.1",
            "-mp",
            &media,
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
            &timeout,
            "-timeout_error",
            "-trace_err",
        ])
        .current_dir(scratch_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sipp");
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = uac.try_wait().expect("wait for sipp") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = uac.kill();
            panic!("sipp uac did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = uac.wait_with_output().map(|o| o.stderr).unwrap_or_default();
    (status, String::from_utf8_lossy(&stderr).into_owned())
}
