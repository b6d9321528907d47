//! The cluster state machine: validation, lifecycle, safe deletion, keys, seeding, capacity, serde.

use std::collections::BTreeMap;

use proptest::prelude::*;
use voxgate_cluster::model::RuntimeState;
use voxgate_cluster::model::{AdminState, ApiKeyHash, NewNode, NodeKind, NodeStatus, Reasons};
use voxgate_cluster::state::{
    AuditEntry, Change, ClusterError, ClusterState, ErrorCode, MIN_API_KEY_CHARS, RegionCapacity,
    Statuses,
};
use voxgate_core::{NodeId, RegionId};

const T0: u64 = 1_700_000_000_000;
const TTL: u64 = 5_000;

fn region(s: &str) -> RegionId {
    RegionId::new(s).expect("valid region")
}

fn node(s: &str) -> NodeId {
    NodeId::new(s).expect("valid node id")
}

/// A distinct valid key per `n`.
fn key(n: u32) -> String {
    format!("key-{n:04}-{}", "x".repeat(MIN_API_KEY_CHARS))
}

fn new_node(id: &str, region_id: &str, kind: NodeKind, key_n: u32) -> NewNode {
    NewNode {
        id: node(id),
        region: region(region_id),
        kind,
        endpoint: format!("{id}.example.net"),
        sip_port: None,
        max_sessions: 100,
        api_key: key(key_n),
    }
}

fn status(active: u32, limit: u32) -> NodeStatus {
    NodeStatus {
        active_sessions: active,
        limit,
        cpu_percent: 10.0,
        memory_percent: 20.0,
        state: RuntimeState::Running,
        reported_at_ms: T0,
        webrtc_sessions: 0,
        placed: BTreeMap::new(),
    }
}

fn proxy_status(active: u32, placed: &[(&str, u32)]) -> NodeStatus {
    NodeStatus {
        placed: placed.iter().map(|(id, n)| (node(id), *n)).collect(),
        ..status(active, 200)
    }
}

fn reasons(public: &str, private: &str) -> Reasons {
    Reasons {
        public: public.to_owned(),
        private: private.to_owned(),
    }
}

fn set_node(id: &str, enabled: bool) -> Change {
    Change::SetNodeState {
        id: node(id),
        enabled,
        reasons: Reasons::default(),
    }
}

fn set_region(id: &str, enabled: bool) -> Change {
    Change::SetRegionState {
        id: region(id),
        enabled,
        reasons: Reasons::default(),
    }
}

/// US-EAST seeded (enabled) with proxy p1 (key 1) and backends b1, b2 (keys 2, 3); DE-FRA created
/// by an operator, still disabled and empty.
fn cluster() -> ClusterState {
    let mut state = ClusterState::default();
    state.seed_region(region("US-EAST"), T0);
    for (id, kind, k) in [
        ("p1", NodeKind::Proxy, 1),
        ("b1", NodeKind::Backend, 2),
        ("b2", NodeKind::Backend, 3),
    ] {
        state
            .seed_node(new_node(id, "US-EAST", kind, k), T0)
            .expect("seed");
    }
    apply(
        &mut state,
        &Change::CreateRegion {
            id: region("DE-FRA"),
        },
        &Statuses::default(),
    )
    .expect("create");
    state
}

fn apply(
    state: &mut ClusterState,
    change: &Change,
    statuses: &Statuses,
) -> Result<(), ClusterError> {
    state.apply(change, "alice", T0 + 1, statuses)
}

/// Applies `change`, expects `code`, and checks nothing changed.
fn refused(
    state: &mut ClusterState,
    change: &Change,
    statuses: &Statuses,
    code: ErrorCode,
) -> String {
    let before = state.clone();
    let err = apply(state, change, statuses).expect_err("change should be refused");
    assert_eq!(err.code, code, "{change:?}: {err}");
    assert_eq!(
        *state, before,
        "{change:?} changed the state although refused"
    );
    err.message
}

#[test]
fn new_regions_and_nodes_start_disabled_in_maintenance() {
    let mut state = cluster();
    let fra = state.region(&region("DE-FRA")).expect("created");
    assert_eq!(fra.lifecycle.state, AdminState::Disabled);
    assert!(fra.lifecycle.maintenance);
    assert_eq!(fra.lifecycle.changed_by, "alice");
    assert_eq!(fra.created_at_ms, T0 + 1);

    apply(
        &mut state,
        &Change::AddNode(new_node("f1", "DE-FRA", NodeKind::Backend, 10)),
        &Statuses::default(),
    )
    .expect("add");
    let f1 = state.node(&node("f1")).expect("added");
    assert_eq!(f1.lifecycle.state, AdminState::Disabled);
    assert!(f1.lifecycle.maintenance);
    assert_eq!(f1.sip_port, 5080, "backend default port");
    assert!(!state.accepts_sessions(&node("f1")));

    // Seeded entries are enabled.
    assert!(state.accepts_sessions(&node("b1")));
    assert_eq!(state.node(&node("p1")).expect("seeded").sip_port, 5060);
}

