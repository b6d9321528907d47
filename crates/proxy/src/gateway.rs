//! The gateway's shared state: configuration, the SIP endpoint, the node cap, the Backend picker,
//! trunks, the media port pool and the table of live sessions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use voxgate_cluster::{BackendPicker, SessionSlots, TrunkTable};
use voxgate_core::{RegionId, SessionId};
use voxgate_endpoint::{Endpoint, MessageObserver};
use voxgate_media::pool::PortPool;

use crate::cluster::ClusterLink;
use crate::config::Config;
use crate::control::CommandSender;
use crate::edge::Edge;
use crate::http::Health;
use crate::metrics;
use crate::outbound::OutboundQueue;
use crate::records::{Records, SessionKind};
use crate::trust::Trust;

/// What the session table holds per live session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Call-ID of the caller's leg.
    pub caller_call_id: String,
    /// Call-ID of the Backend's leg, once an INVITE went out.
    pub backend_call_id: Option<String>,
    /// The Backend (or trunk) serving the session.
    pub peer: Option<String>,
    /// Region the session was routed in.
    pub region: RegionId,
    /// Relay ports: caller side, Backend side.
    pub ports: (u16, u16),
    /// What kind of session it is.
    pub kind: SessionKind,
    /// The trunk the caller came through or was dialled on.
    pub trunk: Option<String>,
    /// The session task's command queue (`/v1/sessions/{id}`).
    pub commands: CommandSender,
}

/// One WebRTC session counted in [`Gateway::webrtc_sessions`]; dropping it uncounts it.
#[derive(Debug)]
pub struct WebRtcGuard<'a>(&'a AtomicU32);

impl Drop for WebRtcGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything the call tasks share.
#[derive(Debug)]
pub struct Gateway {
    /// The validated configuration.
    pub config: Config,
    /// The SIP endpoint.
    pub endpoint: Endpoint,
    /// Our SIP address as peers see it (media.public_ip and the SIP port).
    pub sip_addr: SocketAddr,
    /// The node cap.
    pub slots: SessionSlots,
    /// Backend choice.
    pub picker: Arc<BackendPicker>,
    /// Trunks for inbound regions and outbound calls.
    pub trunks: TrunkTable,
    /// Media ports.
    pub ports: PortPool,
    /// Live sessions, by id; [`Gateway::session_by_call_id`] and [`Gateway::session_by_port`]
    /// find one by either leg's dialog or either side's relay port.
    sessions: DashMap<SessionId, SessionInfo>,
    by_call_id: DashMap<String, SessionId>,
    by_port: DashMap<u16, SessionId>,
    /// The cluster registry link: lifecycle, fleet-wide load, capacity signals.
    pub cluster: ClusterLink,
    /// Originate requests (`POST /v1/calls`) and what became of them.
    pub outbound: Arc<OutboundQueue>,
    /// Where every ended session's call record goes.
    pub records: Records,
    /// The edge guard: bans, scanners, unknown sources, and the Backends' addresses.
    pub edge: Arc<Edge>,
    /// Which trunk a new request belongs to (sources, digest users).
    pub trust: Trust,
    /// What each trunk's digest challenges to our calls out are answered with, by trunk name.
    pub trunk_credentials: HashMap<String, voxgate_session::TrunkCredentials>,
    /// `User-Agent` and `Server` of our SIP messages (`sip.user_agent`).
    pub user_agent: &'static str,
    next_session: AtomicU64,
    /// Sessions that are WebRTC peers (a subset of the slots in use).
    webrtc_active: AtomicU32,
    draining: AtomicBool,
    /// The public reason while an operator holds this node (or its region) out of service.
    maintenance: Mutex<Option<String>>,
    /// Set once every answered call must end now (drain deadline or a second signal).
    hang_up: tokio::sync::watch::Sender<bool>,
    rng: Mutex<SmallRng>,
}

