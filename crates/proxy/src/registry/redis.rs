//! The Redis registry: cluster state, live statuses and the audit trail in one Redis server.
//!
//! Several Proxies connect to the same Redis and so share one view. Keys, under a prefix (default
//! [`DEFAULT_KEY_PREFIX`], configurable so that clusters or tests can share a server):
//!
//! - `{prefix}state`: `{"format":"voxgate-state","version":1,"state":{...}}`, the whole
//!   [`ClusterState`] as one JSON string, as in the embedded registry's state file. Changed only by
//!   optimistic transactions: `WATCH` it, `GET` it, [`ClusterState::apply`], then `MULTI` `SET` +
//!   `RPUSH` the audit entry + `LTRIM` `EXEC`; a nil `EXEC` (another writer got in between) starts
//!   over, at most [`MAX_ATTEMPTS`] times.
//! - `{prefix}status:{node}`: the node's [`NodeStatus`] as JSON, written with `SET ... PX <ttl>`; a
//!   node whose key expired is offline. Statuses of nodes absent from the state are ignored.
//! - `{prefix}audit`: a list of JSON [`AuditEntry`], oldest first, trimmed to the newest
//!   [`AUDIT_KEPT`].
//!
//! A watch belongs to a connection, and the [`ConnectionManager`] that carries every other command
//! is shared by concurrent callers (whose `EXEC` would clear our watch) and replaced silently on a
//! reconnect (which would drop it); so each change runs on a short-lived connection of its own.
//!
//! Every command has a timeout, so a dead or frozen Redis fails a call with
//! [`RegistryError::Unavailable`] rather than hanging it. A state value that does not parse is
//! reported, never overwritten; a missing one (a Redis restarted without persistence) is seeded again
//! from the configuration, as at startup.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::{AsyncConnectionConfig, RedisResult, Value};
use voxgate_cluster::{
    AuditEntry, Change, ClusterError, ClusterState, ErrorCode, NodeStatus, Statuses,
};
use voxgate_core::NodeId;

use super::envelope;
use super::{Registry, RegistryError, Seed, Snapshot, now_ms};

/// The key prefix unless told otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "voxgate:";

/// How long one Redis command (or connection attempt) may take unless told otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Audit entries kept in Redis; older ones are trimmed.
pub const AUDIT_KEPT: usize = 10_000;

/// Transactions tried per change before giving up because other writers keep getting in first.
pub const MAX_ATTEMPTS: u32 = 50;

/// How to use the Redis server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// Prepended to every key, e.g. `voxgate:` gives `voxgate:state`.
    pub key_prefix: String,
    /// How long one command or connection attempt may take before the call fails.
    pub command_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }
}

/// Why the Redis registry could not start. Never answered by resetting the state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStartupError {
    /// The URL is not a Redis URL (the URL itself is left out: it may hold a password).
    #[error("invalid redis url: {0}")]
    InvalidUrl(String),
    /// Redis could not be reached, did not answer in time or answered with an error.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// The stored state is not a state this build can use.
    #[error(
        "redis key {key} is unusable: {reason}; voxgate will not reset it: repair or delete the \
         key, then start again"
    )]
    Unusable {
        /// The state key.
        key: String,
        /// What is wrong, with line and column for a JSON error.
        reason: String,
    },
    /// The configuration's regions and nodes break a rule (e.g. two nodes with the same key).
    #[error("the configured regions and nodes were refused: {0}")]
    Seed(#[source] ClusterError),
}

/// The registry shared by several nodes through Redis.
///
/// Clones share the same connection.
#[derive(Clone)]
pub struct RedisRegistry {
    shared: Arc<Shared>,
}

struct Shared {
    /// Opens the short-lived connections that changes run on.
    client: redis::Client,
    /// Every other command; reconnects by itself after a failure.
    manager: ConnectionManager,
    keys: Keys,
    timeout: Duration,
    /// Seeds the state at startup and again if the state key disappears.
    seed: Seed,
}

