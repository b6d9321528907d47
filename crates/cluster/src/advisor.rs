//! The autoscale advisor: how many nodes of one kind a region should run, without flapping.
//!
//! One [`Advisor`] per (region, node kind) turns a stream of capacity [`Sample`]s into an [`Advice`]
//! for the `voxgate_region_desired_nodes{region,kind}` gauge and `GET /v1/regions/{id}/capacity`.
//! The plan is `required = ceil(peak × headroom / per-node capacity) + 1` (one spare node), with the
//! peak taken over a sliding window. Scaling up is quick (a short window, or at once when demand is
//! already past the fleet); scaling down is slow (a long window, one node per window) and never
//! steps into a fleet that would trip the scale-up condition, so the two cannot chase each other.
//! Like [`crate::health`], this is a pure core: time comes in as `now_ms`, nothing is read or sent.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Samples closer together than this share one slot of the peak window, so its memory stays
/// bounded by `peak_window_ms / 1000` entries whatever the sampling rate.
const COALESCE_MS: u64 = 1_000;

/// Thresholds and windows of the advisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdvisorConfig {
    /// Multiplier on the peak when sizing the fleet (1.5 plans for 50 % more than the peak).
    pub headroom: f64,
    /// Utilization (active / limit) above which the fleet is too small, once held for `up_window_ms`.
    pub scale_up_utilization: f64,
    /// Utilization below which the fleet is too large, once held for `down_window_ms`.
    pub scale_down_utilization: f64,
    /// Fewer free slots than this is also too small (matters for small fleets of small nodes).
    pub min_available: u32,
    /// How long the scale-up condition must hold without a break (short: react quickly).
    pub up_window_ms: u64,
    /// How long the scale-down condition must hold without a break, and the time between two steps
    /// down (long: give capacity back slowly).
    pub down_window_ms: u64,
    /// The peak is the highest `active` seen over this window.
    pub peak_window_ms: u64,
    /// Never recommend fewer nodes than this.
    pub min_nodes: u32,
}

impl AdvisorConfig {
    /// Checks the thresholds are ordered and the windows are real; the error names the bad field.
    /// [`Advisor::new`] does not check: an unchecked bad config gives meaningless (but not
    /// panicking) advice.
    pub fn validate(&self) -> Result<(), String> {
        let (down, up) = (self.scale_down_utilization, self.scale_up_utilization);
        if down.is_nan() || down <= 0.0 {
            return Err(format!(
                "scale_down_utilization must be above 0 (got {down})"
            ));
        }
        if up.is_nan() || down >= up {
            return Err(format!(
                "scale_down_utilization ({down}) must be below scale_up_utilization ({up})"
            ));
        }
        if up > 1.0 {
            return Err(format!("scale_up_utilization must be at most 1 (got {up})"));
        }
        if self.headroom.is_nan() || self.headroom < 1.0 || self.headroom.is_infinite() {
            return Err(format!(
                "headroom must be at least 1 and finite (got {})",
                self.headroom
            ));
        }
        for (name, value) in [
            ("up_window_ms", self.up_window_ms),
            ("down_window_ms", self.down_window_ms),
            ("peak_window_ms", self.peak_window_ms),
        ] {
            if value == 0 {
                return Err(format!("{name} must be above 0"));
            }
        }
        Ok(())
    }
}

impl Default for AdvisorConfig {
    /// Headroom 1.5; up above 70 % or under 20 free slots for 30 s; down below 35 % for 5 min; peak
    /// over 5 min; at least one node.
    fn default() -> Self {
        Self {
            headroom: 1.5,
            scale_up_utilization: 0.70,
            scale_down_utilization: 0.35,
            min_available: 20,
            up_window_ms: 30_000,
            down_window_ms: 300_000,
            peak_window_ms: 300_000,
            min_nodes: 1,
        }
    }
}