impl Gateway {
    /// Builds the state from `config` around a bound `endpoint` guarded by `edge`.
    pub fn new(
        config: Config,
        endpoint: Endpoint,
        ports: PortPool,
        cluster: ClusterLink,
        records: Records,
        edge: Arc<Edge>,
        trust: Trust,
    ) -> Self {
        let seed = config.routing.seed.unwrap_or_else(rand::random);
        let picker = Arc::new(BackendPicker::new(
            config.backend_specs(),
            config.spillover(),
            seed,
        ));
        let sip_addr = SocketAddr::new(config.media.public_ip, endpoint.local_addr().port());
        Self {
            slots: SessionSlots::new(config.limits.max_sessions),
            trunks: config.trunk_table(),
            edge,
            trust,
            trunk_credentials: HashMap::new(),
            // Once per process: the engine and the SIP layer take the value as `&'static str`.
            user_agent: Box::leak(config.sip.user_agent.clone().into_boxed_str()),
            cluster,
            outbound: Arc::new(OutboundQueue::new(
                config.outbound.queue_size,
                config.outbound.max_wait,
            )),
            picker,
            ports,
            records,
            sip_addr,
            endpoint,
            sessions: DashMap::new(),
            by_call_id: DashMap::new(),
            by_port: DashMap::new(),
            next_session: AtomicU64::new(1),
            webrtc_active: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            maintenance: Mutex::new(None),
            hang_up: tokio::sync::watch::Sender::new(false),
            rng: Mutex::new(SmallRng::seed_from_u64(seed ^ 0x5eed)),
            config,
        }
    }

