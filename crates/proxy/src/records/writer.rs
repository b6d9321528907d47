//! The records writer: a thread that appends each record as a JSON line to a size-rotated file
//! and, with a webhook, puts it in the spool for the webhook task.
//!
//! A plain thread rather than a task: file writes block, and the sessions only ever `try_send`
//! to it, so a slow disk delays records, never calls.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{oneshot, watch};

use super::webhook::{self, Spool};
use super::{CallRecord, QUEUE};
use crate::config::RecordsConfig;
use crate::metrics;

/// What the writer thread is sent.
#[derive(Debug)]
pub enum Message {
    /// A record to write.
    Record(Box<CallRecord>),
    /// Write what came before, flush, answer and stop.
    Close(oneshot::Sender<()>),
}

/// A JSON-lines file rotated by size: `path` is written; before a line would take it past
/// `max_bytes` it becomes `path.1` (and `path.1` `path.2`, up to `keep`; the oldest is deleted).
#[derive(Debug)]
pub struct RecordFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: BufWriter<File>,
    size: u64,
}

impl RecordFile {
    /// Opens (appends to) `path`, creating its directory.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            max_bytes,
            keep,
            file: BufWriter::new(file),
            size,
        })
    }

    /// Appends `line` (and a newline), rotating first if it would not fit.
    pub fn append(&mut self, line: &str) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }

    /// Writes what is buffered to the file.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            // The oldest goes; the rest move up one; the live file becomes `.1`.
            let _ = std::fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.file = BufWriter::new(file);
        self.size = 0;
        Ok(())
    }
}

/// The writer thread and the webhook task, for the shutdown.
#[derive(Debug)]
pub struct RecordsTasks {
    stop_webhook: watch::Sender<bool>,
    webhook: Option<tokio::task::JoinHandle<()>>,
}

impl RecordsTasks {
    /// Stops the writer (after what is queued) and then the webhook task (after its POST in
    /// flight; the spool stays on disk for the next start).
    pub(super) async fn close(
        self,
        queue: Option<&std_mpsc::SyncSender<Message>>,
        timeout: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some(queue) = queue {
            let (done, flushed) = oneshot::channel();
            let queue = queue.clone();
            // A full queue blocks this send for as long as the writer takes to make room.
            let sent = tokio::task::spawn_blocking(move || queue.send(Message::Close(done)));
            if matches!(sent.await, Ok(Ok(())))
                && tokio::time::timeout_at(deadline, flushed).await.is_err()
            {
                tracing::warn!("call records: the writer did not finish within {timeout:?}");
            }
        }
        let _ = self.stop_webhook.send(true);
        if let Some(webhook) = self.webhook
            && tokio::time::timeout_at(deadline, webhook).await.is_err()
        {
            tracing::warn!("call records: the webhook task did not stop within {timeout:?}");
        }
    }
}

/// Starts the writer thread and (with a webhook) the webhook task; the queue is `None` when
/// records go nowhere (no file, no webhook).
pub(super) fn spawn(
    config: &RecordsConfig,
) -> anyhow::Result<(RecordsTasks, Option<std_mpsc::SyncSender<Message>>)> {
    let (stop_webhook, stopped) = watch::channel(false);
    let file = if config.path.as_os_str().is_empty() {
        None
    } else {
        let file = RecordFile::open(&config.path, config.max_bytes, config.keep)
            .with_context(|| format!("opening records.path {}", config.path.display()))?;
        Some(file)
    };
    let (spool, webhook) = if config.webhook.is_empty() {
        (None, None)
    } else {
        let dir = config.spool();
        let spool = Arc::new(
            Spool::open(&dir, config.spool_max_bytes)
                .with_context(|| format!("opening records.spool_dir {}", dir.display()))?,
        );
        let task = webhook::spawn(config, spool.clone(), stopped)?;
        (Some(spool), Some(task))
    };
    let tasks = RecordsTasks {
        stop_webhook,
        webhook,
    };
    if file.is_none() && spool.is_none() {
        return Ok((tasks, None));
    }
    let (queue, inbox) = std_mpsc::sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("records".into())
        .spawn(move || run(inbox, file, spool))
        .context("starting the records writer thread")?;
    Ok((tasks, Some(queue)))
}

