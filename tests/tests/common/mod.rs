//! Shared helpers for the end-to-end tests: building and starting the binaries, leased ports, reports.

// Each test file uses a different subset of these blocking helpers, which run on a plain test
// thread (real clock and sleeps) and may panic on setup failures.
#![allow(dead_code, clippy::disallowed_methods, clippy::unwrap_used)]

pub mod ports;
pub mod sipp;
pub mod uac;

pub use ports::{lease_port, lease_port_range};

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// The workspace's target directory (CARGO_TARGET_DIR when set).
pub fn target_dir() -> PathBuf {
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

/// A child process killed when dropped.
pub struct Running {
    pub name: String,
    pub child: Child,
}

impl Running {
    /// Starts `program` with `args`, output to files under the test's temp dir.
    pub fn start(name: &str, program: &Path, args: &[&str]) -> Self {
        Self::start_with_env(name, program, args, &[])
    }

    /// [`Running::start`] with extra environment variables.
    pub fn start_with_env(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Self {
        let log = log_path(name);
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
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
        self.signal("TERM");
        self.wait_exit(timeout)
    }

    /// Sends signal `name` ("TERM", "KILL", ...) without waiting.
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status();
    }

    /// Waits up to `timeout` for the process to exit; returns whether it exited 0.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
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

/// `PID-N`, distinct for every call in this process, for file names in the scratch dir.
pub fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// A per-test scratch directory.
pub fn scratch_dir() -> PathBuf {
    let dir = target_dir().join("e2e-scratch");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The call-records file of the proxy `name` of this test process (in the scratch dir).
pub fn records_path(name: &str) -> PathBuf {
    scratch_dir().join(format!("{name}-{}-records.jsonl", std::process::id()))
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
    run_loadgen("call", args)
}

/// Runs `voxgate-loadgen SUBCOMMAND --quiet --report FILE args...` and returns its output and
/// the parsed JSON report (panics with the output when there is none).
pub fn run_loadgen(subcommand: &str, args: &[&str]) -> (Output, serde_json::Value) {
    let report = scratch_dir().join(format!("report-{}.json", unique_suffix()));
    let report_arg = report.to_string_lossy().into_owned();
    let mut all: Vec<&str> = vec![subcommand, "--quiet", "--report", &report_arg];
    all.extend_from_slice(args);
    let output = Command::new(binary("voxgate-loadgen"))
        .args(&all)
        .stdin(Stdio::null())
        .output()
        .expect("run voxgate-loadgen");
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

/// Polls `check` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a `voxgate-loadgen backend` on a leased loopback port with `extra` flags and waits until
/// it answers OPTIONS.
pub fn start_backend(name: &str, extra: &[&str]) -> (Running, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], lease_port()));
    let listen = addr.to_string();
    let mut args = vec!["backend", "--listen", &listen];
    if !extra.contains(&"--status-every") {
        args.extend_from_slice(&["--status-every", "0s"]);
    }
    args.extend_from_slice(extra);
    let backend = Running::start(name, &binary("voxgate-loadgen"), &args);
    wait_for_sip(addr, Duration::from_secs(10));
    (backend, addr)
}

/// A `[[backends]]` table for a voxgate config.
pub fn backend_toml(
    id: &str,
    address: SocketAddr,
    max_sessions: u32,
    region: Option<&str>,
) -> String {
    let region = region.map_or(String::new(), |r| format!("region = \"{r}\"\n"));
    format!(
        "\n[[backends]]\nid = \"{id}\"\naddress = \"{address}\"\nmax_sessions = {max_sessions}\n{region}"
    )
}

/// Size of each proxy's media port range (from this process's leased ports, see [`ports`]).
const MEDIA_RANGE: u16 = 200;

/// A running `voxgate` on loopback with its own SIP, HTTP and media ports.
pub struct Proxy {
    /// SIP over UDP.
    pub sip: SocketAddr,
    /// The private HTTP listener.
    pub http: SocketAddr,
    /// The public WHIP listener (`POST /whip`).
    pub whip: SocketAddr,
    /// The media port range, inclusive.
    pub media: (u16, u16),
    /// The process (killed on drop).
    pub process: Running,
}

impl Proxy {
    /// Writes `toml` (every section the test needs: limits, routing, health, backends, trunks)
    /// to the scratch dir and starts `voxgate --config FILE` with the listeners and the media range
    /// set by environment overrides (`VOXGATE_SECTION__KEY`); waits for `/livez`.
    pub fn start(name: &str, toml: &str) -> Self {
        Self::start_with_env(name, toml, &[])
    }

    /// [`Proxy::start`] with more environment overrides (applied after the harness's own).
    pub fn start_with_env(name: &str, toml: &str, extra_env: &[(&str, String)]) -> Self {
        Self::start_program(name, &binary("voxgate"), toml, extra_env)
    }

    /// [`Proxy::start_with_env`] of another build of voxgate (`program`).
    pub fn start_program(
        name: &str,
        program: &Path,
        toml: &str,
        extra_env: &[(&str, String)],
    ) -> Self {
        let config = scratch_dir().join(format!("{name}-{}.toml", std::process::id()));
        std::fs::write(&config, toml).expect("write config");
        let sip = SocketAddr::from(([127, 0, 0, 1], lease_port()));
        let http = SocketAddr::from(([127, 0, 0, 1], lease_port()));
        let whip = SocketAddr::from(([127, 0, 0, 1], lease_port()));
        let webrtc_media = lease_port();
        let media = lease_port_range(MEDIA_RANGE);
        let mut env = vec![
            ("VOXGATE_SIP__LISTEN_UDP", sip.to_string()),
            ("VOXGATE_SIP__LISTEN_TCP", String::new()),
            ("VOXGATE_HTTP__LISTEN", http.to_string()),
            ("VOXGATE_WEBRTC__LISTEN", whip.to_string()),
            (
                "VOXGATE_WEBRTC__MEDIA_LISTEN",
                format!("127.0.0.1:{webrtc_media}"),
            ),
            ("VOXGATE_MEDIA__BIND_IP", "127.0.0.1".to_owned()),
            ("VOXGATE_MEDIA__PUBLIC_IP", "127.0.0.1".to_owned()),
            ("VOXGATE_MEDIA__PORT_MIN", media.0.to_string()),
            ("VOXGATE_MEDIA__PORT_MAX", media.1.to_string()),
            (
                "VOXGATE_RECORDS__PATH",
                records_path(name).to_string_lossy().into_owned(),
            ),
            (
                "VOXGATE_CLUSTER__STATE_FILE",
                scratch_dir()
                    .join(format!("{name}-{}-state.json", std::process::id()))
                    .to_string_lossy()
                    .into_owned(),
            ),
        ];
        env.extend(extra_env.iter().cloned());
        let config_arg = config.to_string_lossy().into_owned();
        let process = Running::start_with_env(name, program, &["--config", &config_arg], &env);
        let mut proxy = Self {
            sip,
            http,
            whip,
            media,
            process,
        };
        let up = wait_until(Duration::from_secs(10), || {
            matches!(proxy.try_get("/livez"), Some((200, _)))
        });
        if !up {
            let exited = proxy.process.child.try_wait();
            panic!(
                "voxgate did not come up ({exited:?}):\n{}",
                proxy.process.log()
            );
        }
        proxy
    }

    /// `GET path` on the private listener: status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path)
            .unwrap_or_else(|| panic!("GET {path} failed:\n{}", self.process.log()))
    }

    fn try_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http, path)
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The value of the sample `name_with_labels` (exactly as rendered, e.g.
    /// `voxgate_rtp_packets_total{direction="caller_to_backend"}`); `None` when absent.
    pub fn metric_opt(&self, name_with_labels: &str) -> Option<f64> {
        sample(&self.metrics(), name_with_labels)
    }

    /// The value of a sample that must be present (gauges).
    pub fn metric(&self, name_with_labels: &str) -> f64 {
        let text = self.metrics();
        sample(&text, name_with_labels)
            .unwrap_or_else(|| panic!("no sample {name_with_labels} in\n{text}"))
    }

    /// A counter's value; 0 when it was never incremented (not rendered yet).
    pub fn counter(&self, name_with_labels: &str) -> f64 {
        self.metric_opt(name_with_labels).unwrap_or(0.0)
    }

    /// Waits until sessions and media ports in use are both back to 0; panics with the metrics
    /// otherwise.
    pub fn assert_idle(&self, timeout: Duration) {
        let idle = wait_until(timeout, || {
            let text = self.metrics();
            sample(&text, "voxgate_sessions_active") == Some(0.0)
                && sample(&text, "voxgate_media_ports_in_use") == Some(0.0)
        });
        assert!(
            idle,
            "proxy not idle after {timeout:?}:\n{}",
            self.metrics()
        );
    }

    /// Panics if the proxy process exited or logged a panic.
    pub fn assert_alive(&mut self) {
        let status = self.process.child.try_wait().expect("try_wait");
        assert!(
            status.is_none(),
            "voxgate exited {status:?}:\n{}",
            self.process.log()
        );
        assert!(
            !self.process.log().contains("panicked"),
            "{}",
            self.process.log()
        );
    }
}

