//! The cluster state machine: validates operator changes to regions and nodes, applies them, and
//! answers lifecycle and capacity questions against the nodes' live statuses.
//!
//! [`ClusterState`] holds what operators decide (regions, nodes, lifecycles); [`Statuses`] holds what
//! nodes report (live status with an expiry). A [`Change`] is checked against both and either applied
//! whole or refused with a [`ClusterError`] whose [`ErrorCode`] is stable for API clients; a refused
//! change leaves the state as it was. No I/O and no clock: `now_ms` (Unix milliseconds) is an
//! argument, and persisting, auditing and publishing are the registry's job.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use voxgate_core::{IdError, NodeId, RegionId};

use crate::model::{
    AdminState, ApiKeyHash, Lifecycle, NewNode, Node, NodeKind, NodeStatus, Reasons, Region,
    RuntimeState, id_text, keyed_list,
};

/// Fewest characters an API key may have.
pub const MIN_API_KEY_CHARS: usize = 32;

/// Longest accepted endpoint (the longest DNS name).
pub const MAX_ENDPOINT_LEN: usize = 253;

/// Why a change was refused; the strings are stable and part of the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ErrorCode {
    /// A region id is not `CC-NAME`.
    InvalidRegionId,
    /// A node id is not 1-64 letters, digits, `-`, `_` or `.`.
    InvalidNodeId,
    /// A field has a value that cannot work (the message names the field).
    InvalidField,
    /// An API key has fewer than [`MIN_API_KEY_CHARS`] characters.
    ApiKeyTooShort,
    /// Another node already uses this API key.
    ApiKeyReused,
    /// A region with this id exists.
    RegionExists,
    /// No region with this id.
    RegionNotFound,
    /// A node with this id exists.
    NodeExists,
    /// No node with this id.
    NodeNotFound,
    /// The node must be disabled before it is deleted.
    NodeNotDisabled,
    /// The node still reports a live status; stop it first.
    NodeReporting,
    /// Live Proxies still hold sessions on the node.
    NodeHasSessions,
    /// The region must be disabled before it is deleted.
    RegionEnabled,
    /// Nodes of the region still report a live status.
    NodesOnline,
    /// Nodes are still registered in the region; delete them first.
    RegionHasNodes,
}

impl ErrorCode {
    /// The stable code, e.g. `"NODE_NOT_FOUND"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRegionId => "INVALID_REGION_ID",
            ErrorCode::InvalidNodeId => "INVALID_NODE_ID",
            ErrorCode::InvalidField => "INVALID_FIELD",
            ErrorCode::ApiKeyTooShort => "API_KEY_TOO_SHORT",
            ErrorCode::ApiKeyReused => "API_KEY_REUSED",
            ErrorCode::RegionExists => "REGION_EXISTS",
            ErrorCode::RegionNotFound => "REGION_NOT_FOUND",
            ErrorCode::NodeExists => "NODE_EXISTS",
            ErrorCode::NodeNotFound => "NODE_NOT_FOUND",
            ErrorCode::NodeNotDisabled => "NODE_NOT_DISABLED",
            ErrorCode::NodeReporting => "NODE_REPORTING",
            ErrorCode::NodeHasSessions => "NODE_HAS_SESSIONS",
            ErrorCode::RegionEnabled => "REGION_ENABLED",
            ErrorCode::NodesOnline => "NODES_ONLINE",
            ErrorCode::RegionHasNodes => "REGION_HAS_NODES",
        }
    }

    /// The HTTP status the admin API answers with: 400 for malformed input, 404 for an unknown id,
    /// 409 for a change that conflicts with the current state.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRegionId
            | ErrorCode::InvalidNodeId
            | ErrorCode::InvalidField
            | ErrorCode::ApiKeyTooShort => 400,
            ErrorCode::RegionNotFound | ErrorCode::NodeNotFound => 404,
            ErrorCode::ApiKeyReused
            | ErrorCode::RegionExists
            | ErrorCode::NodeExists
            | ErrorCode::NodeNotDisabled
            | ErrorCode::NodeReporting
            | ErrorCode::NodeHasSessions
            | ErrorCode::RegionEnabled
            | ErrorCode::NodesOnline
            | ErrorCode::RegionHasNodes => 409,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused change: a stable code and a message for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ClusterError {
    /// What kind of refusal.
    pub code: ErrorCode,
    /// What was wrong, naming the id or field.
    pub message: String,
}

