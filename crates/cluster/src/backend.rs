//! Backends as configured ([`BackendSpec`]) and as seen by the picker right now ([`BackendStatus`]).

use std::net::SocketAddr;

use voxgate_core::{Capacity, NodeId, RegionId};

/// A Backend as configured: a SIP user agent that answers calls, in one region, with its own cap.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSpec {
    /// Unique among Backends.
    pub id: NodeId,
    /// The region it serves.
    pub region: RegionId,
    /// Where INVITEs go (SIP port 5080 by convention).
    pub address: SocketAddr,
    /// Most sessions this proxy places on it at once; 0 takes none.
    pub max_sessions: u32,
    /// Operator switch; a disabled Backend takes no new sessions, existing ones continue.
    pub enabled: bool,
}

/// One Backend's state at an instant, for metrics and the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendStatus {
    /// As configured.
    pub id: NodeId,
    /// As configured.
    pub region: RegionId,
    /// As configured.
    pub address: SocketAddr,
    /// This proxy's leases: in-flight INVITEs and answered calls alike.
    pub sessions: u32,
    /// Sessions other proxies have placed on it (cluster registry).
    pub remote_sessions: u32,
    /// `max_sessions` as configured.
    pub limit: u32,
    /// Last health verdict (probes or heartbeat).
    pub up: bool,
    /// Operator switch.
    pub enabled: bool,
    /// Whether a 503 + Retry-After still holds it out of selection.
    pub cooling_down: bool,
}

impl BackendStatus {
    /// Every proxy's sessions against the limit.
    pub fn capacity(&self) -> Capacity {
        Capacity::new(
            self.sessions.saturating_add(self.remote_sessions),
            self.limit,
        )
    }

    /// Whether a new session may be placed on it now (ignoring the caller's exclusions).
    pub fn is_eligible(&self) -> bool {
        self.enabled && self.up && !self.cooling_down && !self.capacity().is_full()
    }
}