/// The value of `name_with_labels` in Prometheus text.
pub fn sample(text: &str, name_with_labels: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == name_with_labels).then(|| value.parse().ok())?
        })
}

/// A minimal blocking HTTP/1.1 GET (Connection: close); `None` when the connection fails.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, None, None)
}

/// One HTTP/1.1 request with an optional Bearer token and JSON body: status and body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    json: Option<&str>,
) -> Option<(u16, String)> {
    http_exchange(addr, method, path, bearer, json).map(|(status, _, body)| (status, body))
}

/// A JSON API request: status, the JSON body (Null when empty) and the response head (status
/// line and headers); panics when there is no answer or the body is not JSON.
pub fn json_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value, String) {
    let body = body.map(serde_json::Value::to_string);
    let (status, head, text) = http_exchange(addr, method, path, bearer, body.as_deref())
        .unwrap_or_else(|| panic!("{method} {path}: no answer"));
    let json = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    };
    (status, json, head)
}

/// One HTTP/1.1 exchange: status, head (status line and headers) and body.
pub fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    json: Option<&str>,
) -> Option<(u16, String, String)> {
    let auth = bearer.map(|key| format!("Bearer {key}"));
    let mut headers = Vec::new();
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    if json.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    http_raw(addr, method, path, &headers, json.unwrap_or("").as_bytes())
}

