//! SIPp (Debian `sip-tester`) as a peer: its built-in UAS with RTP echo, its built-in UAC, the
//! XML scenarios of `tests/sipp/`, and a voxgate whose Backends are such scenarios.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{
    Proxy, Running, backend_toml, lease_port, lease_port_range, scratch_dir, wait_for_udp_bound,
};

/// The sipp binary, or `None` after printing why `test` is skipped. Under CI (the variable `CI`
/// set, to any value) a missing sipp fails the test instead: CI must run the SIPp tests.
pub fn sipp_or_skip(test: &str) -> Option<PathBuf> {
    let found = super::sipp();
    if found.is_none() {
        super::peer_missing(test, "sipp", "apt-get install sip-tester");
    }
    found
}

/// Starts `sipp -sn uas -rtp_echo` on a leased loopback port; returns it and that port.
pub fn start_uas(name: &str, sipp: &Path) -> (Running, u16) {
    let port = lease_port();
    let (port_s, media_s) = (port.to_string(), media_port().to_string());
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
    let (port, media) = (lease_port().to_string(), media_port().to_string());
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
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = uac.wait_with_output().map(|o| o.stderr).unwrap_or_default();
    (status, String::from_utf8_lossy(&stderr).into_owned())
}

/// A base port for sipp's `-mp`: sipp takes it for audio RTP, the next for RTCP and the two above
/// for video, so all four are leased.
fn media_port() -> u16 {
    lease_port_range(4).0
}

/// A scenario file of `tests/sipp/`.
pub fn scenario(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sipp")
        .join(file)
}

/// One sipp process running an XML scenario on loopback, killed when dropped. Its SIP messages
/// (`-trace_msg`) and errors (`-trace_err`) go to files in the scratch dir, for failure reports.
pub struct ScenarioPeer {
    /// The SIP port it listens on.
    pub port: u16,
    name: String,
    child: Child,
    started: Instant,
}

impl ScenarioPeer {
    /// Starts `file` as a UAS on loopback `port` for `calls` calls and waits until it listens;
    /// `relay` is voxgate's media port range (see [`ScenarioPeer::uac`]).
    pub fn uas(
        name: &str,
        sipp: &Path,
        file: &str,
        port: u16,
        calls: u32,
        relay: (u16, u16),
    ) -> Self {
        Self::uas_with(name, sipp, file, port, calls, relay, &[])
    }

    /// [`ScenarioPeer::uas`] with more sipp flags (e.g. `-rtp_echo`).
    pub fn uas_with(
        name: &str,
        sipp: &Path,
        file: &str,
        port: u16,
        calls: u32,
        relay: (u16, u16),
        flags: &[&str],
    ) -> Self {
        let mut peer = Self::spawn(name, sipp, file, None, port, calls, relay, flags);
        // sipp refuses a scenario it cannot load by exiting at once: say why.
        let listening = super::wait_until(Duration::from_secs(10), || {
            UdpSocket::bind(("127.0.0.1", port)).is_err() || peer.status().is_some()
        });
        assert!(
            listening && peer.status().is_none(),
            "sipp {file} did not start listening on {port}:\n{}",
            peer.report()
        );
        peer
    }

    /// Starts `file` as a UAC placing one call to `target`. `relay` is voxgate's media port
    /// range: scenarios that check SDP rewriting get it as the globals `relay_min`, `relay_max`.
    pub fn uac(name: &str, sipp: &Path, file: &str, target: SocketAddr, relay: (u16, u16)) -> Self {
        Self::uac_with(name, sipp, file, target, relay, &[])
    }

    /// [`ScenarioPeer::uac`] with more sipp flags (e.g. `-au user -ap password`).
    pub fn uac_with(
        name: &str,
        sipp: &Path,
        file: &str,
        target: SocketAddr,
        relay: (u16, u16),
        flags: &[&str],
    ) -> Self {
        Self::spawn(
            name,
            sipp,
            file,
            Some(target),
            lease_port(),
            1,
            relay,
            flags,
        )
    }

