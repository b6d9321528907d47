//! Backend selection: the least-loaded eligible Backend of a region, spilling over to configured regions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use voxgate_core::{NodeId, RegionId};

use crate::backend::{BackendSpec, BackendStatus};

/// Where a region's sessions go when it has no eligible Backend: region -> regions to try next, in
/// order. Configured, never guessed: a region without an entry does not spill over.
///
/// Spillover is one hop: with `A -> [B]` and `B -> [C]`, a session of `A` tries `A` then `B`, never
/// `C`. List `C` under `A` too if that is wanted.
#[derive(Debug, Clone, Default)]
pub struct Spillover {
    next: HashMap<RegionId, Vec<RegionId>>,
}

impl Spillover {
    /// Builds the table. A later entry for the same region replaces an earlier one; a region listed
    /// under itself and repeated regions are dropped from its list.
    pub fn new(order: impl IntoIterator<Item = (RegionId, Vec<RegionId>)>) -> Self {
        let next = order
            .into_iter()
            .map(|(region, targets)| {
                let mut cleaned: Vec<RegionId> = Vec::with_capacity(targets.len());
                for target in targets {
                    if target != region && !cleaned.contains(&target) {
                        cleaned.push(target);
                    }
                }
                (region, cleaned)
            })
            .collect();
        Self { next }
    }

    /// The regions to try, in order, after `region`; empty when none are configured.
    pub fn next_regions(&self, region: &RegionId) -> &[RegionId] {
        self.next.get(region).map_or(&[], Vec::as_slice)
    }
}

/// Why no Backend was picked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PickError {
    /// No eligible Backend in the region nor in its spillover regions.
    #[error("no eligible backend in {region} or its spillover regions")]
    NoBackend {
        /// The region the session asked for.
        region: RegionId,
    },
    /// The Backend asked for is unknown, disabled, down, full or cooling down.
    #[error("backend {id} is unknown or cannot take a session now")]
    Unavailable {
        /// The Backend asked for.
        id: NodeId,
    },
}

/// Places sessions on Backends: least-loaded eligible Backend in the session's region, else in its
/// spillover regions in order.
///
/// Session counts are this proxy's live [`BackendLease`]s, so an INVITE still in flight already
/// counts and a burst of calls spreads over the Backends instead of piling onto the one that looked
/// idlest. Clones share the same state; a pick holds a mutex for one pass over the Backends.
#[derive(Debug, Clone)]
pub struct BackendPicker {
    state: Arc<Mutex<State>>,
    spillover: Arc<Spillover>,
}

#[derive(Debug)]
struct State {
    entries: Vec<Entry>,
    rng: SmallRng,
}

#[derive(Debug)]
struct Entry {
    spec: BackendSpec,
    /// Shared with every lease on this Backend; incremented only under the state lock (so the cap
    /// check and the increment are one step), decremented by lease drops without it.
    sessions: Arc<AtomicU32>,
    /// Sessions other proxies have placed on it (from the cluster registry).
    remote: u32,
    up: bool,
    cooldown_until: Option<Instant>,
}

impl Entry {
    fn new(spec: BackendSpec) -> Self {
        // Up until health probing says otherwise, like `HealthTracker`: a restart must not turn
        // every Backend away while the first probes are out.
        Self {
            spec,
            sessions: Arc::new(AtomicU32::new(0)),
            remote: 0,
            up: true,
            cooldown_until: None,
        }
    }

    fn sessions(&self) -> u32 {
        self.sessions.load(Ordering::Acquire)
    }

    /// Every proxy's sessions on it: ours and the others'.
    fn load(&self) -> u32 {
        self.sessions().saturating_add(self.remote)
    }

    fn cooling_down(&self, now: Instant) -> bool {
        self.cooldown_until.is_some_and(|until| now < until)
    }

    /// One more session on this Backend; call under the state lock, after checking eligibility.
    fn lease(&self) -> BackendLease {
        self.sessions.fetch_add(1, Ordering::AcqRel);
        BackendLease {
            id: self.spec.id.clone(),
            region: self.spec.region.clone(),
            address: self.spec.address,
            sessions: Arc::clone(&self.sessions),
        }
    }

