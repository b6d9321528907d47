//! The embedded registry: cluster state in the process, persisted crash-safely to a local JSON file.
//!
//! Files, for a state file `state.json`:
//!
//! - `state.json`: `{"format": "voxgate-state", "version": 1, "state": {...}}`, pretty-printed,
//!   mode 0600 (it holds API key digests). Replaced whole on every change: the new content goes to
//!   `state.json.tmp` in the same directory, is fsynced, renamed over `state.json`, and the directory
//!   is fsynced. The rename is the commit point, so a crash leaves either the old or the new file,
//!   never a mix; a `.tmp` left by a crash is removed at the next start.
//! - `state.json.audit.jsonl`: one JSON [`AuditEntry`] per applied change, appended and flushed.
//!
//! A state file that cannot be read, parsed or validated stops startup with an error naming the file
//! and the reason: voxgate never resets an operator's state on its own. Statuses are kept in memory
//! only; they expire within seconds anyway.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::envelope;
use voxgate_cluster::{AuditEntry, Change, ClusterError, ClusterState, ErrorCode, NodeStatus};
use voxgate_core::NodeId;

use super::{Registry, RegistryError, Seed, Snapshot};

/// Audit entries kept in memory (and reloaded from the audit log at startup).
pub const AUDIT_IN_MEMORY: usize = 1_000;

/// Bytes read per step when looking for the audit log's last lines.
const AUDIT_TAIL_CHUNK: u64 = 64 * 1024;

/// Why the embedded registry could not start. Never answered by resetting the state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryStartupError {
    /// A file or directory could not be read, created or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `"read state file"`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The state file is not a state this build can use.
    #[error(
        "state file {} is unusable: {reason}; voxgate will not reset it: repair it or move it \
         away, then start again",
        path.display()
    )]
    Unusable {
        /// The state file.
        path: PathBuf,
        /// What is wrong, with line and column for a JSON error.
        reason: String,
    },
    /// The configuration's regions and nodes break a rule (e.g. two nodes with the same key).
    #[error("the configured regions and nodes were refused: {0}")]
    Seed(#[source] ClusterError),
}

/// The single-node registry: state in memory, persisted to a file when one is given.
///
/// Clones share the same state.
#[derive(Clone)]
pub struct EmbeddedRegistry {
    shared: Arc<Shared>,
}

struct Shared {
    clock: Box<dyn Fn() -> u64 + Send + Sync>,
    path: Option<PathBuf>,
    /// Held for a whole change (validate, write, publish) so that the file and the memory see
    /// changes in the same order. `None` when in memory only.
    store: Mutex<Option<Store>>,
    /// What readers see; held only to copy, check or swap, never during file I/O.
    live: Mutex<Live>,
}

struct Live {
    state: ClusterState,
    statuses: voxgate_cluster::Statuses,
    audit: VecDeque<AuditEntry>,
}

struct Store {
    path: PathBuf,
    audit_path: PathBuf,
    audit: File,
}

impl EmbeddedRegistry {
    /// Opens the registry on the wall clock. `path` is the state file (`None` keeps the state in
    /// memory only); `seed` adds the configured regions and nodes where absent.
    pub fn open(path: Option<&Path>, seed: &Seed) -> Result<Self, RegistryStartupError> {
        Self::open_with_clock(path, seed, super::now_ms)
    }

    /// As [`EmbeddedRegistry::open`], reading time (Unix ms) from `clock` (tests use a manual one).
    pub fn open_with_clock(
        path: Option<&Path>,
        seed: &Seed,
        clock: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Result<Self, RegistryStartupError> {
        let now_ms = clock();
        let (state, store, audit) = match path {
            None => {
                let mut state = ClusterState::default();
                seed.apply_to(&mut state, now_ms)
                    .map_err(RegistryStartupError::Seed)?;
                (state, None, VecDeque::new())
            }
            Some(path) => {
                let (state, store, audit) = Store::open(path, seed, now_ms)?;
                (state, Some(store), audit)
            }
        };
        Ok(Self {
            shared: Arc::new(Shared {
                clock: Box::new(clock),
                path: path.map(Path::to_path_buf),
                store: Mutex::new(store),
                live: Mutex::new(Live {
                    state,
                    statuses: voxgate_cluster::Statuses::default(),
                    audit,
                }),
            }),
        })
    }

    /// The state file, if the state is persisted.
    pub fn path(&self) -> Option<&Path> {
        self.shared.path.as_deref()
    }
}

impl fmt::Debug for EmbeddedRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedRegistry")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Registry for EmbeddedRegistry {
    async fn snapshot(&self) -> Result<Snapshot, RegistryError> {
        let now_ms = (self.shared.clock)();
        let mut live = lock(&self.shared.live);
        live.statuses.prune(now_ms);
        Ok(Snapshot {
            state: live.state.clone(),
            statuses: live.statuses.clone(),
            now_ms,
        })
    }

