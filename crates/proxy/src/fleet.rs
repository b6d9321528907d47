//! The node's place in the fleet: once per `cluster.status_interval` [`run`] does one [`sync`]:
//!
//! 1. publishes this node's status (sessions, limit, CPU %, memory %, running or draining, and the
//!    sessions it has placed on each Backend), valid for `cluster.heartbeat_ttl`;
//! 2. reads the registry back and applies it: this node's lifecycle (maintenance or disabled means
//!    503 and `/readyz` false), the Backends (address, cap, enabled), every other Proxy's sessions
//!    on each Backend (so routing counts the whole fleet's load), and the health of Backends that
//!    heartbeat through the admin API (an expired heartbeat means offline: no sessions);
//! 3. computes the capacity of every region and kind, feeds the autoscale advisors and sets the
//!    `voxgate_region_*` gauges; the admin API serves the same view.
//!
//! A Backend that never heartbeats is judged by OPTIONS probing instead (`probe`); for the
//! capacity view it counts as online while probing says it is up, with the sessions every Proxy
//! placed on it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::MissedTickBehavior;
use voxgate_cluster::BackendSpec;
use voxgate_cluster::advisor::{Advisor, AdvisorConfig, Sample};
use voxgate_cluster::model::{NodeKind, NodeStatus, RuntimeState};
use voxgate_cluster::state::{ErrorCode, Statuses};
use voxgate_core::NodeId;

use crate::cluster::{ClusterLink, RESOLVE_TIMEOUT, RegionView, lock};
use crate::gateway::Gateway;
use crate::metrics;
use crate::registry::{RegistryError, Snapshot, now_ms};
/// Syncs with the registry every `cluster.status_interval` until the process ends.
pub async fn run(gateway: Arc<Gateway>) {
    let mut tick = tokio::time::interval(gateway.config.cluster.status_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(err) = sync(&gateway).await {
            tracing::warn!(%err, "cluster registry sync failed; keeping the last known state");
        }
    }
}

/// One round: publish, read back, apply, compute capacity (see the module docs).
pub async fn sync(gateway: &Gateway) -> Result<(), crate::registry::RegistryError> {
    let link = &gateway.cluster;
    let _one_at_a_time = link.syncing.lock().await;
    let status = own_status(gateway);
    match link
        .registry
        .publish_status(&link.node, status, gateway.config.cluster.heartbeat_ttl)
        .await
    {
        // Deleted from the registry: the snapshot below holds this node out of service.
        Err(RegistryError::Rejected(err)) if err.code == ErrorCode::NodeNotFound => {}
        other => other?,
    }
    let snapshot = link.registry.snapshot().await?;
    apply_lifecycle(gateway, &snapshot);
    apply_backends(gateway, &snapshot).await;
    let view = capacity_view(gateway, &snapshot);
    for region in &view {
        let c = &region.capacity;
        metrics::region(
            c.region.as_str(),
            c.kind.as_str(),
            c.active,
            c.limit,
            c.utilization,
            c.nodes_online,
            region.advice.desired_nodes,
        );
    }
    *lock(&link.view) = view;
    Ok(())
}

fn own_status(gateway: &Gateway) -> NodeStatus {
    let (cpu_percent, memory_percent) = lock(&gateway.cluster.usage).sample();
    let now = tokio::time::Instant::now().into_std();
    let placed = gateway
        .picker
        .snapshot(now)
        .into_iter()
        .filter(|b| b.sessions > 0)
        .map(|b| (b.id, b.sessions))
        .collect();
    NodeStatus {
        active_sessions: gateway.slots.active(),
        limit: gateway.slots.limit(),
        cpu_percent,
        memory_percent,
        state: if gateway.draining() {
            RuntimeState::Draining
        } else {
            RuntimeState::Running
        },
        reported_at_ms: now_ms(),
        webrtc_sessions: gateway.webrtc_sessions(),
        placed,
    }
}

/// This node's own lifecycle: out of service while it or its region is disabled or in
/// maintenance.
fn apply_lifecycle(gateway: &Gateway, snapshot: &Snapshot) {
    let state = &snapshot.state;
    let node = &gateway.cluster.node;
    if state.accepts_sessions(node) {
        gateway.set_maintenance(None);
        return;
    }
    let reason = state
        .node(node)
        .map(|n| {
            let region = state.region(&n.region);
            let held = [Some(&n.lifecycle), region.map(|r| &r.lifecycle)]
                .into_iter()
                .flatten()
                .find(|l| !l.accepts_sessions());
            held.map_or_else(String::new, |l| l.public_reason.clone())
        })
        .unwrap_or_else(|| "not registered".to_owned());
    let reason = if reason.is_empty() {
        "held out of service by an operator".to_owned()
    } else {
        reason
    };
    gateway.set_maintenance(Some(reason));
}