    /// Counts one WebRTC session until the guard drops.
    pub fn webrtc_session(&self) -> WebRtcGuard<'_> {
        self.webrtc_active.fetch_add(1, Ordering::AcqRel);
        WebRtcGuard(&self.webrtc_active)
    }

    /// Live WebRTC sessions.
    pub fn webrtc_sessions(&self) -> u32 {
        self.webrtc_active.load(Ordering::Acquire)
    }

    /// Records a new live session in the tables.
    pub fn add_session(&self, id: SessionId, info: SessionInfo) {
        self.by_call_id.insert(info.caller_call_id.clone(), id);
        self.by_port.insert(info.ports.0, id);
        self.by_port.insert(info.ports.1, id);
        self.sessions.insert(id, info);
    }

    /// The session now reaches `peer` over the Backend-side dialog `call_id` (a new attempt).
    pub fn set_session_peer(&self, id: SessionId, call_id: &str, peer: String) {
        if let Some(mut info) = self.sessions.get_mut(&id) {
            if let Some(old) = info.backend_call_id.replace(call_id.to_owned()) {
                self.by_call_id.remove(&old);
            }
            info.peer = Some(peer);
        }
        self.by_call_id.insert(call_id.to_owned(), id);
    }

    /// Forgets an ended session.
    pub fn remove_session(&self, id: SessionId) {
        if let Some((_, info)) = self.sessions.remove(&id) {
            self.by_call_id.remove(&info.caller_call_id);
            if let Some(call_id) = &info.backend_call_id {
                self.by_call_id.remove(call_id);
            }
            self.by_port.remove(&info.ports.0);
            self.by_port.remove(&info.ports.1);
        }
    }

    /// The live sessions (a copy).
    pub fn sessions(&self) -> Vec<(SessionId, SessionInfo)> {
        self.sessions
            .iter()
            .map(|entry| (*entry.key(), entry.value().clone()))
            .collect()
    }

    /// The live session `id`.
    pub fn session(&self, id: SessionId) -> Option<SessionInfo> {
        self.sessions.get(&id).map(|info| info.clone())
    }

    /// Whether `id` was handed out by this process (live or ended): ids come from one counter,
    /// so an id below it that is not live has ended, with no list of ended ids to keep.
    pub fn session_existed(&self, id: SessionId) -> bool {
        id.0 >= 1 && id.0 < self.next_session.load(Ordering::Relaxed)
    }

    /// The session one of whose legs has dialog `call_id`.
    pub fn session_by_call_id(&self, call_id: &str) -> Option<(SessionId, SessionInfo)> {
        let id = *self.by_call_id.get(call_id)?;
        Some((id, self.sessions.get(&id)?.clone()))
    }

    /// The session relaying on `port` (either side's RTP port).
    pub fn session_by_port(&self, port: u16) -> Option<(SessionId, SessionInfo)> {
        let id = *self.by_port.get(&port)?;
        Some((id, self.sessions.get(&id)?.clone()))
    }

    /// A fresh session id.
    pub fn new_session_id(&self) -> SessionId {
        SessionId(self.next_session.fetch_add(1, Ordering::Relaxed))
    }

    /// A seeded generator for one call (tags, branches, SSRC-free ids).
    pub fn call_rng(&self) -> SmallRng {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        SmallRng::from_rng(&mut *rng)
    }

    /// Retry-After for a 503: the configured base plus up to half of it at random, so refused
    /// callers do not come back in lockstep.
    pub fn retry_after(&self) -> Duration {
        let base = self.config.limits.retry_after.max(Duration::from_secs(1));
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let jitter = rng.random_range(0..=base.as_millis() as u64 / 2);
        base + Duration::from_millis(jitter)
    }

    /// The `Retry-After` header of a 503 (whole seconds of [`Gateway::retry_after`]).
    pub fn retry_after_header(&self) -> rsip::Header {
        let secs = self.retry_after().as_secs().max(1);
        rsip::Header::RetryAfter(secs.to_string().into())
    }

    /// Whether `source` is one of our Backends (its calls go out through a trunk).
    pub fn is_backend(&self, source: SocketAddr) -> bool {
        self.edge.is_backend(source)
    }

    /// Adds Backend addresses learnt from the cluster registry (config ones stay).
    pub fn add_backend_addrs(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        self.edge.add_backends(addrs);
    }

    /// Whether new sessions are taken: not draining and not in maintenance.
    pub fn accepting(&self) -> bool {
        self.refusal().is_none()
    }

    /// Why new sessions are refused (the `reason` label of the rejection), if they are.
    pub fn refusal(&self) -> Option<&'static str> {
        if self.draining() {
            Some("draining")
        } else if self
            .maintenance
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            // Looked at in place: this runs for every INVITE and WHIP POST, the reason string
            // need not be copied.
            Some("maintenance")
        } else {
            None
        }
    }

    /// Whether the node is draining.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops taking new sessions for good (the drain).
    pub fn stop_accepting(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Holds the node out of service (`Some(public reason)`) or puts it back (`None`), as the
    /// cluster registry says.
    pub fn set_maintenance(&self, reason: Option<String>) {
        *self.maintenance.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    /// The public reason while the node is held out of service.
    pub fn maintenance_reason(&self) -> Option<String> {
        self.maintenance
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ends every answered call with a BYE to both sides (calls still being set up end as soon as
    /// they are answered). Used when a drain runs out of time or the operator insists.
    pub fn hang_up_all(&self) {
        self.hang_up.send_replace(true);
    }

    /// Resolves once [`Gateway::hang_up_all`] has been called (at once if it already was).
    pub async fn hang_up_requested(&self) {
        let mut rx = self.hang_up.subscribe();
        // The sender lives as long as the gateway, so this only returns when the flag is set.
        let _ = rx.wait_for(|hang_up| *hang_up).await;
    }

    /// This node's region.
    pub fn region(&self) -> &RegionId {
        &self.config.node.region
    }
}

impl Health for Gateway {
    fn readiness(&self) -> Result<(), String> {
        if self.draining() {
            return Err("draining".into());
        }
        if let Some(reason) = self.maintenance_reason() {
            return Err(format!("maintenance: {reason}"));
        }
        if !self.slots.below_high_water(self.config.limits.high_water) {
            return Err(format!(
                "{} of {} sessions in use (high-water mark {})",
                self.slots.active(),
                self.slots.limit(),
                self.config.limits.high_water
            ));
        }
        Ok(())
    }

    fn refresh_gauges(&self) {
        metrics::sessions(self.slots.active(), self.slots.limit());
        let now = tokio::time::Instant::now().into_std();
        for backend in self.picker.snapshot(now) {
            metrics::backend(
                backend.id.as_str(),
                backend.region.as_str(),
                backend.sessions,
                backend.up,
            );
        }
        metrics::media_ports(self.ports.in_use(), self.ports.capacity());
        metrics::sip_banned_sources(self.edge.banned(now));
        metrics::sip_shed(
            self.endpoint
                .counters()
                .shed
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }
}

/// Counts SIP datagrams per method and direction for `/metrics`.
#[derive(Debug, Default)]
pub struct SipMetrics(metrics::SipCounters);

impl MessageObserver for SipMetrics {
    fn on_message(&self, outbound: bool, method: Option<&str>) {
        let direction = if outbound {
            metrics::Direction::Out
        } else {
            metrics::Direction::In
        };
        self.0
            .record(method.unwrap_or(metrics::RESPONSE), direction);
    }
}