#[test]
fn every_error_code_is_reachable_and_leaves_the_state_unchanged() {
    let mut state = cluster();
    let none = Statuses::default();

    // Ids are parsed at the edge (admin API paths, config); their errors carry their own codes.
    let bad_region = ClusterError::from(RegionId::new("us-east").expect_err("lower case"));
    assert_eq!(bad_region.code, ErrorCode::InvalidRegionId);
    let bad_node = ClusterError::invalid_node_id(&NodeId::new("a b").expect_err("space"));
    assert_eq!(bad_node.code, ErrorCode::InvalidNodeId);

    for (tweak, field) in [
        (
            (|n: &mut NewNode| n.endpoint = String::new()) as fn(&mut NewNode),
            "endpoint",
        ),
        (|n| n.endpoint = "host name".to_owned(), "endpoint"),
        (|n| n.endpoint = "a".repeat(254), "endpoint"),
        (|n| n.max_sessions = 0, "max_sessions"),
        (|n| n.sip_port = Some(0), "sip_port"),
        (|n| n.api_key = format!("{} ", "k".repeat(40)), "api_key"),
    ] {
        let mut candidate = new_node("b9", "US-EAST", NodeKind::Backend, 9);
        tweak(&mut candidate);
        let message = refused(
            &mut state,
            &Change::AddNode(candidate),
            &none,
            ErrorCode::InvalidField,
        );
        assert!(message.contains(field), "{message} should name {field}");
    }
    for (endpoint, sip_port, max_sessions, field) in [
        (Some("bad\thost"), None, None, "endpoint"),
        (None, Some(0), None, "sip_port"),
        (None, None, Some(0), "max_sessions"),
    ] {
        let message = refused(
            &mut state,
            &Change::UpdateNode {
                id: node("b1"),
                endpoint: endpoint.map(str::to_owned),
                sip_port,
                max_sessions,
                api_key: None,
            },
            &none,
            ErrorCode::InvalidField,
        );
        assert!(message.contains(field), "{message} should name {field}");
    }

    let mut short = new_node("b9", "US-EAST", NodeKind::Backend, 9);
    short.api_key = "k".repeat(MIN_API_KEY_CHARS - 1);
    refused(
        &mut state,
        &Change::AddNode(short),
        &none,
        ErrorCode::ApiKeyTooShort,
    );
    refused(
        &mut state,
        &Change::UpdateNode {
            id: node("b1"),
            endpoint: None,
            sip_port: None,
            max_sessions: None,
            api_key: Some("short".to_owned()),
        },
        &none,
        ErrorCode::ApiKeyTooShort,
    );

    let message = refused(
        &mut state,
        &Change::AddNode(new_node("b9", "US-EAST", NodeKind::Backend, 2)),
        &none,
        ErrorCode::ApiKeyReused,
    );
    assert!(
        !message.contains("b1"),
        "must not say whose key it is: {message}"
    );
    refused(
        &mut state,
        &Change::UpdateNode {
            id: node("b1"),
            endpoint: None,
            sip_port: None,
            max_sessions: None,
            api_key: Some(key(3)),
        },
        &none,
        ErrorCode::ApiKeyReused,
    );

    refused(
        &mut state,
        &Change::CreateRegion {
            id: region("US-EAST"),
        },
        &none,
        ErrorCode::RegionExists,
    );
    refused(
        &mut state,
        &Change::AddNode(new_node("x1", "GB-LON", NodeKind::Proxy, 9)),
        &none,
        ErrorCode::RegionNotFound,
    );
    refused(
        &mut state,
        &set_region("GB-LON", true),
        &none,
        ErrorCode::RegionNotFound,
    );
    refused(
        &mut state,
        &Change::SetRegionMaintenance {
            id: region("GB-LON"),
            on: true,
            reasons: Reasons::default(),
        },
        &none,
        ErrorCode::RegionNotFound,
    );
    refused(
        &mut state,
        &Change::DeleteRegion {
            id: region("GB-LON"),
        },
        &none,
        ErrorCode::RegionNotFound,
    );
    refused(
        &mut state,
        &Change::AddNode(new_node("b1", "US-EAST", NodeKind::Backend, 9)),
        &none,
        ErrorCode::NodeExists,
    );
    for change in [
        Change::DeleteNode { id: node("zz") },
        set_node("zz", true),
        Change::SetNodeMaintenance {
            id: node("zz"),
            on: false,
            reasons: Reasons::default(),
        },
        Change::UpdateNode {
            id: node("zz"),
            endpoint: None,
            sip_port: None,
            max_sessions: None,
            api_key: None,
        },
    ] {
        refused(&mut state, &change, &none, ErrorCode::NodeNotFound);
    }

    // Deletion guards.
    refused(
        &mut state,
        &Change::DeleteNode { id: node("b1") },
        &none,
        ErrorCode::NodeNotDisabled,
    );
    apply(&mut state, &set_node("b1", false), &none).expect("disable");
    let mut b1_reports = Statuses::default();
    b1_reports.publish(node("b1"), status(0, 100), T0 + TTL);
    refused(
        &mut state,
        &Change::DeleteNode { id: node("b1") },
        &b1_reports,
        ErrorCode::NodeReporting,
    );
    let mut placed = Statuses::default();
    placed.publish(node("p1"), proxy_status(3, &[("b1", 3)]), T0 + TTL);
    refused(
        &mut state,
        &Change::DeleteNode { id: node("b1") },
        &placed,
        ErrorCode::NodeHasSessions,
    );
    refused(
        &mut state,
        &Change::DeleteRegion {
            id: region("US-EAST"),
        },
        &none,
        ErrorCode::RegionEnabled,
    );
    apply(&mut state, &set_region("US-EAST", false), &none).expect("disable region");
    refused(
        &mut state,
        &Change::DeleteRegion {
            id: region("US-EAST"),
        },
        &b1_reports,
        ErrorCode::NodesOnline,
    );
    refused(
        &mut state,
        &Change::DeleteRegion {
            id: region("US-EAST"),
        },
        &none,
        ErrorCode::RegionHasNodes,
    );
}