impl ClusterError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// An `INVALID_REGION_ID` from the parse error.
    pub fn invalid_region_id(err: &IdError) -> Self {
        Self::new(ErrorCode::InvalidRegionId, err.to_string())
    }

    /// An `INVALID_NODE_ID` from the parse error.
    pub fn invalid_node_id(err: &IdError) -> Self {
        Self::new(ErrorCode::InvalidNodeId, err.to_string())
    }

    fn invalid_field(field: &str, why: impl fmt::Display) -> Self {
        Self::new(ErrorCode::InvalidField, format!("{field}: {why}"))
    }
}

impl From<IdError> for ClusterError {
    fn from(err: IdError) -> Self {
        match err {
            IdError::Region(..) => Self::invalid_region_id(&err),
            IdError::Node(..) => Self::invalid_node_id(&err),
            // IdError is non_exhaustive; a future kind of id is still a malformed field.
            _ => Self::new(ErrorCode::InvalidField, err.to_string()),
        }
    }
}

/// The nodes' live statuses, each with the time it expires; an expired status means offline.
///
/// Expired entries are ignored by every query; [`Statuses::prune`] drops them to bound memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Statuses {
    live: BTreeMap<NodeId, (NodeStatus, u64)>,
}

impl Statuses {
    /// Records `node`'s status, replacing the previous one; fresh until `expires_at_ms`.
    pub fn publish(&mut self, node: NodeId, status: NodeStatus, expires_at_ms: u64) {
        self.live.insert(node, (status, expires_at_ms));
    }

    /// Forgets `node`'s status (e.g. when it stops cleanly).
    pub fn remove(&mut self, node: &NodeId) {
        self.live.remove(node);
    }

    /// `node`'s status if it has not expired at `now_ms`.
    pub fn fresh(&self, node: &NodeId, now_ms: u64) -> Option<&NodeStatus> {
        self.live
            .get(node)
            .filter(|(_, expires_at_ms)| now_ms < *expires_at_ms)
            .map(|(status, _)| status)
    }

    /// Whether `node` has a fresh status at `now_ms`.
    pub fn is_online(&self, node: &NodeId, now_ms: u64) -> bool {
        self.fresh(node, now_ms).is_some()
    }

    /// Sessions that live Proxies report holding on `backend`, summed over every fresh status.
    pub fn placed_on(&self, backend: &NodeId, now_ms: u64) -> u32 {
        self.live
            .values()
            .filter(|(_, expires_at_ms)| now_ms < *expires_at_ms)
            .filter_map(|(status, _)| status.placed.get(backend))
            .fold(0u32, |sum, count| sum.saturating_add(*count))
    }

    /// Drops every status expired at `now_ms`.
    pub fn prune(&mut self, now_ms: u64) {
        self.live
            .retain(|_, (_, expires_at_ms)| now_ms < *expires_at_ms);
    }

    /// Every stored status with its expiry, fresh or not, in node id order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &NodeStatus, u64)> {
        self.live
            .iter()
            .map(|(node, (status, expires_at_ms))| (node, status, *expires_at_ms))
    }
}

/// One status as written: a list of these rather than a map, so the expiry sits beside its status.
#[derive(Serialize)]
struct StatusEntryRef<'a> {
    #[serde(with = "id_text")]
    node: &'a NodeId,
    expires_at_ms: u64,
    status: &'a NodeStatus,
}

#[derive(Deserialize)]
struct StatusEntry {
    #[serde(with = "id_text")]
    node: NodeId,
    expires_at_ms: u64,
    status: NodeStatus,
}

impl Serialize for Statuses {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.iter()
                .map(|(node, status, expires_at_ms)| StatusEntryRef {
                    node,
                    expires_at_ms,
                    status,
                }),
        )
    }
}

impl<'de> Deserialize<'de> for Statuses {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<StatusEntry>::deserialize(deserializer)?;
        Ok(Self {
            live: entries
                .into_iter()
                .map(|entry| (entry.node, (entry.status, entry.expires_at_ms)))
                .collect(),
        })
    }
}

