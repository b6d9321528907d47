//! Capacity arithmetic: active sessions against a limit.

/// Sessions in use against a limit, for a node, a Backend or a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    /// Sessions in use (may exceed `limit` transiently when a limit is lowered).
    pub active: u32,
    /// Most sessions allowed.
    pub limit: u32,
}

impl Capacity {
    /// A capacity with `active` in use of `limit`.
    pub fn new(active: u32, limit: u32) -> Self {
        Self { active, limit }
    }

    /// Slots still free; never negative.
    pub fn available(&self) -> u32 {
        self.limit.saturating_sub(self.active)
    }

    /// `active / limit` in 0.0..; a zero limit is fully used.
    pub fn utilization(&self) -> f64 {
        if self.limit == 0 {
            1.0
        } else {
            f64::from(self.active) / f64::from(self.limit)
        }
    }

    /// Whether no slot is free.
    pub fn is_full(&self) -> bool {
        self.active >= self.limit
    }
}

impl std::ops::Add for Capacity {
    type Output = Capacity;
    fn add(self, rhs: Self) -> Self {
        Capacity::new(
            self.active.saturating_add(rhs.active),
            self.limit.saturating_add(rhs.limit),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        let c = Capacity::new(30, 150);
        assert_eq!(c.available(), 120);
        assert!((c.utilization() - 0.2).abs() < 1e-9);
        assert!(!c.is_full());
        assert_eq!(Capacity::new(200, 150).available(), 0);
        assert!(Capacity::new(0, 0).is_full());
        assert_eq!(Capacity::new(0, 0).utilization(), 1.0);
        assert_eq!(c + Capacity::new(1, 1), Capacity::new(31, 151));
    }

    proptest::proptest! {
        #[test]
        fn available_plus_active_covers_limit(active in 0u32..10_000, limit in 0u32..10_000) {
            let c = Capacity::new(active, limit);
            proptest::prop_assert!(c.available() <= limit);
            proptest::prop_assert_eq!(c.is_full(), c.available() == 0);
            if active <= limit {
                proptest::prop_assert_eq!(c.available() + active, limit);
            }
        }
    }
}