    fn is_eligible(&self, now: Instant, region: &RegionId, exclude: &[NodeId]) -> bool {
        self.spec.region == *region
            && self.spec.enabled
            && self.up
            && self.load() < self.spec.max_sessions
            && !self.cooling_down(now)
            && !exclude.contains(&self.spec.id)
    }
}

impl BackendPicker {
    /// A picker over `backends`, all up and not cooling down, with no sessions. `seed` drives the
    /// tie-breaking between equally loaded Backends.
    ///
    /// Ids should be unique; if one repeats, `set_up`, `cool_down` and `set_enabled` apply to every
    /// Backend with that id.
    pub fn new(backends: Vec<BackendSpec>, spillover: Spillover, seed: u64) -> Self {
        let entries = backends.into_iter().map(Entry::new).collect();
        Self {
            state: Arc::new(Mutex::new(State {
                entries,
                rng: SmallRng::seed_from_u64(seed),
            })),
            spillover: Arc::new(spillover),
        }
    }

    /// Places one session.
    ///
    /// Eligible = in the region, enabled, up, sessions < max_sessions, not cooling down at `now`,
    /// not in `exclude` (Backends already tried for this call).
    /// Picks the lowest utilization sessions/max_sessions (sessions count every live lease:
    /// in-flight INVITEs and answered calls alike, so a burst spreads), ties broken at random with
    /// the seeded rng.
    /// When the region has no eligible Backend, tries the spillover regions in order; only then Err.
    pub fn pick(
        &self,
        now: Instant,
        region: &RegionId,
        exclude: &[NodeId],
    ) -> Result<BackendLease, PickError> {
        let mut state = self.lock();
        let regions = std::iter::once(region).chain(self.spillover.next_regions(region));
        for candidate_region in regions {
            if let Some(index) = state.least_loaded(now, candidate_region, exclude) {
                return Ok(state.entries[index].lease());
            }
        }
        Err(PickError::NoBackend {
            region: region.clone(),
        })
    }

    /// Places one session on the Backend `id` and no other (an operator's choice), if it is
    /// eligible at `now` by the same rules as [`pick`](Self::pick), whatever its region.
    pub fn pick_node(&self, now: Instant, id: &NodeId) -> Result<BackendLease, PickError> {
        let state = self.lock();
        let entry = state
            .entries
            .iter()
            .find(|entry| entry.spec.id == *id && entry.is_eligible(now, &entry.spec.region, &[]))
            .ok_or_else(|| PickError::Unavailable { id: id.clone() })?;
        Ok(entry.lease())
    }

    /// Records a health verdict (OPTIONS probing or heartbeat). Unknown ids are ignored.
    pub fn set_up(&self, id: &NodeId, up: bool) {
        self.update(id, |entry| entry.up = up);
    }

    /// Holds a Backend out of selection until `until` (a 503 with Retry-After). When a cooldown is
    /// already running the later deadline wins, so answers arriving out of order cannot shorten it.
    /// Unknown ids are ignored.
    pub fn cool_down(&self, id: &NodeId, until: Instant) {
        self.update(id, |entry| {
            entry.cooldown_until = Some(entry.cooldown_until.map_or(until, |u| u.max(until)));
        });
    }

    /// Sessions other proxies have placed on a Backend (read from the cluster registry): they
    /// count towards its cap and its utilization here too. Unknown ids are ignored.
    pub fn set_remote_sessions(&self, id: &NodeId, sessions: u32) {
        self.update(id, |entry| entry.remote = sessions);
    }

    /// Operator switch; existing leases are unaffected. Unknown ids are ignored.
    pub fn set_enabled(&self, id: &NodeId, enabled: bool) {
        self.update(id, |entry| entry.spec.enabled = enabled);
    }

    /// Replaces the configured Backends (a config reload). A Backend whose id stays keeps its
    /// sessions, health and cooldown; a new one starts up; a removed one takes no new sessions and
    /// its outstanding leases still release cleanly.
    pub fn set_backends(&self, backends: Vec<BackendSpec>) {
        let mut state = self.lock();
        let mut old = std::mem::take(&mut state.entries);
        state.entries = backends
            .into_iter()
            .map(|spec| match old.iter().position(|e| e.spec.id == spec.id) {
                Some(i) => Entry {
                    spec,
                    ..old.swap_remove(i)
                },
                None => Entry::new(spec),
            })
            .collect();
    }