    /// [`ScenarioPeer::uac`] sending from loopback `port` (e.g. a configured Backend's address).
    pub fn uac_on(
        name: &str,
        sipp: &Path,
        file: &str,
        target: SocketAddr,
        port: u16,
        relay: (u16, u16),
    ) -> Self {
        Self::spawn(name, sipp, file, Some(target), port, 1, relay, &[])
    }

    // The one place every launch goes through: each argument is a different sipp flag.
    #[allow(clippy::too_many_arguments)]
    fn spawn(
        name: &str,
        sipp: &Path,
        file: &str,
        target: Option<SocketAddr>,
        port: u16,
        calls: u32,
        relay: (u16, u16),
        flags: &[&str],
    ) -> Self {
        let path = scenario(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("scenario {}: {e}", path.display()));
        let name = format!("{name}-{}", std::process::id());
        for trace in [trace_path(&name, "messages"), trace_path(&name, "errors")] {
            let _ = std::fs::remove_file(trace);
        }
        let mut args: Vec<String> = target.map(|t| t.to_string()).into_iter().collect();
        args.extend(
            [
                "-sf",
                &path.to_string_lossy(),
                "-i",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-mi",
                "127.0.0.1",
                "-mp",
                &media_port().to_string(),
                "-m",
                &calls.to_string(),
                "-nostdin",
                // A backstop: the test's own limit is shorter.
                "-timeout",
                "40",
                "-timeout_error",
                "-trace_msg",
                "-message_file",
                &trace_path(&name, "messages").to_string_lossy(),
                "-trace_err",
                "-error_file",
                &trace_path(&name, "errors").to_string_lossy(),
            ]
            .map(str::to_owned),
        );
        // Only scenarios that declare these globals may be given them (sipp refuses the rest).
        if text.contains("relay_min") {
            args.extend(["-set", "relay_min", &relay.0.to_string()].map(str::to_owned));
            args.extend(["-set", "relay_max", &relay.1.to_string()].map(str::to_owned));
        }
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        let log = std::fs::File::create(trace_path(&name, "output")).expect("sipp output file");
        let child = Command::new(sipp)
            .args(&args)
            .current_dir(scratch_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run sipp");
        Self {
            port,
            name,
            child,
            started: Instant::now(),
        }
    }

    /// Waits up to `limit` for the exit: its status, or `None` (then it is killed).
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.wait_unless(limit, || false)
    }

    /// [`ScenarioPeer::wait`], giving up (killing it, `None`) once `give_up` holds.
    pub fn wait_unless(
        &mut self,
        limit: Duration,
        mut give_up: impl FnMut() -> bool,
    ) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.status() {
                return Some(status);
            }
            if Instant::now() > deadline || give_up() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its exit status, once it exited.
    pub fn status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for sipp")
    }

    /// Time since it started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// What it sent and received, its errors and its stderr, for a failure report.
    pub fn report(&self) -> String {
        let read = |kind| std::fs::read_to_string(trace_path(&self.name, kind)).unwrap_or_default();
        format!(
            "==== {} messages\n{}\n==== {} errors\n{}{}",
            self.name,
            read("messages"),
            self.name,
            read("errors"),
            read("output")
        )
    }

    /// The messages it sent and received so far (its `-trace_msg` file).
    pub fn messages(&self) -> String {
        std::fs::read_to_string(trace_path(&self.name, "messages")).unwrap_or_default()
    }
}

impl Drop for ScenarioPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every [`SippBench`]'s health section: voxgate probes each Backend with OPTIONS at start and
/// then once per interval; the start probe is answered by a [`ProbeCatcher`], the next comes after
/// the test.
const HEALTH: &str = "[health]\ninterval = \"60s\"\nfailures_to_down = 3\n";
/// How long a caller scenario may take (the longest, the session refresh, takes about 9 s).
const CALLER_LIMIT: Duration = Duration::from_secs(20);
/// How long a Backend scenario may take to finish once its caller did.
const BACKEND_LIMIT: Duration = Duration::from_secs(5);

/// One Backend of a [`SippBench`]: a UAS scenario and its `[[backends]]` entry.
pub struct SippBackend<'a> {
    id: &'a str,
    scenario: &'a str,
    region: Option<&'a str>,
    flags: &'a [&'a str],
}

