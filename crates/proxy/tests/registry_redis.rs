//! The Redis registry against a real redis-server: two registries sharing state, status expiry,
//! concurrent changes, safe deletion, reseeding, audit, corrupt state, outages.
//!
//! Each test starts its own `redis-server` on a port of 127.0.0.1 leased to this test process (no
//! persistence) and kills it when done. Redis expires keys on its own clock, so these tests wait
//! for real rather than pausing tokio's clock.

mod common;
// The end-to-end tests' port leases, so that test processes running at once never share a port.
#[path = "../../../tests/tests/common/ports.rs"]
mod ports;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{new_node, node, region, seed};
use tokio::time::Instant;
use voxgate_cluster::{AdminState, Change, ErrorCode, NodeKind, NodeStatus, Reasons, RuntimeState};
use voxgate_proxy::registry::redis::{RedisOptions, RedisStartupError};
use voxgate_proxy::registry::{RedisRegistry, Registry, RegistryError, Seed};

/// A short TTL, long enough for a snapshot to see the status first.
const TTL: Duration = Duration::from_millis(400);

/// A `redis-server` child process, killed on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a leased port and waits until it accepts connections.
    async fn start() -> Self {
        let port = ports::lease_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Self {
            child: None,
            port,
            dir,
        };
        server.restart().await;
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts (again) on the same port.
    async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot start redis-server ({err}); these tests need a real Redis: \
                     apt-get install redis-server"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server (as a crash would).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGSTOP (`true`) or SIGCONT (`false`): a server that holds connections but answers
    /// nothing.
    fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// A plain connection for looking at (or breaking) the keys behind the registry's back.
    async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen server ignores SIGKILL until continued on some systems; wake it first.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.stop();
    }
}

fn options(prefix: &str) -> RedisOptions {
    RedisOptions {
        key_prefix: prefix.to_owned(),
        command_timeout: Duration::from_millis(500),
    }
}

async fn connect(server: &RedisServer, seed: &Seed) -> RedisRegistry {
    RedisRegistry::connect_with(&server.url(), seed, options("t:"))
        .await
        .expect("registry connects")
}

fn status(active: u32) -> NodeStatus {
    NodeStatus {
        active_sessions: active,
        limit: 100,
        cpu_percent: 12.5,
        memory_percent: 40.0,
        state: RuntimeState::Running,
        reported_at_ms: 1,
        webrtc_sessions: 0,
        placed: Default::default(),
    }
}

fn reasons(public: &str) -> Reasons {
    Reasons {
        public: public.to_owned(),
        private: format!("private: {public}"),
    }
}