#[test]
fn http_statuses_follow_the_code_class() {
    use ErrorCode::*;
    for code in [InvalidRegionId, InvalidNodeId, InvalidField, ApiKeyTooShort] {
        assert_eq!(code.http_status(), 400, "{code}");
    }
    for code in [RegionNotFound, NodeNotFound] {
        assert_eq!(code.http_status(), 404, "{code}");
    }
    for code in [
        ApiKeyReused,
        RegionExists,
        NodeExists,
        NodeNotDisabled,
        NodeReporting,
        NodeHasSessions,
        RegionEnabled,
        NodesOnline,
        RegionHasNodes,
    ] {
        assert_eq!(code.http_status(), 409, "{code}");
    }
    let err = ClusterError::new(NodeNotFound, "node x not found");
    assert_eq!(err.to_string(), "node x not found");
    assert_eq!(
        serde_json::to_value(&err).expect("json"),
        serde_json::json!({ "code": "NODE_NOT_FOUND", "message": "node x not found" })
    );
}

#[test]
fn lifecycle_changes_record_actor_time_and_reasons() {
    let mut state = cluster();
    let none = Statuses::default();
    state
        .apply(
            &Change::SetNodeMaintenance {
                id: node("b1"),
                on: true,
                reasons: reasons("upgrade", "kernel 6.9, ticket OPS-12"),
            },
            "bob",
            T0 + 50,
            &none,
        )
        .expect("maintenance");
    let b1 = state.node(&node("b1")).expect("b1");
    assert!(b1.lifecycle.maintenance);
    assert_eq!(b1.lifecycle.state, AdminState::Enabled);
    assert_eq!(b1.lifecycle.public_reason, "upgrade");
    assert_eq!(b1.lifecycle.private_reason, "kernel 6.9, ticket OPS-12");
    assert_eq!(
        (b1.lifecycle.changed_at_ms, b1.lifecycle.changed_by.as_str()),
        (T0 + 50, "bob")
    );
    assert!(!state.accepts_sessions(&node("b1")));

    // A node that accepts is still refused while its region is in maintenance or disabled.
    assert!(state.accepts_sessions(&node("b2")));
    apply(
        &mut state,
        &Change::SetRegionMaintenance {
            id: region("US-EAST"),
            on: true,
            reasons: reasons("migration", ""),
        },
        &none,
    )
    .expect("region maintenance");
    assert!(!state.accepts_sessions(&node("b2")));
    let east = state.region(&region("US-EAST")).expect("region");
    assert_eq!(east.lifecycle.public_reason, "migration");
    assert_eq!(east.lifecycle.changed_by, "alice");
    apply(
        &mut state,
        &Change::SetRegionMaintenance {
            id: region("US-EAST"),
            on: false,
            reasons: Reasons::default(),
        },
        &none,
    )
    .expect("region back");
    assert!(state.accepts_sessions(&node("b2")));
    apply(&mut state, &set_region("US-EAST", false), &none).expect("disable region");
    assert!(!state.accepts_sessions(&node("b2")));
    assert!(!state.accepts_sessions(&node("unknown")));
}

#[test]
fn update_node_changes_only_the_given_fields() {
    let mut state = cluster();
    let before = state.node(&node("b1")).expect("b1").clone();
    apply(
        &mut state,
        &Change::UpdateNode {
            id: node("b1"),
            endpoint: Some("10.1.2.3".to_owned()),
            sip_port: None,
            max_sessions: Some(250),
            api_key: None,
        },
        &Statuses::default(),
    )
    .expect("update");
    let after = state.node(&node("b1")).expect("b1");
    assert_eq!(after.endpoint, "10.1.2.3");
    assert_eq!(after.max_sessions, 250);
    assert_eq!(after.sip_port, before.sip_port);
    assert_eq!(after.api_key, before.api_key);
    assert_eq!(after.lifecycle, before.lifecycle);

    // Setting a node's own key again is not reuse.
    apply(
        &mut state,
        &Change::UpdateNode {
            id: node("b1"),
            endpoint: None,
            sip_port: Some(5090),
            max_sessions: None,
            api_key: Some(key(2)),
        },
        &Statuses::default(),
    )
    .expect("same key");
    assert_eq!(state.node(&node("b1")).expect("b1").sip_port, 5090);
}

