//! The node cap: a fixed number of session slots, reserved atomically and released on drop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use voxgate_core::Capacity;

/// This node's session cap (SIP calls + WebRTC peers), shared by every task that admits sessions.
///
/// Admission is one atomic reserve before any other work: [`try_reserve`](Self::try_reserve) either
/// hands out a [`SessionSlot`] or says the node is full. The slot is an owned value whose drop
/// releases it, so every exit path of a session gives its slot back exactly once and the count can
/// neither leak nor underflow. Clones share the same counter.
#[derive(Debug, Clone)]
pub struct SessionSlots {
    /// Limit in the high 32 bits, active in the low 32 bits, so that a reserve sees the limit and
    /// the count of the same instant and a concurrent [`set_limit`](Self::set_limit) cannot let a
    /// reserve past the new limit.
    state: Arc<AtomicU64>,
}

impl SessionSlots {
    /// A cap of `limit` sessions, none in use.
    pub fn new(limit: u32) -> Self {
        Self {
            state: Arc::new(AtomicU64::new(pack(0, limit))),
        }
    }

    /// Takes one slot, or `None` when `limit` slots are already in use.
    pub fn try_reserve(&self) -> Option<SessionSlot> {
        let slot = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                let (active, limit) = unpack(s);
                // `active < limit <= u32::MAX`, so the increment stays in the low half.
                (active < limit).then_some(s + 1)
            })
            .ok()
            .map(|_| SessionSlot {
                state: Arc::clone(&self.state),
            });
        #[cfg(feature = "fault-over-cap")]
        let slot = slot.or_else(fault::one_over_the_cap);
        slot
    }

    /// Slots in use.
    pub fn active(&self) -> u32 {
        unpack(self.state.load(Ordering::Acquire)).0
    }

    /// The cap.
    pub fn limit(&self) -> u32 {
        unpack(self.state.load(Ordering::Acquire)).1
    }

    /// Changes the cap. Lowering it below [`active`](Self::active) ends no session: reserves fail
    /// until enough slots are released.
    pub fn set_limit(&self, limit: u32) {
        // The closure always returns Some, so the update cannot fail.
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some(pack(unpack(s).0, limit))
            });
    }

    /// Active and limit, read together.
    pub fn capacity(&self) -> Capacity {
        let (active, limit) = unpack(self.state.load(Ordering::Acquire));
        Capacity::new(active, limit)
    }

    /// Readiness: false once active >= ceil(limit * high_water), so that load balancers steer new
    /// traffic away before the hard cap rejects it.
    ///
    /// `high_water` is clamped to 0..=1 (NaN counts as 1). A zero limit is never ready.
    pub fn below_high_water(&self, high_water: f64) -> bool {
        let high_water = if high_water.is_nan() {
            1.0
        } else {
            high_water.clamp(0.0, 1.0)
        };
        let Capacity { active, limit } = self.capacity();
        // `limit * high_water` is in 0..=u32::MAX after the clamp, so the cast neither wraps nor
        // saturates; the f64 product of a u32 and a value in 0..=1 is exact enough for a threshold.
        let mark = (f64::from(limit) * high_water).ceil() as u32;
        active < mark
    }
}

/// One reserved session slot. Dropping it releases the slot; it cannot be cloned, so the slot is
/// released exactly once.
#[derive(Debug)]
#[must_use = "dropping the slot releases it at once"]
pub struct SessionSlot {
    state: Arc<AtomicU64>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        // This slot's reserve made active >= 1 and only this drop takes it back, so the low half
        // does not borrow from the limit.
        self.state.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A deliberately broken cap, for the test that must catch it from the callers' side
/// (`scripts/test.sh` builds it as `voxgate-over-cap`; never in a product build).
#[cfg(feature = "fault-over-cap")]
mod fault {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, OnceLock};

    use super::SessionSlot;

    /// When the node is full, one more session at a time, on a counter of its own so that
    /// neither the gauge nor readiness sees it.
    pub(super) fn one_over_the_cap() -> Option<SessionSlot> {
        static EXTRA: OnceLock<Arc<AtomicU64>> = OnceLock::new();
        let extra = EXTRA.get_or_init(|| Arc::new(AtomicU64::new(0)));
        extra
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| SessionSlot {
                state: Arc::clone(extra),
            })
    }
}