/// An operator's change to the cluster.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// Creates a region, disabled and in maintenance.
    CreateRegion {
        /// The new region.
        id: RegionId,
    },
    /// Deletes a disabled region that has no nodes left.
    DeleteRegion {
        /// The region.
        id: RegionId,
    },
    /// Enables or disables a region.
    SetRegionState {
        /// The region.
        id: RegionId,
        /// Enabled when true.
        enabled: bool,
        /// Why.
        reasons: Reasons,
    },
    /// Puts a region into maintenance or takes it out.
    SetRegionMaintenance {
        /// The region.
        id: RegionId,
        /// In maintenance when true.
        on: bool,
        /// Why.
        reasons: Reasons,
    },
    /// Registers a node, disabled and in maintenance.
    AddNode(NewNode),
    /// Changes a node's connection details, cap or key; absent fields stay as they are.
    UpdateNode {
        /// The node.
        id: NodeId,
        /// New host name or IP address.
        endpoint: Option<String>,
        /// New SIP port.
        sip_port: Option<u16>,
        /// New session cap.
        max_sessions: Option<u32>,
        /// New plain API key (rotation); only its digest is kept.
        api_key: Option<String>,
    },
    /// Deletes a disabled node that no longer reports and holds no sessions.
    DeleteNode {
        /// The node.
        id: NodeId,
    },
    /// Enables or disables a node.
    SetNodeState {
        /// The node.
        id: NodeId,
        /// Enabled when true.
        enabled: bool,
        /// Why.
        reasons: Reasons,
    },
    /// Puts a node into maintenance or takes it out.
    SetNodeMaintenance {
        /// The node.
        id: NodeId,
        /// In maintenance when true.
        on: bool,
        /// Why.
        reasons: Reasons,
    },
}

impl Change {
    /// The audit action, e.g. `"node.disable"`.
    pub fn action(&self) -> &'static str {
        match self {
            Change::CreateRegion { .. } => "region.create",
            Change::DeleteRegion { .. } => "region.delete",
            Change::SetRegionState { enabled: true, .. } => "region.enable",
            Change::SetRegionState { enabled: false, .. } => "region.disable",
            Change::SetRegionMaintenance { on: true, .. } => "region.maintenance_on",
            Change::SetRegionMaintenance { on: false, .. } => "region.maintenance_off",
            Change::AddNode(_) => "node.add",
            Change::UpdateNode { .. } => "node.update",
            Change::DeleteNode { .. } => "node.delete",
            Change::SetNodeState { enabled: true, .. } => "node.enable",
            Change::SetNodeState { enabled: false, .. } => "node.disable",
            Change::SetNodeMaintenance { on: true, .. } => "node.maintenance_on",
            Change::SetNodeMaintenance { on: false, .. } => "node.maintenance_off",
        }
    }

    /// The id of the region or node it changes.
    pub fn target(&self) -> String {
        match self {
            Change::CreateRegion { id }
            | Change::DeleteRegion { id }
            | Change::SetRegionState { id, .. }
            | Change::SetRegionMaintenance { id, .. } => id.to_string(),
            Change::AddNode(node) => node.id.to_string(),
            Change::UpdateNode { id, .. }
            | Change::DeleteNode { id }
            | Change::SetNodeState { id, .. }
            | Change::SetNodeMaintenance { id, .. } => id.to_string(),
        }
    }

    /// The reasons given, for lifecycle changes.
    pub fn reasons(&self) -> Option<&Reasons> {
        match self {
            Change::SetRegionState { reasons, .. }
            | Change::SetRegionMaintenance { reasons, .. }
            | Change::SetNodeState { reasons, .. }
            | Change::SetNodeMaintenance { reasons, .. } => Some(reasons),
            _ => None,
        }
    }
}

