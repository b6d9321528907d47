//! RTP/RTCP port numbers for relay legs: leased in pairs, returned on drop, reused oldest-first.
//!
//! The pool binds nothing: the caller (the proxy) binds the sockets on the leased numbers. A pair
//! is an even RTP port and the odd RTCP port above it (RFC 3550 11). Free pairs wait in a FIFO
//! queue, so a just-released port goes to the back and is reused as late as possible: stray
//! packets of an ended call then find a closed socket (or a call that strict-source filtering
//! protects) rather than a new call that latches onto them.
//!
//! When the caller cannot bind a leased pair (another process holds it), it keeps that lease
//! while it leases the next one, then drops it: the pair goes to the back of the queue and is
//! tried again only after every other free pair.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A thread-safe pool of RTP/RTCP port pairs; clones share the same pairs.
#[derive(Clone)]
pub struct PortPool {
    shared: Arc<Shared>,
}

/// What the pool and its leases share.
struct Shared {
    /// First RTP port and last RTCP port after adjusting the range inward.
    first: u16,
    last: u16,
    capacity: usize,
    /// Free RTP ports, least recently returned first.
    free: Mutex<VecDeque<u16>>,
}

impl Shared {
    /// The free queue. A panic while it was locked cannot leave it half-updated (every change
    /// is one push or pop), so a poisoned lock is used as is; `Drop` must never panic.
    fn free(&self) -> MutexGuard<'_, VecDeque<u16>> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PortPool {
    /// A pool of the even RTP ports in `[first, last]`, each with RTCP on the next port.
    ///
    /// An odd `first` is raised and an even `last` lowered so that every pair lies inside the
    /// range: `10001..=10010` holds the pairs 10002/10003 .. 10008/10009. Port 0 is refused (it
    /// asks the OS for any port), as is a range that holds no pair.
    pub fn new(first: u16, last: u16) -> Result<Self, PoolError> {
        if first == 0 {
            return Err(PoolError::PortZero);
        }
        let rtp_first = first.checked_add(first % 2);
        let rtcp_last = if last.is_multiple_of(2) {
            last.checked_sub(1)
        } else {
            Some(last)
        };
        let (rtp_first, rtcp_last) = match (rtp_first, rtcp_last) {
            (Some(a), Some(b)) if a < b => (a, b),
            _ => return Err(PoolError::NoPortPair { first, last }),
        };
        let free: VecDeque<u16> = (rtp_first..rtcp_last).step_by(2).collect();
        Ok(Self {
            shared: Arc::new(Shared {
                first: rtp_first,
                last: rtcp_last,
                capacity: free.len(),
                free: Mutex::new(free),
            }),
        })
    }

    /// Leases the least recently returned free pair; `None` when every pair is leased.
    pub fn lease(&self) -> Option<PortLease> {
        let rtp = self.shared.free().pop_front()?;
        Some(PortLease {
            rtp,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Pairs currently leased.
    pub fn in_use(&self) -> usize {
        self.shared.capacity - self.shared.free().len()
    }

    /// Pairs currently free.
    pub fn available(&self) -> usize {
        self.shared.free().len()
    }

    /// Pairs in the pool, leased or free.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// The ports the pool hands out after adjustment: first RTP port, last RTCP port.
    pub fn range(&self) -> (u16, u16) {
        (self.shared.first, self.shared.last)
    }
}

impl fmt::Debug for PortPool {
    // The free queue can hold 32k ports; print the summary instead.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortPool")
            .field("range", &self.range())
            .field("capacity", &self.capacity())
            .field("in_use", &self.in_use())
            .finish()
    }
}

/// A leased RTP/RTCP port pair; dropping it returns the pair to the back of the pool's queue.
///
/// A lease is not `Clone`, so the pair goes back exactly once.
pub struct PortLease {
    rtp: u16,
    shared: Arc<Shared>,
}

impl PortLease {
    /// The even RTP port.
    pub fn rtp(&self) -> u16 {
        self.rtp
    }

    /// The RTCP port: RTP + 1.
    pub fn rtcp(&self) -> u16 {
        // Cannot overflow: the pool only holds even ports below its odd last port.
        self.rtp + 1
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.shared.free().push_back(self.rtp);
    }
}

impl fmt::Debug for PortLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortLease")
            .field("rtp", &self.rtp)
            .field("rtcp", &self.rtcp())
            .finish()
    }
}