fn pack(active: u32, limit: u32) -> u64 {
    (u64::from(limit) << 32) | u64::from(active)
}

fn unpack(state: u64) -> (u32, u32) {
    // Truncation picks the halves apart on purpose.
    ((state & u64::from(u32::MAX)) as u32, (state >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_up_to_the_limit_and_release_on_drop() {
        let slots = SessionSlots::new(2);
        let a = slots.try_reserve().expect("first slot");
        let b = slots.try_reserve().expect("second slot");
        assert!(slots.try_reserve().is_none());
        assert_eq!(slots.capacity(), Capacity::new(2, 2));
        drop(a);
        assert_eq!(slots.active(), 1);
        let c = slots.try_reserve().expect("slot freed by drop");
        drop((b, c));
        assert_eq!(slots.active(), 0);
    }

    #[test]
    fn clones_share_the_counter() {
        let slots = SessionSlots::new(1);
        let other = slots.clone();
        let _slot = other.try_reserve().expect("slot");
        assert_eq!(slots.active(), 1);
        assert!(slots.try_reserve().is_none());
    }

    #[test]
    fn zero_limit_admits_nothing() {
        let slots = SessionSlots::new(0);
        assert!(slots.try_reserve().is_none());
        assert!(!slots.below_high_water(0.9));
    }

    #[test]
    fn lowering_the_limit_keeps_sessions_and_blocks_new_ones() {
        let slots = SessionSlots::new(3);
        let held: Vec<_> = (0..3).map(|_| slots.try_reserve().expect("slot")).collect();
        slots.set_limit(1);
        assert_eq!(slots.capacity(), Capacity::new(3, 1));
        assert_eq!(slots.limit(), 1);
        assert!(slots.try_reserve().is_none());
        drop(held);
        assert_eq!(slots.active(), 0);
        let _one = slots.try_reserve().expect("slot under the new limit");
        assert!(slots.try_reserve().is_none());
        slots.set_limit(u32::MAX);
        assert_eq!(slots.capacity(), Capacity::new(1, u32::MAX));
    }

    #[test]
    fn high_water_mark() {
        let slots = SessionSlots::new(10);
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(slots.try_reserve().expect("slot"));
        }
        assert!(slots.below_high_water(0.9)); // 8 < ceil(9.0)
        held.push(slots.try_reserve().expect("slot"));
        assert!(!slots.below_high_water(0.9)); // 9 >= 9
        assert!(slots.below_high_water(1.0));
        // ceil rounds the mark up: 0.85 * 10 = 8.5 -> 9.
        held.pop();
        assert!(slots.below_high_water(0.85));
        assert!(!slots.below_high_water(0.0));
        assert!(slots.below_high_water(f64::NAN));
        assert!(slots.below_high_water(7.0)); // clamped to 1
    }

    #[test]
    fn threads_never_exceed_the_limit() {
        const LIMIT: u32 = 5;
        let slots = SessionSlots::new(LIMIT);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                let slots = slots.clone();
                scope.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..20_000u32 {
                        if let Some(slot) = slots.try_reserve() {
                            held.push(slot);
                        }
                        assert!(slots.active() <= LIMIT);
                        if i % 3 == 0 {
                            held.pop();
                        }
                        if held.len() > 2 {
                            held.clear();
                        }
                    }
                });
            }
        });
        assert_eq!(slots.active(), 0);
    }

    proptest::proptest! {
        /// Any interleaving of reserves and drops keeps active == live slots <= limit, back to 0.
        #[test]
        fn never_exceeds_limit(limit in 0u32..8, ops in proptest::collection::vec(0u8..3, 0..200)) {
            let slots = SessionSlots::new(limit);
            let mut held = Vec::new();
            for op in ops {
                match op {
                    0 | 1 => {
                        let got = slots.try_reserve();
                        proptest::prop_assert_eq!(got.is_some(), held.len() < limit as usize);
                        held.extend(got);
                    }
                    _ => { held.pop(); }
                }
                proptest::prop_assert!(slots.active() <= limit);
                proptest::prop_assert_eq!(slots.active() as usize, held.len());
            }
            drop(held);
            proptest::prop_assert_eq!(slots.active(), 0);
        }
    }
}