#[test]
fn api_keys_are_hashed_verified_and_rotated() {
    let mut state = cluster();
    let hash = ApiKeyHash::of(&key(2));
    assert!(hash.verify(&key(2)));
    assert!(!hash.verify(&key(3)));
    assert_eq!(state.node(&node("b1")).expect("b1").api_key, hash);

    assert_eq!(state.node_by_api_key(&key(2)).expect("b1").id, node("b1"));
    assert_eq!(state.node_by_api_key(&key(1)).expect("p1").id, node("p1"));
    assert!(state.node_by_api_key(&key(77)).is_none());
    assert!(state.node_by_api_key("").is_none());

    // The plain key is nowhere in the stored state.
    let json = serde_json::to_string(&state).expect("json");
    assert!(!json.contains(&key(2)));
    assert!(json.contains(&hash.to_hex()));

    apply(
        &mut state,
        &Change::UpdateNode {
            id: node("b1"),
            endpoint: None,
            sip_port: None,
            max_sessions: None,
            api_key: Some(key(20)),
        },
        &Statuses::default(),
    )
    .expect("rotate");
    assert!(state.node_by_api_key(&key(2)).is_none());
    assert_eq!(state.node_by_api_key(&key(20)).expect("b1").id, node("b1"));
    // The old key is free again.
    apply(
        &mut state,
        &Change::AddNode(new_node("b9", "US-EAST", NodeKind::Backend, 2)),
        &Statuses::default(),
    )
    .expect("old key reusable after rotation");
}

#[test]
fn seeding_is_idempotent_and_never_overrides_an_operator() {
    let mut state = cluster();
    let none = Statuses::default();
    apply(
        &mut state,
        &Change::SetNodeState {
            id: node("b1"),
            enabled: false,
            reasons: reasons("", "bad disk"),
        },
        &none,
    )
    .expect("disable");
    apply(
        &mut state,
        &Change::UpdateNode {
            id: node("b1"),
            endpoint: None,
            sip_port: None,
            max_sessions: Some(7),
            api_key: Some(key(40)),
        },
        &none,
    )
    .expect("update");
    let operated = state.clone();

    // The same config again (its b1 still carries key 2 and 100 sessions): nothing changes.
    state.seed_region(region("US-EAST"), T0 + 99);
    for (id, kind, k) in [
        ("p1", NodeKind::Proxy, 1),
        ("b1", NodeKind::Backend, 2),
        ("b2", NodeKind::Backend, 3),
    ] {
        state
            .seed_node(new_node(id, "US-EAST", kind, k), T0 + 99)
            .expect("reseed");
    }
    assert_eq!(state, operated);

    // A new config entry is added, with its region, enabled.
    state
        .seed_node(new_node("w1", "US-WEST", NodeKind::Backend, 5), T0 + 99)
        .expect("new node");
    assert!(state.accepts_sessions(&node("w1")));
    let west = state
        .region(&region("US-WEST"))
        .expect("seeded with its node");
    assert_eq!(west.lifecycle.changed_by, "config");
    assert_eq!(west.created_at_ms, T0 + 99);

    // Seeding validates like AddNode.
    let before = state.clone();
    let err = state
        .seed_node(new_node("w2", "US-WEST", NodeKind::Backend, 40), T0)
        .expect_err("key used by b1");
    assert_eq!(err.code, ErrorCode::ApiKeyReused);
    let mut bad = new_node("w3", "GB-NEW", NodeKind::Backend, 41);
    bad.max_sessions = 0;
    assert_eq!(
        state.seed_node(bad, T0).expect_err("bad field").code,
        ErrorCode::InvalidField
    );
    assert_eq!(
        state, before,
        "a refused seed adds nothing, not even its region"
    );
}

#[test]
fn node_deletion_waits_until_nothing_depends_on_it() {
    let mut state = cluster();
    let b1 = node("b1");
    let delete = Change::DeleteNode { id: b1.clone() };
    let mut statuses = Statuses::default();
    statuses.publish(b1.clone(), status(2, 100), T0 + TTL);
    statuses.publish(node("p1"), proxy_status(2, &[("b1", 2)]), T0 + 3 * TTL);

    // Enabled: refused.
    refused(&mut state, &delete, &statuses, ErrorCode::NodeNotDisabled);
    // In maintenance is not disabled either.
    apply(
        &mut state,
        &Change::SetNodeMaintenance {
            id: b1.clone(),
            on: true,
            reasons: Reasons::default(),
        },
        &statuses,
    )
    .expect("maintenance");
    refused(&mut state, &delete, &statuses, ErrorCode::NodeNotDisabled);
    // Disabled but still reporting: refused.
    apply(&mut state, &set_node("b1", false), &statuses).expect("disable");
    refused(&mut state, &delete, &statuses, ErrorCode::NodeReporting);
    // Its own status has expired, but a live proxy still holds sessions on it.
    let after_expiry = T0 + TTL;
    assert!(!statuses.is_online(&b1, after_expiry));
    let before = state.clone();
    let err = state
        .apply(&delete, "alice", after_expiry, &statuses)
        .expect_err("sessions placed");
    assert_eq!(err.code, ErrorCode::NodeHasSessions);
    assert!(err.message.contains('2'), "{err}");
    assert_eq!(state, before);
    // The proxy reports none left: accepted.
    statuses.publish(node("p1"), proxy_status(0, &[]), T0 + 3 * TTL);
    state
        .apply(&delete, "alice", after_expiry, &statuses)
        .expect("deleted");
    assert!(state.node(&b1).is_none());
    assert_eq!(state.nodes_in(&region("US-EAST")).count(), 2);
}