impl fmt::Debug for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written by hand so a plain API key never reaches a log line.
        match self {
            Change::AddNode(node) => f.debug_tuple("AddNode").field(node).finish(),
            Change::UpdateNode {
                id,
                endpoint,
                sip_port,
                max_sessions,
                api_key,
            } => f
                .debug_struct("UpdateNode")
                .field("id", id)
                .field("endpoint", endpoint)
                .field("sip_port", sip_port)
                .field("max_sessions", max_sessions)
                .field("api_key", &api_key.as_ref().map(|_| "<redacted>"))
                .finish(),
            other => f
                .debug_struct("Change")
                .field("action", &other.action())
                .field("target", &other.target())
                .field("reasons", &other.reasons())
                .finish(),
        }
    }
}

/// One applied change, as the audit trail keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When it was applied (Unix ms).
    pub at_ms: u64,
    /// Who applied it.
    pub actor: String,
    /// What it did, e.g. `"node.disable"` (see [`Change::action`]).
    pub action: String,
    /// The region or node id.
    pub target: String,
    /// The public reason given, if any.
    #[serde(default)]
    pub public_reason: String,
    /// The private reason given, if any.
    #[serde(default)]
    pub private_reason: String,
}

impl AuditEntry {
    /// The entry for `change` applied by `actor` at `now_ms`.
    pub fn for_change(change: &Change, actor: &str, now_ms: u64) -> Self {
        let reasons = change.reasons();
        Self {
            at_ms: now_ms,
            actor: actor.to_owned(),
            action: change.action().to_owned(),
            target: change.target(),
            public_reason: reasons.map(|r| r.public.clone()).unwrap_or_default(),
            private_reason: reasons.map(|r| r.private.clone()).unwrap_or_default(),
        }
    }
}

/// Sessions and room of one kind of node in one region.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionCapacity {
    /// The region.
    #[serde(with = "id_text")]
    pub region: RegionId,
    /// Proxies or Backends.
    pub kind: NodeKind,
    /// Nodes of this kind registered in the region.
    pub nodes_registered: u32,
    /// Those with a fresh status.
    pub nodes_online: u32,
    /// Sessions on the online nodes, including nodes in maintenance or disabled that are still
    /// finishing theirs: the load the region carries.
    pub active: u32,
    /// Session caps of the online nodes that take new sessions: node and region enabled, neither
    /// in maintenance, and the node's status says it is running (not starting, draining or
    /// stopping).
    pub limit: u32,
    /// `limit - active`, at least 0. Conservative while a node drains: its remaining sessions count
    /// against the room of the nodes that take new ones.
    pub available: u32,
    /// `active / limit`; 0 when `limit` is 0. Above 1 when draining nodes still hold more than the
    /// remaining nodes could take.
    pub utilization: f64,
}

/// Regions and nodes with their lifecycles: what operators decided. Every node's region exists and
/// no two nodes share an API key; [`ClusterState::validate`] checks this for a state read from
/// storage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    #[serde(default, with = "keyed_list")]
    regions: BTreeMap<RegionId, Region>,
    #[serde(default, with = "keyed_list")]
    nodes: BTreeMap<NodeId, Node>,
    /// Ids of regions an operator deleted: seeding from a configuration that still names them
    /// does not bring them back (creating one again clears its mark).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    deleted_regions: BTreeSet<String>,
    /// Ids of nodes an operator deleted, likewise.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    deleted_nodes: BTreeSet<String>,
}

