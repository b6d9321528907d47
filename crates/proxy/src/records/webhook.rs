//! The records webhook: every record is first written to a bounded on-disk spool (one file per
//! record, named so that names sort in the order the sessions ended), then POSTed oldest first;
//! a record's file is deleted once the webhook answered 2xx.
//!
//! So delivery is at least once and in order, across webhook outages and restarts: a failed
//! POST (no connection, timeout, 5xx, 408, 429) is retried after `retry_min`, doubling per
//! failure up to `retry_max`, and records that end meanwhile wait in the spool behind it. A
//! duplicate is possible only when a POST succeeded but its answer was lost (a timeout, a
//! shutdown or crash between the answer and the delete); each POST carries the record's id in
//! `Idempotency-Key`, and the body's `record_id`, for the receiver to de-duplicate. Another 4xx
//! means the receiver will never take this record: it is dropped from the spool, logged and
//! counted, so one bad record cannot hold the rest back.
//!
//! A spool at `spool_max_bytes` takes no more records: each one refused is counted in
//! `voxgate_records_dropped_total{reason="spool_full"}` (it is still in the records file).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, watch};

use crate::config::RecordsConfig;
use crate::metrics;
use crate::webhook_url::WebhookUrl;

/// Records read from the spool per scan.
const BATCH: usize = 256;

/// The bounded on-disk queue of records not yet delivered.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    used: AtomicU64,
    seq: AtomicU64,
    /// Wakes the webhook task when a record is added.
    added: Notify,
    /// Logs "spool full" once per episode.
    full: AtomicBool,
}

impl Spool {
    /// Opens `dir` (created if missing), counting the records already in it (a previous run's)
    /// and removing half-written ones.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut used = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => used += entry.metadata().map_or(0, |m| m.len()),
                Some("tmp") => {
                    let _ = std::fs::remove_file(&path);
                }
                _ => {}
            }
        }
        metrics::record_spool(used);
        Ok(Self {
            dir: dir.to_owned(),
            max_bytes,
            used: AtomicU64::new(used),
            seq: AtomicU64::new(0),
            added: Notify::new(),
            full: AtomicBool::new(false),
        })
    }

    /// Adds one record (its JSON) unless that would pass the bound; returns whether it did.
    /// A refusal or a write error is counted and logged (once per episode).
    pub fn put(&self, json: &str) -> bool {
        let len = json.len() as u64;
        if self.used.load(Ordering::Acquire) + len > self.max_bytes {
            metrics::record_dropped("spool_full");
            if !self.full.swap(true, Ordering::AcqRel) {
                tracing::error!(
                    dir = %self.dir.display(),
                    max_bytes = self.max_bytes,
                    "call records: the webhook spool is full; records are kept in the records file only until it drains"
                );
            }
            return false;
        }
        // Microseconds since the epoch and a sequence: names sort in the order of writing,
        // also after a restart.
        let micros = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{micros:020}-{seq:08}");
        let tmp = self.dir.join(format!("{name}.tmp"));
        let path = self.dir.join(format!("{name}.json"));
        let written = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(err) = written {
            let _ = std::fs::remove_file(&tmp);
            metrics::record_dropped("spool_full");
            tracing::error!(%err, dir = %self.dir.display(), "call records: cannot write to the webhook spool");
            return false;
        }
        let used = self.used.fetch_add(len, Ordering::AcqRel) + len;
        metrics::record_spool(used);
        self.added.notify_one();
        true
    }

    /// Bytes waiting.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Up to `limit` waiting records, oldest first.
    pub fn oldest(&self, limit: usize) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        paths.truncate(limit);
        paths
    }

    /// Forgets a record of `len` bytes (delivered, or refused for good).
    pub fn remove(&self, path: &Path, len: u64) {
        if std::fs::remove_file(path).is_ok() {
            let used = self
                .used
                .fetch_sub(len.min(self.used()), Ordering::AcqRel)
                .saturating_sub(len);
            metrics::record_spool(used);
            if used < self.max_bytes / 2 {
                self.full.store(false, Ordering::Release);
            }
        }
    }
}