/// The key names.
struct Keys {
    prefix: String,
    state: String,
    audit: String,
}

/// What a transaction does to the state.
#[derive(Clone, Copy)]
enum Edit<'a> {
    /// Adds the configured regions and nodes where absent.
    Seed,
    /// An operator's change.
    Change { change: &'a Change, actor: &'a str },
}

/// Why an operation failed, before it becomes a [`RegistryError`] or a [`RedisStartupError`].
enum Failure {
    /// The change breaks a rule.
    Rejected(ClusterError),
    /// The seed breaks a rule.
    Seed(ClusterError),
    /// The state value does not parse or validate.
    Unusable { key: String, reason: String },
    /// Redis failed, timed out, or other writers kept winning.
    Redis(String),
}

impl RedisRegistry {
    /// Connects with the default options ([`DEFAULT_KEY_PREFIX`], [`DEFAULT_COMMAND_TIMEOUT`]) and
    /// adds the configured regions and nodes where absent. `url` is e.g. `redis://host:6379/0`.
    pub async fn connect(url: &str, seed: &Seed) -> Result<Self, RedisStartupError> {
        Self::connect_with(url, seed, RedisOptions::default()).await
    }

    /// As [`RedisRegistry::connect`], with `options`.
    pub async fn connect_with(
        url: &str,
        seed: &Seed,
        options: RedisOptions,
    ) -> Result<Self, RedisStartupError> {
        let client = redis::Client::open(url)
            .map_err(|err| RedisStartupError::InvalidUrl(err.to_string()))?;
        let timeout = options.command_timeout;
        // No retries inside the manager: a failed call makes one reconnect attempt and the caller's
        // next call another, so a Redis that comes back is used at once rather than after the
        // manager's backoff (seconds to a minute).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(0);
        let manager = match tokio::time::timeout(
            timeout,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        {
            Ok(Ok(manager)) => manager,
            Ok(Err(err)) => return Err(RedisStartupError::Unavailable(err.to_string())),
            Err(_) => {
                return Err(RedisStartupError::Unavailable(format!(
                    "no connection within {timeout:?}"
                )));
            }
        };
        let registry = Self {
            shared: Arc::new(Shared {
                client,
                manager,
                keys: Keys::new(&options.key_prefix),
                timeout,
                seed: seed.clone(),
            }),
        };
        match registry.shared.transact(Edit::Seed).await {
            Ok(_) => Ok(registry),
            // Seeding applies no change, so a refusal can only come from the seed.
            Err(Failure::Seed(err) | Failure::Rejected(err)) => Err(RedisStartupError::Seed(err)),
            Err(Failure::Unusable { key, reason }) => {
                Err(RedisStartupError::Unusable { key, reason })
            }
            Err(Failure::Redis(reason)) => Err(RedisStartupError::Unavailable(reason)),
        }
    }

    /// The prefix of every key this registry uses.
    pub fn key_prefix(&self) -> &str {
        &self.shared.keys.prefix
    }
}

impl fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client's connection info may hold a password; leave it out.
        f.debug_struct("RedisRegistry")
            .field("key_prefix", &self.shared.keys.prefix)
            .field("timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Registry for RedisRegistry {
    async fn snapshot(&self) -> Result<Snapshot, RegistryError> {
        let shared = &self.shared;
        let mut conn = shared.manager.clone();
        let state = shared.load(&mut conn).await?;
        let (statuses, now_ms) = shared.read_statuses(&mut conn, &state).await?;
        Ok(Snapshot {
            state,
            statuses,
            now_ms,
        })
    }

    async fn apply(&self, change: Change, actor: &str) -> Result<(), RegistryError> {
        self.shared
            .transact(Edit::Change {
                change: &change,
                actor,
            })
            .await?;
        Ok(())
    }

    async fn publish_status(
        &self,
        node: &NodeId,
        status: NodeStatus,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        let shared = &self.shared;
        let key = shared.keys.status(node);
        // PX takes at least 1 ms; a zero TTL is as good as expired by the time anyone reads it.
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let json = serde_json::to_string(&status)
            .map_err(|err| Failure::Redis(format!("cannot encode the status: {err}")))?;
        let mut conn = shared.manager.clone();
        // One round trip: the state comes back with the write, and a status of a node that is not
        // registered is taken back at once, so a deleted node that still heartbeats learns it.
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&shared.keys.state);
        pipe.cmd("SET")
            .arg(&key)
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        let (stored,): (Option<String>,) = shared
            .timed("publish the status", pipe.query_async(&mut conn))
            .await?;
        let registered = match stored {
            Some(text) => shared.decode(&text)?.node(node).is_some(),
            None => shared.load(&mut conn).await?.node(node).is_some(),
        };
        if !registered {
            shared
                .timed(
                    "remove the status of an unknown node",
                    redis::cmd("DEL").arg(&key).query_async::<()>(&mut conn),
                )
                .await?;
            return Err(RegistryError::Rejected(ClusterError::new(
                ErrorCode::NodeNotFound,
                format!("node {node} not found"),
            )));
        }
        Ok(())
    }