/// Why a port pool could not be built.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// The range starts at port 0, which would let the OS pick the port.
    #[error("RTP port range starts at 0; configure explicit ports")]
    PortZero,
    /// After raising an odd first port and lowering an even last port, no even RTP port with
    /// its RTCP port above it is left (this includes `first > last`).
    #[error("RTP port range {first}..={last} holds no even/odd RTP/RTCP pair")]
    NoPortPair {
        /// The first port as configured.
        first: u16,
        /// The last port as configured.
        last: u16,
    },
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn pairs_are_even_rtp_and_odd_rtcp() {
        let pool = PortPool::new(10000, 10009).unwrap();
        assert_eq!(pool.capacity(), 5);
        assert_eq!(pool.range(), (10000, 10009));
        let lease = pool.lease().unwrap();
        assert_eq!((lease.rtp(), lease.rtcp()), (10000, 10001));
    }

    #[test]
    fn range_edges_are_adjusted_inward() {
        // Odd first raised, even last lowered.
        let pool = PortPool::new(10001, 10010).unwrap();
        assert_eq!(pool.range(), (10002, 10009));
        assert_eq!(pool.capacity(), 4);
        let ports: Vec<_> = std::iter::from_fn(|| pool.lease())
            .map(|l| {
                let p = (l.rtp(), l.rtcp());
                std::mem::forget(l); // keep it leased without holding it
                p
            })
            .collect();
        assert_eq!(
            ports,
            [
                (10002, 10003),
                (10004, 10005),
                (10006, 10007),
                (10008, 10009)
            ]
        );

        // Exactly one pair.
        assert_eq!(PortPool::new(10000, 10001).unwrap().capacity(), 1);
        assert_eq!(PortPool::new(9999, 10002).unwrap().capacity(), 1);
        // The very top of the port space.
        let top = PortPool::new(65534, 65535).unwrap();
        assert_eq!(
            top.lease().map(|l| (l.rtp(), l.rtcp())),
            Some((65534, 65535))
        );
        assert_eq!(PortPool::new(2, 3).unwrap().capacity(), 1);
        assert_eq!(PortPool::new(1, u16::MAX).unwrap().capacity(), 32767);
    }

    #[test]
    fn ranges_without_a_pair_are_refused() {
        for (first, last) in [
            (10000, 10000),
            (10001, 10001),
            (10001, 10002),
            (10000, 9999),
            (20000, 10000),
            (65535, 65535),
            (u16::MAX, u16::MAX),
            (1, 2),
        ] {
            assert_eq!(
                PortPool::new(first, last).unwrap_err(),
                PoolError::NoPortPair { first, last },
                "{first}..={last}"
            );
        }
        assert_eq!(PortPool::new(0, 100).unwrap_err(), PoolError::PortZero);
        assert_eq!(PortPool::new(0, 0).unwrap_err(), PoolError::PortZero);
    }

    #[test]
    fn exhaustion_returns_none_until_a_lease_drops() {
        let pool = PortPool::new(20000, 20005).unwrap();
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        let c = pool.lease().unwrap();
        assert_eq!(pool.in_use(), 3);
        assert_eq!(pool.available(), 0);
        assert!(pool.lease().is_none());
        drop(b);
        let d = pool.lease().unwrap();
        assert_eq!(d.rtp(), 20002);
        assert!(pool.lease().is_none());
        drop((a, c, d));
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn freed_ports_are_reused_last_fifo() {
        let pool = PortPool::new(30000, 30007).unwrap(); // 30000, 30002, 30004, 30006
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        assert_eq!((a.rtp(), b.rtp()), (30000, 30002));
        drop(b);
        drop(a);
        // Never-used ports first, then in the order they came back.
        let order: Vec<u16> = (0..4)
            .map(|_| {
                let l = pool.lease().unwrap();
                let p = l.rtp();
                std::mem::forget(l);
                p
            })
            .collect();
        assert_eq!(order, [30004, 30006, 30002, 30000]);
    }

    #[test]
    fn a_just_freed_port_waits_behind_all_others() {
        let pool = PortPool::new(40000, 40005).unwrap(); // 3 pairs
        let mut seen = Vec::new();
        for _ in 0..6 {
            let lease = pool.lease().unwrap();
            seen.push(lease.rtp());
            // dropped here: back of the queue
        }
        assert_eq!(seen, [40000, 40002, 40004, 40000, 40002, 40004]);
    }

    #[test]
    fn dropping_a_lease_returns_it_exactly_once() {
        let pool = PortPool::new(50000, 50003).unwrap(); // 2 pairs
        let lease = pool.lease().unwrap();
        assert_eq!(pool.in_use(), 1);
        drop(lease);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(pool.available(), 2);
        // The queue holds each port once: two leases, then exhaustion.
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        assert_ne!(a.rtp(), b.rtp());
        assert!(pool.lease().is_none());
    }

    #[test]
    fn clones_share_the_pool_and_leases_outlive_it() {
        let pool = PortPool::new(10000, 10003).unwrap();
        let clone = pool.clone();
        let lease = clone.lease().unwrap();
        assert_eq!(pool.in_use(), 1);
        drop(clone);
        drop(pool);
        assert_eq!(lease.rtp(), 10000); // the shared state lives as long as the lease
    }

    #[test]
    fn leases_from_many_threads_are_distinct() {
        let pool = PortPool::new(10000, 10000 + 2 * 400 - 1).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..1000 {
                        if i % 3 == 2 {
                            mine.pop();
                        } else if let Some(l) = pool.lease() {
                            mine.push(l);
                        }
                    }
                    mine // still leased when handed back
                })
            })
            .collect();
        let held: Vec<PortLease> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(pool.in_use(), held.len());
        let mut ports: Vec<u16> = held.iter().map(PortLease::rtp).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), held.len(), "a port was leased twice at once");
        drop(held);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn debug_is_a_summary() {
        let pool = PortPool::new(10000, 10003).unwrap();
        let lease = pool.lease().unwrap();
        assert_eq!(
            format!("{pool:?}"),
            "PortPool { range: (10000, 10003), capacity: 2, in_use: 1 }"
        );
        assert_eq!(
            format!("{lease:?}"),
            "PortLease { rtp: 10000, rtcp: 10001 }"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Lease,
        /// Drops the live lease at this index (modulo the number live).
        Drop(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![Just(Op::Lease), any::<usize>().prop_map(Op::Drop)]
    }

    proptest! {
        #[test]
        fn in_use_matches_live_leases(
            first in 1u16..=65535,
            pairs in 0u16..40,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let last = first.saturating_add(2 * pairs);
            let Ok(pool) = PortPool::new(first, last) else {
                prop_assert!(pairs == 0 || last - first < 3);
                return Ok(());
            };
            let (lo, hi) = pool.range();
            let mut live: Vec<PortLease> = Vec::new();
            for op in ops {
                match op {
                    Op::Lease => match pool.lease() {
                        Some(l) => {
                            prop_assert!(l.rtp().is_multiple_of(2) && l.rtp() >= lo && l.rtcp() <= hi);
                            prop_assert!(live.iter().all(|o| o.rtp() != l.rtp()));
                            live.push(l);
                        }
                        None => prop_assert_eq!(live.len(), pool.capacity()),
                    },
                    Op::Drop(i) if !live.is_empty() => {
                        let i = i % live.len();
                        drop(live.swap_remove(i));
                    }
                    Op::Drop(_) => {}
                }
                prop_assert_eq!(pool.in_use(), live.len());
                prop_assert_eq!(pool.available() + live.len(), pool.capacity());
            }
            drop(live);
            prop_assert_eq!(pool.in_use(), 0);
        }
    }
}