/// How one POST went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// 2xx.
    Taken,
    /// A 4xx other than 408 and 429: this record will never be taken.
    Refused(u16),
    /// Anything else: try again later.
    Failed,
}

/// Starts the task that delivers the spool to `config.webhook` until `stop` turns true.
pub(super) fn spawn(
    config: &RecordsConfig,
    spool: Arc<Spool>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let url = WebhookUrl::parse(&config.webhook)
        .map_err(anyhow::Error::msg)
        .context("records.webhook")?;
    let sender = Sender {
        url,
        timeout: config.webhook_timeout,
        retry_min: config.retry_min,
        retry_max: config.retry_max,
        spool,
        stop,
    };
    Ok(tokio::spawn(sender.run()))
}

struct Sender {
    url: WebhookUrl,
    timeout: Duration,
    retry_min: Duration,
    retry_max: Duration,
    spool: Arc<Spool>,
    stop: watch::Receiver<bool>,
}

impl Sender {
    async fn run(mut self) {
        let mut backoff = self.retry_min;
        let mut failures = 0u64;
        loop {
            if *self.stop.borrow() {
                return;
            }
            // Registered before the scan, so a record spooled after it still wakes us.
            let added = self.spool.added.notified();
            // The spool's files are small and local: read them here rather than on a blocking
            // thread (this task is off the call path).
            let batch = self.spool.oldest(BATCH);
            if batch.is_empty() {
                tokio::select! {
                    () = added => {}
                    _ = self.stop.changed() => return,
                }
                continue;
            }
            for path in batch {
                let Ok(body) = std::fs::read(&path) else {
                    continue;
                };
                let len = body.len() as u64;
                let id = record_id(&body);
                match self.post(body, id.as_deref()).await {
                    Delivery::Taken => {
                        self.spool.remove(&path, len);
                        metrics::record_delivered();
                        if failures > 0 {
                            tracing::warn!(
                                failures,
                                "call records: the webhook takes records again"
                            );
                        }
                        failures = 0;
                        backoff = self.retry_min;
                    }
                    Delivery::Refused(status) => {
                        self.spool.remove(&path, len);
                        metrics::record_dropped("webhook_rejected");
                        tracing::error!(status, record = ?id, "call records: the webhook refused a record; it is dropped from the spool");
                    }
                    Delivery::Failed => {
                        metrics::record_webhook_failed();
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(url = %self.url.authority(), "call records: webhook POST failed; records wait in the spool and are retried");
                        }
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = self.stop.changed() => return,
                        }
                        backoff = (backoff * 2).min(self.retry_max);
                        break;
                    }
                }
                if *self.stop.borrow() {
                    return;
                }
            }
        }
    }

    async fn post(&self, body: Vec<u8>, id: Option<&str>) -> Delivery {
        match tokio::time::timeout(self.timeout, self.exchange(body, id)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => Delivery::Taken,
            Ok(Ok(status)) if (400..500).contains(&status) && status != 408 && status != 429 => {
                Delivery::Refused(status)
            }
            Ok(Ok(status)) => {
                tracing::debug!(status, "call records: webhook answered");
                Delivery::Failed
            }
            Ok(Err(err)) => {
                tracing::debug!(
                    err = format!("{err:#}"),
                    "call records: webhook POST failed"
                );
                Delivery::Failed
            }
            Err(_) => Delivery::Failed,
        }
    }

    /// One HTTP/1.1 POST on a new connection; the answer's status.
    async fn exchange(&self, body: Vec<u8>, id: Option<&str>) -> anyhow::Result<u16> {
        let addr: SocketAddr = tokio::net::lookup_host((self.url.host.as_str(), self.url.port))
            .await?
            .next()
            .context("the webhook host resolves to no address")?;
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(hyper::Method::POST)
            .uri(&self.url.path)
            .header(hyper::header::HOST, self.url.authority())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "voxgate");
        if let Some(id) = id {
            request = request.header("Idempotency-Key", id);
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = response.status().as_u16();
        // Read the answer to its end so the receiver sees a clean exchange.
        let _ = response.into_body().collect().await;
        Ok(status)
    }
}

