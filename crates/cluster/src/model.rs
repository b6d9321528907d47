//! The cluster data model: regions, nodes, their lifecycle, API key hashes and live node status.
//!
//! These are plain values; [`crate::state::ClusterState`] owns them and enforces the rules.
//! Times are Unix milliseconds passed in by the caller. The core ids ([`RegionId`], [`NodeId`]) have
//! no serde impls of their own, so they are written as their text and validated when read back.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use voxgate_core::{NodeId, RegionId};

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// Takes sessions from callers and places them on Backends (SIP port 5060 by convention).
    Proxy,
    /// Answers the calls a Proxy places on it (SIP port 5080 by convention).
    Backend,
}

impl NodeKind {
    /// Both kinds, Proxy first.
    pub const ALL: [NodeKind; 2] = [NodeKind::Proxy, NodeKind::Backend];

    /// The SIP port a node of this kind listens on unless told otherwise.
    pub fn default_sip_port(self) -> u16 {
        match self {
            NodeKind::Proxy => 5060,
            NodeKind::Backend => 5080,
        }
    }

    /// `"proxy"` or `"backend"`, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Proxy => "proxy",
            NodeKind::Backend => "backend",
        }
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operator's switch on a region or node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// May take sessions (unless in maintenance).
    Enabled,
    /// Takes no sessions; the only state in which it may be deleted.
    Disabled,
}

/// The operator-controlled lifecycle of a region or node, with who changed it last and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Enabled or disabled.
    pub state: AdminState,
    /// In maintenance: no new sessions, existing ones continue.
    pub maintenance: bool,
    /// Why, as shown to end users.
    #[serde(default)]
    pub public_reason: String,
    /// Why, as shown to operators only.
    #[serde(default)]
    pub private_reason: String,
    /// When the lifecycle last changed (Unix ms).
    pub changed_at_ms: u64,
    /// Who changed it last (`"config"` for seeded entries).
    pub changed_by: String,
}

impl Lifecycle {
    /// The lifecycle of a region or node an operator just created: disabled and in maintenance, so
    /// it takes no session until someone turns it on deliberately.
    pub fn new_entity(now_ms: u64, actor: &str) -> Self {
        Self {
            state: AdminState::Disabled,
            maintenance: true,
            public_reason: String::new(),
            private_reason: String::new(),
            changed_at_ms: now_ms,
            changed_by: actor.to_owned(),
        }
    }

    /// The lifecycle of an entry seeded from the configuration file: enabled, not in maintenance,
    /// changed by `"config"` (the configuration is the operator's decision already).
    pub fn seeded(now_ms: u64) -> Self {
        Self {
            state: AdminState::Enabled,
            maintenance: false,
            public_reason: String::new(),
            private_reason: String::new(),
            changed_at_ms: now_ms,
            changed_by: "config".to_owned(),
        }
    }

    /// Whether the entity is enabled.
    pub fn is_enabled(&self) -> bool {
        self.state == AdminState::Enabled
    }

    /// Enabled and not in maintenance.
    pub fn accepts_sessions(&self) -> bool {
        self.is_enabled() && !self.maintenance
    }
}

/// A region: a group of Proxies and Backends that serve the same callers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// `CC-NAME`, e.g. `US-EAST`.
    #[serde(with = "id_text")]
    pub id: RegionId,
    /// The operator's switch.
    pub lifecycle: Lifecycle,
    /// When it was created (Unix ms).
    pub created_at_ms: u64,
}

/// The SHA-256 digest of a node's API key; serialized as 64 lower-case hex digits. Plain keys are
/// never stored, only this.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiKeyHash([u8; 32]);

impl ApiKeyHash {
    /// The digest of `key`.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Whether `key` hashes to this digest. The digests are compared in constant time, so the time
    /// taken says nothing about how much of a guess was right.
    pub fn verify(&self, key: &str) -> bool {
        let candidate = Self::of(key);
        let difference = self
            .0
            .iter()
            .zip(candidate.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }

    /// The digest as 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut digest = [0u8; 32];
        for (byte, pair) in digest.iter_mut().zip(bytes.chunks_exact(2)) {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            *byte = u8::try_from(high * 16 + low).ok()?;
        }
        Some(Self(digest))
    }
}

impl fmt::Display for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyHash({self})")
    }
}

impl Serialize for ApiKeyHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ApiKeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hex = String::deserialize(deserializer)?;
        Self::from_hex(&hex).ok_or_else(|| {
            serde::de::Error::custom("api key hash must be 64 hex digits (a SHA-256 digest)")
        })
    }
}

