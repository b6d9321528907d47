//! The Proxy as a soak sees it: `/metrics` read over HTTP, the few Prometheus series the verdict
//! needs, the process's resident memory, and whether the process is still there.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::http_url::HttpUrl;
use serde::Serialize;

/// How long one scrape may take; the sampler runs once a second.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// One reading of the Proxy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxySample {
    /// When it was taken (the request sent), since the run's epoch.
    pub at: Duration,
    /// When the answer was in: the Proxy's figures are of a moment between `at` and this.
    pub read_by: Duration,
    /// `voxgate_sessions_active`.
    pub sessions_active: Option<f64>,
    /// `voxgate_sessions_limit`.
    pub sessions_limit: Option<f64>,
    /// `voxgate_drain_remaining_sessions`.
    pub drain_remaining: Option<f64>,
    /// `voxgate_rtp_packets_total`, summed over directions.
    pub rtp_packets: Option<f64>,
    /// `voxgate_sessions_rejected_total` by `reason`.
    pub rejected: BTreeMap<String, f64>,
    /// Resident memory in bytes, from [`ProxySample::rss_source`].
    pub rss_bytes: Option<u64>,
    /// Where `rss_bytes` came from.
    pub rss_source: RssSource,
}

/// Where a resident-memory reading came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RssSource {
    /// Not measured: no `process_resident_memory_bytes` and no `--proxy-pid`.
    #[default]
    None,
    /// `process_resident_memory_bytes` in `/metrics`.
    Metrics,
    /// `VmRSS` in `/proc/<pid>/status`.
    Proc,
}

/// Where to read the Proxy: its `/metrics` URL and, optionally, its process id.
#[derive(Debug, Clone)]
pub struct ProxyProbe {
    addr: SocketAddr,
    authority: String,
    path: String,
    pid: Option<u32>,
}

impl ProxyProbe {
    /// Resolves `url` (`http://HOST:PORT/PATH`); `pid` is the Proxy's process, for RSS when the
    /// metrics carry none and to notice its exit.
    pub async fn new(url: &str, pid: Option<u32>) -> anyhow::Result<Self> {
        let HttpUrl {
            addr,
            authority,
            path,
        } = HttpUrl::resolve(url).await.context("--metrics")?;
        Ok(Self {
            addr,
            authority,
            path,
            pid,
        })
    }

    /// The Proxy's process id, when known.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Reads `/metrics` (and `/proc` for RSS when needed), stamped `at`.
    pub async fn sample(&self, at: Duration) -> anyhow::Result<ProxySample> {
        let text = tokio::time::timeout(SCRAPE_TIMEOUT, self.get())
            .await
            .with_context(|| format!("no answer from {} within {SCRAPE_TIMEOUT:?}", self.addr))??;
        let mut sample = parse(&text, at);
        if sample.rss_bytes.is_none()
            && let Some(rss) = self.pid.and_then(vm_rss)
        {
            sample.rss_bytes = Some(rss);
            sample.rss_source = RssSource::Proc;
        }
        Ok(sample)
    }