    async fn apply(&self, change: Change, actor: &str) -> Result<(), RegistryError> {
        if self.shared.path.is_none() {
            // Memory only: microseconds of work, no need to leave the runtime thread.
            return self.shared.apply(&change, actor);
        }
        // Two fsyncs block for milliseconds; keep them off the runtime threads.
        let shared = Arc::clone(&self.shared);
        let actor = actor.to_owned();
        tokio::task::spawn_blocking(move || shared.apply(&change, &actor))
            .await
            .map_err(|err| RegistryError::Unavailable(format!("the state writer failed: {err}")))?
    }

    async fn publish_status(
        &self,
        node: &NodeId,
        status: NodeStatus,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        let now_ms = (self.shared.clock)();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut live = lock(&self.shared.live);
        // A deleted node that still heartbeats learns it at once rather than haunting the counts.
        if live.state.node(node).is_none() {
            return Err(RegistryError::Rejected(ClusterError::new(
                ErrorCode::NodeNotFound,
                format!("node {node} not found"),
            )));
        }
        live.statuses.prune(now_ms);
        live.statuses
            .publish(node.clone(), status, now_ms.saturating_add(ttl_ms));
        Ok(())
    }

    async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, RegistryError> {
        let live = lock(&self.shared.live);
        let skip = live.audit.len().saturating_sub(limit);
        Ok(live.audit.iter().skip(skip).cloned().collect())
    }
}

impl Shared {
    /// Validates, persists, then publishes `change`. Blocking (file I/O) when persisted.
    fn apply(&self, change: &Change, actor: &str) -> Result<(), RegistryError> {
        let mut store = lock(&self.store);
        let now_ms = (self.clock)();
        let next = {
            let live = lock(&self.live);
            let mut next = live.state.clone();
            next.apply(change, actor, now_ms, &live.statuses)?;
            next
        };
        if let Some(store) = store.as_mut() {
            store.write_state(&next).map_err(|err| {
                RegistryError::Unavailable(format!(
                    "cannot write state file {}: {err}",
                    store.path.display()
                ))
            })?;
        }
        let entry = AuditEntry::for_change(change, actor, now_ms);
        {
            let mut live = lock(&self.live);
            live.state = next;
            live.audit.push_back(entry.clone());
            if live.audit.len() > AUDIT_IN_MEMORY {
                live.audit.pop_front();
            }
        }
        tracing::info!(
            target: "voxgate::audit",
            actor = %entry.actor,
            action = %entry.action,
            subject = %entry.target,
            public_reason = %entry.public_reason,
            private_reason = %entry.private_reason,
            "cluster change applied"
        );
        if let Some(store) = store.as_mut() {
            // The change is committed (the state file holds it); a lost audit line must not undo it.
            if let Err(err) = store.append_audit(&entry) {
                tracing::error!(
                    path = %store.audit_path.display(),
                    error = %err,
                    "cannot append to the audit log; the change is applied"
                );
            }
        }
        Ok(())
    }
}

impl Store {
    /// Loads (or creates) the state file, seeds it, and opens the audit log.
    fn open(
        path: &Path,
        seed: &Seed,
        now_ms: u64,
    ) -> Result<(ClusterState, Self, VecDeque<AuditEntry>), RegistryStartupError> {
        let io_error = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| RegistryStartupError::Io {
                action,
                path,
                source,
            }
        };
        let dir = parent_dir(path);
        fs::create_dir_all(dir).map_err(io_error("create state directory", dir))?;
        remove_stale_tmp(path);

        let loaded = match fs::read(path) {
            Ok(bytes) => Some(decode(path, &bytes)?),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(io_error("read state file", path)(err)),
        };
        let mut state = loaded.clone().unwrap_or_default();
        seed.apply_to(&mut state, now_ms)
            .map_err(RegistryStartupError::Seed)?;
        if loaded.as_ref() != Some(&state) {
            let bytes = encode(&state).map_err(io_error("encode state for", path))?;
            write_atomically(path, &bytes).map_err(io_error("write state file", path))?;
        }