/// A registered Proxy or Backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The operator's name for it.
    #[serde(with = "id_text")]
    pub id: NodeId,
    /// The region it serves.
    #[serde(with = "id_text")]
    pub region: RegionId,
    /// Proxy or Backend.
    pub kind: NodeKind,
    /// Host name or IP address it is reached at (no port, no scheme).
    pub endpoint: String,
    /// SIP port at `endpoint`.
    pub sip_port: u16,
    /// Most sessions it may hold at once.
    pub max_sessions: u32,
    /// Digest of its API key.
    pub api_key: ApiKeyHash,
    /// The operator's switch.
    pub lifecycle: Lifecycle,
    /// When it was registered (Unix ms).
    pub created_at_ms: u64,
}

/// What a node is doing, by its own account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeState {
    /// Starting up; not taking sessions yet.
    Starting,
    /// Taking sessions.
    Running,
    /// Finishing its sessions before stopping; taking no new ones.
    Draining,
    /// Shutting down.
    Stopping,
}

/// A node's live status, published with a time to live; expired means offline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Sessions it holds now (SIP calls and WebRTC peers).
    pub active_sessions: u32,
    /// Its own session cap.
    pub limit: u32,
    /// CPU use in percent of the node's whole CPU, 0-100.
    pub cpu_percent: f32,
    /// Memory use, 0-100.
    pub memory_percent: f32,
    /// What it is doing.
    pub state: RuntimeState,
    /// When it produced this report (Unix ms).
    pub reported_at_ms: u64,
    /// How many of `active_sessions` are WebRTC peers.
    #[serde(default)]
    pub webrtc_sessions: u32,
    /// Reported by a Proxy: the sessions it currently holds on each Backend, so that every Proxy can
    /// count a Backend's sessions across all Proxies.
    #[serde(default, with = "id_keys")]
    pub placed: BTreeMap<NodeId, u32>,
}

/// A node to register, as an operator or the configuration describes it. Carries the plain API key
/// in transit only; the state keeps its digest.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNode {
    /// The operator's name for it.
    #[serde(with = "id_text")]
    pub id: NodeId,
    /// The region it serves; must exist (except when seeding, which creates it).
    #[serde(with = "id_text")]
    pub region: RegionId,
    /// Proxy or Backend.
    pub kind: NodeKind,
    /// Host name or IP address (no port, no scheme).
    pub endpoint: String,
    /// SIP port; the kind's default (5060 or 5080) when absent.
    #[serde(default)]
    pub sip_port: Option<u16>,
    /// Most sessions it may hold at once; at least 1.
    pub max_sessions: u32,
    /// The plain API key, at least 32 characters and not used by another node.
    pub api_key: String,
}

impl fmt::Debug for NewNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The plain key must not reach a log line.
        f.debug_struct("NewNode")
            .field("id", &self.id)
            .field("region", &self.region)
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint)
            .field("sip_port", &self.sip_port)
            .field("max_sessions", &self.max_sessions)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

/// Why a lifecycle changed: `public` is shown to end users, `private` to operators only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reasons {
    /// Shown to end users (e.g. in a 503's reason or a status page).
    #[serde(default)]
    pub public: String,
    /// Shown to operators only (tickets, internal detail).
    #[serde(default)]
    pub private: String,
}

/// A type kept in a map under its own id, written as a list of values.
pub(crate) trait Keyed {
    type Key: Ord + Clone + fmt::Display;
    fn key(&self) -> &Self::Key;
}

impl Keyed for Region {
    type Key = RegionId;
    fn key(&self) -> &RegionId {
        &self.id
    }
}

impl Keyed for Node {
    type Key = NodeId;
    fn key(&self) -> &NodeId {
        &self.id
    }
}

/// serde for an id field: written as its text, parsed (and so validated) when read.
pub(crate) mod id_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(crate) fn serialize<T: Display, S: Serializer>(
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub(crate) fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(D::Error::custom)
    }
}

/// serde for a map keyed by an id: an object whose keys are the ids' text.
pub(crate) mod id_keys {
    use std::collections::BTreeMap;
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

    pub(crate) fn serialize<K, V, S>(map: &BTreeMap<K, V>, serializer: S) -> Result<S::Ok, S::Error>
    where
        K: Display,
        V: Serialize,
        S: Serializer,
    {
        serializer.collect_map(map.iter().map(|(key, value)| (key.to_string(), value)))
    }

    pub(crate) fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: FromStr + Ord,
        K::Err: Display,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        BTreeMap::<String, V>::deserialize(deserializer)?
            .into_iter()
            .map(|(key, value)| Ok((key.parse().map_err(D::Error::custom)?, value)))
            .collect()
    }
}