/// One reading of a region's capacity for one node kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// When it was taken, in milliseconds on any clock that does not go backwards.
    pub now_ms: u64,
    /// Sessions running.
    pub active: u32,
    /// Sum of `max_sessions` over the online nodes accepting sessions.
    pub limit: u32,
    /// Nodes of this kind online: the fleet the advice is measured against.
    pub nodes_online: u32,
    /// The configured `max_sessions` of one node of this kind; 0 is treated as 1.
    pub per_node_capacity: u32,
}

/// Which rule decided an [`Advice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Add nodes: demand is past the fleet, or the fleet has been too full for the up window.
    ScaleUp,
    /// Remove one node: the fleet has been underused for the down window.
    ScaleDown,
    /// Keep the previous recommendation (never lower than required).
    Hold,
}

/// What the advisor recommends after a sample, with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advice {
    /// How many nodes should run.
    pub desired_nodes: u32,
    /// The capacity plan: `max(min_nodes, ceil(peak_active × headroom / per-node capacity) + 1)`.
    pub required_nodes: u32,
    /// Nodes online in the sample.
    pub current_nodes: u32,
    /// Highest `active` over the peak window.
    pub peak_active: u32,
    /// `active / limit` (1 when nothing accepts sessions); may exceed 1 after nodes leave.
    pub utilization: f64,
    /// Free slots: `limit - active`, at least 0.
    pub available: u32,
    /// The rule that decided.
    pub action: Action,
    /// A short sentence with the numbers, for operators.
    pub reason: String,
}

/// Recommends a node count for one (region, node kind) from its samples. See the module docs for
/// the rules; feed it every sample in time order, typically once a second.
#[derive(Debug)]
pub struct Advisor {
    config: AdvisorConfig,
    peak: PeakWindow,
    /// Since when the scale-up condition has held without a break; restarted by a scale-up.
    up_since: Option<u64>,
    /// Since when the scale-down condition has held without a break; restarted by any change of
    /// the recommendation, so a step down always comes a full window after the previous change.
    down_since: Option<u64>,
    /// Latest time seen; an earlier `now_ms` is taken as this (no time passed).
    now_ms: u64,
    last: Option<Advice>,
}