/// One HTTP/1.1 exchange with any headers and body: status, head and body.
pub fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((status, head.to_owned(), body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Every UDP port process `pid` has a socket bound on (from /proc; Linux only).
pub fn udp_ports_of(pid: u32) -> Vec<u16> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in entries.flatten() {
            if let Ok(link) = std::fs::read_link(entry.path()) {
                let link = link.to_string_lossy().into_owned();
                if let Some(inode) = link
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                {
                    inodes.insert(inode.to_owned());
                }
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9
                && inodes.contains(fields[9])
                && let Some((_, port)) = fields[1].rsplit_once(':')
                && let Ok(port) = u16::from_str_radix(port, 16)
            {
                ports.push(port);
            }
        }
    }
    ports
}

/// The runs of ASCII digits in `text`, as numbers (for "does this port appear anywhere").
pub fn numbers_in(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty() && s.len() <= 6)
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The sipp binary (Debian `sip-tester`), if installed.
pub fn sipp() -> Option<PathBuf> {
    let output = Command::new("sh")
        .args(["-c", "command -v sipp"])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (!path.is_empty()).then(|| path.into())
}

/// An interop peer `what` is missing for `test`: under CI (the variable `CI` set, to any value)
/// the test fails with the reason, since CI must run every interop test; elsewhere it prints a
/// SKIPPED line (with the install command) and the test returns.
pub fn peer_missing(test: &str, what: &str, install: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {what} is missing and CI is set ({install}; scripts/test.sh installs it)"
    );
    eprintln!("SKIPPED {test}: {what} is missing ({install})");
}

/// Sends `message` from a fresh socket on `from_ip` and returns the first final response as text
/// ("" after `wait` of silence).
pub fn sip_exchange(from_ip: &str, addr: SocketAddr, message: &[u8], wait: Duration) -> String {
    let socket = UdpSocket::bind((from_ip, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    socket.send_to(message, addr).unwrap();
    let deadline = std::time::Instant::now() + wait;
    let mut buf = vec![0u8; 65_536];
    while std::time::Instant::now() < deadline {
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            if !text.starts_with("SIP/2.0 1") {
                return text;
            }
        }
    }
    String::new()
}

/// A request `method` to `addr` from `local`, every mandatory header present, `extra` headers
/// added before Content-Length.
pub fn raw_request(
    method: &str,
    addr: SocketAddr,
    local: &str,
    call_id: &str,
    extra: &str,
) -> String {
    format!(
        "{method} sip:echo@{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:t@{local}>;tag=t1\r\nTo: <sip:echo@{addr}>\r\n\
         Call-ID: {call_id}@test\r\nCSeq: 1 {method}\r\nContact: <sip:t@{local}>\r\n{extra}\
         Content-Length: 0\r\n\r\n"
    )
}

/// A UDP socket that receives SIP and never answers: a Backend that is there but silent. Records
/// the Call-ID of every request per method.
pub struct SilentPeer {
    /// Its address.
    pub addr: SocketAddr,
    seen: std::sync::Arc<Mutex<Vec<(String, String)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SilentPeer {
    /// Binds `addr` (port 0: any free port on that address).
    pub fn bind(addr: &str) -> Self {
        let socket = UdpSocket::bind(addr).expect("bind silent peer");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((len, _)) = socket.recv_from(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                    let method = text.split(' ').next().unwrap_or("").to_owned();
                    let call_id = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Call-ID:"))
                        .unwrap_or("")
                        .trim()
                        .to_owned();
                    seen2.lock().unwrap().push((method, call_id));
                }
            }
        });
        Self { addr, seen, stop }
    }

    /// Distinct Call-IDs of the `method` requests received so far (retransmissions count once).
    pub fn calls(&self, method: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        let ids: std::collections::HashSet<&String> = seen
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, id)| id)
            .collect();
        ids.len()
    }
}

impl Drop for SilentPeer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A field of the echo Backend's last `backend status` log line (`active`, `answered`, `ended`, ...).
pub fn backend_status(log: &str, name: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains("backend status"))?;
    let needle = format!("{name}=");
    let value = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(needle.as_str()))?;
    value.parse().ok()
}

/// A `redis-server` child process on a leased loopback port (no persistence), killed on drop.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    process: Running,
}

impl RedisServer {
    /// Starts one and waits until it accepts connections. Fails (does not skip) without
    /// `redis-server`: `scripts/test.sh` installs it.
    pub fn start(name: &str) -> Self {
        let port = lease_port();
        let program = PathBuf::from("redis-server");
        let found = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok();
        assert!(
            found,
            "redis-server is missing; these tests need a real Redis: apt-get install redis-server"
        );
        let process = Running::start(
            name,
            &program,
            &[
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        assert!(up, "redis-server did not start:\n{}", process.log());
        Self { port, process }
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}