/// The `record_id` of a spooled record.
fn record_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        record_id: String,
    }
    serde_json::from_slice::<Id>(body).ok().map(|r| r.record_id)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};

    use super::*;

    #[test]
    fn the_spool_is_bounded_counted_ordered_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
        let record = |n: u32| format!("{{\"record_id\":\"r{n}\",\"pad\":\"{}\"}}", "x".repeat(10));
        let len = record(1).len() as u64;
        // Room for three records, not four.
        let bound = 3 * len + len / 2;
        let spool = Spool::open(dir.path(), bound).unwrap_or_else(|_| unreachable!());
        assert!(spool.put(&record(1)));
        assert!(spool.put(&record(2)));
        assert!(spool.put(&record(3)));
        assert!(!spool.put(&record(4)), "a fourth would pass the bound");
        assert_eq!(spool.used(), 3 * len);
        let oldest = spool.oldest(10);
        let ids: Vec<_> = oldest
            .iter()
            .map(|p| record_id(&std::fs::read(p).unwrap_or_default()))
            .collect();
        assert_eq!(
            ids,
            vec![Some("r1".into()), Some("r2".into()), Some("r3".into())]
        );
        spool.remove(&oldest[0], len);
        assert_eq!(spool.used(), 2 * len);
        assert!(spool.put(&record(5)));
        // A half-written record of a crash is cleaned; the rest are counted again.
        std::fs::write(dir.path().join("0-0.tmp"), "{").unwrap_or_else(|_| unreachable!());
        drop(spool);
        let spool = Spool::open(dir.path(), bound).unwrap_or_else(|_| unreachable!());
        assert_eq!(spool.used(), 3 * len);
        assert!(!dir.path().join("0-0.tmp").exists());
        let ids: Vec<_> = spool
            .oldest(10)
            .iter()
            .map(|p| record_id(&std::fs::read(p).unwrap_or_default()))
            .collect();
        assert_eq!(
            ids,
            vec![Some("r2".into()), Some("r3".into()), Some("r5".into())]
        );
    }

    /// A receiver that answers each POST with the next of `statuses` (then 200), and hands
    /// back the Idempotency-Key of each.
    fn receiver(statuses: Vec<u16>) -> (String, std::sync::mpsc::Receiver<(u16, String)>) {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|_| unreachable!());
        let url = format!(
            "http://{}/records",
            listener.local_addr().unwrap_or_else(|_| unreachable!())
        );
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut statuses = statuses.into_iter();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader =
                    BufReader::new(stream.try_clone().unwrap_or_else(|_| unreachable!()));
                let (mut key, mut length) = (String::new(), 0usize);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("idempotency-key:") {
                        key = line[16..].trim().to_owned();
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let status = statuses.next().unwrap_or(200);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = tx.send((status, key));
            }
        });
        (url, rx)
    }

    #[tokio::test]
    async fn retries_a_failure_drops_a_refusal_and_delivers_in_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
        let spool = Arc::new(Spool::open(dir.path(), 1 << 20).unwrap_or_else(|_| unreachable!()));
        // r1: 503 then 200; r2: 400 (dropped); r3: 200.
        let (url, seen) = receiver(vec![503, 200, 400, 200]);
        for n in 1..=3 {
            spool.put(&format!("{{\"record_id\":\"r{n}\"}}"));
        }
        let config = RecordsConfig {
            webhook: url,
            retry_min: Duration::from_millis(10),
            retry_max: Duration::from_millis(20),
            ..RecordsConfig::default()
        };
        let (stop_tx, stop) = watch::channel(false);
        let task = spawn(&config, spool.clone(), stop).unwrap_or_else(|_| unreachable!());
        let got = tokio::task::spawn_blocking(move || {
            (0..4)
                .map(|_| {
                    seen.recv_timeout(Duration::from_secs(10))
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let expected: Vec<(u16, String)> = vec![(503, "r1"), (200, "r1"), (400, "r2"), (200, "r3")]
            .into_iter()
            .map(|(s, k)| (s, k.to_owned()))
            .collect();
        assert_eq!(got, expected);
        let emptied = async {
            while spool.used() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(5), emptied)
                .await
                .is_ok()
        );
        let _ = stop_tx.send(true);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_ok()
        );
    }
}