    async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, RegistryError> {
        if limit == 0 {
            // LRANGE -0 -1 would be the whole list.
            return Ok(Vec::new());
        }
        let shared = &self.shared;
        let start = -i64::try_from(limit.min(AUDIT_KEPT)).unwrap_or(i64::MAX);
        let mut conn = shared.manager.clone();
        let lines: Vec<String> = shared
            .timed(
                "read the audit trail",
                redis::cmd("LRANGE")
                    .arg(&shared.keys.audit)
                    .arg(start)
                    .arg(-1)
                    .query_async(&mut conn),
            )
            .await?;
        let mut entries = Vec::with_capacity(lines.len());
        let mut skipped = 0usize;
        for line in lines {
            match serde_json::from_str::<AuditEntry>(&line) {
                Ok(entry) => entries.push(entry),
                Err(_) => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!(key = %shared.keys.audit, skipped, "skipped unreadable audit entries");
        }
        Ok(entries)
    }
}

impl Shared {
    /// The stored state; seeded again (and written) when the key is missing.
    async fn load(&self, conn: &mut ConnectionManager) -> Result<ClusterState, Failure> {
        let stored: Option<String> = self
            .timed(
                "read the state",
                redis::cmd("GET").arg(&self.keys.state).query_async(conn),
            )
            .await?;
        match stored {
            Some(text) => self.decode(&text),
            None => {
                tracing::warn!(
                    key = %self.keys.state,
                    "the cluster state is missing from redis; seeding it from the configuration"
                );
                self.transact(Edit::Seed).await
            }
        }
    }

