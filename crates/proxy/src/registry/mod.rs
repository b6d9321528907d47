//! The cluster registry: where regions, nodes, their lifecycle, live statuses and the audit trail are
//! stored and shared.
//!
//! One trait, [`Registry`], with one implementation per storage. The rules live in
//! `voxgate_cluster::state` (a pure core): a registry takes a [`Change`], lets
//! [`ClusterState::apply`] validate it against the current state and the live statuses, and makes
//! the result durable and visible; it never decides anything itself. So every storage refuses the
//! same changes with the same [`voxgate_cluster::ErrorCode`].
//!
//! - [`embedded::EmbeddedRegistry`] (now): one node, nothing to install. The state sits in the
//!   process, seeded from the configuration and persisted crash-safely to a local JSON file, with an
//!   append-only audit log beside it; statuses live in memory only.
//! - [`redis::RedisRegistry`]: several nodes share one Redis server. The same state as one JSON
//!   value changed by optimistic transactions, statuses as keys with a TTL, the audit trail as a list.
//!
//! The configuration seeds the state at startup: a region or node it names is added (enabled) only
//! when absent, so an operator's later change through the admin API is never undone by a restart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use voxgate_cluster::{
    AuditEntry, Change, ClusterError, ClusterState, NewNode, NodeStatus, Statuses,
};
use voxgate_core::{NodeId, RegionId};

pub mod embedded;
pub mod envelope;
pub mod redis;

pub use embedded::{EmbeddedRegistry, RegistryStartupError};
pub use redis::RedisRegistry;

/// Shared cluster state: read it, change it, publish live status, read the audit trail.
///
/// Implementations are cheap to share behind an `Arc` and never hold a lock across an `.await`.
#[async_trait::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// The current state and the live (unexpired) statuses, with the time they were read at.
    async fn snapshot(&self) -> Result<Snapshot, RegistryError>;

    /// Validates `change` against the current state, persists it and records it in the audit trail
    /// under `actor`. A refused change ([`RegistryError::Rejected`]) or a failed write
    /// ([`RegistryError::Unavailable`]) leaves the state unchanged.
    async fn apply(&self, change: Change, actor: &str) -> Result<(), RegistryError>;

    /// Publishes `node`'s live status; it counts as online for `ttl` from now.
    async fn publish_status(
        &self,
        node: &NodeId,
        status: NodeStatus,
        ttl: Duration,
    ) -> Result<(), RegistryError>;

    /// The latest audit entries, at most `limit`, newest last.
    async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, RegistryError>;
}

/// The state as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Regions and nodes with their lifecycle.
    pub state: ClusterState,
    /// Live statuses; expired ones are already dropped.
    pub statuses: Statuses,
    /// When it was read (Unix ms): the `now_ms` to query `statuses` and `state` with.
    pub now_ms: u64,
}

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The change breaks a rule; retrying the same change will fail the same way.
    #[error(transparent)]
    Rejected(#[from] ClusterError),
    /// The storage could not be read or written; nothing changed, a retry may succeed.
    #[error("cluster registry unavailable: {0}")]
    Unavailable(String),
}

/// What the configuration file says the cluster holds; added at startup where absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seed {
    /// Regions to have.
    pub regions: Vec<RegionId>,
    /// Nodes to have; a node's region is seeded with it.
    pub nodes: Vec<NewNode>,
}

impl Seed {
    /// Adds the seed to `state` where absent, stamped `now_ms`.
    pub fn apply_to(&self, state: &mut ClusterState, now_ms: u64) -> Result<(), ClusterError> {
        for region in &self.regions {
            state.seed_region(region.clone(), now_ms);
        }
        for node in &self.nodes {
            state.seed_node(node.clone(), now_ms)?;
        }
        Ok(())
    }
}

/// The wall clock in Unix milliseconds (0 if the clock is before 1970), the time base of the
/// registry and of every node's status.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}