impl ClusterState {
    /// Checks `change` against the state and `statuses` and applies it, recording `actor` and
    /// `now_ms` on what it touches. A refused change leaves the state unchanged.
    pub fn apply(
        &mut self,
        change: &Change,
        actor: &str,
        now_ms: u64,
        statuses: &Statuses,
    ) -> Result<(), ClusterError> {
        match change {
            Change::CreateRegion { id } => {
                if self.regions.contains_key(id) {
                    return Err(ClusterError::new(
                        ErrorCode::RegionExists,
                        format!("region {id} already exists"),
                    ));
                }
                self.regions.insert(
                    id.clone(),
                    Region {
                        id: id.clone(),
                        lifecycle: Lifecycle::new_entity(now_ms, actor),
                        created_at_ms: now_ms,
                    },
                );
                self.deleted_regions.remove(id.as_str());
            }
            Change::DeleteRegion { id } => {
                self.check_region_deletable(id, now_ms, statuses)?;
                self.regions.remove(id);
                self.deleted_regions.insert(id.as_str().to_owned());
            }
            Change::SetRegionState {
                id,
                enabled,
                reasons,
            } => {
                let region = self.region_mut(id)?;
                record(&mut region.lifecycle, reasons, actor, now_ms);
                region.lifecycle.state = admin_state(*enabled);
            }
            Change::SetRegionMaintenance { id, on, reasons } => {
                let region = self.region_mut(id)?;
                record(&mut region.lifecycle, reasons, actor, now_ms);
                region.lifecycle.maintenance = *on;
            }
            Change::AddNode(new) => {
                let api_key = check_new_node(new)?;
                if !self.regions.contains_key(&new.region) {
                    return Err(region_not_found(&new.region));
                }
                if self.nodes.contains_key(&new.id) {
                    return Err(ClusterError::new(
                        ErrorCode::NodeExists,
                        format!("node {} already exists", new.id),
                    ));
                }
                self.check_key_unused(&api_key, &new.id)?;
                let lifecycle = Lifecycle::new_entity(now_ms, actor);
                self.nodes
                    .insert(new.id.clone(), node_from(new, api_key, lifecycle, now_ms));
                self.deleted_nodes.remove(new.id.as_str());
            }
            Change::UpdateNode {
                id,
                endpoint,
                sip_port,
                max_sessions,
                api_key,
            } => {
                if !self.nodes.contains_key(id) {
                    return Err(node_not_found(id));
                }
                if let Some(endpoint) = endpoint {
                    check_endpoint(endpoint)?;
                }
                if let Some(port) = sip_port {
                    check_sip_port(*port)?;
                }
                if let Some(max) = max_sessions {
                    check_max_sessions(*max)?;
                }
                let api_key = api_key.as_deref().map(check_api_key).transpose()?;
                if let Some(hash) = &api_key {
                    self.check_key_unused(hash, id)?;
                }
                let node = self.node_mut(id)?;
                if let Some(endpoint) = endpoint {
                    node.endpoint.clone_from(endpoint);
                }
                node.sip_port = sip_port.unwrap_or(node.sip_port);
                node.max_sessions = max_sessions.unwrap_or(node.max_sessions);
                if let Some(hash) = api_key {
                    node.api_key = hash;
                }
            }
            Change::DeleteNode { id } => {
                self.check_node_deletable(id, now_ms, statuses)?;
                self.nodes.remove(id);
                self.deleted_nodes.insert(id.as_str().to_owned());
            }
            Change::SetNodeState {
                id,
                enabled,
                reasons,
            } => {
                let node = self.node_mut(id)?;
                record(&mut node.lifecycle, reasons, actor, now_ms);
                node.lifecycle.state = admin_state(*enabled);
            }
            Change::SetNodeMaintenance { id, on, reasons } => {
                let node = self.node_mut(id)?;
                record(&mut node.lifecycle, reasons, actor, now_ms);
                node.lifecycle.maintenance = *on;
            }
        }
        Ok(())
    }

    /// Adds region `id` from the configuration, enabled, unless it exists (an existing entry, which
    /// an operator may have changed since, wins) or an operator deleted it.
    pub fn seed_region(&mut self, id: RegionId, now_ms: u64) {
        if self.deleted_regions.contains(id.as_str()) {
            return;
        }
        self.regions.entry(id.clone()).or_insert_with(|| Region {
            id,
            lifecycle: Lifecycle::seeded(now_ms),
            created_at_ms: now_ms,
        });
    }

    /// Adds `node` from the configuration, enabled, unless a node with its id exists (which then is
    /// left alone) or an operator deleted it or its region. Its region is seeded too when absent.
    /// The fields are validated as for [`Change::AddNode`] even when the node exists, so a bad
    /// configuration is reported at once.
    pub fn seed_node(&mut self, node: NewNode, now_ms: u64) -> Result<(), ClusterError> {
        let api_key = check_new_node(&node)?;
        if self.nodes.contains_key(&node.id) || self.deleted_nodes.contains(node.id.as_str()) {
            return Ok(());
        }
        self.check_key_unused(&api_key, &node.id)?;
        self.seed_region(node.region.clone(), now_ms);
        if !self.regions.contains_key(&node.region) {
            return Ok(());
        }
        let seeded = node_from(&node, api_key, Lifecycle::seeded(now_ms), now_ms);
        self.nodes.insert(node.id, seeded);
        Ok(())
    }