    /// Runs `edit` as an optimistic transaction on a connection of its own and returns the state
    /// it leaves. Only conflicts are retried: a refusal or a Redis error ends it at once.
    async fn transact(&self, edit: Edit<'_>) -> Result<ClusterState, Failure> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout);
        let mut conn = self
            .timed(
                "open a connection",
                self.client
                    .get_multiplexed_async_connection_with_config(&config),
            )
            .await?;
        // Deleting a node checks that it no longer reports; a heartbeat landing between that check
        // and the write must send us round again (and then be refused).
        let watched_status = match edit {
            Edit::Change {
                change: Change::DeleteNode { id },
                ..
            } => Some(self.keys.status(id)),
            _ => None,
        };
        for attempt in 1..=MAX_ATTEMPTS {
            let mut watch = redis::cmd("WATCH");
            watch.arg(&self.keys.state);
            if let Some(key) = &watched_status {
                watch.arg(key);
            }
            self.timed("watch the state", watch.query_async::<()>(&mut conn))
                .await?;
            let stored: Option<String> = self
                .timed(
                    "read the state",
                    redis::cmd("GET")
                        .arg(&self.keys.state)
                        .query_async(&mut conn),
                )
                .await?;
            let loaded = stored.map(|text| self.decode(&text)).transpose()?;
            let (next, entry) = self.edited(&mut conn, loaded.as_ref(), edit).await?;
            if entry.is_none() && loaded.as_ref() == Some(&next) {
                // The seed was there already; the watch dies with the connection.
                return Ok(next);
            }
            let encoded = encode(&next)
                .map_err(|err| Failure::Redis(format!("cannot encode the state: {err}")))?;
            let mut tx = redis::pipe();
            tx.atomic()
                .cmd("SET")
                .arg(&self.keys.state)
                .arg(encoded)
                .ignore();
            if let Some(entry) = &entry {
                let line = serde_json::to_string(entry).map_err(|err| {
                    Failure::Redis(format!("cannot encode the audit entry: {err}"))
                })?;
                let keep = i64::try_from(AUDIT_KEPT).unwrap_or(i64::MAX);
                tx.cmd("RPUSH").arg(&self.keys.audit).arg(line).ignore();
                tx.cmd("LTRIM")
                    .arg(&self.keys.audit)
                    .arg(-keep)
                    .arg(-1)
                    .ignore();
            }
            let reply: Value = self
                .timed("write the state", tx.query_async(&mut conn))
                .await?;
            if reply == Value::Nil {
                tracing::debug!(attempt, "the cluster state changed meanwhile; trying again");
                // A pause that grows with the attempts spreads out writers that keep colliding.
                tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(20)))).await;
                continue;
            }
            if let Some(entry) = &entry {
                tracing::info!(
                    target: "voxgate::audit",
                    actor = %entry.actor,
                    action = %entry.action,
                    subject = %entry.target,
                    public_reason = %entry.public_reason,
                    private_reason = %entry.private_reason,
                    "cluster change applied"
                );
            }
            return Ok(next);
        }
        Err(Failure::Redis(format!(
            "the cluster state kept changing during {MAX_ATTEMPTS} attempts; try again"
        )))
    }

    /// The state after `edit`, with the audit entry to record (none for seeding). A missing state
    /// starts from the seed.
    async fn edited(
        &self,
        conn: &mut MultiplexedConnection,
        loaded: Option<&ClusterState>,
        edit: Edit<'_>,
    ) -> Result<(ClusterState, Option<AuditEntry>), Failure> {
        let now_ms = now_ms();
        let mut next = loaded.cloned().unwrap_or_default();
        if loaded.is_none() || matches!(edit, Edit::Seed) {
            self.seed
                .apply_to(&mut next, now_ms)
                .map_err(Failure::Seed)?;
        }
        let Edit::Change { change, actor } = edit else {
            return Ok((next, None));
        };
        // The safe-deletion rules need the statuses as they are now, not as last seen.
        let (statuses, now_ms) = self.read_statuses(conn, &next).await?;
        next.apply(change, actor, now_ms, &statuses)
            .map_err(Failure::Rejected)?;
        Ok((next, Some(AuditEntry::for_change(change, actor, now_ms))))
    }

    /// The live statuses of the nodes in `state` (one round trip: `MGET` and a `PTTL` per key),
    /// and the time they are valid at.
    async fn read_statuses<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        state: &ClusterState,
    ) -> Result<(Statuses, u64), Failure> {
        let nodes: Vec<&NodeId> = state.nodes().map(|node| &node.id).collect();
        let mut statuses = Statuses::default();
        if nodes.is_empty() {
            return Ok((statuses, now_ms()));
        }
        let keys: Vec<String> = nodes.iter().map(|node| self.keys.status(node)).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("MGET").arg(&keys);
        for key in &keys {
            pipe.cmd("PTTL").arg(key);
        }
        let replies: Vec<Value> = self
            .timed("read the statuses", pipe.query_async(conn))
            .await?;
        let mut replies = replies.into_iter();
        // Read after the answer: a key alive then with `ttl` left is fresh until now + ttl.
        let now_ms = now_ms();
        let values: Vec<Option<String>> = replies
            .next()
            .map(redis::from_owned_redis_value)
            .transpose()
            .map_err(|err| Failure::Redis(format!("unexpected answer to MGET: {err}")))?
            .unwrap_or_default();
        for ((node, value), ttl) in nodes.into_iter().zip(values).zip(replies) {
            // -2: expired since the MGET; -1: written without a TTL, which we never do.
            let ttl_ms = match redis::from_owned_redis_value::<i64>(ttl) {
                Ok(ttl_ms) if ttl_ms > 0 => ttl_ms.unsigned_abs(),
                _ => continue,
            };
            let Some(value) = value else { continue };
            match serde_json::from_str::<NodeStatus>(&value) {
                Ok(status) => {
                    statuses.publish(node.clone(), status, now_ms.saturating_add(ttl_ms));
                }
                Err(err) => tracing::warn!(
                    %node,
                    error = %err,
                    "ignoring an unreadable status in redis; the node counts as offline"
                ),
            }
        }
        Ok((statuses, now_ms))
    }

    /// Parses and validates a stored state.
    fn decode(&self, text: &str) -> Result<ClusterState, Failure> {
        decode(text).map_err(|reason| Failure::Unusable {
            key: self.keys.state.clone(),
            reason,
        })
    }

    /// Awaits one Redis call, failing it after the command timeout.
    async fn timed<T>(
        &self,
        what: &str,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            // The connection's own response timeout usually fires first; say the same either way.
            Ok(Err(err)) if !err.is_timeout() => {
                Err(Failure::Redis(format!("redis: cannot {what}: {err}")))
            }
            Ok(Err(_)) | Err(_) => Err(Failure::Redis(format!(
                "redis: cannot {what}: no answer within {:?}",
                self.timeout
            ))),
        }
    }
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            state: format!("{prefix}state"),
            audit: format!("{prefix}audit"),
        }
    }

    fn status(&self, node: &NodeId) -> String {
        format!("{}status:{node}", self.prefix)
    }
}