fn code(result: Result<(), RegistryError>) -> ErrorCode {
    match result {
        Err(RegistryError::Rejected(err)) => err.code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn unavailable<T: std::fmt::Debug>(result: Result<T, RegistryError>) -> String {
    match result {
        Err(RegistryError::Unavailable(reason)) => reason,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// Polls `registry` until Redis holds no live status (every TTL ran out); the snapshot then.
async fn expired(registry: &RedisRegistry) -> voxgate_proxy::registry::Snapshot {
    let deadline = Instant::now() + TTL + Duration::from_secs(5);
    loop {
        let snapshot = registry.snapshot().await.expect("snapshot");
        if snapshot.statuses.iter().count() == 0 {
            return snapshot;
        }
        assert!(
            Instant::now() < deadline,
            "a status outlived its {TTL:?} TTL by 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .expect("GET")
}

#[tokio::test]
async fn a_change_through_one_proxy_is_seen_by_the_other() {
    let server = RedisServer::start().await;
    let one = connect(&server, &seed()).await;
    let two = connect(&server, &seed()).await;
    assert_eq!(one.key_prefix(), "t:");

    one.apply(
        Change::CreateRegion {
            id: region("EU-WEST"),
        },
        "alice",
    )
    .await
    .expect("created");
    let snapshot = two.snapshot().await.expect("snapshot");
    let regions: Vec<&str> = snapshot.state.regions().map(|r| r.id.as_str()).collect();
    assert_eq!(regions, ["EU-WEST", "US-EAST"]);
    let created = snapshot.state.region(&region("EU-WEST")).unwrap();
    assert_eq!(created.lifecycle.changed_by, "alice");
    assert_eq!(created.lifecycle.state, AdminState::Disabled);
    assert_eq!(snapshot.state.nodes().count(), 2);

    // The stored value is the same envelope as the embedded state file.
    let mut raw = server.raw().await;
    let stored = get(&mut raw, "t:state").await.expect("state stored");
    assert!(stored.starts_with(r#"{"format":"voxgate-state","version":1,"state":"#));
}

#[tokio::test]
async fn a_status_published_by_one_is_online_for_the_other_until_its_ttl() {
    let server = RedisServer::start().await;
    let one = connect(&server, &seed()).await;
    let two = connect(&server, &seed()).await;

    one.publish_status(&node("p1"), status(7), TTL)
        .await
        .expect("published");
    let snapshot = two.snapshot().await.expect("snapshot");
    let fresh = snapshot
        .statuses
        .fresh(&node("p1"), snapshot.now_ms)
        .expect("online");
    assert_eq!(fresh.active_sessions, 7);
    let (_, _, expires_at_ms) = snapshot.statuses.iter().next().unwrap();
    let ttl_left = expires_at_ms - snapshot.now_ms;
    assert!(ttl_left > 0 && ttl_left <= 400, "ttl left {ttl_left}");
    assert!(!snapshot.statuses.is_online(&node("b1"), snapshot.now_ms));

    let snapshot = expired(&two).await;
    assert!(!snapshot.statuses.is_online(&node("p1"), snapshot.now_ms));

    // A node that is not registered is told so, and leaves nothing behind.
    assert_eq!(
        code(one.publish_status(&node("ghost"), status(1), TTL).await),
        ErrorCode::NodeNotFound
    );
    let mut raw = server.raw().await;
    assert_eq!(get(&mut raw, "t:status:ghost").await, None);
    // And one that sneaked in behind the registry's back is ignored.
    let _: () = redis::cmd("SET")
        .arg("t:status:ghost")
        .arg(serde_json::to_string(&status(1)).unwrap())
        .arg("PX")
        .arg(5_000)
        .query_async(&mut raw)
        .await
        .unwrap();
    let snapshot = one.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.statuses.iter().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_from_two_proxies_lose_nothing() {
    let server = RedisServer::start().await;
    let proxies = [
        Arc::new(connect(&server, &seed()).await),
        Arc::new(connect(&server, &seed()).await),
    ];

    // 20 tasks race to create the same region: one wins, the others are told it exists.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let registry = Arc::clone(&proxies[i % 2]);
        tasks.push(tokio::spawn(async move {
            registry
                .apply(
                    Change::CreateRegion {
                        id: region("EU-WEST"),
                    },
                    &format!("op{i}"),
                )
                .await
        }));
    }
    let mut created = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(()) => created += 1,
            Err(RegistryError::Rejected(err)) => assert_eq!(err.code, ErrorCode::RegionExists),
            Err(err) => panic!("unexpected {err}"),
        }
    }
    assert_eq!(created, 1);

    // 20 tasks add distinct nodes: every one lands.
    let mut tasks = Vec::new();
    for i in 0..20u32 {
        let registry = Arc::clone(&proxies[(i % 2) as usize]);
        tasks.push(tokio::spawn(async move {
            let id = format!("n{i:02}");
            registry
                .apply(
                    Change::AddNode(new_node(&id, "EU-WEST", NodeKind::Backend, 100 + i)),
                    "op",
                )
                .await
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("node added");
    }
    let snapshot = proxies[0].snapshot().await.expect("snapshot");
    let added: BTreeSet<String> = snapshot
        .state
        .nodes_in(&region("EU-WEST"))
        .map(|n| n.id.to_string())
        .collect();
    assert_eq!(added, (0..20).map(|i| format!("n{i:02}")).collect());

    let audit = proxies[1].audit(100).await.expect("audit");
    assert_eq!(audit.len(), 21);
    assert_eq!(audit[0].action, "region.create");
    assert!(audit[1..].iter().all(|entry| entry.action == "node.add"));
}

#[tokio::test]
async fn a_node_is_deleted_only_after_its_status_expired() {
    let server = RedisServer::start().await;
    let one = connect(&server, &seed()).await;
    let two = connect(&server, &seed()).await;

    one.apply(
        Change::SetNodeState {
            id: node("b1"),
            enabled: false,
            reasons: reasons("retiring"),
        },
        "alice",
    )
    .await
    .expect("disabled");
    two.publish_status(&node("b1"), status(0), TTL)
        .await
        .expect("published");
    let delete = || Change::DeleteNode { id: node("b1") };
    assert_eq!(
        code(one.apply(delete(), "alice").await),
        ErrorCode::NodeReporting
    );
    assert!(
        two.snapshot()
            .await
            .unwrap()
            .state
            .node(&node("b1"))
            .is_some()
    );

    expired(&two).await;
    one.apply(delete(), "alice").await.expect("deleted");
    let snapshot = two.snapshot().await.expect("snapshot");
    assert!(snapshot.state.node(&node("b1")).is_none());
    // The refused attempt left no audit entry.
    let actions: Vec<String> = one
        .audit(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["node.disable", "node.delete"]);
}

#[tokio::test]
async fn seeding_by_another_proxy_keeps_operator_changes() {
    let server = RedisServer::start().await;
    let one = connect(&server, &seed()).await;
    one.apply(
        Change::SetNodeState {
            id: node("p1"),
            enabled: false,
            reasons: reasons("maintenance window"),
        },
        "alice",
    )
    .await
    .expect("disabled");
    one.apply(
        Change::SetRegionMaintenance {
            id: region("US-EAST"),
            on: true,
            reasons: reasons("upgrade"),
        },
        "alice",
    )
    .await
    .expect("maintenance");

    // A second proxy starts with the same config plus one more node.
    let mut bigger = seed();
    bigger
        .nodes
        .push(new_node("b2", "US-EAST", NodeKind::Backend, 3));
    let two = connect(&server, &bigger).await;
    let state = two.snapshot().await.expect("snapshot").state;
    let p1 = state.node(&node("p1")).unwrap();
    assert_eq!(p1.lifecycle.state, AdminState::Disabled);
    assert_eq!(p1.lifecycle.public_reason, "maintenance window");
    assert!(
        state
            .region(&region("US-EAST"))
            .unwrap()
            .lifecycle
            .maintenance
    );
    assert!(
        state
            .node(&node("b2"))
            .is_some_and(|n| n.lifecycle.is_enabled())
    );
    // Seeding is not an operator change.
    assert_eq!(two.audit(10).await.unwrap().len(), 2);

    // A seed that breaks a rule stops startup.
    let mut clash = seed();
    clash
        .nodes
        .push(new_node("b3", "US-EAST", NodeKind::Backend, 1));
    match RedisRegistry::connect_with(&server.url(), &clash, options("t:")).await {
        Err(RedisStartupError::Seed(err)) => assert_eq!(err.code, ErrorCode::ApiKeyReused),
        other => panic!("expected a seed error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_audit_trail_holds_both_proxies_changes_in_order() {
    let server = RedisServer::start().await;
    let one = connect(&server, &seed()).await;
    let two = connect(&server, &seed()).await;

    one.apply(
        Change::CreateRegion {
            id: region("EU-WEST"),
        },
        "alice",
    )
    .await
    .unwrap();
    two.apply(
        Change::SetRegionState {
            id: region("EU-WEST"),
            enabled: true,
            reasons: reasons("open"),
        },
        "bob",
    )
    .await
    .unwrap();
    one.apply(
        Change::SetNodeMaintenance {
            id: node("b1"),
            on: true,
            reasons: reasons("disk"),
        },
        "carol",
    )
    .await
    .unwrap();
    // Refused changes are not audited.
    assert_eq!(
        code(
            two.apply(
                Change::CreateRegion {
                    id: region("EU-WEST")
                },
                "dave"
            )
            .await
        ),
        ErrorCode::RegionExists
    );

    let from_one = one.audit(10).await.unwrap();
    assert_eq!(from_one, two.audit(10).await.unwrap());
    let summary: Vec<(&str, &str, &str)> = from_one
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("alice", "region.create", "EU-WEST"),
            ("bob", "region.enable", "EU-WEST"),
            ("carol", "node.maintenance_on", "b1"),
        ]
    );
    assert_eq!(from_one[1].public_reason, "open");
    assert_eq!(from_one[1].private_reason, "private: open");
    assert!(from_one.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));

    let last = one.audit(1).await.unwrap();
    assert_eq!(last, from_one[2..]);
    assert!(one.audit(0).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_corrupt_state_is_reported_and_left_alone() {
    let server = RedisServer::start().await;
    let registry = connect(&server, &seed()).await;
    let mut raw = server.raw().await;

    for corrupt in [
        "{not json".to_owned(),
        r#"{"format":"something-else","version":1,"state":{}}"#.to_owned(),
        r#"{"format":"voxgate-state","version":1,"state":{"regions":[{"id":"lower"}]}}"#.to_owned(),
    ] {
        let _: () = redis::cmd("SET")
            .arg("t:state")
            .arg(&corrupt)
            .query_async(&mut raw)
            .await
            .unwrap();

        let reason = unavailable(registry.snapshot().await);
        assert!(reason.contains("t:state"), "{reason}");
        let reason = unavailable(
            registry
                .apply(
                    Change::CreateRegion {
                        id: region("EU-WEST"),
                    },
                    "alice",
                )
                .await,
        );
        assert!(reason.contains("will not overwrite"), "{reason}");
        unavailable(registry.publish_status(&node("p1"), status(1), TTL).await);
        match RedisRegistry::connect_with(&server.url(), &seed(), options("t:")).await {
            Err(err @ RedisStartupError::Unusable { .. }) => {
                assert!(err.to_string().contains("t:state"), "{err}");
            }
            other => panic!("expected Unusable, got {other:?}"),
        }

        assert_eq!(get(&mut raw, "t:state").await.as_deref(), Some(&*corrupt));
    }
    assert!(registry.audit(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn prefixes_keep_clusters_apart() {
    let server = RedisServer::start().await;
    let one = connect(&server, &seed()).await;
    let other = RedisRegistry::connect_with(&server.url(), &Seed::default(), options("other:"))
        .await
        .expect("connects");
    one.apply(
        Change::CreateRegion {
            id: region("EU-WEST"),
        },
        "alice",
    )
    .await
    .unwrap();
    let state = other.snapshot().await.unwrap().state;
    assert_eq!(state.regions().count(), 0);
    assert!(other.audit(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_stopped_redis_is_unavailable_and_recovery_follows_a_restart() {
    let mut server = RedisServer::start().await;
    let registry = connect(&server, &seed()).await;
    registry
        .apply(
            Change::CreateRegion {
                id: region("EU-WEST"),
            },
            "alice",
        )
        .await
        .unwrap();

    server.stop();
    let started = Instant::now();
    unavailable(registry.snapshot().await);
    unavailable(
        registry
            .apply(
                Change::CreateRegion {
                    id: region("EU-NORTH"),
                },
                "alice",
            )
            .await,
    );
    unavailable(registry.publish_status(&node("p1"), status(1), TTL).await);
    unavailable(registry.audit(10).await);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "calls took {:?}",
        started.elapsed()
    );
    match RedisRegistry::connect_with(&server.url(), &seed(), options("t:")).await {
        Err(RedisStartupError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }

    // Back on the same port, empty (no persistence): the registry reconnects and seeds it again.
    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let snapshot = loop {
        match registry.snapshot().await {
            Ok(snapshot) => break snapshot,
            Err(err) => {
                assert!(Instant::now() < deadline, "no recovery: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let regions: Vec<&str> = snapshot.state.regions().map(|r| r.id.as_str()).collect();
    assert_eq!(regions, ["US-EAST"]);
    assert_eq!(snapshot.state.nodes().count(), 2);
    registry
        .publish_status(&node("p1"), status(3), TTL)
        .await
        .expect("publish after recovery");
    registry
        .apply(
            Change::CreateRegion {
                id: region("EU-NORTH"),
            },
            "alice",
        )
        .await
        .expect("apply after recovery");
}

#[tokio::test]
async fn a_frozen_redis_fails_calls_within_the_timeout() {
    let server = RedisServer::start().await;
    let registry = connect(&server, &seed()).await;

    server.freeze(true);
    let started = Instant::now();
    let reason = unavailable(registry.snapshot().await);
    assert!(reason.contains("no answer within"), "{reason}");
    unavailable(
        registry
            .apply(
                Change::CreateRegion {
                    id: region("EU-WEST"),
                },
                "alice",
            )
            .await,
    );
    // One timeout per call (500 ms here), not a hang.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "calls took {:?}",
        started.elapsed()
    );

    server.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(err) = registry.snapshot().await {
        assert!(Instant::now() < deadline, "no recovery: {err}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn connecting_to_nothing_fails_fast() {
    // A listener that accepts and never answers: connection setup must time out, not hang.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}/", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let started = Instant::now();
    match RedisRegistry::connect_with(&url, &seed(), options("t:")).await {
        Err(RedisStartupError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    hold.abort();

    match RedisRegistry::connect("not a url", &seed()).await {
        Err(RedisStartupError::InvalidUrl(_)) => {}
        other => panic!("expected InvalidUrl, got {other:?}"),
    }
}