#[test]
fn sessions_placed_by_an_expired_proxy_do_not_block_deletion() {
    let mut state = cluster();
    apply(&mut state, &set_node("b1", false), &Statuses::default()).expect("disable");
    let mut statuses = Statuses::default();
    statuses.publish(node("p1"), proxy_status(1, &[("b1", 1)]), T0 + TTL);
    assert_eq!(statuses.placed_on(&node("b1"), T0), 1);
    assert_eq!(statuses.placed_on(&node("b1"), T0 + TTL), 0);
    state
        .apply(
            &Change::DeleteNode { id: node("b1") },
            "alice",
            T0 + TTL,
            &statuses,
        )
        .expect("the proxy is gone, so are its sessions");
}

#[test]
fn region_deletion_sequence() {
    let mut state = cluster();
    let east = region("US-EAST");
    let delete = Change::DeleteRegion { id: east.clone() };
    let mut statuses = Statuses::default();
    statuses.publish(node("p1"), status(0, 100), T0 + TTL);

    refused(&mut state, &delete, &statuses, ErrorCode::RegionEnabled);
    apply(&mut state, &set_region("US-EAST", false), &statuses).expect("disable");
    let message = refused(&mut state, &delete, &statuses, ErrorCode::NodesOnline);
    assert!(message.contains("p1"), "{message}");
    statuses.prune(T0 + TTL);
    assert_eq!(statuses.iter().count(), 0);
    refused(&mut state, &delete, &statuses, ErrorCode::RegionHasNodes);
    for id in ["p1", "b1", "b2"] {
        apply(&mut state, &set_node(id, false), &statuses).expect("disable node");
        apply(&mut state, &Change::DeleteNode { id: node(id) }, &statuses).expect("delete node");
    }
    apply(&mut state, &delete, &statuses).expect("empty disabled region");
    assert!(state.region(&east).is_none());
    // The operator-created, never-enabled region can go at once.
    apply(
        &mut state,
        &Change::DeleteRegion {
            id: region("DE-FRA"),
        },
        &statuses,
    )
    .expect("delete DE-FRA");
    assert_eq!((state.regions().count(), state.nodes().count()), (0, 0));
}

