//! Property tests for Backend selection: eligibility, least-loaded choice, lease accounting.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use voxgate_cluster::{
    BackendLease, BackendPicker, BackendSpec, BackendStatus, PickError, Spillover,
};
use voxgate_core::{NodeId, RegionId};

const REGIONS: [&str; 3] = ["US-A", "US-B", "US-C"];

#[derive(Debug, Clone)]
enum Op {
    Pick { region: usize, exclude: u8 },
    Drop(usize),
    SetUp(usize, bool),
    SetEnabled(usize, bool),
    CoolDown(usize, u64),
    Advance(u64),
}

#[derive(Debug, Clone)]
struct Case {
    backends: Vec<(usize, u32, bool, bool)>,
    spillover: Vec<Vec<usize>>,
    ops: Vec<Op>,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    let backend = (
        0..REGIONS.len(),
        0u32..5,
        proptest::bool::weighted(0.85),
        proptest::bool::weighted(0.85),
    );
    let op = prop_oneof![
        6 => (0..REGIONS.len(), any::<u8>()).prop_map(|(region, exclude)| Op::Pick { region, exclude: exclude & exclude.rotate_left(3) }),
        3 => any::<usize>().prop_map(Op::Drop),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, up)| Op::SetUp(i, up)),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, on)| Op::SetEnabled(i, on)),
        1 => (any::<usize>(), 0u64..5).prop_map(|(i, s)| Op::CoolDown(i, s)),
        1 => (0u64..3).prop_map(Op::Advance),
    ];
    (
        proptest::collection::vec(backend, 1..8),
        proptest::collection::vec(
            proptest::collection::vec(0..REGIONS.len(), 0..4),
            REGIONS.len(),
        ),
        proptest::collection::vec(op, 0..120),
        any::<u64>(),
    )
        .prop_map(|(backends, spillover, ops, seed)| Case {
            backends,
            spillover,
            ops,
            seed,
        })
}

fn region(i: usize) -> RegionId {
    RegionId::new(REGIONS[i]).expect("valid region")
}

fn node(i: usize) -> NodeId {
    NodeId::new(&format!("b{i}")).expect("valid node id")
}

#[allow(clippy::disallowed_methods)] // an origin for simulated time; only offsets matter
fn origin() -> Instant {
    Instant::now()
}

fn build(case: &Case) -> BackendPicker {
    let specs = case
        .backends
        .iter()
        .enumerate()
        .map(|(i, &(r, max_sessions, enabled, _))| BackendSpec {
            id: node(i),
            region: region(r),
            address: SocketAddr::from((
                [10, 0, 0, 1],
                5080 + u16::try_from(i).expect("few backends"),
            )),
            max_sessions,
            enabled,
        })
        .collect();
    let spillover = Spillover::new(
        case.spillover
            .iter()
            .enumerate()
            .map(|(r, next)| (region(r), next.iter().map(|&n| region(n)).collect())),
    );
    let picker = BackendPicker::new(specs, spillover, case.seed);
    for (i, &(_, _, _, up)) in case.backends.iter().enumerate() {
        picker.set_up(&node(i), up);
    }
    picker
}

/// Regions tried for `origin`, computed from the raw configuration: itself, then its list without
/// itself or repeats.
fn region_order(case: &Case, origin_region: usize) -> Vec<usize> {
    let mut order = vec![origin_region];
    for &next in &case.spillover[origin_region] {
        if !order.contains(&next) {
            order.push(next);
        }
    }
    order
}

/// `a` is less loaded than `b`, exactly.
fn less_loaded(a: &BackendStatus, b: &BackendStatus) -> bool {
    u64::from(a.sessions) * u64::from(b.limit) < u64::from(b.sessions) * u64::from(a.limit)
}