    /// Checks the invariants of a state read from storage: every node's region exists, its fields
    /// are valid and no two nodes share an API key.
    pub fn validate(&self) -> Result<(), ClusterError> {
        for node in self.nodes.values() {
            if !self.regions.contains_key(&node.region) {
                return Err(ClusterError::new(
                    ErrorCode::RegionNotFound,
                    format!(
                        "node {} is in region {}, which does not exist",
                        node.id, node.region
                    ),
                ));
            }
            check_endpoint(&node.endpoint)
                .and_then(|()| check_sip_port(node.sip_port))
                .and_then(|()| check_max_sessions(node.max_sessions))
                .map_err(|err| ClusterError::new(err.code, format!("node {}: {err}", node.id)))?;
            self.check_key_unused(&node.api_key, &node.id)?;
        }
        Ok(())
    }

    /// The region `id`.
    pub fn region(&self, id: &RegionId) -> Option<&Region> {
        self.regions.get(id)
    }

    /// The node `id`.
    pub fn node(&self, id: &NodeId) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// Every region, in id order.
    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.regions.values()
    }

    /// Every node, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The nodes of `region`, in id order.
    pub fn nodes_in(&self, region: &RegionId) -> impl Iterator<Item = &Node> {
        self.nodes
            .values()
            .filter(move |node| node.region == *region)
    }

    /// The node whose API key is `key`, if any (an admin API or heartbeat caller).
    pub fn node_by_api_key(&self, key: &str) -> Option<&Node> {
        self.nodes.values().find(|node| node.api_key.verify(key))
    }

    /// Whether node `id` may take new sessions: it and its region are both enabled and neither is in
    /// maintenance. False for an unknown node.
    pub fn accepts_sessions(&self, id: &NodeId) -> bool {
        self.nodes.get(id).is_some_and(|node| {
            node.lifecycle.accepts_sessions()
                && self
                    .regions
                    .get(&node.region)
                    .is_some_and(|region| region.lifecycle.accepts_sessions())
        })
    }

    /// Sessions and room per region and kind at `now_ms`: one entry for every region and both
    /// kinds, in region order, Proxy first, even when the region has no node of that kind.
    ///
    /// A node counts as online while it has a fresh status. A Backend that cannot heartbeat is
    /// probed with OPTIONS; the caller passes a status for it (as the proxy's capacity view does
    /// while probing says it is up), else it counts as offline. A Backend's sessions are the larger of what it reports itself and what the
    /// Proxies report having placed on it: a heartbeating Backend sees every Proxy's sessions, a
    /// probed one reports none of its own.
    pub fn capacity(&self, statuses: &Statuses, now_ms: u64) -> Vec<RegionCapacity> {
        let mut out = Vec::with_capacity(self.regions.len() * NodeKind::ALL.len());
        for region in self.regions.values() {
            for kind in NodeKind::ALL {
                let mut entry = RegionCapacity {
                    region: region.id.clone(),
                    kind,
                    nodes_registered: 0,
                    nodes_online: 0,
                    active: 0,
                    limit: 0,
                    available: 0,
                    utilization: 0.0,
                };
                for node in self.nodes_in(&region.id).filter(|n| n.kind == kind) {
                    entry.nodes_registered = entry.nodes_registered.saturating_add(1);
                    let Some(status) = statuses.fresh(&node.id, now_ms) else {
                        continue;
                    };
                    entry.nodes_online = entry.nodes_online.saturating_add(1);
                    let (active, limit) = match kind {
                        NodeKind::Proxy => (status.active_sessions, status.limit),
                        NodeKind::Backend => (
                            status
                                .active_sessions
                                .max(statuses.placed_on(&node.id, now_ms)),
                            node.max_sessions,
                        ),
                    };
                    entry.active = entry.active.saturating_add(active);
                    // A draining or stopping node finishes its calls but takes no new ones.
                    let running = matches!(status.state, RuntimeState::Running);
                    if running
                        && node.lifecycle.accepts_sessions()
                        && region.lifecycle.accepts_sessions()
                    {
                        entry.limit = entry.limit.saturating_add(limit);
                    }
                }
                entry.available = entry.limit.saturating_sub(entry.active);
                if entry.limit > 0 {
                    entry.utilization = f64::from(entry.active) / f64::from(entry.limit);
                }
                out.push(entry);
            }
        }
        out
    }

    fn region_mut(&mut self, id: &RegionId) -> Result<&mut Region, ClusterError> {
        self.regions.get_mut(id).ok_or_else(|| region_not_found(id))
    }

    fn node_mut(&mut self, id: &NodeId) -> Result<&mut Node, ClusterError> {
        self.nodes.get_mut(id).ok_or_else(|| node_not_found(id))
    }

    /// Refuses `hash` when a node other than `owner` has it.
    fn check_key_unused(&self, hash: &ApiKeyHash, owner: &NodeId) -> Result<(), ClusterError> {
        match self
            .nodes
            .values()
            .find(|node| node.api_key == *hash && node.id != *owner)
        {
            // Naming the other node would tell a caller whose key they hold; say only that it is used.
            Some(_) => Err(ClusterError::new(
                ErrorCode::ApiKeyReused,
                format!("the api_key of node {owner} is already used by another node"),
            )),
            None => Ok(()),
        }
    }

    fn check_node_deletable(
        &self,
        id: &NodeId,
        now_ms: u64,
        statuses: &Statuses,
    ) -> Result<(), ClusterError> {
        let node = self.nodes.get(id).ok_or_else(|| node_not_found(id))?;
        if node.lifecycle.state != AdminState::Disabled {
            return Err(ClusterError::new(
                ErrorCode::NodeNotDisabled,
                format!("node {id} must be disabled before it is deleted"),
            ));
        }
        if statuses.is_online(id, now_ms) {
            return Err(ClusterError::new(
                ErrorCode::NodeReporting,
                format!("node {id} still reports a live status; stop it first"),
            ));
        }
        let placed = statuses.placed_on(id, now_ms);
        if placed > 0 {
            return Err(ClusterError::new(
                ErrorCode::NodeHasSessions,
                format!("live proxies still hold {placed} sessions on node {id}"),
            ));
        }
        Ok(())
    }

    fn check_region_deletable(
        &self,
        id: &RegionId,
        now_ms: u64,
        statuses: &Statuses,
    ) -> Result<(), ClusterError> {
        let region = self.regions.get(id).ok_or_else(|| region_not_found(id))?;
        if region.lifecycle.is_enabled() {
            return Err(ClusterError::new(
                ErrorCode::RegionEnabled,
                format!("region {id} must be disabled before it is deleted"),
            ));
        }
        let online: Vec<&str> = self
            .nodes_in(id)
            .filter(|node| statuses.is_online(&node.id, now_ms))
            .map(|node| node.id.as_str())
            .collect();
        if !online.is_empty() {
            return Err(ClusterError::new(
                ErrorCode::NodesOnline,
                format!(
                    "region {id} has nodes still reporting: {}",
                    online.join(", ")
                ),
            ));
        }
        let registered = self.nodes_in(id).count();
        if registered > 0 {
            return Err(ClusterError::new(
                ErrorCode::RegionHasNodes,
                format!("region {id} still has {registered} registered nodes; delete them first"),
            ));
        }
        Ok(())
    }
}