impl Advisor {
    /// An advisor with no history: the first sample's fleet is the starting recommendation.
    pub fn new(config: AdvisorConfig) -> Self {
        Self {
            config,
            peak: PeakWindow::default(),
            up_since: None,
            down_since: None,
            now_ms: 0,
            last: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AdvisorConfig {
        &self.config
    }

    /// The advice given for the latest sample, if any.
    pub fn last(&self) -> Option<&Advice> {
        self.last.as_ref()
    }

    /// Takes one sample and returns the recommendation it leads to.
    pub fn observe(&mut self, sample: Sample) -> Advice {
        let now = sample.now_ms.max(self.now_ms);
        self.now_ms = now;
        let cfg = &self.config;

        let peak = self.peak.record(now, sample.active, cfg.peak_window_ms);
        let plan = Plan::new(cfg, peak, sample.per_node_capacity);
        let required = plan.required;
        let current = sample.nodes_online;
        let available = sample.limit.saturating_sub(sample.active);
        let utilization = if sample.limit == 0 {
            1.0
        } else {
            f64::from(sample.active) / f64::from(sample.limit)
        };
        let too_busy = utilization > cfg.scale_up_utilization;
        let too_full = available < cfg.min_available;
        let up_condition = too_busy || too_full;
        let down_condition = !up_condition && utilization < cfg.scale_down_utilization;
        let up_held = held(&mut self.up_since, up_condition, now);
        let down_held = held(&mut self.down_since, down_condition, now);
        let previous = self.last.as_ref().map_or(current, |a| a.desired_nodes);
        let pct = |u: f64| format!("{:.0}%", u * 100.0);
        let secs = |ms: u64| format!("{}s", ms / 1000);
        let hold_at = previous.max(required);

        let (action, desired, why) = if up_held.is_some_and(|h| h >= cfg.up_window_ms)
            || required > current
        {
            // Never below an earlier recommendation the fleet has not reached yet.
            let desired = required.max(current.saturating_add(1)).max(previous);
            let why = match up_held {
                Some(h) if h >= cfg.up_window_ms && too_busy => format!(
                    "utilization {} above {} for {}",
                    pct(utilization),
                    pct(cfg.scale_up_utilization),
                    secs(h)
                ),
                Some(h) if h >= cfg.up_window_ms => format!(
                    "{available} free slots below {} for {}",
                    cfg.min_available,
                    secs(h)
                ),
                _ => format!("peak {peak} needs {required} nodes, {current} online"),
            };
            (
                Action::ScaleUp,
                desired,
                format!("{why}: scale up to {desired}"),
            )
        } else if let Some(h) = down_held.filter(|&h| h >= cfg.down_window_ms) {
            let low = format!(
                "utilization {} below {} for {}",
                pct(utilization),
                pct(cfg.scale_down_utilization),
                secs(h)
            );
            let candidate = required.max(cfg.min_nodes).max(current.saturating_sub(1));
            let smaller_limit = sample.limit.saturating_sub(plan.per_node);
            let smaller_busy = smaller_limit == 0
                || f64::from(peak) / f64::from(smaller_limit) > cfg.scale_up_utilization;
            let smaller_free = smaller_limit.saturating_sub(peak);
            if candidate >= current {
                let why = format!("{low}, but {candidate} nodes are needed: hold at {hold_at}");
                (Action::Hold, hold_at, why)
            } else if candidate >= previous {
                // The fleet has not come down to the previous recommendation yet.
                let why = format!("{low}, {previous} already recommended: hold at {hold_at}");
                (Action::Hold, hold_at, why)
            } else if smaller_busy || smaller_free < cfg.min_available {
                // Stepping down would trip the scale-up condition: that is the flap to avoid.
                let why = format!(
                    "{low}, but {candidate} nodes would leave {smaller_free} free slots at peak \
                     {peak}: hold at {hold_at}"
                );
                (Action::Hold, hold_at, why)
            } else {
                let why = format!("{low}: scale down to {candidate}");
                (Action::ScaleDown, candidate, why)
            }
        } else {
            let state = match (up_held, down_held) {
                (Some(h), _) if too_busy => format!(
                    "utilization {} above {} for {} of {}",
                    pct(utilization),
                    pct(cfg.scale_up_utilization),
                    secs(h),
                    secs(cfg.up_window_ms)
                ),
                (Some(h), _) => format!(
                    "{available} free slots below {} for {} of {}",
                    cfg.min_available,
                    secs(h),
                    secs(cfg.up_window_ms)
                ),
                (None, Some(h)) => format!(
                    "utilization {} below {} for {} of {}",
                    pct(utilization),
                    pct(cfg.scale_down_utilization),
                    secs(h),
                    secs(cfg.down_window_ms)
                ),
                (None, None) => format!(
                    "utilization {} within {}..{}",
                    pct(utilization),
                    pct(cfg.scale_down_utilization),
                    pct(cfg.scale_up_utilization)
                ),
            };
            (Action::Hold, hold_at, format!("{state}: hold at {hold_at}"))
        };

        match action {
            Action::ScaleUp => {
                self.up_since = up_condition.then_some(now);
                self.down_since = down_condition.then_some(now);
            }
            Action::ScaleDown => self.down_since = Some(now),
            Action::Hold if desired > previous => self.down_since = down_condition.then_some(now),
            Action::Hold => {}
        }

        let advice = Advice {
            desired_nodes: desired,
            required_nodes: required,
            current_nodes: current,
            peak_active: peak,
            utilization,
            available,
            action,
            reason: format!("{why} ({})", plan.explain(cfg, peak)),
        };
        self.last = Some(advice.clone());
        advice
    }
}

/// Updates a "held since" timer and returns for how long the condition has held.
fn held(since: &mut Option<u64>, condition: bool, now: u64) -> Option<u64> {
    if condition {
        Some(now.saturating_sub(*since.get_or_insert(now)))
    } else {
        *since = None;
        None
    }
}

/// The capacity plan for one peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    /// `ceil(peak × headroom / per_node) + 1`, before `min_nodes`.
    formula: u32,
    /// `formula`, at least `min_nodes`.
    required: u32,
    /// Per-node capacity actually used (0 became 1).
    per_node: u32,
    /// The sample said 0.
    capacity_missing: bool,
}

impl Plan {
    fn new(cfg: &AdvisorConfig, peak: u32, per_node_capacity: u32) -> Self {
        let per_node = per_node_capacity.max(1);
        let nodes = (f64::from(peak) * cfg.headroom / f64::from(per_node)).ceil();
        // `as` saturates (and maps NaN to 0); keep room for the spare.
        let formula = (nodes as u32).min(u32::MAX - 1) + 1;
        Self {
            formula,
            required: formula.max(cfg.min_nodes),
            per_node,
            capacity_missing: per_node_capacity == 0,
        }
    }