/// The Backends as the registry has them, each Proxy's sessions on them, and heartbeats.
async fn apply_backends(gateway: &Gateway, snapshot: &Snapshot) {
    let state = &snapshot.state;
    let now = snapshot.now_ms;
    let current = gateway.picker.backends();
    let mut specs = Vec::new();
    for node in state.nodes().filter(|n| n.kind == NodeKind::Backend) {
        let known = current.iter().find(|s| s.id == node.id).map(|s| s.address);
        let Some(address) = resolve(&gateway.cluster, &node.endpoint, node.sip_port)
            .await
            .or(known)
        else {
            tracing::warn!(backend = %node.id, endpoint = %node.endpoint, "cannot resolve a Backend's endpoint; skipping it");
            continue;
        };
        specs.push(BackendSpec {
            id: node.id.clone(),
            region: node.region.clone(),
            address,
            max_sessions: node.max_sessions,
            // The config's `enabled = false` still holds a Backend out, whatever the registry says.
            enabled: state.accepts_sessions(&node.id)
                && gateway
                    .config
                    .backends
                    .iter()
                    .find(|b| b.id == node.id)
                    .is_none_or(|b| b.enabled),
        });
    }
    gateway.add_backend_addrs(specs.iter().map(|s| s.address));
    if gateway.picker.backends() != specs {
        gateway.picker.set_backends(specs.clone());
    }
    let link = &gateway.cluster;
    let ours: HashMap<NodeId, u32> = gateway
        .picker
        .snapshot(tokio::time::Instant::now().into_std())
        .into_iter()
        .map(|b| (b.id, b.sessions))
        .collect();
    for spec in &specs {
        let others: u32 = snapshot
            .statuses
            .iter()
            .filter(|(id, _, expires)| **id != link.node && *expires > now)
            .map(|(_, status, _)| status.placed.get(&spec.id).copied().unwrap_or(0))
            .sum();
        // A Backend that heartbeats is up while its heartbeat is fresh and it says it runs
        // (not starting, draining or stopping), offline after; its own count of sessions wins
        // when higher than what the proxies placed (calls that reached it some other way).
        let own_status = snapshot.statuses.fresh(&spec.id, now);
        if let Some(status) = own_status {
            lock(&link.heartbeating).insert(spec.id.clone(), now);
            let mine = ours.get(&spec.id).copied().unwrap_or(0);
            let reported = status.active_sessions.saturating_sub(mine);
            gateway
                .picker
                .set_remote_sessions(&spec.id, others.max(reported));
        } else {
            gateway.picker.set_remote_sessions(&spec.id, others);
        }
        if link.heartbeats(&spec.id) {
            let running = own_status.is_some_and(|s| s.state == RuntimeState::Running);
            gateway.picker.set_up(&spec.id, running);
        }
    }
}

/// A Backend endpoint's address: a literal IP as is, a name through DNS (bounded by
/// [`RESOLVE_TIMEOUT`]), else the last address it resolved to.
async fn resolve(link: &ClusterLink, endpoint: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = endpoint.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let key = (endpoint.to_owned(), port);
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((endpoint, port)));
    match lookup.await {
        Ok(Ok(mut addrs)) => {
            let addr = addrs.next()?;
            lock(&link.resolved).insert(key, addr);
            Some(addr)
        }
        _ => lock(&link.resolved).get(&key).copied(),
    }
}

/// Every region's capacity per kind, with the advisors fed.
fn capacity_view(gateway: &Gateway, snapshot: &Snapshot) -> Vec<RegionView> {
    let link = &gateway.cluster;
    let now = snapshot.now_ms;
    // Probed Backends have no status of their own: while probing says they are up they count as
    // online, with every Proxy's sessions on them.
    let mut statuses: Statuses = snapshot.statuses.clone();
    let expires = now + gateway.config.cluster.heartbeat_ttl.as_millis() as u64;
    for backend in gateway
        .picker
        .snapshot(tokio::time::Instant::now().into_std())
    {
        if backend.up && !link.heartbeats(&backend.id) {
            let status = NodeStatus {
                active_sessions: snapshot.statuses.placed_on(&backend.id, now),
                limit: backend.limit,
                cpu_percent: 0.0,
                memory_percent: 0.0,
                state: RuntimeState::Running,
                reported_at_ms: now,
                webrtc_sessions: 0,
                placed: BTreeMap::new(),
            };
            statuses.publish(backend.id, status, expires);
        }
    }
    let mut advisors = lock(&link.advisors);
    snapshot
        .state
        .capacity(&statuses, now)
        .into_iter()
        .map(|capacity| {
            let per_node = snapshot
                .state
                .nodes_in(&capacity.region)
                .filter(|n| n.kind == capacity.kind)
                .map(|n| n.max_sessions)
                .max()
                .unwrap_or(gateway.config.limits.max_sessions);
            let advisor = advisors
                .entry((capacity.region.clone(), capacity.kind))
                .or_insert_with(|| Advisor::new(AdvisorConfig::default()));
            let advice = advisor.observe(Sample {
                now_ms: now,
                active: capacity.active,
                limit: capacity.limit,
                nodes_online: capacity.nodes_online,
                per_node_capacity: per_node,
            });
            RegionView { capacity, advice }
        })
        .collect()
}