impl<'a> SippBackend<'a> {
    /// The Backend `id` running `scenario` (a file of `tests/sipp/`), in voxgate's node region.
    pub fn new(id: &'a str, scenario: &'a str) -> Self {
        Self {
            id,
            scenario,
            region: None,
            flags: &[],
        }
    }

    /// In `region` instead of the node's.
    pub fn in_region(self, region: &'a str) -> Self {
        Self {
            region: Some(region),
            ..self
        }
    }

    /// Echoing the RTP it receives back to its sender (`-rtp_echo`).
    pub fn echoing(self) -> Self {
        Self {
            flags: &["-rtp_echo"],
            ..self
        }
    }
}

/// A voxgate whose Backends are SIPp UAS scenarios, each taking one call.
pub struct SippBench {
    /// The test's name (file names, reports).
    pub test: String,
    /// The sipp binary.
    pub sipp: PathBuf,
    /// voxgate.
    pub proxy: Proxy,
    /// The Backend scenarios, in the order given to [`SippBench::start`].
    pub backends: Vec<ScenarioPeer>,
}

impl SippBench {
    /// Starts voxgate with `config` (sections besides health and backends) and `backends`;
    /// `None` after printing why `test` is skipped.
    pub fn start(test: &str, backends: &[SippBackend], config: &str) -> Option<Self> {
        let sipp = sipp_or_skip(test)?;
        let ports: Vec<u16> = backends.iter().map(|_| lease_port()).collect();
        let catchers: Vec<ProbeCatcher> = ports.iter().map(|p| ProbeCatcher::bind(*p)).collect();
        let mut toml = format!("{HEALTH}{config}");
        for (backend, port) in backends.iter().zip(&ports) {
            let address = SocketAddr::from(([127, 0, 0, 1], *port));
            toml.push_str(&backend_toml(backend.id, address, 10, backend.region));
        }
        let proxy = Proxy::start(test, &toml);
        // Each Backend is probed at once: answer them side by side.
        let answering: Vec<_> = catchers
            .into_iter()
            .map(|c| std::thread::spawn(move || c.answer_and_release(Duration::from_secs(2))))
            .collect();
        for thread in answering {
            thread.join().expect("probe catcher");
        }
        let backends = backends
            .iter()
            .zip(&ports)
            .map(|(backend, port)| {
                ScenarioPeer::uas_with(
                    &format!("{test}-{}", backend.id),
                    &sipp,
                    backend.scenario,
                    *port,
                    1,
                    proxy.media,
                    backend.flags,
                )
            })
            .collect();
        Some(Self {
            test: test.to_owned(),
            sipp,
            proxy,
            backends,
        })
    }

    /// Places one call with the caller scenario `uac` and waits for it and for every Backend
    /// scenario; panics with every message trace and voxgate's log unless all exited 0. Returns
    /// how long the caller's scenario ran.
    pub fn call(&mut self, uac: &str) -> Duration {
        let (caller, elapsed) = self.caller(uac);
        self.wait_backends(Some(&caller));
        elapsed
    }

    /// Runs the caller scenario `uac` alone (the Backend scenarios keep running): panics as
    /// [`SippBench::call`] unless it exited 0; returns it and how long it ran.
    pub fn caller(&mut self, uac: &str) -> (ScenarioPeer, Duration) {
        self.caller_with(uac, &[])
    }

    /// [`SippBench::caller`] with more sipp flags for the caller.
    pub fn caller_with(&mut self, uac: &str, flags: &[&str]) -> (ScenarioPeer, Duration) {
        let mut caller = ScenarioPeer::uac_with(
            &format!("{}-uac", self.test),
            &self.sipp,
            uac,
            self.proxy.sip,
            self.proxy.media,
            flags,
        );
        // A Backend scenario that failed leaves the caller waiting: give up a second later.
        let mut failed_at = None;
        let backends = &mut self.backends;
        let status = caller.wait_unless(CALLER_LIMIT, || {
            if backends
                .iter_mut()
                .any(|b| b.status().is_some_and(|s| !s.success()))
            {
                let at = *failed_at.get_or_insert_with(Instant::now);
                return at.elapsed() > Duration::from_secs(1);
            }
            false
        });
        let elapsed = caller.elapsed();
        if !passed(status) {
            self.fail(
                &format!("caller scenario {status:?} after {elapsed:?}"),
                Some(&caller),
            );
        }
        (caller, elapsed)
    }

