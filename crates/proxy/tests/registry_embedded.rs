//! The embedded registry: persistence across restarts, refusal of bad state files, seeding, audit,
//! status expiry.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{key, new_node, node, region, seed};
use voxgate_cluster::{AdminState, Change, ErrorCode, NodeKind, NodeStatus, Reasons, RuntimeState};
use voxgate_proxy::registry::{EmbeddedRegistry, Registry, RegistryError, Seed};

const T0: u64 = 1_700_000_000_000;

/// A clock the test moves by hand.
#[derive(Clone)]
struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    fn new() -> Self {
        Self(Arc::new(AtomicU64::new(T0)))
    }

    fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    fn reader(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let now = Arc::clone(&self.0);
        move || now.load(Ordering::SeqCst)
    }
}

fn open(path: &Path, seed: &Seed) -> EmbeddedRegistry {
    EmbeddedRegistry::open_with_clock(Some(path), seed, ManualClock::new().reader())
        .expect("registry opens")
}

fn state_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("state").join("voxgate-state.json")
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn maintenance(id: &str, on: bool) -> Change {
    Change::SetNodeMaintenance {
        id: node(id),
        on,
        reasons: Reasons {
            public: "upgrade".to_owned(),
            private: "ticket OPS-7".to_owned(),
        },
    }
}

fn status(active: u32) -> NodeStatus {
    NodeStatus {
        active_sessions: active,
        limit: 50,
        cpu_percent: 3.0,
        memory_percent: 10.0,
        state: RuntimeState::Running,
        reported_at_ms: T0,
        webrtc_sessions: 0,
        placed: BTreeMap::new(),
    }
}

#[tokio::test]
async fn a_change_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = state_path(&dir);
    {
        let registry = open(&path, &seed());
        assert_eq!(registry.path(), Some(path.as_path()));
        registry
            .apply(maintenance("b1", true), "alice")
            .await
            .expect("applied");
    }
    let text = fs::read_to_string(&path).expect("state file written");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(json["format"], "voxgate-state");
    assert_eq!(json["version"], 1);
    assert!(!text.contains(&key(2)), "plain keys are never stored");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let registry = open(&path, &seed());
    let snapshot = registry.snapshot().await.expect("snapshot");
    let b1 = snapshot.state.node(&node("b1")).expect("b1");
    assert!(b1.lifecycle.maintenance);
    assert_eq!(b1.lifecycle.changed_by, "alice");
    assert_eq!(b1.lifecycle.private_reason, "ticket OPS-7");
    assert!(!snapshot.state.accepts_sessions(&node("b1")));
    assert!(snapshot.state.accepts_sessions(&node("p1")));
    assert!(!sibling(&path, ".tmp").exists());
}

#[tokio::test]
async fn a_refused_change_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = state_path(&dir);
    let registry = open(&path, &seed());
    let before = fs::read(&path).expect("state");
    let err = registry
        .apply(Change::DeleteNode { id: node("b1") }, "alice")
        .await
        .expect_err("enabled node");
    match err {
        RegistryError::Rejected(err) => assert_eq!(err.code, ErrorCode::NodeNotDisabled),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(fs::read(&path).expect("state"), before);
    assert!(registry.audit(10).await.expect("audit").is_empty());
}

#[tokio::test]
async fn corrupt_state_files_are_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = state_path(&dir);
    drop(open(&path, &seed()));
    let good = fs::read_to_string(&path).expect("state");

    let wrong_version = good.replace("\"version\": 1", "\"version\": 2");
    assert_ne!(wrong_version, good);
    let wrong_format = good.replace("voxgate-state", "something-else");
    // A node whose region is gone: parses, fails validation.
    let mut orphan: serde_json::Value = serde_json::from_str(&good).expect("json");
    orphan["state"]["regions"] = serde_json::json!([]);
    let orphan = serde_json::to_string_pretty(&orphan).expect("json");
    let mut bad_field: serde_json::Value = serde_json::from_str(&good).expect("json");
    bad_field["state"]["nodes"][0]["sip_port"] = "five".into();
    let bad_field = serde_json::to_string_pretty(&bad_field).expect("json");

    let cases: [(&str, String, &[&str]); 6] = [
        ("garbage", "this is not json {".to_owned(), &["line 1"]),
        (
            "truncated",
            good[..good.len() / 2].to_owned(),
            &["EOF", "line"],
        ),
        ("empty", String::new(), &["EOF"]),
        ("wrong version", wrong_version, &["version 2"]),
        ("wrong format", wrong_format, &["something-else"]),
        ("orphan node", orphan, &["invalid state", "does not exist"]),
    ];
    for (what, content, expected) in
        cases
            .into_iter()
            .chain([("bad field", bad_field, &["sip_port", "line"][..])])
    {
        fs::write(&path, &content).expect("write corrupt");
        let err = EmbeddedRegistry::open(Some(&path), &seed()).expect_err(what);
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()),
            "{what}: {message}"
        );
        assert!(message.contains("will not reset"), "{what}: {message}");
        for fragment in expected {
            assert!(message.contains(fragment), "{what}: {message}");
        }
        assert_eq!(
            fs::read_to_string(&path).expect("still there"),
            content,
            "{what}: file changed"
        );
    }
}

