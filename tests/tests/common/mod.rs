//! Shared helpers for the end-to-end tests: building and starting the binaries, free ports, reports.

// Each test file uses a different subset of these blocking helpers, which run on a plain test
// thread (real clock and sleeps) and may panic on setup failures.
#![allow(dead_code, clippy::disallowed_methods, clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// The workspace's target directory (CARGO_TARGET_DIR when set).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Path of a workspace binary (`voxgate` or `voxgate-loadgen`), built (debug profile) on first
/// use in this test process.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let package = match name {
        "voxgate" => "voxgate-proxy",
        other => other,
    };
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", package, "--bin", name])
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of {name} failed");
        built.push(name.to_owned());
    }
    let path = target_dir().join("debug").join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A loopback UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr").port()
}

/// A child process killed when dropped.
pub struct Running {
    pub name: String,
    pub child: Child,
}

impl Running {
    /// Starts `program` with `args`, output to files under the test's temp dir.
    pub fn start(name: &str, program: &Path, args: &[&str]) -> Self {
        let log = log_path(name);
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        Self {
            name: name.to_owned(),
            child,
        }
    }

    /// The process's combined output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(log_path(&self.name)).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; returns whether it exited 0.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A per-test scratch directory.
pub fn scratch_dir() -> PathBuf {
    let dir = target_dir().join("e2e-scratch");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn log_path(name: &str) -> PathBuf {
    scratch_dir().join(format!("{name}-{}.log", std::process::id()))
}

/// Waits until something answers SIP OPTIONS on `addr` (UDP), or panics after `timeout`.
pub fn wait_for_sip(addr: SocketAddr, timeout: Duration) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let local = socket.local_addr().expect("addr");
    let deadline = std::time::Instant::now() + timeout;
    let mut n = 0;
    while std::time::Instant::now() < deadline {
        n += 1;
        let options = format!(
            "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKwait{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag=w{n}\r\nTo: <sip:{addr}>\r\n\
             Call-ID: wait{n}@test\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        let _ = socket.send_to(options.as_bytes(), addr);
        let mut buf = [0u8; 4096];
        if let Ok((len, _)) = socket.recv_from(&mut buf)
            && buf[..len].starts_with(b"SIP/2.0 ")
        {
            return;
        }
    }
    panic!("nothing answered SIP on {addr} within {timeout:?}");
}

/// Runs `voxgate-loadgen call` with `args` plus a JSON report; returns the process output and
/// the parsed report.
pub fn run_calls(args: &[&str]) -> (Output, serde_json::Value) {
    let report = scratch_dir().join(format!(
        "report-{}-{}.json",
        std::process::id(),
        free_udp_port()
    ));
    let report_arg = report.to_string_lossy().into_owned();
    let mut all: Vec<&str> = vec!["call", "--quiet", "--report", &report_arg];
    all.extend_from_slice(args);
    let output = Command::new(binary("voxgate-loadgen"))
        .args(&all)
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen call");
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let json = serde_json::from_str(&text).expect("report is JSON");
    (output, json)
}

/// `report[path...]` as u64 (panics with the report when absent).
pub fn field(report: &serde_json::Value, path: &[&str]) -> u64 {
    let mut value = report;
    for key in path {
        value = &value[*key];
    }
    value
        .as_u64()
        .unwrap_or_else(|| panic!("report has no {path:?}: {report:#}"))
}

/// `report[path...]` as f64.
pub fn field_f64(report: &serde_json::Value, path: &[&str]) -> f64 {
    let mut value = report;
    for key in path {
        value = &value[*key];
    }
    value
        .as_f64()
        .unwrap_or_else(|| panic!("report has no {path:?}: {report:#}"))
}

/// Waits until some process has bound UDP `port` on loopback (for peers that do not answer
/// OPTIONS, like a SIPp UAS scenario).
pub fn wait_for_udp_bound(port: u16, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing bound UDP port {port} within {timeout:?}");
}