fn record(lifecycle: &mut Lifecycle, reasons: &Reasons, actor: &str, now_ms: u64) {
    lifecycle.public_reason.clone_from(&reasons.public);
    lifecycle.private_reason.clone_from(&reasons.private);
    lifecycle.changed_at_ms = now_ms;
    actor.clone_into(&mut lifecycle.changed_by);
}

fn admin_state(enabled: bool) -> AdminState {
    if enabled {
        AdminState::Enabled
    } else {
        AdminState::Disabled
    }
}

fn region_not_found(id: &RegionId) -> ClusterError {
    ClusterError::new(ErrorCode::RegionNotFound, format!("region {id} not found"))
}

fn node_not_found(id: &NodeId) -> ClusterError {
    ClusterError::new(ErrorCode::NodeNotFound, format!("node {id} not found"))
}

fn node_from(new: &NewNode, api_key: ApiKeyHash, lifecycle: Lifecycle, now_ms: u64) -> Node {
    Node {
        id: new.id.clone(),
        region: new.region.clone(),
        kind: new.kind,
        endpoint: new.endpoint.clone(),
        sip_port: new.sip_port.unwrap_or_else(|| new.kind.default_sip_port()),
        max_sessions: new.max_sessions,
        api_key,
        lifecycle,
        created_at_ms: now_ms,
    }
}

