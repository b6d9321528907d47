//! This node's link to the cluster registry: the registry itself, what this node last learnt
//! from it (the capacity view and the advisors), and this process's CPU and memory use. The
//! periodic sync that publishes and applies it to the gateway is [`crate::fleet`]'s.
//!
//! A drain is not written to the registry as maintenance: it is this process's runtime state
//! ("draining" in its status), so a restarted node serves again without an operator's action.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use voxgate_cluster::advisor::{Advice, Advisor};
use voxgate_cluster::model::{NewNode, NodeKind};
use voxgate_cluster::state::RegionCapacity;
use voxgate_core::{NodeId, RegionId};

use crate::config::Config;
use crate::registry::{EmbeddedRegistry, RedisRegistry, Registry, Seed, now_ms};

/// One region and kind: its capacity and the advisor's recommendation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegionView {
    /// Sessions, limit and nodes.
    #[serde(flatten)]
    pub capacity: RegionCapacity,
    /// The autoscale advisor's recommendation.
    pub advice: Advice,
}

/// The registry and what this node last learnt from it.
pub struct ClusterLink {
    /// Where regions, nodes and statuses live.
    pub registry: Arc<dyn Registry>,
    /// This node.
    pub node: NodeId,
    pub(crate) heartbeat_ttl: Duration,
    pub(crate) advisors: Mutex<BTreeMap<(RegionId, NodeKind), Advisor>>,
    pub(crate) view: Mutex<Vec<RegionView>>,
    /// Backends seen heartbeating, with when (Unix ms) their status was last fresh: judged by
    /// heartbeat, not probing, until they have been silent for [`PROBE_AGAIN_AFTER`] TTLs.
    pub(crate) heartbeating: Mutex<HashMap<NodeId, u64>>,
    /// Last address each Backend endpoint resolved to, for when DNS fails or is slow.
    pub(crate) resolved: Mutex<HashMap<(String, u16), SocketAddr>>,
    pub(crate) usage: Mutex<ProcessUsage>,
    /// One sync at a time: an admin change syncs at once, beside the periodic loop, and an
    /// older snapshot must not be applied over a newer one.
    pub(crate) syncing: tokio::sync::Mutex<()>,
}

/// A heartbeating Backend silent for this many TTLs is probed with OPTIONS again.
pub(crate) const PROBE_AGAIN_AFTER: u32 = 3;

/// Longest wait for a Backend endpoint's DNS answer within a sync.
pub(crate) const RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl ClusterLink {
    /// Opens the registry `config` names (`cluster.registry`: embedded or a Redis URL), seeded
    /// with this node, its region and the configured Backends.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let seed = seed(config);
        let registry: Arc<dyn Registry> = if config.cluster.registry == "embedded" {
            let path = config.cluster.state_file.as_os_str();
            let path = (!path.is_empty()).then_some(config.cluster.state_file.as_path());
            Arc::new(EmbeddedRegistry::open(path, &seed)?)
        } else {
            Arc::new(RedisRegistry::connect(&config.cluster.registry, &seed).await?)
        };
        Ok(Self::new(
            registry,
            config.node.id.clone(),
            config.cluster.heartbeat_ttl,
        ))
    }

    /// A link over `registry` for node `node`, whose statuses live `heartbeat_ttl`.
    pub fn new(registry: Arc<dyn Registry>, node: NodeId, heartbeat_ttl: Duration) -> Self {
        Self {
            registry,
            node,
            heartbeat_ttl,
            advisors: Mutex::new(BTreeMap::new()),
            view: Mutex::new(Vec::new()),
            heartbeating: Mutex::new(HashMap::new()),
            resolved: Mutex::new(HashMap::new()),
            usage: Mutex::new(ProcessUsage::default()),
            syncing: tokio::sync::Mutex::new(()),
        }
    }

    /// The capacity and advice of every region and kind, as of the last sync.
    pub fn view(&self) -> Vec<RegionView> {
        lock(&self.view).clone()
    }

    /// Whether Backend `id` heartbeats through the admin API (then it is not probed): it did,
    /// and not longer ago than three heartbeat TTLs.
    pub fn heartbeats(&self, id: &NodeId) -> bool {
        let window = self.heartbeat_ttl.as_millis() as u64 * u64::from(PROBE_AGAIN_AFTER);
        lock(&self.heartbeating)
            .get(id)
            .is_some_and(|&last| now_ms().saturating_sub(last) <= window)
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the config declares: this node (a Proxy), its region, spillover regions, the Backends.
/// Each gets a random API key (48 characters); rotate it through the admin API to use it.
pub fn seed(config: &Config) -> Seed {
    let mut nodes = vec![NewNode {
        id: config.node.id.clone(),
        region: config.node.region.clone(),
        kind: NodeKind::Proxy,
        endpoint: config.media.public_ip.to_string(),
        sip_port: Some(config.sip.listen_udp.port()),
        max_sessions: config.limits.max_sessions,
        api_key: random_key(),
    }];
    nodes.extend(config.backends.iter().map(|b| {
        NewNode {
            id: b.id.clone(),
            region: b
                .region
                .clone()
                .unwrap_or_else(|| config.node.region.clone()),
            kind: NodeKind::Backend,
            endpoint: b.address.ip().to_string(),
            sip_port: Some(b.address.port()),
            max_sessions: b.max_sessions.max(1),
            api_key: random_key(),
        }
    }));
    Seed {
        regions: config.regions().into_iter().collect(),
        nodes,
    }
}

/// A 48-character alphanumeric key from the OS's random source.
fn random_key() -> String {
    use rand::distr::Alphanumeric;
    use rand::{Rng as _, TryRngCore as _};
    rand::rngs::OsRng
        .unwrap_err()
        .sample_iter(&Alphanumeric)
        .take(48)
        .map(char::from)
        .collect()
}

/// CPU and memory use of this process, from `/proc` (Linux); zeros elsewhere.
#[derive(Debug, Default)]
pub(crate) struct ProcessUsage {
    last: Option<(std::time::Instant, u64)>,
}

impl ProcessUsage {
    /// (CPU % of one core since the last sample, resident memory % of the machine's).
    pub(crate) fn sample(&mut self) -> (f32, f32) {
        let now = tokio::time::Instant::now().into_std();
        let ticks = cpu_ticks();
        let cpu = match (self.last, ticks) {
            (Some((then, before)), Some(ticks)) => {
                let secs = now.duration_since(then).as_secs_f64();
                let used = ticks.saturating_sub(before) as f64 / clock_ticks();
                if secs > 0.0 {
                    (used / secs * 100.0) as f32
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        if let Some(ticks) = ticks {
            self.last = Some((now, ticks));
        }
        (cpu, memory_percent().unwrap_or(0.0))
    }
}

fn clock_ticks() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// utime + stime of this process, in clock ticks.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn memory_percent() -> Option<f32> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let rss = resident * rustix::param::page_size() as u64;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((rss as f64 / (total_kib as f64 * 1024.0) * 100.0) as f32)
}