#[tokio::test]
async fn a_stale_tmp_file_is_ignored_and_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = state_path(&dir);
    {
        let registry = open(&path, &seed());
        registry
            .apply(maintenance("p1", true), "alice")
            .await
            .expect("applied");
    }
    // A crash mid-write leaves a partial .tmp beside the committed file.
    let tmp = sibling(&path, ".tmp");
    fs::write(&tmp, "{\"format\": \"voxgate-st").expect("tmp");
    let registry = open(&path, &seed());
    assert!(!tmp.exists());
    let snapshot = registry.snapshot().await.expect("snapshot");
    assert!(
        snapshot
            .state
            .node(&node("p1"))
            .expect("p1")
            .lifecycle
            .maintenance
    );
}

#[tokio::test]
async fn a_failed_write_leaves_the_state_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = state_path(&dir);
    let registry = open(&path, &seed());
    let before = fs::read(&path).expect("state");
    // A directory where the temporary file must go makes the write fail.
    let tmp = sibling(&path, ".tmp");
    fs::create_dir(&tmp).expect("block tmp");
    let err = registry
        .apply(maintenance("b1", true), "alice")
        .await
        .expect_err("write fails");
    assert!(matches!(err, RegistryError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("voxgate-state.json"), "{err}");
    let snapshot = registry.snapshot().await.expect("snapshot");
    assert!(
        !snapshot
            .state
            .node(&node("b1"))
            .expect("b1")
            .lifecycle
            .maintenance
    );
    assert!(registry.audit(10).await.expect("audit").is_empty());
    assert_eq!(fs::read(&path).expect("state"), before);

    fs::remove_dir(&tmp).expect("unblock");
    registry
        .apply(maintenance("b1", true), "alice")
        .await
        .expect("applies now");
    assert_eq!(registry.audit(10).await.expect("audit").len(), 1);
}

#[tokio::test]
async fn seeding_adds_new_config_entries_without_undoing_operator_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = state_path(&dir);
    {
        let registry = open(&path, &seed());
        registry
            .apply(
                Change::SetNodeState {
                    id: node("b1"),
                    enabled: false,
                    reasons: Reasons::default(),
                },
                "alice",
            )
            .await
            .expect("disable");
        registry
            .apply(
                Change::UpdateNode {
                    id: node("b1"),
                    endpoint: Some("10.9.9.9".to_owned()),
                    sip_port: None,
                    max_sessions: None,
                    api_key: Some(key(20)),
                },
                "alice",
            )
            .await
            .expect("update");
    }
    let mut grown = seed();
    grown.regions.push(region("DE-FRA"));
    grown
        .nodes
        .push(new_node("b2", "US-WEST", NodeKind::Backend, 3));
    let registry = open(&path, &grown);
    let state = registry.snapshot().await.expect("snapshot").state;
    let b1 = state.node(&node("b1")).expect("b1");
    assert_eq!(b1.lifecycle.state, AdminState::Disabled);
    assert_eq!(b1.endpoint, "10.9.9.9");
    assert_eq!(
        state.node_by_api_key(&key(20)).expect("rotated").id,
        node("b1")
    );
    assert!(state.node_by_api_key(&key(2)).is_none());
    assert!(state.accepts_sessions(&node("b2")));
    assert!(state.region(&region("DE-FRA")).is_some());
    assert!(state.region(&region("US-WEST")).is_some());
    drop(registry);
    // The seeded additions were persisted too.
    let text = fs::read_to_string(&path).expect("state");
    assert!(text.contains("DE-FRA") && text.contains("\"b2\""));

    // A config that reuses a stored key is refused at startup and the file is left alone.
    let mut clash = seed();
    clash
        .nodes
        .push(new_node("b3", "US-EAST", NodeKind::Backend, 20));
    let err = EmbeddedRegistry::open(Some(&path), &clash).expect_err("key reused");
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(fs::read_to_string(&path).expect("state"), text);
}