impl From<Failure> for RegistryError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Rejected(err) => RegistryError::Rejected(err),
            Failure::Seed(err) => RegistryError::Unavailable(format!(
                "the cluster state is missing from redis and the configured regions and nodes \
                 were refused: {err}"
            )),
            Failure::Unusable { key, reason } => RegistryError::Unavailable(format!(
                "redis key {key} holds no usable cluster state: {reason}; voxgate will not \
                 overwrite it: repair or delete the key"
            )),
            Failure::Redis(reason) => RegistryError::Unavailable(reason),
        }
    }
}

fn encode(state: &ClusterState) -> serde_json::Result<String> {
    let bytes = envelope::encode(state, false)?;
    Ok(String::from_utf8(bytes).unwrap_or_default())
}

/// Parses and validates a state value; the error says what is wrong and where.
fn decode(text: &str) -> Result<ClusterState, String> {
    envelope::decode(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_bad_values_are_named() {
        let mut state = ClusterState::default();
        state.seed_region(voxgate_core::RegionId::new("US-EAST").unwrap(), 7);
        let text = encode(&state).unwrap();
        assert!(text.starts_with(r#"{"format":"voxgate-state","version":1,"state":"#));
        assert_eq!(decode(&text).unwrap(), state);
        for (bad, why) in [
            ("{not json", "invalid JSON"),
            (r#"{"format":"other","version":1,"state":{}}"#, "format is"),
            (
                r#"{"format":"voxgate-state","version":9,"state":{}}"#,
                "version 9",
            ),
            (
                r#"{"format":"voxgate-state","version":1,"state":{"regions":[{}]}}"#,
                "at state.regions",
            ),
        ] {
            let err = decode(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