    async fn get(&self) -> anyhow::Result<String> {
        let stream = tokio::net::TcpStream::connect(self.addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .uri(self.path.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("GET {} answered {status}", self.path);
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// The series a soak needs out of Prometheus text exposition.
pub fn parse(text: &str, at: Duration) -> ProxySample {
    let mut sample = ProxySample {
        at,
        read_by: at,
        ..ProxySample::default()
    };
    for line in text.lines() {
        let Some((name, labels, value)) = series(line) else {
            continue;
        };
        match name {
            "voxgate_sessions_active" => sample.sessions_active = Some(value),
            "voxgate_sessions_limit" => sample.sessions_limit = Some(value),
            "voxgate_drain_remaining_sessions" => sample.drain_remaining = Some(value),
            "voxgate_rtp_packets_total" => {
                *sample.rtp_packets.get_or_insert(0.0) += value;
            }
            "voxgate_sessions_rejected_total" => {
                let reason = label(labels, "reason").unwrap_or_default();
                *sample.rejected.entry(reason).or_default() += value;
            }
            "process_resident_memory_bytes" if value.is_finite() && value >= 0.0 => {
                sample.rss_bytes = Some(value as u64);
                sample.rss_source = RssSource::Metrics;
            }
            _ => {}
        }
    }
    sample
}

/// One sample line: name, the text between the braces (empty without labels), value. `None` for
/// comments, blank and malformed lines.
fn series(line: &str) -> Option<(&str, &str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let (labels, rest) = if line[name_end..].starts_with('{') {
        let body = &line[name_end + 1..];
        let close = closing_brace(body)?;
        (&body[..close], &body[close + 1..])
    } else {
        ("", &line[name_end..])
    };
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some((name, labels, value))
}

/// Index of the `}` that closes a label set, skipping quoted values (which may hold `}` or `\"`).
fn closing_brace(body: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// The value of label `key` in a label set (`a="1",b="2"`), unescaped.
fn label(labels: &str, key: &str) -> Option<String> {
    let mut rest = labels;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        let (name, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                other => value.push(other),
            }
        };
        if name.trim() == key {
            return Some(value);
        }
        rest = &after[end + 1..];
    }
}

/// `VmRSS` of process `pid` in bytes (Linux `/proc`).
pub fn vm_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Whether process `pid` has exited: gone from `/proc`, or a zombie waiting for its parent (whose
/// sockets are already closed).
pub fn process_exited(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // `pid (comm) state ...`: comm may hold spaces and parentheses, so split at the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some("Z" | "X" | "x"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP voxgate_sessions_active Sessions up now.
# TYPE voxgate_sessions_active gauge
voxgate_sessions_active 7
voxgate_sessions_limit 10
voxgate_drain_remaining_sessions 0
voxgate_rtp_packets_total{direction="caller_to_backend"} 1000
voxgate_rtp_packets_total{direction="backend_to_caller"} 990
voxgate_sessions_rejected_total{reason="capacity"} 12
voxgate_sessions_rejected_total{reason="draining"} 3 1700000000000
voxgate_sessions_rejected_total{reason="odd \"}\" one"} 1
voxgate_session_setup_seconds_bucket{le="+Inf"} 5
"#;

    #[test]
    fn parses_the_series_a_soak_needs() {
        let sample = parse(TEXT, Duration::from_secs(3));
        assert_eq!(sample.at, Duration::from_secs(3));
        assert_eq!(sample.sessions_active, Some(7.0));
        assert_eq!(sample.sessions_limit, Some(10.0));
        assert_eq!(sample.drain_remaining, Some(0.0));
        assert_eq!(sample.rtp_packets, Some(1990.0));
        assert_eq!(sample.rejected["capacity"], 12.0);
        assert_eq!(sample.rejected["draining"], 3.0);
        assert_eq!(sample.rejected["odd \"}\" one"], 1.0);
        assert_eq!(sample.rss_bytes, None);
        assert_eq!(sample.rss_source, RssSource::None);
    }

    #[test]
    fn resident_memory_from_the_process_collector() {
        let sample = parse("process_resident_memory_bytes 1.2345e7\n", Duration::ZERO);
        assert_eq!(sample.rss_bytes, Some(12_345_000));
        assert_eq!(sample.rss_source, RssSource::Metrics);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        for line in [
            "",
            "# comment",
            "name_only",
            "x{a=\"1\" 3",
            "x{} notanumber",
        ] {
            assert_eq!(series(line), None, "{line:?}");
        }
        assert_eq!(series("x{} 4"), Some(("x", "", 4.0)));
        assert_eq!(label(r#"a="1",b="two""#, "b").as_deref(), Some("two"));
        assert_eq!(label(r#"a="1""#, "b"), None);
    }

    #[test]
    fn own_process_is_running_with_memory() {
        let pid = std::process::id();
        assert!(!process_exited(pid));
        assert!(vm_rss(pid).is_some_and(|rss| rss > 0));
        assert!(process_exited(u32::MAX));
    }
}