#[tokio::test]
async fn audit_entries_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = state_path(&dir);
    {
        let registry = open(&path, &seed());
        registry
            .apply(maintenance("b1", true), "alice")
            .await
            .expect("1");
        registry
            .apply(
                Change::CreateRegion {
                    id: region("DE-FRA"),
                },
                "bob",
            )
            .await
            .expect("2");
        registry
            .apply(maintenance("b1", false), "carol")
            .await
            .expect("3");
        let last_two = registry.audit(2).await.expect("audit");
        assert_eq!(
            last_two
                .iter()
                .map(|e| e.actor.as_str())
                .collect::<Vec<_>>(),
            ["bob", "carol"]
        );
    }
    let audit_path = sibling(&path, ".audit.jsonl");
    assert_eq!(
        fs::read_to_string(&audit_path)
            .expect("audit log")
            .lines()
            .count(),
        3
    );

    let registry = open(&path, &seed());
    let entries = registry.audit(100).await.expect("audit");
    let summary: Vec<_> = entries
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("alice", "node.maintenance_on", "b1"),
            ("bob", "region.create", "DE-FRA"),
            ("carol", "node.maintenance_off", "b1"),
        ]
    );
    assert_eq!(entries[0].public_reason, "upgrade");
    assert_eq!(entries[0].private_reason, "ticket OPS-7");
    assert_eq!(entries[0].at_ms, T0);
    drop(registry);

    // A line torn by a crash is skipped, and the next entry still starts on its own line.
    let mut log = fs::read(&audit_path).expect("log");
    log.extend_from_slice(b"{\"at_ms\": 17, \"act");
    fs::write(&audit_path, log).expect("tear");
    let registry = open(&path, &seed());
    assert_eq!(registry.audit(100).await.expect("audit").len(), 3);
    registry
        .apply(maintenance("p1", true), "dave")
        .await
        .expect("4");
    drop(registry);
    let registry = open(&path, &seed());
    let entries = registry.audit(100).await.expect("audit");
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[3].actor, "dave");
}

#[tokio::test]
async fn only_the_last_thousand_audit_entries_are_kept_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = state_path(&dir);
    drop(open(&path, &seed()));
    // Write a long log directly (applying 1,100 changes would fsync 2,200 times).
    let lines: String = (0..1_100)
        .map(|i| {
            format!(
                "{{\"at_ms\":{i},\"actor\":\"a{i}\",\"action\":\"node.update\",\"target\":\"b1\"}}\n"
            )
        })
        .collect();
    fs::write(sibling(&path, ".audit.jsonl"), lines).expect("log");
    let registry = open(&path, &seed());
    let entries = registry.audit(usize::MAX).await.expect("audit");
    assert_eq!(entries.len(), 1_000);
    assert_eq!(entries[0].actor, "a100");
    assert_eq!(entries[999].actor, "a1099");
}

#[tokio::test]
async fn statuses_expire_and_unknown_nodes_are_refused() {
    let clock = ManualClock::new();
    let registry =
        EmbeddedRegistry::open_with_clock(None, &seed(), clock.reader()).expect("in memory");
    assert!(registry.path().is_none());
    registry
        .publish_status(&node("b1"), status(7), Duration::from_secs(5))
        .await
        .expect("published");
    let snapshot = registry.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.now_ms, T0);
    assert_eq!(
        snapshot
            .statuses
            .fresh(&node("b1"), snapshot.now_ms)
            .expect("fresh")
            .active_sessions,
        7
    );
    let capacity = snapshot.state.capacity(&snapshot.statuses, snapshot.now_ms);
    let backends = capacity
        .iter()
        .find(|c| c.kind == NodeKind::Backend)
        .expect("entry");
    assert_eq!((backends.nodes_online, backends.active), (1, 7));

    clock.advance(4_999);
    let snapshot = registry.snapshot().await.expect("snapshot");
    assert!(snapshot.statuses.is_online(&node("b1"), snapshot.now_ms));
    clock.advance(1);
    let snapshot = registry.snapshot().await.expect("snapshot");
    assert!(!snapshot.statuses.is_online(&node("b1"), snapshot.now_ms));
    assert_eq!(
        snapshot.statuses.iter().count(),
        0,
        "expired entries pruned"
    );

    let err = registry
        .publish_status(&node("ghost"), status(0), Duration::from_secs(5))
        .await
        .expect_err("unknown node");
    match err {
        RegistryError::Rejected(err) => assert_eq!(err.code, ErrorCode::NodeNotFound),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_live_status_blocks_deletion_until_it_expires() {
    let clock = ManualClock::new();
    let registry =
        EmbeddedRegistry::open_with_clock(None, &seed(), clock.reader()).expect("in memory");
    registry
        .apply(
            Change::SetNodeState {
                id: node("b1"),
                enabled: false,
                reasons: Reasons::default(),
            },
            "alice",
        )
        .await
        .expect("disable");
    registry
        .publish_status(&node("b1"), status(0), Duration::from_secs(5))
        .await
        .expect("published");
    let err = registry
        .apply(Change::DeleteNode { id: node("b1") }, "alice")
        .await
        .expect_err("reporting");
    assert!(
        matches!(&err, RegistryError::Rejected(e) if e.code == ErrorCode::NodeReporting),
        "{err:?}"
    );
    clock.advance(5_000);
    registry
        .apply(Change::DeleteNode { id: node("b1") }, "alice")
        .await
        .expect("deleted once offline");
    let audit = registry.audit(10).await.expect("audit");
    assert_eq!(
        audit.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["node.disable", "node.delete"]
    );
    assert_eq!(audit[1].at_ms, T0 + 5_000);
}

#[tokio::test]
async fn a_registry_is_usable_as_a_trait_object() {
    let registry: Arc<dyn Registry> =
        Arc::new(EmbeddedRegistry::open(None, &seed()).expect("in memory"));
    let snapshot = registry.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.state.nodes().count(), 2);
    assert!(snapshot.now_ms > T0, "the wall clock");
}