/// The writer thread: each record to the file and the spool; the file flushed whenever the
/// queue is empty.
fn run(
    inbox: std_mpsc::Receiver<Message>,
    mut file: Option<RecordFile>,
    spool: Option<Arc<Spool>>,
) {
    let mut failing = false;
    while let Ok(message) = inbox.recv() {
        let mut next = Some(message);
        while let Some(message) = next.take() {
            match message {
                Message::Record(record) => {
                    write(&record, file.as_mut(), spool.as_deref(), &mut failing)
                }
                Message::Close(done) => {
                    flush(file.as_mut());
                    let _ = done.send(());
                    return;
                }
            }
            next = inbox.try_recv().ok();
        }
        flush(file.as_mut());
    }
    flush(file.as_mut());
}

fn write(
    record: &CallRecord,
    file: Option<&mut RecordFile>,
    spool: Option<&Spool>,
    failing: &mut bool,
) {
    let line = match serde_json::to_string(record) {
        Ok(line) => line,
        Err(err) => {
            tracing::error!(%err, record = %record.record_id, "call record not serialisable");
            metrics::record_dropped("write_failed");
            return;
        }
    };
    if let Some(file) = file {
        match file.append(&line) {
            Ok(()) => {
                metrics::record_written();
                if *failing {
                    tracing::warn!("call records: the records file is written again");
                    *failing = false;
                }
            }
            Err(err) => {
                metrics::record_dropped("write_failed");
                // Once per outage: a full disk must not turn into a line per call.
                if !*failing {
                    tracing::error!(%err, "call records: cannot write the records file");
                    *failing = true;
                }
            }
        }
    }
    if let Some(spool) = spool {
        spool.put(&line);
    }
}

fn flush(file: Option<&mut RecordFile>) {
    if let Some(file) = file
        && let Err(err) = file.flush()
    {
        tracing::error!(%err, "call records: cannot flush the records file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
        let path = dir.path().join("calls.jsonl");
        let mut file = RecordFile::open(&path, 4096, 2).unwrap_or_else(|_| unreachable!());
        let line = "x".repeat(999); // 1000 bytes with its newline
        for i in 0..10 {
            file.append(&format!("{i}{}", &line[1..]))
                .unwrap_or_else(|_| unreachable!());
        }
        file.flush().unwrap_or_else(|_| unreachable!());
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let first = |p: &Path| {
            read(p)
                .lines()
                .map(|l| l[..1].to_owned())
                .collect::<Vec<_>>()
        };
        // 4 lines fit (4000 bytes); the fifth rotates. Lines 0-3 went to .1 and then to .2,
        // 4-7 are .1, 8-9 the live file; nothing older than `keep` remains.
        assert_eq!(first(&path), vec!["8", "9"]);
        assert_eq!(
            first(&dir.path().join("calls.jsonl.1")),
            vec!["4", "5", "6", "7"]
        );
        assert_eq!(
            first(&dir.path().join("calls.jsonl.2")),
            vec!["0", "1", "2", "3"]
        );
        assert!(!dir.path().join("calls.jsonl.3").exists());
        for p in [path.clone(), dir.path().join("calls.jsonl.1")] {
            assert!(std::fs::metadata(&p).map_or(0, |m| m.len()) <= 4096);
        }
    }

    #[test]
    fn reopening_appends_and_counts_what_is_there() {
        let dir = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
        let path = dir.path().join("sub/calls.jsonl");
        let mut file = RecordFile::open(&path, 4096, 1).unwrap_or_else(|_| unreachable!());
        file.append(&"a".repeat(3000))
            .unwrap_or_else(|_| unreachable!());
        file.flush().unwrap_or_else(|_| unreachable!());
        drop(file);
        let mut file = RecordFile::open(&path, 4096, 1).unwrap_or_else(|_| unreachable!());
        file.append(&"b".repeat(3000))
            .unwrap_or_else(|_| unreachable!());
        file.flush().unwrap_or_else(|_| unreachable!());
        assert!(
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .starts_with('b')
        );
        assert!(dir.path().join("sub/calls.jsonl.1").exists());
    }
}