        let audit_path = with_suffix(path, ".audit.jsonl");
        let mut audit = open_private(OpenOptions::new().read(true).append(true).create(true))
            .open(&audit_path)
            .map_err(io_error("open audit log", &audit_path))?;
        let (entries, ends_with_newline) = read_audit_tail(&mut audit, &audit_path)
            .map_err(io_error("read audit log", &audit_path))?;
        if !ends_with_newline {
            // A line torn by a crash: end it so the next entry starts on a line of its own.
            audit
                .write_all(b"\n")
                .map_err(io_error("repair audit log", &audit_path))?;
        }
        let store = Self {
            path: path.to_path_buf(),
            audit_path,
            audit,
        };
        Ok((state, store, entries))
    }

    fn write_state(&self, state: &ClusterState) -> io::Result<()> {
        write_atomically(&self.path, &encode(state)?)
    }

    fn append_audit(&mut self, entry: &AuditEntry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        // One write call per line, so concurrent readers never see half an entry.
        self.audit.write_all(&line)?;
        self.audit.flush()
    }
}

fn encode(state: &ClusterState) -> io::Result<Vec<u8>> {
    let mut bytes = envelope::encode(state, true)?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn decode(path: &Path, bytes: &[u8]) -> Result<ClusterState, RegistryStartupError> {
    envelope::decode(bytes).map_err(|reason| RegistryStartupError::Unusable {
        path: path.to_path_buf(),
        reason,
    })
}

/// Writes `bytes` to `path` so that a crash at any point leaves the old or the new content.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = with_suffix(path, ".tmp");
    if let Err(err) = write_synced(&tmp, bytes).and_then(|()| fs::rename(&tmp, path)) {
        // Best effort: the next write truncates it anyway, and the next start removes it.
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    // The rename is the commit point: the file now holds the new content, so a failure to fsync the
    // directory (which only makes the rename survive a power cut) must not report the change lost.
    if let Err(err) = File::open(parent_dir(path)).and_then(|dir| dir.sync_all()) {
        tracing::warn!(
            path = %path.display(),
            error = %err,
            "cannot fsync the state directory; the change may not survive a power cut"
        );
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file =
        open_private(OpenOptions::new().write(true).create(true).truncate(true)).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Removes a `.tmp` left by a write that a crash interrupted; it never holds committed state.
fn remove_stale_tmp(path: &Path) {
    let tmp = with_suffix(path, ".tmp");
    match fs::remove_file(&tmp) {
        Ok(()) => tracing::warn!(
            path = %tmp.display(),
            "removed a partial state file left by an interrupted write"
        ),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        // Harmless: the next write truncates it.
        Err(err) => tracing::warn!(
            path = %tmp.display(),
            error = %err,
            "cannot remove a stale partial state file"
        ),
    }
}

/// The last [`AUDIT_IN_MEMORY`] entries of the audit log, and whether it ends with a newline.
/// Reads backwards from the end, so a long log costs no more than its tail. Unreadable lines (a
/// line torn by a crash) are skipped with a warning.
fn read_audit_tail(file: &mut File, path: &Path) -> io::Result<(VecDeque<AuditEntry>, bool)> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut start = len;
    let mut tail: Vec<u8> = Vec::new();
    let mut newlines = 0usize;
    while start > 0 && newlines <= AUDIT_IN_MEMORY {
        let step = AUDIT_TAIL_CHUNK.min(start);
        start -= step;
        let mut chunk = vec![0u8; usize::try_from(step).unwrap_or(usize::MAX)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        newlines += chunk.iter().filter(|byte| **byte == b'\n').count();
        chunk.extend_from_slice(&tail);
        tail = chunk;
    }
    let ends_with_newline = tail.last().is_none_or(|byte| *byte == b'\n');
    let mut lines = tail.split(|byte| *byte == b'\n');
    if start > 0 {
        // The first line is cut where the read began.
        lines.next();
    }
    let mut entries = VecDeque::new();
    let mut skipped = 0usize;
    for line in lines.filter(|line| !line.trim_ascii().is_empty()) {
        match serde_json::from_slice::<AuditEntry>(line) {
            Ok(entry) => {
                entries.push_back(entry);
                if entries.len() > AUDIT_IN_MEMORY {
                    entries.pop_front();
                }
            }
            Err(_) => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(path = %path.display(), skipped, "skipped unreadable audit log lines");
    }
    Ok((entries, ends_with_newline))
}

/// `path` with `suffix` appended to its file name: `state.json` -> `state.json.tmp`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Files the registry creates are readable by their owner only: they hold API key digests and the
/// operators' private reasons.
fn open_private(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section either completes or changes nothing (a new state is swapped in whole),
    // so a panic elsewhere cannot leave half an update behind; keep serving.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