/// Runs the case, checking every pick; returns the picked ids (None for an error), in order.
fn run(case: &Case) -> Result<Vec<Option<NodeId>>, TestCaseError> {
    let picker = build(case);
    let n = case.backends.len();
    let mut now = origin();
    let mut leases: Vec<BackendLease> = Vec::new();
    let mut picked = Vec::new();
    for op in &case.ops {
        match *op {
            Op::Pick { region: r, exclude } => {
                let excluded: Vec<NodeId> = (0..n)
                    .filter(|i| exclude & (1 << i) != 0)
                    .map(node)
                    .collect();
                let before = picker.snapshot(now);
                let eligible = |status: &BackendStatus, r: usize| {
                    status.region == region(r)
                        && status.is_eligible()
                        && !excluded.contains(&status.id)
                };
                let expected_set: Option<Vec<&BackendStatus>> = region_order(case, r)
                    .into_iter()
                    .map(|r| before.iter().filter(|s| eligible(s, r)).collect::<Vec<_>>())
                    .find(|set| !set.is_empty());
                match (picker.pick(now, &region(r), &excluded), expected_set) {
                    (Ok(lease), Some(set)) => {
                        // (1) eligible, in the first region that has any.
                        let chosen = set.iter().find(|s| &s.id == lease.id());
                        prop_assert!(chosen.is_some(), "picked {} outside {:?}", lease.id(), set);
                        let chosen = chosen.expect("checked");
                        prop_assert_eq!(&chosen.region, lease.region());
                        prop_assert_eq!(chosen.address, lease.address());
                        // (2) minimal utilization among them.
                        prop_assert!(
                            !set.iter().any(|s| less_loaded(s, chosen)),
                            "{} not least loaded in {:?}",
                            lease.id(),
                            set
                        );
                        picked.push(Some(lease.id().clone()));
                        leases.push(lease);
                    }
                    (Err(err), None) => {
                        prop_assert_eq!(err, PickError::NoBackend { region: region(r) });
                        picked.push(None);
                    }
                    (got, expected) => {
                        prop_assert!(
                            false,
                            "pick returned {:?}, expected from {:?}",
                            got,
                            expected
                        );
                    }
                }
            }
            Op::Drop(i) => {
                if !leases.is_empty() {
                    let lease = leases.swap_remove(i % leases.len());
                    drop(lease);
                }
            }
            Op::SetUp(i, up) => picker.set_up(&node(i % n), up),
            Op::SetEnabled(i, on) => picker.set_enabled(&node(i % n), on),
            Op::CoolDown(i, secs) => {
                picker.cool_down(&node(i % n), now + Duration::from_secs(secs))
            }
            Op::Advance(secs) => now += Duration::from_secs(secs),
        }
        // Session counts are exactly the live leases, and never above the cap.
        for status in picker.snapshot(now) {
            let live = leases.iter().filter(|l| *l.id() == status.id).count();
            prop_assert_eq!(status.sessions as usize, live);
            prop_assert!(status.sessions <= status.limit);
        }
    }
    // (3) dropping every lease returns every count to 0.
    drop(leases);
    prop_assert!(picker.snapshot(now).iter().all(|s| s.sessions == 0));
    Ok(picked)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn picks_are_eligible_least_loaded_and_accounted(case in case()) {
        run(&case)?;
    }

    #[test]
    fn same_seed_same_picks(case in case()) {
        prop_assert_eq!(run(&case)?, run(&case)?);
    }
}

#[test]
fn concurrent_picks_never_exceed_caps_and_release_fully() {
    let now = origin();
    let specs: Vec<_> = (0..4)
        .map(|i| BackendSpec {
            id: node(i),
            region: region(i % 2),
            address: SocketAddr::from(([10, 0, 0, 1], 5080)),
            max_sessions: 3,
            enabled: true,
        })
        .collect();
    let picker = BackendPicker::new(specs, Spillover::new([(region(0), vec![region(1)])]), 9);
    std::thread::scope(|scope| {
        for t in 0..8u32 {
            let picker = picker.clone();
            scope.spawn(move || {
                let mut held = Vec::new();
                for i in 0..5_000u32 {
                    if let Ok(lease) = picker.pick(now, &region(0), &[]) {
                        held.push(lease);
                    }
                    for status in picker.snapshot(now) {
                        assert!(status.sessions <= status.limit);
                    }
                    if (i + t) % 2 == 0 || held.len() > 2 {
                        held.pop();
                    }
                }
            });
        }
    });
    let ids: HashSet<_> = picker
        .snapshot(now)
        .into_iter()
        .map(|s| (s.id, s.sessions))
        .collect();
    assert!(ids.iter().all(|(_, sessions)| *sessions == 0), "{ids:?}");
}