#[test]
fn capacity_counts_online_accepting_nodes_and_placed_sessions() {
    let mut state = cluster();
    let none = Statuses::default();
    for (id, kind, k, max) in [
        ("p2", NodeKind::Proxy, 4, 100),
        ("b3", NodeKind::Backend, 5, 20),
        ("b4", NodeKind::Backend, 6, 40),
    ] {
        let mut new = new_node(id, "US-EAST", kind, k);
        new.max_sessions = max;
        state.seed_node(new, T0).expect("seed");
    }
    apply(
        &mut state,
        &Change::UpdateNode {
            id: node("b1"),
            endpoint: None,
            sip_port: None,
            max_sessions: Some(50),
            api_key: None,
        },
        &none,
    )
    .expect("b1 cap");
    apply(
        &mut state,
        &Change::SetNodeMaintenance {
            id: node("b2"),
            on: true,
            reasons: Reasons::default(),
        },
        &none,
    )
    .expect("b2 maintenance");

    let mut statuses = Statuses::default();
    // p1 online, p2 offline (never reported).
    statuses.publish(
        node("p1"),
        proxy_status(10, &[("b1", 4), ("b3", 2)]),
        T0 + TTL,
    );
    // b1 heartbeats and sees more than p1 placed (another proxy's call just arrived).
    statuses.publish(node("b1"), status(6, 50), T0 + TTL);
    // b2 in maintenance: still finishing 3 sessions, no room counted.
    statuses.publish(node("b2"), status(3, 100), T0 + TTL);
    // b3 is probed: the proxy publishes a status for it that carries no count of its own.
    statuses.publish(node("b3"), status(0, 20), T0 + TTL);
    // b4 offline.

    let capacity = state.capacity(&statuses, T0);
    assert_eq!(capacity.len(), 4, "two regions, two kinds each");
    let find = |r: &str, kind: NodeKind| -> &RegionCapacity {
        capacity
            .iter()
            .find(|c| c.region == region(r) && c.kind == kind)
            .expect("entry")
    };
    let proxies = find("US-EAST", NodeKind::Proxy);
    assert_eq!(
        (
            proxies.nodes_registered,
            proxies.nodes_online,
            proxies.active,
            proxies.limit,
            proxies.available
        ),
        (2, 1, 10, 200, 190)
    );
    assert!((proxies.utilization - 0.05).abs() < 1e-9);
    let backends = find("US-EAST", NodeKind::Backend);
    assert_eq!(
        (
            backends.nodes_registered,
            backends.nodes_online,
            backends.active,
            backends.limit,
            backends.available
        ),
        (4, 3, 6 + 3 + 2, 50 + 20, 70 - 11)
    );
    assert!((backends.utilization - 11.0 / 70.0).abs() < 1e-9);
    for kind in [NodeKind::Proxy, NodeKind::Backend] {
        let empty = find("DE-FRA", kind);
        assert_eq!(
            (
                empty.nodes_registered,
                empty.active,
                empty.limit,
                empty.available
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(empty.utilization, 0.0);
    }
    let json = serde_json::to_value(backends).expect("json");
    assert_eq!(json["region"], "US-EAST");
    assert_eq!(json["kind"], "backend");

    // Region in maintenance: sessions still counted, no room; utilization 0 with no limit.
    apply(
        &mut state,
        &Change::SetRegionMaintenance {
            id: region("US-EAST"),
            on: true,
            reasons: Reasons::default(),
        },
        &none,
    )
    .expect("region maintenance");
    let backends = us_east_backends(&state, &statuses);
    assert_eq!(
        (backends.active, backends.limit, backends.available),
        (11, 0, 0)
    );
    assert_eq!(backends.utilization, 0.0);

    // Once every status expires, the region is offline.
    let later = state.capacity(&statuses, T0 + TTL);
    assert!(later.iter().all(|c| c.nodes_online == 0 && c.active == 0));
}

fn us_east_backends(state: &ClusterState, statuses: &Statuses) -> RegionCapacity {
    state
        .capacity(statuses, T0)
        .into_iter()
        .find(|c| c.region == region("US-EAST") && c.kind == NodeKind::Backend)
        .expect("entry")
}

#[test]
fn draining_load_exceeding_room_shows_above_one() {
    let mut state = cluster();
    apply(
        &mut state,
        &Change::SetNodeMaintenance {
            id: node("b2"),
            on: true,
            reasons: Reasons::default(),
        },
        &Statuses::default(),
    )
    .expect("drain b2");
    let mut statuses = Statuses::default();
    statuses.publish(node("b1"), status(90, 100), T0 + TTL);
    statuses.publish(node("b2"), status(60, 100), T0 + TTL);
    let backends = us_east_backends(&state, &statuses);
    assert_eq!(
        (backends.active, backends.limit, backends.available),
        (150, 100, 0)
    );
    assert!((backends.utilization - 1.5).abs() < 1e-9);
}

#[test]
fn a_deleted_node_is_not_seeded_back_until_added_again() {
    let mut state = cluster();
    let none = Statuses::default();
    apply(&mut state, &set_node("b1", false), &none).expect("disable");
    apply(&mut state, &Change::DeleteNode { id: node("b1") }, &none).expect("delete");
    // A restart seeds from a config that still names b1: it stays deleted.
    state
        .seed_node(new_node("b1", "US-EAST", NodeKind::Backend, 2), T0)
        .expect("seed");
    assert!(state.node(&node("b1")).is_none());
    let json = serde_json::to_string(&state).unwrap();
    let mut state: ClusterState = serde_json::from_str(&json).unwrap();
    state
        .seed_node(new_node("b1", "US-EAST", NodeKind::Backend, 2), T0)
        .expect("seed");
    assert!(
        state.node(&node("b1")).is_none(),
        "the mark survives storage"
    );
    // An operator adding it again clears the mark.
    apply(
        &mut state,
        &Change::AddNode(new_node("b1", "US-EAST", NodeKind::Backend, 2)),
        &none,
    )
    .expect("add");
    assert!(state.node(&node("b1")).is_some());
}

#[test]
fn a_draining_node_keeps_its_load_but_adds_no_room() {
    let state = cluster();
    let mut statuses = Statuses::default();
    statuses.publish(node("b1"), status(30, 100), T0 + TTL);
    let draining = NodeStatus {
        state: RuntimeState::Draining,
        ..status(40, 100)
    };
    statuses.publish(node("b2"), draining, T0 + TTL);
    let backends = us_east_backends(&state, &statuses);
    assert_eq!(
        (backends.nodes_online, backends.active, backends.limit),
        (2, 70, 100)
    );
}

#[test]
fn statuses_freshness_and_placed_sums() {
    let mut statuses = Statuses::default();
    statuses.publish(
        node("p1"),
        proxy_status(5, &[("b1", 3), ("b2", 2)]),
        T0 + 10,
    );
    statuses.publish(node("p2"), proxy_status(1, &[("b1", u32::MAX)]), T0 + 20);
    assert!(statuses.is_online(&node("p1"), T0 + 9));
    assert!(
        !statuses.is_online(&node("p1"), T0 + 10),
        "expires at its deadline"
    );
    assert_eq!(statuses.placed_on(&node("b1"), T0), u32::MAX, "saturates");
    assert_eq!(statuses.placed_on(&node("b2"), T0), 2);
    assert_eq!(statuses.placed_on(&node("b2"), T0 + 10), 0);
    assert_eq!(
        statuses
            .fresh(&node("p2"), T0 + 15)
            .expect("fresh")
            .active_sessions,
        1
    );
    // A newer report replaces the old one and its deadline.
    statuses.publish(node("p1"), proxy_status(0, &[]), T0 + 30);
    assert_eq!(statuses.placed_on(&node("b2"), T0), 0);
    statuses.prune(T0 + 20);
    let left: Vec<_> = statuses
        .iter()
        .map(|(id, _, exp)| (id.clone(), exp))
        .collect();
    assert_eq!(left, vec![(node("p1"), T0 + 30)]);
    statuses.remove(&node("p1"));
    assert_eq!(statuses.iter().count(), 0);
}

#[test]
fn change_helpers_and_audit_entries() {
    let cases: Vec<(Change, &str, &str)> = vec![
        (
            Change::CreateRegion {
                id: region("US-EAST"),
            },
            "region.create",
            "US-EAST",
        ),
        (
            Change::DeleteRegion {
                id: region("US-EAST"),
            },
            "region.delete",
            "US-EAST",
        ),
        (set_region("US-EAST", true), "region.enable", "US-EAST"),
        (set_region("US-EAST", false), "region.disable", "US-EAST"),
        (
            Change::SetRegionMaintenance {
                id: region("US-EAST"),
                on: true,
                reasons: Reasons::default(),
            },
            "region.maintenance_on",
            "US-EAST",
        ),
        (
            Change::SetRegionMaintenance {
                id: region("US-EAST"),
                on: false,
                reasons: Reasons::default(),
            },
            "region.maintenance_off",
            "US-EAST",
        ),
        (
            Change::AddNode(new_node("b1", "US-EAST", NodeKind::Backend, 1)),
            "node.add",
            "b1",
        ),
        (
            Change::UpdateNode {
                id: node("b1"),
                endpoint: None,
                sip_port: None,
                max_sessions: None,
                api_key: None,
            },
            "node.update",
            "b1",
        ),
        (Change::DeleteNode { id: node("b1") }, "node.delete", "b1"),
        (set_node("b1", true), "node.enable", "b1"),
        (set_node("b1", false), "node.disable", "b1"),
        (
            Change::SetNodeMaintenance {
                id: node("b1"),
                on: true,
                reasons: Reasons::default(),
            },
            "node.maintenance_on",
            "b1",
        ),
        (
            Change::SetNodeMaintenance {
                id: node("b1"),
                on: false,
                reasons: Reasons::default(),
            },
            "node.maintenance_off",
            "b1",
        ),
    ];
    for (change, action, target) in &cases {
        assert_eq!(change.action(), *action);
        assert_eq!(change.target(), *target);
    }
    assert!(cases[0].0.reasons().is_none());
    assert!(cases[6].0.reasons().is_none());

    let change = Change::SetNodeState {
        id: node("b1"),
        enabled: false,
        reasons: reasons("maintenance window", "ticket 42"),
    };
    let entry = AuditEntry::for_change(&change, "carol", T0);
    assert_eq!(
        entry,
        AuditEntry {
            at_ms: T0,
            actor: "carol".to_owned(),
            action: "node.disable".to_owned(),
            target: "b1".to_owned(),
            public_reason: "maintenance window".to_owned(),
            private_reason: "ticket 42".to_owned(),
        }
    );
    let json = serde_json::to_string(&entry).expect("json");
    assert_eq!(
        serde_json::from_str::<AuditEntry>(&json).expect("back"),
        entry
    );
    // AddNode's audit entry never carries the key.
    let add = AuditEntry::for_change(&cases[6].0, "carol", T0);
    assert!(!serde_json::to_string(&add).expect("json").contains(&key(1)));
}

#[test]
fn serde_round_trip_and_validation_of_stored_state() {
    let mut state = cluster();
    apply(
        &mut state,
        &Change::SetNodeMaintenance {
            id: node("b2"),
            on: true,
            reasons: reasons("pub", "priv"),
        },
        &Statuses::default(),
    )
    .expect("maintenance");
    let json = serde_json::to_value(&state).expect("json");
    assert!(json["regions"].is_array() && json["nodes"].is_array());
    assert_eq!(json["nodes"][0]["id"], "b1");
    assert_eq!(json["nodes"][0]["kind"], "backend");
    assert_eq!(json["regions"][1]["lifecycle"]["state"], "enabled");
    let back: ClusterState = serde_json::from_value(json.clone()).expect("back");
    assert_eq!(back, state);
    back.validate().expect("valid");
    assert_eq!(
        serde_json::from_str::<ClusterState>("{}").expect("empty"),
        ClusterState::default()
    );

    let mut statuses = Statuses::default();
    statuses.publish(node("p1"), proxy_status(2, &[("b1", 2)]), T0 + TTL);
    let text = serde_json::to_string(&statuses).expect("json");
    assert_eq!(
        serde_json::from_str::<Statuses>(&text).expect("back"),
        statuses
    );

    // A repeated id, a bad id, an orphan node, a shared key: refused.
    let mut duplicate = json.clone();
    let first = duplicate["nodes"][0].clone();
    duplicate["nodes"]
        .as_array_mut()
        .expect("array")
        .push(first);
    let err = serde_json::from_value::<ClusterState>(duplicate).expect_err("duplicate");
    assert!(err.to_string().contains("duplicate id b1"), "{err}");

    let mut bad_id = json.clone();
    bad_id["regions"][0]["id"] = "de-fra".into();
    assert!(serde_json::from_value::<ClusterState>(bad_id).is_err());

    let mut orphan = json.clone();
    orphan["nodes"][0]["region"] = "GB-LON".into();
    let orphan: ClusterState = serde_json::from_value(orphan).expect("parses");
    assert_eq!(
        orphan.validate().expect_err("orphan").code,
        ErrorCode::RegionNotFound
    );

    let mut shared = json.clone();
    shared["nodes"][1]["api_key"] = shared["nodes"][0]["api_key"].clone();
    let shared: ClusterState = serde_json::from_value(shared).expect("parses");
    assert_eq!(
        shared.validate().expect_err("shared").code,
        ErrorCode::ApiKeyReused
    );

    let mut zero = json;
    zero["nodes"][0]["max_sessions"] = 0.into();
    let zero: ClusterState = serde_json::from_value(zero).expect("parses");
    let err = zero.validate().expect_err("zero cap");
    assert_eq!(err.code, ErrorCode::InvalidField);
    assert!(
        err.message.contains("b1") && err.message.contains("max_sessions"),
        "{err}"
    );
}

/// One step of a random operator session.
#[derive(Debug, Clone)]
enum Step {
    Change(Change),
    /// A node reports for 3 ticks; a Proxy reports sessions on `backend`.
    Report {
        id: NodeId,
        backend: NodeId,
        placed: u32,
    },
    /// Time moves on one tick.
    Tick,
}

fn arb_step() -> impl Strategy<Value = Step> {
    let region_id = prop::sample::select(vec!["US-A", "US-B", "DE-C"]).prop_map(region);
    let node_id = prop::sample::select(vec!["n0", "n1", "n2", "n3", "n4"]).prop_map(node);
    // Key 99 is too short; the others collide often across five nodes.
    let api_key = prop::sample::select(vec![0u32, 1, 2, 3, 99])
        .prop_map(|n| if n == 99 { "short".to_owned() } else { key(n) });
    let kind = prop_oneof![Just(NodeKind::Proxy), Just(NodeKind::Backend)];
    let change = prop_oneof![
        region_id.clone().prop_map(|id| Change::CreateRegion { id }),
        region_id.clone().prop_map(|id| Change::DeleteRegion { id }),
        (region_id.clone(), any::<bool>()).prop_map(|(id, enabled)| Change::SetRegionState {
            id,
            enabled,
            reasons: Reasons::default(),
        }),
        (region_id.clone(), any::<bool>()).prop_map(|(id, on)| Change::SetRegionMaintenance {
            id,
            on,
            reasons: Reasons::default(),
        }),
        (node_id.clone(), region_id, kind, api_key.clone(), 0u32..3).prop_map(
            |(id, region, kind, api_key, max_sessions)| Change::AddNode(NewNode {
                id,
                region,
                kind,
                endpoint: "10.0.0.1".to_owned(),
                sip_port: None,
                max_sessions,
                api_key,
            })
        ),
        (
            node_id.clone(),
            prop::option::of(api_key),
            prop::option::of(0u32..3)
        )
            .prop_map(|(id, api_key, max_sessions)| Change::UpdateNode {
                id,
                endpoint: None,
                sip_port: None,
                max_sessions,
                api_key,
            }),
        node_id.clone().prop_map(|id| Change::DeleteNode { id }),
        (node_id.clone(), any::<bool>()).prop_map(|(id, enabled)| Change::SetNodeState {
            id,
            enabled,
            reasons: Reasons::default(),
        }),
        (node_id.clone(), any::<bool>()).prop_map(|(id, on)| Change::SetNodeMaintenance {
            id,
            on,
            reasons: Reasons::default(),
        }),
    ];
    prop_oneof![
        6 => change.prop_map(Step::Change),
        2 => (node_id.clone(), node_id, 0u32..3)
            .prop_map(|(id, backend, placed)| Step::Report { id, backend, placed }),
        1 => Just(Step::Tick),
    ]
}

fn check_invariants(state: &ClusterState) -> Result<(), TestCaseError> {
    for node in state.nodes() {
        prop_assert!(
            state.region(&node.region).is_some(),
            "{} has no region",
            node.id
        );
        prop_assert!(node.max_sessions > 0);
        let sharing = state
            .nodes()
            .filter(|other| other.api_key == node.api_key)
            .count();
        prop_assert_eq!(sharing, 1, "{} shares its key", node.id);
    }
    prop_assert!(state.validate().is_ok());
    Ok(())
}

proptest! {
    #[test]
    fn random_changes_never_break_invariants(steps in prop::collection::vec(arb_step(), 1..80)) {
        let mut state = ClusterState::default();
        let mut statuses = Statuses::default();
        let mut now = T0;
        for step in steps {
            match step {
                Step::Tick => now += 1_000,
                Step::Report { id, backend, placed } => {
                    let report = NodeStatus {
                        placed: BTreeMap::from([(backend, placed)]),
                        ..status(placed, 10)
                    };
                    statuses.publish(id, report, now + 3_000);
                }
                Step::Change(change) => {
                    let before = state.clone();
                    match state.apply(&change, "prop", now, &statuses) {
                        Err(_) => prop_assert_eq!(&state, &before, "refused {:?} changed state", change),
                        Ok(()) => {
                            if let Change::DeleteNode { id } = &change {
                                let node = before.node(id).expect("deleted node existed");
                                prop_assert_eq!(node.lifecycle.state, AdminState::Disabled);
                                prop_assert!(!statuses.is_online(id, now));
                                prop_assert_eq!(statuses.placed_on(id, now), 0);
                            }
                            if let Change::DeleteRegion { id } = &change {
                                prop_assert!(!before.region(id).expect("existed").lifecycle.is_enabled());
                                prop_assert_eq!(before.nodes_in(id).count(), 0);
                            }
                        }
                    }
                    check_invariants(&state)?;
                }
            }
        }
        let json = serde_json::to_string(&state).expect("json");
        let back: ClusterState = serde_json::from_str(&json).expect("back");
        prop_assert_eq!(&back, &state);
        let capacity = state.capacity(&statuses, now);
        prop_assert_eq!(capacity.len(), state.regions().count() * 2);
        for entry in capacity {
            prop_assert!(entry.nodes_online <= entry.nodes_registered);
            prop_assert_eq!(entry.available, entry.limit.saturating_sub(entry.active));
        }
    }
}