    /// Every Backend's state at `now`, in configuration order.
    pub fn snapshot(&self, now: Instant) -> Vec<BackendStatus> {
        self.lock()
            .entries
            .iter()
            .map(|entry| BackendStatus {
                id: entry.spec.id.clone(),
                region: entry.spec.region.clone(),
                address: entry.spec.address,
                sessions: entry.sessions(),
                remote_sessions: entry.remote,
                limit: entry.spec.max_sessions,
                up: entry.up,
                enabled: entry.spec.enabled,
                cooling_down: entry.cooling_down(now),
            })
            .collect()
    }

    /// The Backends as configured, with the current `enabled` switch.
    pub fn backends(&self) -> Vec<BackendSpec> {
        self.lock()
            .entries
            .iter()
            .map(|entry| entry.spec.clone())
            .collect()
    }

    /// The spillover table.
    pub fn spillover(&self) -> &Spillover {
        &self.spillover
    }

    fn update(&self, id: &NodeId, mut change: impl FnMut(&mut Entry)) {
        let mut state = self.lock();
        state
            .entries
            .iter_mut()
            .filter(|entry| entry.spec.id == *id)
            .for_each(&mut change);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update under the lock is a single field write, so a panic elsewhere while holding it
        // cannot leave the state half-changed; keep serving rather than propagate the poison.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Index of an eligible Backend of `region` with the lowest utilization, ties broken uniformly
    /// at random (reservoir sampling, so no allocation on the call path).
    fn least_loaded(
        &mut self,
        now: Instant,
        region: &RegionId,
        exclude: &[NodeId],
    ) -> Option<usize> {
        let mut best: Option<(usize, u32, u32)> = None;
        let mut ties = 0u32;
        for (index, entry) in self.entries.iter().enumerate() {
            if !entry.is_eligible(now, region, exclude) {
                continue;
            }
            let (sessions, limit) = (entry.load(), entry.spec.max_sessions);
            match best {
                // Compare sessions/limit exactly: s1/l1 < s2/l2 <=> s1*l2 < s2*l1 (limits > 0 here).
                Some((_, best_sessions, best_limit)) => {
                    let this = u64::from(sessions) * u64::from(best_limit);
                    let that = u64::from(best_sessions) * u64::from(limit);
                    if this < that {
                        best = Some((index, sessions, limit));
                        ties = 1;
                    } else if this == that {
                        ties += 1;
                        if self.rng.random_range(0..ties) == 0 {
                            best = Some((index, sessions, limit));
                        }
                    }
                }
                None => {
                    best = Some((index, sessions, limit));
                    ties = 1;
                }
            }
        }
        best.map(|(index, _, _)| index)
    }
}

/// One session placed on a Backend; dropping it gives the session back. Carries what the proxy needs
/// to send the INVITE. It cannot be cloned, so each placement is given back exactly once.
#[derive(Debug)]
#[must_use = "dropping the lease gives the session back at once"]
pub struct BackendLease {
    id: NodeId,
    region: RegionId,
    address: SocketAddr,
    sessions: Arc<AtomicU32>,
}

impl BackendLease {
    /// The Backend's id (to exclude it when failing over, or to cool it down after a 503).
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// Where to send the INVITE.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The Backend's region, which differs from the session's after a spillover.
    pub fn region(&self) -> &RegionId {
        &self.region
    }
}

impl Drop for BackendLease {
    fn drop(&mut self) {
        // The pick that made this lease incremented the counter and only this drop takes it back.
        self.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[allow(clippy::disallowed_methods)] // an origin for simulated time; only offsets matter
    fn origin() -> Instant {
        Instant::now()
    }

    fn region(s: &str) -> RegionId {
        RegionId::new(s).expect("valid region")
    }

    fn node(s: &str) -> NodeId {
        NodeId::new(s).expect("valid node id")
    }

    fn spec(id: &str, region_id: &str, port: u16, max_sessions: u32) -> BackendSpec {
        BackendSpec {
            id: node(id),
            region: region(region_id),
            address: SocketAddr::from(([10, 0, 0, 1], port)),
            max_sessions,
            enabled: true,
        }
    }

    fn a_to_b() -> Spillover {
        Spillover::new([(region("US-A"), vec![region("US-B")])])
    }

    fn sessions(picker: &BackendPicker, now: Instant) -> Vec<u32> {
        picker.snapshot(now).iter().map(|s| s.sessions).collect()
    }

    #[test]
    fn picks_least_loaded_and_counts_leases() {
        let now = origin();
        let picker = BackendPicker::new(
            vec![spec("a1", "US-A", 5080, 2), spec("a2", "US-A", 5081, 4)],
            Spillover::default(),
            1,
        );
        let r = region("US-A");
        // Whatever the tie-break, the six slots fill up evenly by utilization.
        let leases: Vec<_> = (0..6)
            .map(|_| picker.pick(now, &r, &[]).expect("room"))
            .collect();
        assert_eq!(sessions(&picker, now), vec![2, 4]);
        assert_eq!(
            picker.pick(now, &r, &[]).unwrap_err(),
            PickError::NoBackend { region: r.clone() }
        );
        let lease = &leases[0];
        assert_eq!(lease.region(), &r);
        let expected_port = if lease.id() == &node("a1") {
            5080
        } else {
            5081
        };
        assert_eq!(lease.address().port(), expected_port);
        drop(leases);
        assert_eq!(sessions(&picker, now), vec![0, 0]);
    }

    #[test]
    fn pick_node_places_on_that_backend_only_while_it_is_eligible() {
        let now = origin();
        let picker = BackendPicker::new(
            vec![spec("a1", "US-A", 5080, 1), spec("b1", "US-B", 5081, 4)],
            Spillover::default(),
            1,
        );
        let lease = picker.pick_node(now, &node("b1")).expect("b1 has room");
        assert_eq!(lease.id(), &node("b1"));
        assert_eq!(sessions(&picker, now), vec![0, 1]);
        let full = picker.pick_node(now, &node("a1")).expect("a1 has one slot");
        let unavailable = |id: &str| PickError::Unavailable { id: node(id) };
        assert_eq!(
            picker.pick_node(now, &node("a1")).unwrap_err(),
            unavailable("a1")
        );
        assert_eq!(
            picker.pick_node(now, &node("zz")).unwrap_err(),
            unavailable("zz")
        );
        picker.set_up(&node("b1"), false);
        assert_eq!(
            picker.pick_node(now, &node("b1")).unwrap_err(),
            unavailable("b1")
        );
        drop((lease, full));
        assert_eq!(sessions(&picker, now), vec![0, 0]);
    }

    #[test]
    fn lower_utilization_wins_over_fewer_sessions() {
        let now = origin();
        let picker = BackendPicker::new(
            vec![
                spec("small", "US-A", 5080, 2),
                spec("big", "US-A", 5081, 10),
            ],
            Spillover::default(),
            7,
        );
        let r = region("US-A");
        let mut held = Vec::new();
        // Fill "big" to 3/10 by excluding "small".
        for _ in 0..3 {
            held.push(picker.pick(now, &r, &[node("small")]).expect("room"));
        }
        // small: 0/2 beats big: 3/10.
        let lease = picker.pick(now, &r, &[]).expect("room");
        assert_eq!(lease.id(), &node("small"));
        held.push(lease);
        // small 1/2 = 0.5 vs big 3/10 = 0.3: big.
        assert_eq!(picker.pick(now, &r, &[]).expect("room").id(), &node("big"));
    }

    #[test]
    fn other_proxies_sessions_steer_and_cap() {
        let now = origin();
        let picker = BackendPicker::new(
            vec![spec("a1", "US-A", 5080, 10), spec("a2", "US-A", 5081, 10)],
            Spillover::default(),
            3,
        );
        let r = region("US-A");
        // Another proxy holds 6 calls on a1: ours go to a2 until it is as loaded.
        picker.set_remote_sessions(&node("a1"), 6);
        let held: Vec<_> = (0..6)
            .map(|_| picker.pick(now, &r, &[]).expect("room"))
            .collect();
        assert!(held.iter().all(|lease| lease.id() == &node("a2")));
        let snapshot = picker.snapshot(now);
        assert_eq!(snapshot[0].remote_sessions, 6);
        assert_eq!(snapshot[0].capacity().active, 6);
        // A Backend full of other proxies' calls takes none of ours.
        picker.set_remote_sessions(&node("a1"), 10);
        assert!(!picker.snapshot(now)[0].is_eligible());
        assert!(picker.pick(now, &r, &[node("a2")]).is_err());
    }

    #[test]
    fn excluded_backends_are_skipped() {
        let now = origin();
        let picker = BackendPicker::new(vec![spec("a1", "US-A", 5080, 5)], Spillover::default(), 0);
        let r = region("US-A");
        assert!(picker.pick(now, &r, &[node("a1")]).is_err());
        assert!(picker.pick(now, &r, &[node("other")]).is_ok());
    }

    #[test]
    fn spills_over_when_region_full_or_down() {
        let now = origin();
        let picker = BackendPicker::new(
            vec![spec("a1", "US-A", 5080, 1), spec("b1", "US-B", 5081, 5)],
            a_to_b(),
            0,
        );
        let a = region("US-A");
        let first = picker.pick(now, &a, &[]).expect("room in A");
        assert_eq!(first.id(), &node("a1"));
        // A is full: B.
        let second = picker.pick(now, &a, &[]).expect("spillover to B");
        assert_eq!(second.id(), &node("b1"));
        assert_eq!(second.region(), &region("US-B"));
        drop(first);
        // A has room but is down: B.
        picker.set_up(&node("a1"), false);
        assert_eq!(
            picker.pick(now, &a, &[]).expect("spillover").id(),
            &node("b1")
        );
        // Disabled and cooling down spill over too.
        picker.set_up(&node("a1"), true);
        picker.set_enabled(&node("a1"), false);
        assert_eq!(
            picker.pick(now, &a, &[]).expect("spillover").id(),
            &node("b1")
        );
        picker.set_enabled(&node("a1"), true);
        picker.cool_down(&node("a1"), now + Duration::from_secs(1));
        assert_eq!(
            picker.pick(now, &a, &[]).expect("spillover").id(),
            &node("b1")
        );
    }

    #[test]
    fn never_spills_while_region_has_an_eligible_backend() {
        let now = origin();
        let picker = BackendPicker::new(
            vec![spec("a1", "US-A", 5080, 100), spec("b1", "US-B", 5081, 100)],
            a_to_b(),
            3,
        );
        let a = region("US-A");
        // A at 99/100 is still preferred over an idle B.
        let held: Vec<_> = (0..100)
            .map(|_| picker.pick(now, &a, &[]).expect("room"))
            .collect();
        assert!(held.iter().all(|l| l.id() == &node("a1")));
        assert_eq!(
            picker.pick(now, &a, &[]).expect("spillover").id(),
            &node("b1")
        );
    }

    #[test]
    fn spillover_is_one_hop_and_never_reverse() {
        let now = origin();
        let spillover = Spillover::new([
            (
                region("US-A"),
                vec![region("US-B"), region("US-A"), region("US-B")],
            ),
            (region("US-B"), vec![region("US-C")]),
        ]);
        assert_eq!(spillover.next_regions(&region("US-A")), &[region("US-B")]);
        assert!(spillover.next_regions(&region("US-C")).is_empty());
        let picker = BackendPicker::new(
            vec![spec("a1", "US-A", 5080, 1), spec("c1", "US-C", 5082, 1)],
            spillover,
            0,
        );
        // A -> B (empty); C is not reachable from A.
        let _a = picker.pick(now, &region("US-A"), &[]).expect("A");
        assert_eq!(
            picker.pick(now, &region("US-A"), &[]).unwrap_err(),
            PickError::NoBackend {
                region: region("US-A")
            }
        );
        // B -> C.
        assert_eq!(
            picker.pick(now, &region("US-B"), &[]).expect("C").id(),
            &node("c1")
        );
    }

    #[test]
    fn no_configured_spillover_is_no_backend() {
        let now = origin();
        let picker = BackendPicker::new(
            vec![spec("a1", "US-A", 5080, 1), spec("b1", "US-B", 5081, 5)],
            Spillover::default(),
            0,
        );
        let a = region("US-A");
        let _held = picker.pick(now, &a, &[]).expect("room");
        let err = picker.pick(now, &a, &[]).unwrap_err();
        assert_eq!(err, PickError::NoBackend { region: a });
        assert_eq!(
            err.to_string(),
            "no eligible backend in US-A or its spillover regions"
        );
    }

    #[test]
    fn cooldown_expires_at_until() {
        let now = origin();
        let picker = BackendPicker::new(vec![spec("a1", "US-A", 5080, 5)], Spillover::default(), 0);
        let a = region("US-A");
        let until = now + Duration::from_secs(30);
        picker.cool_down(&node("a1"), until);
        // A shorter Retry-After arriving later does not shorten it.
        picker.cool_down(&node("a1"), now + Duration::from_secs(5));
        assert!(picker.pick(now, &a, &[]).is_err());
        assert!(
            picker
                .pick(until - Duration::from_nanos(1), &a, &[])
                .is_err()
        );
        assert!(picker.snapshot(until - Duration::from_nanos(1))[0].cooling_down);
        assert!(picker.pick(until, &a, &[]).is_ok());
        assert!(!picker.snapshot(until)[0].cooling_down);
    }

    #[test]
    fn same_seed_same_sequence_and_ties_spread() {
        let now = origin();
        let backends: Vec<_> = (0..4)
            .map(|i| spec(&format!("a{i}"), "US-A", 5080 + i, 10))
            .collect();
        let a = region("US-A");
        let run = |seed| {
            let picker = BackendPicker::new(backends.clone(), Spillover::default(), seed);
            // Drop each lease at once so every pick is a four-way tie.
            (0..200)
                .map(|_| picker.pick(now, &a, &[]).expect("room").id().clone())
                .collect::<Vec<_>>()
        };
        let first = run(42);
        assert_eq!(first, run(42));
        assert_ne!(first, run(43));
        for backend in &backends {
            let count = first.iter().filter(|id| **id == backend.id).count();
            assert!(count > 20, "{} picked {count} times of 200", backend.id);
        }
    }

    #[test]
    fn snapshot_and_backends_report_state() {
        let now = origin();
        let picker = BackendPicker::new(
            vec![spec("a1", "US-A", 5080, 3), spec("b1", "US-B", 5081, 0)],
            Spillover::default(),
            0,
        );
        let _lease = picker.pick(now, &region("US-A"), &[]).expect("room");
        picker.set_enabled(&node("b1"), false);
        picker.set_up(&node("b1"), false);
        picker.set_up(&node("unknown"), false);
        let snapshot = picker.snapshot(now);
        assert_eq!(snapshot[0].capacity(), voxgate_core::Capacity::new(1, 3));
        assert!(snapshot[0].is_eligible());
        assert!(!snapshot[1].up && !snapshot[1].enabled && !snapshot[1].is_eligible());
        let backends = picker.backends();
        assert!(backends[0].enabled && !backends[1].enabled);
        // A zero cap takes nothing even when enabled and up.
        picker.set_enabled(&node("b1"), true);
        picker.set_up(&node("b1"), true);
        assert!(picker.pick(now, &region("US-B"), &[]).is_err());
    }

    #[test]
    fn set_backends_keeps_state_of_remaining_ids() {
        let now = origin();
        let picker = BackendPicker::new(
            vec![spec("a1", "US-A", 5080, 1), spec("a2", "US-A", 5081, 1)],
            Spillover::default(),
            0,
        );
        let a = region("US-A");
        let held_a1 = picker.pick(now, &a, &[node("a2")]).expect("a1");
        let held_a2 = picker.pick(now, &a, &[]).expect("a2");
        picker.set_up(&node("a1"), false);
        picker.set_backends(vec![
            spec("a1", "US-A", 5090, 2),
            spec("a3", "US-A", 5082, 1),
        ]);
        let snapshot = picker.snapshot(now);
        assert_eq!(snapshot.len(), 2);
        assert_eq!(
            (snapshot[0].sessions, snapshot[0].limit, snapshot[0].up),
            (1, 2, false)
        );
        assert_eq!(snapshot[0].address.port(), 5090);
        assert_eq!((snapshot[1].sessions, snapshot[1].up), (0, true));
        // The removed Backend's lease still releases cleanly.
        drop((held_a1, held_a2));
        assert_eq!(sessions(&picker, now), vec![0, 0]);
    }
}
