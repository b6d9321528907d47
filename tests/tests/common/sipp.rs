//! SIPp (Debian `sip-tester`) as a peer: its built-in UAS with RTP echo, its built-in UAC, and the
//! XML scenarios of `tests/sipp/`.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{Running, lease_port, lease_port_range, scratch_dir, wait_for_udp_bound};

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
        let mut peer = Self::spawn(name, sipp, file, None, port, calls, relay);
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
        Self::spawn(name, sipp, file, Some(target), lease_port(), 1, relay)
    }

    fn spawn(
        name: &str,
        sipp: &Path,
        file: &str,
        target: Option<SocketAddr>,
        port: u16,
        calls: u32,
        relay: (u16, u16),
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