/// Checks the fields of a node to add and hashes its key; the checks that need no state.
fn check_new_node(new: &NewNode) -> Result<ApiKeyHash, ClusterError> {
    check_endpoint(&new.endpoint)?;
    if let Some(port) = new.sip_port {
        check_sip_port(port)?;
    }
    check_max_sessions(new.max_sessions)?;
    check_api_key(&new.api_key)
}

fn check_endpoint(endpoint: &str) -> Result<(), ClusterError> {
    if endpoint.is_empty() {
        return Err(ClusterError::invalid_field("endpoint", "must not be empty"));
    }
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(ClusterError::invalid_field(
            "endpoint",
            format_args!("must be at most {MAX_ENDPOINT_LEN} bytes"),
        ));
    }
    if endpoint
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ClusterError::invalid_field(
            "endpoint",
            "must be a host name or IP address without whitespace",
        ));
    }
    Ok(())
}

fn check_sip_port(port: u16) -> Result<(), ClusterError> {
    if port == 0 {
        return Err(ClusterError::invalid_field("sip_port", "must not be 0"));
    }
    Ok(())
}

fn check_max_sessions(max_sessions: u32) -> Result<(), ClusterError> {
    if max_sessions == 0 {
        return Err(ClusterError::invalid_field(
            "max_sessions",
            "must be at least 1",
        ));
    }
    Ok(())
}

/// Checks a plain key and returns its digest.
fn check_api_key(key: &str) -> Result<ApiKeyHash, ClusterError> {
    let chars = key.chars().count();
    if chars < MIN_API_KEY_CHARS {
        return Err(ClusterError::new(
            ErrorCode::ApiKeyTooShort,
            format!("api_key must be at least {MIN_API_KEY_CHARS} characters (got {chars})"),
        ));
    }
    // A Bearer token cannot carry these, so such a key could never be presented.
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ClusterError::invalid_field(
            "api_key",
            "must not contain whitespace or control characters",
        ));
    }
    Ok(ApiKeyHash::of(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_stable_strings() {
        for (code, text, status) in [
            (ErrorCode::InvalidRegionId, "INVALID_REGION_ID", 400),
            (ErrorCode::ApiKeyTooShort, "API_KEY_TOO_SHORT", 400),
            (ErrorCode::NodeNotFound, "NODE_NOT_FOUND", 404),
            (ErrorCode::RegionNotFound, "REGION_NOT_FOUND", 404),
            (ErrorCode::ApiKeyReused, "API_KEY_REUSED", 409),
            (ErrorCode::RegionHasNodes, "REGION_HAS_NODES", 409),
        ] {
            assert_eq!(code.as_str(), text);
            assert_eq!(code.to_string(), text);
            assert_eq!(code.http_status(), status);
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{text}\""));
        }
    }

    #[test]
    fn id_errors_map_to_codes() {
        let region: ClusterError = RegionId::new("us-east").unwrap_err().into();
        assert_eq!(region.code, ErrorCode::InvalidRegionId);
        assert!(region.message.contains("us-east"));
        let node: ClusterError = NodeId::new("a b").unwrap_err().into();
        assert_eq!(node.code, ErrorCode::InvalidNodeId);
    }

    #[test]
    fn change_debug_hides_keys() {
        let change = Change::UpdateNode {
            id: NodeId::new("n1").unwrap(),
            endpoint: None,
            sip_port: None,
            max_sessions: None,
            api_key: Some("top-secret-top-secret-top-secret-1".to_owned()),
        };
        let debug = format!("{change:?}");
        assert!(!debug.contains("top-secret") && debug.contains("<redacted>"));
    }
}