    /// `required 5 = ceil(310 x 1.5 / 150) + 1`, with any adjustment spelled out.
    fn explain(&self, cfg: &AdvisorConfig, peak: u32) -> String {
        let formula = format!("ceil({peak} x {} / {}) + 1", cfg.headroom, self.per_node);
        let mut text = if self.required > self.formula {
            format!(
                "required {} = min_nodes, above {formula} = {}",
                self.required, self.formula
            )
        } else {
            format!("required {} = {formula}", self.required)
        };
        if self.capacity_missing {
            text.push_str("; per-node capacity 0 treated as 1");
        }
        text
    }
}

/// Highest `active` over a sliding window, in slots of at least [`COALESCE_MS`].
#[derive(Debug, Default)]
struct PeakWindow {
    slots: VecDeque<Slot>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// First sample in the slot; a new slot starts `COALESCE_MS` after it.
    first_ms: u64,
    /// Latest sample in the slot; the slot leaves the window when this does.
    last_ms: u64,
    max_active: u32,
}

impl PeakWindow {
    /// Adds a sample (time never goes backwards here) and returns the peak over `window_ms`.
    fn record(&mut self, now: u64, active: u32, window_ms: u64) -> u32 {
        while self
            .slots
            .front()
            .is_some_and(|s| now.saturating_sub(s.last_ms) > window_ms)
        {
            self.slots.pop_front();
        }
        match self.slots.back_mut() {
            Some(slot) if now < slot.first_ms.saturating_add(COALESCE_MS) => {
                slot.last_ms = now;
                slot.max_active = slot.max_active.max(active);
            }
            _ => self.slots.push_back(Slot {
                first_ms: now,
                last_ms: now,
                max_active: active,
            }),
        }
        self.slots.iter().map(|s| s.max_active).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: u32 = 100;

    /// A sample with `nodes` full-capacity nodes of [`CAP`] sessions each.
    fn sample(now_s: u64, active: u32, nodes: u32) -> Sample {
        Sample {
            now_ms: now_s * 1000,
            active,
            limit: nodes * CAP,
            nodes_online: nodes,
            per_node_capacity: CAP,
        }
    }

    /// Feeds the same load every second over `[from_s, to_s)` with a fixed fleet.
    fn feed(advisor: &mut Advisor, from_s: u64, to_s: u64, active: u32, nodes: u32) -> Vec<Advice> {
        (from_s..to_s)
            .map(|t| advisor.observe(sample(t, active, nodes)))
            .collect()
    }

    #[test]
    fn defaults_validate_and_parse_partially() {
        let config = AdvisorConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(
            (config.headroom, config.min_available, config.min_nodes),
            (1.5, 20, 1)
        );
        let parsed: AdvisorConfig = serde_json::from_str(r#"{"min_nodes": 3}"#).unwrap();
        assert_eq!(
            parsed,
            AdvisorConfig {
                min_nodes: 3,
                ..AdvisorConfig::default()
            }
        );
    }

    #[test]
    fn validate_names_the_bad_field() {
        let bad = |edit: fn(&mut AdvisorConfig)| {
            let mut config = AdvisorConfig::default();
            edit(&mut config);
            config.validate().unwrap_err()
        };
        assert!(bad(|c| c.scale_down_utilization = 0.0).starts_with("scale_down_utilization"));
        assert!(bad(|c| c.scale_down_utilization = f64::NAN).starts_with("scale_down_utilization"));
        assert!(bad(|c| c.scale_down_utilization = 0.8).contains("below scale_up_utilization"));
        assert!(bad(|c| c.scale_up_utilization = 1.2).starts_with("scale_up_utilization"));
        assert!(bad(|c| c.headroom = 0.9).starts_with("headroom"));
        assert!(bad(|c| c.headroom = f64::INFINITY).starts_with("headroom"));
        assert!(bad(|c| c.up_window_ms = 0).starts_with("up_window_ms"));
        assert!(bad(|c| c.down_window_ms = 0).starts_with("down_window_ms"));
        assert!(bad(|c| c.peak_window_ms = 0).starts_with("peak_window_ms"));
        let edge = AdvisorConfig {
            scale_up_utilization: 1.0,
            headroom: 1.0,
            ..AdvisorConfig::default()
        };
        assert_eq!(edge.validate(), Ok(()));
    }

    #[test]
    fn required_formula() {
        let cfg = AdvisorConfig::default();
        let required = |peak, per_node| Plan::new(&cfg, peak, per_node).required;
        assert_eq!(required(310, 150), 5); // ceil(3.1) + 1
        assert_eq!(required(300, 150), 4); // exact multiple: no rounding up
        assert_eq!(required(0, 150), 1); // only the spare
        assert_eq!(required(1, 150), 2);
        assert_eq!(required(u32::MAX, 1), u32::MAX); // saturates instead of overflowing
        let zero = Plan::new(&cfg, 3, 0);
        assert_eq!((zero.required, zero.per_node), (6, 1));
        assert!(
            zero.explain(&cfg, 3)
                .contains("per-node capacity 0 treated as 1")
        );

        let floor = AdvisorConfig {
            min_nodes: 4,
            ..AdvisorConfig::default()
        };
        let plan = Plan::new(&floor, 100, 150);
        assert_eq!((plan.formula, plan.required), (2, 4));
        assert_eq!(
            plan.explain(&floor, 100),
            "required 4 = min_nodes, above ceil(100 x 1.5 / 150) + 1 = 2"
        );
    }

    #[test]
    fn first_sample_holds_the_fleet_it_finds() {
        let mut advisor = Advisor::new(AdvisorConfig::default());
        assert!(advisor.last().is_none());
        let advice = advisor.observe(sample(0, 500, 10));
        assert_eq!(advice.action, Action::Hold);
        assert_eq!((advice.desired_nodes, advice.required_nodes), (10, 9));
        assert_eq!((advice.peak_active, advice.available), (500, 500));
        assert!((advice.utilization - 0.5).abs() < 1e-9);
        assert_eq!(
            advice.reason,
            "utilization 50% within 35%..70%: hold at 10 (required 9 = ceil(500 x 1.5 / 100) + 1)"
        );
        assert_eq!(advisor.last(), Some(&advice));
    }

    #[test]
    fn scales_up_at_once_when_demand_is_past_the_fleet() {
        let mut advisor = Advisor::new(AdvisorConfig::default());
        feed(&mut advisor, 0, 10, 200, 5);
        let advice = advisor.observe(sample(10, 400, 5));
        assert_eq!(advice.action, Action::ScaleUp);
        assert_eq!((advice.desired_nodes, advice.required_nodes), (7, 7));
        assert_eq!(
            advice.reason,
            "peak 400 needs 7 nodes, 5 online: scale up to 7 (required 7 = ceil(400 x 1.5 / 100) + 1)"
        );
    }

    #[test]
    fn scales_up_on_utilization_held_for_the_up_window() {
        // Nine nodes online but only 378 slots accepting (the rest in maintenance): 82 % busy.
        let busy = |t: u64| Sample {
            now_ms: t * 1000,
            active: 310,
            limit: 378,
            nodes_online: 9,
            per_node_capacity: 150,
        };
        let mut advisor = Advisor::new(AdvisorConfig::default());
        for t in 0..30 {
            let advice = advisor.observe(busy(t));
            assert_eq!((advice.action, advice.desired_nodes), (Action::Hold, 9));
        }
        assert!(
            advisor
                .last()
                .unwrap()
                .reason
                .starts_with("utilization 82% above 70% for 29s of 30s")
        );
        let advice = advisor.observe(busy(30));
        assert_eq!((advice.action, advice.desired_nodes), (Action::ScaleUp, 10));
        assert_eq!(
            advice.reason,
            "utilization 82% above 70% for 30s: scale up to 10 (required 5 = ceil(310 x 1.5 / 150) + 1)"
        );
        // The timer restarted: the next step needs another full window.
        for t in 31..60 {
            assert_eq!(advisor.observe(busy(t)).action, Action::Hold);
        }
        assert_eq!(advisor.observe(busy(60)).action, Action::ScaleUp);
    }

    #[test]
    fn a_break_restarts_the_up_timer() {
        // Six nodes, three accepting (300 slots): 220 sessions is 73 % busy while the plan
        // (ceil(3.3) + 1 = 5) fits the fleet, so only the timer can scale up.
        let at = |t: u64, active| Sample {
            now_ms: t * 1000,
            active,
            limit: 300,
            nodes_online: 6,
            per_node_capacity: CAP,
        };
        let mut advisor = Advisor::new(AdvisorConfig::default());
        for t in 0..29 {
            assert_eq!(advisor.observe(at(t, 220)).action, Action::Hold);
        }
        assert_eq!(advisor.observe(at(29, 150)).action, Action::Hold); // 50 %: a break
        for t in 30..60 {
            assert_eq!(advisor.observe(at(t, 220)).action, Action::Hold); // up to 29 s held
        }
        assert_eq!(advisor.observe(at(60, 220)).action, Action::ScaleUp); // 30 s held
    }

    #[test]
    fn scales_up_when_free_slots_stay_short() {
        // Ten-session nodes: two of them leave 15 free slots under the 20 minimum at 25 % load.
        let small = |t: u64, nodes: u32| Sample {
            now_ms: t * 1000,
            active: 5,
            limit: nodes * 10,
            nodes_online: nodes,
            per_node_capacity: 10,
        };
        let mut advisor = Advisor::new(AdvisorConfig::default());
        for t in 0..30 {
            assert_eq!(advisor.observe(small(t, 2)).action, Action::Hold);
        }
        let advice = advisor.observe(small(30, 2));
        assert_eq!((advice.action, advice.desired_nodes), (Action::ScaleUp, 3));
        assert!(
            advice
                .reason
                .starts_with("15 free slots below 20 for 30s: scale up to 3")
        );
        // Three nodes leave 25 free; utilization is low but stepping back to two would leave 15.
        for t in 31..2000 {
            let advice = advisor.observe(small(t, 3));
            assert_eq!((advice.action, advice.desired_nodes), (Action::Hold, 3));
        }
        assert!(
            advisor
                .last()
                .unwrap()
                .reason
                .contains("would leave 15 free slots at peak 5")
        );
    }

    #[test]
    fn scales_down_one_node_per_down_window() {
        let mut advisor = Advisor::new(AdvisorConfig::default());
        // 200 of 1000 is 20 %: below 35 %; the plan needs only ceil(3) + 1 = 4 nodes.
        let advice = feed(&mut advisor, 0, 300, 200, 10);
        assert!(
            advice
                .iter()
                .all(|a| (a.action, a.desired_nodes) == (Action::Hold, 10))
        );
        assert_eq!(
            advice[299].reason,
            "utilization 20% below 35% for 299s of 300s: hold at 10 (required 4 = ceil(200 x 1.5 / 100) + 1)"
        );
        let advice = advisor.observe(sample(300, 200, 10));
        assert_eq!(
            (advice.action, advice.desired_nodes),
            (Action::ScaleDown, 9)
        );
        assert_eq!(
            advice.reason,
            "utilization 20% below 35% for 300s: scale down to 9 (required 4 = ceil(200 x 1.5 / 100) + 1)"
        );
        // The fleet follows; the next step needs a whole new window.
        let advice = feed(&mut advisor, 301, 600, 200, 9);
        assert!(
            advice
                .iter()
                .all(|a| (a.action, a.desired_nodes) == (Action::Hold, 9))
        );
        let advice = advisor.observe(sample(600, 200, 9));
        assert_eq!(
            (advice.action, advice.desired_nodes),
            (Action::ScaleDown, 8)
        );
    }

    #[test]
    fn a_break_restarts_the_down_timer() {
        let mut advisor = Advisor::new(AdvisorConfig::default());
        feed(&mut advisor, 0, 200, 200, 10);
        advisor.observe(sample(200, 400, 10)); // 40 %: not low
        let advice = feed(&mut advisor, 201, 501, 200, 10);
        assert!(advice.iter().all(|a| a.action == Action::Hold));
        assert_eq!(
            advisor.observe(sample(501, 200, 10)).action,
            Action::ScaleDown
        );
    }

    #[test]
    fn never_scales_down_below_required_or_min_nodes() {
        let config = AdvisorConfig {
            min_nodes: 3,
            ..AdvisorConfig::default()
        };
        let mut advisor = Advisor::new(config);
        // Idle: required is min_nodes = 3; 3 nodes stay however long it lasts.
        let advice = feed(&mut advisor, 0, 3600, 0, 3);
        assert!(
            advice
                .iter()
                .all(|a| (a.action, a.desired_nodes) == (Action::Hold, 3))
        );
        assert!(
            advice[3599]
                .reason
                .contains("but 3 nodes are needed: hold at 3")
        );

        // Low load, but a recent peak of 140 still needs ceil(2.1) + 1 = 4 nodes.
        let mut advisor = Advisor::new(AdvisorConfig::default());
        feed(&mut advisor, 0, 10, 140, 4);
        let advice = feed(&mut advisor, 10, 300, 100, 4);
        assert!(advice.iter().all(|a| a.desired_nodes == 4));
        // Once the peak has left the window the step is allowed.
        let advice = feed(&mut advisor, 300, 700, 100, 4);
        let first_down = advice
            .iter()
            .position(|a| a.action == Action::ScaleDown)
            .unwrap();
        assert_eq!(advice[first_down].desired_nodes, 3);
        assert_eq!(advice[first_down].required_nodes, 3);
    }

    #[test]
    fn hold_keeps_an_unreached_recommendation() {
        let mut advisor = Advisor::new(AdvisorConfig::default());
        feed(&mut advisor, 0, 5, 200, 5);
        // Demand jumps: 9 needed, but the fleet takes a while to arrive.
        let advice = advisor.observe(sample(5, 500, 5));
        assert_eq!((advice.action, advice.desired_nodes), (Action::ScaleUp, 9));
        // Back to normal load on the old fleet: the peak still needs 9, and desired never drops
        // while holding or while scaling up.
        for advice in feed(&mut advisor, 6, 100, 300, 6) {
            assert_eq!(advice.desired_nodes, 9);
            assert!(advice.desired_nodes >= advice.required_nodes);
        }
    }

    #[test]
    fn hold_rises_to_required_and_restarts_the_down_timer() {
        let mut advisor = Advisor::new(AdvisorConfig::default());
        feed(&mut advisor, 0, 300, 100, 10);
        let advice = advisor.observe(sample(300, 100, 10));
        assert_eq!(
            (advice.action, advice.desired_nodes),
            (Action::ScaleDown, 9)
        );
        // Before the fleet follows, a peak arrives that needs all ten (ceil(9) + 1).
        let advice = advisor.observe(sample(301, 600, 10));
        assert_eq!((advice.action, advice.desired_nodes), (Action::Hold, 10));
        // That rise is a change of direction: the next step down waits a full window after it.
        let advice = feed(&mut advisor, 302, 1000, 100, 10);
        let first_down = advice
            .iter()
            .position(|a| a.action == Action::ScaleDown)
            .unwrap();
        assert_eq!(302 + first_down as u64, 602);
        assert_eq!(advice[first_down].desired_nodes, 9);
    }

    #[test]
    fn a_scale_up_restarts_the_down_timer() {
        // A short peak window lets the plan drop soon after the peak that raised it.
        let config = AdvisorConfig {
            peak_window_ms: 10_000,
            ..AdvisorConfig::default()
        };
        let mut advisor = Advisor::new(config);
        // 60 of 200 is 30 %: low for five minutes, but ceil(0.9) + 1 = 2 nodes are needed.
        let advice = feed(&mut advisor, 0, 400, 60, 2);
        assert!(advice.iter().all(|a| a.desired_nodes == 2));
        // 68 (still low, 34 %) needs ceil(1.02) + 1 = 3: up at once.
        let advice = advisor.observe(sample(400, 68, 2));
        assert_eq!((advice.action, advice.desired_nodes), (Action::ScaleUp, 3));
        // The peak leaves its window after ten seconds, but the step back down still waits a full
        // down window after the scale-up.
        let advice = feed(&mut advisor, 401, 1000, 60, 3);
        let first_down = advice
            .iter()
            .position(|a| a.action == Action::ScaleDown)
            .unwrap();
        assert_eq!(401 + first_down as u64, 700);
    }

    #[test]
    fn peak_window_slides_and_coalesces() {
        let mut window = PeakWindow::default();
        assert_eq!(window.record(0, 50, 10_000), 50);
        assert_eq!(window.record(1_000, 20, 10_000), 50);
        assert_eq!(window.record(10_000, 10, 10_000), 50); // exactly the window: still in
        assert_eq!(window.record(10_001, 10, 10_000), 20);
        assert_eq!(window.record(11_001, 10, 10_000), 10);

        // Ten samples a second for an hour keep one slot per second of the window.
        let mut window = PeakWindow::default();
        for i in 0..36_000u64 {
            window.record(i * 100, (i % 977) as u32, 300_000);
        }
        assert!(window.slots.len() <= 301, "{} slots", window.slots.len());
        assert_eq!(window.record(3_600_000, 0, 300_000), 976);
    }

    #[test]
    fn time_going_backwards_counts_as_no_time() {
        let mut advisor = Advisor::new(AdvisorConfig::default());
        advisor.observe(sample(100, 500, 10));
        let advice = advisor.observe(sample(5, 100, 10));
        assert_eq!(advice.peak_active, 500);
        assert_eq!(advice.action, Action::Hold);
    }

    #[test]
    fn empty_fleets_and_zero_capacity() {
        let mut advisor = Advisor::new(AdvisorConfig::default());
        let advice = advisor.observe(Sample {
            now_ms: 0,
            active: 0,
            limit: 0,
            nodes_online: 0,
            per_node_capacity: 0,
        });
        assert_eq!((advice.action, advice.desired_nodes), (Action::ScaleUp, 1));
        assert_eq!(advice.utilization, 1.0);
        assert!(advice.reason.ends_with("per-node capacity 0 treated as 1)"));
    }

    #[test]
    fn advice_serializes_for_the_admin_api() {
        let mut advisor = Advisor::new(AdvisorConfig::default());
        let advice = advisor.observe(sample(0, 500, 3));
        let json = serde_json::to_value(&advice).unwrap();
        assert_eq!(json["action"], "scale_up");
        assert_eq!(json["desired_nodes"], 9);
        assert_eq!(json["required_nodes"], 9);
        assert_eq!(json["current_nodes"], 3);
        assert_eq!(json["peak_active"], 500);
        assert_eq!(
            serde_json::to_value(Action::ScaleDown).unwrap(),
            "scale_down"
        );
    }
}
