//! Fixtures shared by the registry tests: ids, keys, nodes and the seed both registries start from.

// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use voxgate_cluster::{NewNode, NodeKind};
use voxgate_core::{NodeId, RegionId};
use voxgate_proxy::registry::Seed;

pub fn region(s: &str) -> RegionId {
    RegionId::new(s).expect("valid region")
}

pub fn node(s: &str) -> NodeId {
    NodeId::new(s).expect("valid node id")
}

pub fn key(n: u32) -> String {
    format!("test-key-{n:04}-{}", "k".repeat(32))
}

pub fn new_node(id: &str, region_id: &str, kind: NodeKind, key_n: u32) -> NewNode {
    NewNode {
        id: node(id),
        region: region(region_id),
        kind,
        endpoint: "127.0.0.1".to_owned(),
        sip_port: None,
        max_sessions: 50,
        api_key: key(key_n),
    }
}

/// The config: US-EAST with proxy p1 and backend b1.
pub fn seed() -> Seed {
    Seed {
        regions: vec![region("US-EAST")],
        nodes: vec![
            new_node("p1", "US-EAST", NodeKind::Proxy, 1),
            new_node("b1", "US-EAST", NodeKind::Backend, 2),
        ],
    }
}