    /// Waits for every Backend scenario to exit; panics as [`SippBench::call`] unless all
    /// exited 0. `caller` is the caller scenario, for the report.
    pub fn wait_backends(&mut self, caller: Option<&ScenarioPeer>) {
        for index in 0..self.backends.len() {
            let status = self.backends[index].wait(BACKEND_LIMIT);
            if !passed(status) {
                let id = self.backends[index].name.clone();
                self.fail(&format!("Backend scenario {id}: {status:?}"), caller);
            }
        }
    }

    /// Panics with `what`, every scenario's messages and voxgate's log.
    pub fn fail(&self, what: &str, caller: Option<&ScenarioPeer>) -> ! {
        let reports: Vec<String> = caller
            .into_iter()
            .chain(&self.backends)
            .map(ScenarioPeer::report)
            .collect();
        panic!(
            "{}: {what}\n{}\n==== voxgate log\n{}",
            self.test,
            reports.join("\n"),
            self.proxy.process.log()
        )
    }

    /// voxgate has no session and no media port left, and exactly one session ended, for `cause`.
    pub fn assert_ended_once(&self, cause: &str) {
        self.proxy.assert_idle(Duration::from_secs(5));
        assert_eq!(ended_causes(&self.proxy), vec![(cause.to_owned(), 1.0)]);
    }
}

fn passed(status: Option<ExitStatus>) -> bool {
    status.is_some_and(|s| s.success())
}

/// Every `voxgate_sessions_ended_total` sample that is not 0: (cause, count).
pub fn ended_causes(proxy: &Proxy) -> Vec<(String, f64)> {
    proxy
        .metrics()
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("voxgate_sessions_ended_total{cause=\"")?;
            let (cause, value) = rest.split_once("\"} ")?;
            let value: f64 = value.trim().parse().ok()?;
            (value != 0.0).then(|| (cause.to_owned(), value))
        })
        .collect()
}

fn trace_path(name: &str, kind: &str) -> PathBuf {
    scratch_dir().join(format!("sipp-{name}-{kind}.log"))
}

/// Holds `port` while voxgate starts and answers the OPTIONS health probe it sends every Backend
/// right away, then frees the port for the SIPp UAS: a SIPp UAS takes every new Call-ID for a
/// call, so a probe would count as a failed call.
pub struct ProbeCatcher {
    socket: UdpSocket,
}

impl ProbeCatcher {
    /// Binds loopback `port`.
    pub fn bind(port: u16) -> Self {
        let socket = UdpSocket::bind(("127.0.0.1", port)).expect("bind the Backend port");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Self { socket }
    }

    /// Answers OPTIONS with 200 until one came and `wait` passed without another, or `wait`
    /// passed without any; frees the port. Returns how many probes were answered.
    pub fn answer_and_release(self, wait: Duration) -> u32 {
        let mut answered = 0;
        let mut deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < deadline {
            let Ok((len, from)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            if !text.starts_with("OPTIONS ") {
                continue;
            }
            let _ = self.socket.send_to(ok_to(&text).as_bytes(), from);
            answered += 1;
            deadline = Instant::now() + Duration::from_millis(200);
        }
        answered
    }
}

/// A `200 OK` to `request` (its Via, From, To, Call-ID and CSeq copied).
fn ok_to(request: &str) -> String {
    let copied: String = request
        .lines()
        .filter(|line| {
            let name = line
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            matches!(
                name.as_str(),
                "via" | "v" | "from" | "f" | "to" | "t" | "call-id" | "i" | "cseq"
            )
        })
        .map(|line| format!("{line}\r\n"))
        .collect();
    format!("SIP/2.0 200 OK\r\n{copied}Content-Length: 0\r\n\r\n")
}