/// serde for a map of values kept under their own id: a list of the values, in id order. A repeated
/// id is an error when read, so a hand-edited file cannot silently lose an entry.
pub(crate) mod keyed_list {
    use std::collections::BTreeMap;
    use std::collections::btree_map::Entry;

    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

    use super::Keyed;

    pub(crate) fn serialize<V, S>(
        map: &BTreeMap<V::Key, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error>
    where
        V: Keyed + Serialize,
        S: Serializer,
    {
        serializer.collect_seq(map.values())
    }

    pub(crate) fn deserialize<'de, V, D>(deserializer: D) -> Result<BTreeMap<V::Key, V>, D::Error>
    where
        V: Keyed + Deserialize<'de>,
        D: Deserializer<'de>,
    {
        let mut map = BTreeMap::new();
        for value in Vec::<V>::deserialize(deserializer)? {
            match map.entry(value.key().clone()) {
                Entry::Occupied(entry) => {
                    return Err(D::Error::custom(format!("duplicate id {}", entry.key())));
                }
                Entry::Vacant(entry) => {
                    entry.insert(value);
                }
            }
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_round_trips_and_verifies() {
        let key = "k".repeat(40);
        let hash = ApiKeyHash::of(&key);
        assert!(hash.verify(&key));
        assert!(!hash.verify(&"k".repeat(39)));
        let hex = hash.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(ApiKeyHash::from_hex(&hex), Some(hash.clone()));
        assert_eq!(
            ApiKeyHash::from_hex(&hex.to_uppercase()),
            Some(hash.clone())
        );
        let json = serde_json::to_string(&hash).unwrap();
        assert_eq!(json, format!("\"{hex}\""));
        assert_eq!(serde_json::from_str::<ApiKeyHash>(&json).unwrap(), hash);
        for bad in [
            "",
            "zz",
            &"g".repeat(64),
            &"a".repeat(63),
            "é".repeat(32).as_str(),
        ] {
            assert!(ApiKeyHash::from_hex(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            ApiKeyHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn lifecycles() {
        let new = Lifecycle::new_entity(7, "alice");
        assert_eq!(new.state, AdminState::Disabled);
        assert!(new.maintenance && !new.accepts_sessions());
        assert_eq!((new.changed_at_ms, new.changed_by.as_str()), (7, "alice"));
        let seeded = Lifecycle::seeded(9);
        assert!(seeded.accepts_sessions());
        assert_eq!(seeded.changed_by, "config");
    }

    #[test]
    fn kinds() {
        assert_eq!(NodeKind::Proxy.default_sip_port(), 5060);
        assert_eq!(NodeKind::Backend.default_sip_port(), 5080);
        assert_eq!(
            serde_json::to_string(&NodeKind::Backend).unwrap(),
            "\"backend\""
        );
        assert_eq!(NodeKind::Proxy.to_string(), "proxy");
    }

    #[test]
    fn new_node_debug_hides_the_key() {
        let node = NewNode {
            id: NodeId::new("b1").unwrap(),
            region: RegionId::new("US-EAST").unwrap(),
            kind: NodeKind::Backend,
            endpoint: "10.0.0.1".to_owned(),
            sip_port: None,
            max_sessions: 10,
            api_key: "secret-secret-secret-secret-secret".to_owned(),
        };
        let debug = format!("{node:?}");
        assert!(!debug.contains("secret") && debug.contains("<redacted>"));
    }

    #[test]
    fn status_placed_is_keyed_by_node_text() {
        let status = NodeStatus {
            active_sessions: 3,
            limit: 100,
            cpu_percent: 1.5,
            memory_percent: 20.0,
            state: RuntimeState::Running,
            reported_at_ms: 5,
            webrtc_sessions: 0,
            placed: BTreeMap::from([(NodeId::new("b1").unwrap(), 3)]),
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["placed"], serde_json::json!({ "b1": 3 }));
        assert_eq!(json["state"], "running");
        let back: NodeStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
        // Older reporters omit the optional fields; a bad node id in `placed` is refused.
        let minimal = serde_json::json!({
            "active_sessions": 1, "limit": 2, "cpu_percent": 0.0, "memory_percent": 0.0,
            "state": "draining", "reported_at_ms": 0
        });
        let parsed: NodeStatus = serde_json::from_value(minimal).unwrap();
        assert!(parsed.placed.is_empty() && parsed.webrtc_sessions == 0);
        let bad = serde_json::json!({
            "active_sessions": 1, "limit": 2, "cpu_percent": 0.0, "memory_percent": 0.0,
            "state": "running", "reported_at_ms": 0, "placed": { "a b": 1 }
        });
        assert!(serde_json::from_value::<NodeStatus>(bad).is_err());
    }
}
