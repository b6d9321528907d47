//! The autoscale advisor against load curves, one sample a second, with the fleet following it.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use voxgate_cluster::{Action, Advice, Advisor, AdvisorConfig, Sample};

/// Sessions one node takes.
const CAP: u32 = 100;
/// "N % load" means N % of ten nodes' worth of sessions.
const REFERENCE: f64 = 1_000.0;

/// Feeds `load(t)` sessions at second `t` for `seconds`, closing the loop like an autoscaler: the
/// fleet online at `t` is the advice given `lag_s + 1` seconds earlier (`start_nodes` before that),
/// every node accepting `cap` sessions.
fn run(
    config: &AdvisorConfig,
    start_nodes: u32,
    cap: u32,
    lag_s: usize,
    seconds: u64,
    mut load: impl FnMut(u64) -> u32,
) -> Vec<Advice> {
    let mut advisor = Advisor::new(config.clone());
    let mut history: Vec<Advice> = Vec::new();
    for t in 0..seconds {
        let nodes = history
            .len()
            .checked_sub(lag_s + 1)
            .map_or(start_nodes, |i| history[i].desired_nodes);
        history.push(advisor.observe(Sample {
            now_ms: t * 1000,
            active: load(t),
            limit: nodes * cap,
            nodes_online: nodes,
            per_node_capacity: cap,
        }));
    }
    history
}

fn percent(p: f64) -> u32 {
    (REFERENCE * p / 100.0).round() as u32
}

/// Every change of `desired_nodes`: (second, new minus old).
fn changes(advice: &[Advice]) -> Vec<(u64, i64)> {
    advice
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0].desired_nodes != w[1].desired_nodes)
        .map(|(i, w)| {
            let delta = i64::from(w[1].desired_nodes) - i64::from(w[0].desired_nodes);
            (i as u64 + 1, delta)
        })
        .collect()
}

/// Seconds at which `desired_nodes` turns around (moves the other way from its previous move).
fn direction_changes(advice: &[Advice]) -> Vec<u64> {
    changes(advice)
        .windows(2)
        .filter(|w| w[0].1.signum() != w[1].1.signum())
        .map(|w| w[1].0)
        .collect()
}

/// 20 % load for ten minutes, then 90 %: the advisor scales up within the up window and then
/// holds that size for the next half hour.
#[test]
fn step_up_scales_up_quickly_then_holds() {
    let config = AdvisorConfig::default();
    let step_at = 600;
    let advice = run(&config, 10, CAP, 0, 2_400, |t| {
        percent(if t < step_at { 20.0 } else { 90.0 })
    });

    assert!(
        advice[..step_at as usize]
            .iter()
            .all(|a| a.action != Action::ScaleUp)
    );
    let up = advice
        .iter()
        .position(|a| a.action == Action::ScaleUp)
        .expect("no scale-up") as u64;
    assert!(
        up >= step_at && up <= step_at + config.up_window_ms / 1000 + 3,
        "{up}"
    );

    let sized = &advice[up as usize];
    // ceil(900 x 1.5 / 100) + 1
    assert_eq!(sized.required_nodes, 15);
    assert!(sized.desired_nodes >= 15);
    for a in &advice[up as usize + 1..] {
        assert_eq!(
            (a.action, a.desired_nodes),
            (Action::Hold, sized.desired_nodes)
        );
    }
}

/// A five-second spike to 100 % on a 30 % baseline: one scale-up for the spike, and nothing is
/// given back until the down window has passed after it.
#[test]
fn short_spike_scales_up_once_and_waits_before_scaling_down() {
    let config = AdvisorConfig::default();
    let (spike_from, spike_to) = (600, 605);
    let advice = run(&config, 10, CAP, 0, 3_600, |t| {
        percent(if (spike_from..spike_to).contains(&t) {
            100.0
        } else {
            30.0
        })
    });
    let changes = changes(&advice);

    let ups: Vec<_> = changes.iter().filter(|c| c.1 > 0).collect();
    assert_eq!(ups.len(), 1, "{changes:?}");
    assert_eq!(ups[0].0, spike_from);
    assert!(
        advice
            .iter()
            .filter(|a| a.action == Action::ScaleUp)
            .count()
            <= 1
    );

    let window_s = config.down_window_ms / 1000;
    let first_down_after = changes
        .iter()
        .find(|c| c.1 < 0 && c.0 > spike_from)
        .expect("never scaled back down")
        .0;
    assert!(first_down_after >= spike_to - 1 + window_s, "{changes:?}");
}

/// Load decays from 80 % to 10 % over 30 minutes: the fleet comes down one node at a time, each
/// step at least a down window after the previous one, and never goes up on the way.
#[test]
fn slow_decay_scales_down_one_step_per_window() {
    let config = AdvisorConfig::default();
    let decay_s = 1_800.0;
    // 13 nodes is what the advisor plans for 80 % (ceil(800 x 1.5 / 100) + 1): a steady start.
    let advice = run(&config, 13, CAP, 0, 5_400, |t| {
        let p = 80.0 - 70.0 * (t as f64 / decay_s).min(1.0);
        percent(p)
    });
    assert_eq!(advice[0].desired_nodes, 13);
    let changes = changes(&advice);

    assert!(changes.len() >= 5, "{changes:?}");
    assert!(changes.iter().all(|c| c.1 == -1), "{changes:?}");
    let window_s = config.down_window_ms / 1000;
    assert!(changes[0].0 >= window_s);
    assert!(
        changes.windows(2).all(|w| w[1].0 - w[0].0 >= window_s),
        "{changes:?}"
    );
    // At 10 % the plan is ceil(100 x 1.5 / 100) + 1 = 3 nodes, and that is where it ends.
    let end = advice.last().unwrap();
    assert_eq!((end.desired_nodes, end.required_nodes), (3, 3));
}

/// Load jumping around 70 % ± 5 % every few seconds for an hour: `desired_nodes` turns around at
/// most twice. The same holds around the scale-down threshold.
#[test]
fn noisy_load_never_flaps() {
    let config = AdvisorConfig::default();
    for (centre, seed) in [(70.0, 42), (70.0, 7), (35.0, 42), (35.0, 7)] {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut level = percent(centre);
        let mut next_change = 0;
        let advice = run(&config, 10, CAP, 0, 3_600, |t| {
            if t >= next_change {
                level = percent(centre + rng.random_range(-5.0..=5.0));
                next_change = t + rng.random_range(1..=5);
            }
            level
        });
        let turns = direction_changes(&advice);
        assert!(
            turns.len() <= 2,
            "centre {centre}% seed {seed}: {:?}",
            changes(&advice)
        );
    }
}

/// What the rules allow on purpose: a surge right after a step down is served at once (demand
/// beyond the fleet never waits), so two turns can be seconds apart; but the step down that
/// follows waits a full down window after the surge.
#[test]
fn surge_right_after_a_step_down_is_served_at_once() {
    let config = AdvisorConfig::default();
    let advice = run(&config, 10, CAP, 0, 1_500, |t| match t {
        301..311 => percent(80.0),
        _ => percent(20.0),
    });
    let changes = changes(&advice);
    // Down after five quiet minutes; up to ceil(800 x 1.5 / 100) + 1 = 13 the next second; down
    // again once the surge has left both the peak and the down windows.
    assert_eq!(
        &changes[..3],
        &[(300, -1), (301, 4), (611, -1)],
        "{changes:?}"
    );
    assert_eq!(direction_changes(&advice)[..2], [301, 611]);
}

#[derive(Debug, Clone)]
struct Curve {
    config: AdvisorConfig,
    cap: u32,
    reference_nodes: u32,
    start_nodes: u32,
    lag_s: usize,
    /// (seconds, load as a fraction of `reference_nodes * cap`, ramp to it rather than jump)
    segments: Vec<(u64, f64, bool)>,
    noise: f64,
    seed: u64,
}

fn config() -> impl Strategy<Value = AdvisorConfig> {
    (
        (1.0f64..2.5, 0.05f64..0.5, 0.05f64..0.5, 0u32..=40),
        (1u64..=60, 10u64..=600, 1u64..=600, 0u32..=3),
    )
        .prop_map(
            |((headroom, down, gap, min_available), (up_s, down_s, peak_s, min_nodes))| {
                AdvisorConfig {
                    headroom,
                    scale_up_utilization: (down + gap).min(1.0),
                    scale_down_utilization: down,
                    min_available,
                    up_window_ms: up_s * 1000,
                    down_window_ms: down_s * 1000,
                    peak_window_ms: peak_s * 1000,
                    min_nodes,
                }
            },
        )
}

fn curve() -> impl Strategy<Value = Curve> {
    (
        config(),
        (1u32..=200, 1u32..=20, 0u32..=25),
        prop_oneof![Just(0usize), 0usize..=90],
        proptest::collection::vec((1u64..=900, 0.0f64..1.3, any::<bool>()), 1..8),
        (prop_oneof![Just(0.0), 0.0f64..0.15], any::<u64>()),
    )
        .prop_map(
            |(config, (cap, reference_nodes, start_nodes), lag_s, segments, (noise, seed))| Curve {
                config,
                cap,
                reference_nodes,
                start_nodes,
                lag_s,
                segments,
                noise,
                seed,
            },
        )
}

/// The curve's load at each second.
fn load(curve: &Curve) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(curve.seed);
    let reference = f64::from(curve.reference_nodes * curve.cap);
    let mut from = 0.0;
    let mut out = Vec::new();
    for &(seconds, level, ramp) in &curve.segments {
        for s in 0..seconds {
            let base = if ramp {
                from + (level - from) * (s + 1) as f64 / seconds as f64
            } else {
                level
            };
            let jitter = 1.0 + curve.noise * rng.random_range(-1.0..=1.0);
            out.push((base * jitter * reference).round().max(0.0) as u32);
        }
        from = level;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn desired_never_flaps(curve in curve()) {
        let config = &curve.config;
        prop_assert_eq!(config.validate(), Ok(()));
        let load = load(&curve);
        let advice = run(config, curve.start_nodes, curve.cap, curve.lag_s, load.len() as u64, |t| {
            load[t as usize]
        });
        let window_s = config.down_window_ms / 1000;

        for (t, a) in advice.iter().enumerate() {
            if matches!(a.action, Action::ScaleUp | Action::Hold) {
                prop_assert!(a.desired_nodes >= a.required_nodes, "t={} {:?}", t, a);
            }
            prop_assert!(a.desired_nodes >= a.required_nodes.max(config.min_nodes));
            match a.action {
                Action::ScaleUp => prop_assert!(a.desired_nodes > a.current_nodes),
                Action::ScaleDown => prop_assert!(a.desired_nodes < a.current_nodes),
                Action::Hold => {}
            }
        }

        let changes = changes(&advice);
        for w in changes.windows(2) {
            // A step down always comes a full down window after the previous change, whichever
            // way that went.
            if w[1].1 < 0 {
                prop_assert!(w[1].0 - w[0].0 >= window_s, "{:?}", changes);
            }
        }
        for w in changes.windows(3) {
            // So turning around twice (up-down-up or down-up-down) takes at least a down window.
            if w[0].1.signum() != w[1].1.signum() && w[1].1.signum() != w[2].1.signum() {
                prop_assert!(w[2].0 - w[0].0 >= window_s, "{:?}", changes);
            }
        }
        if curve.lag_s == 0 {
            // With the fleet following at once, steps down are one node each.
            prop_assert!(changes.iter().all(|c| c.1 >= -1), "{:?}", changes);
        }
        if curve.lag_s == 0 && curve.noise == 0.0 {
            // Under a constant load, a step down never leads back up: the smaller fleet was
            // checked against the scale-up condition before stepping.
            let mut start = 0;
            for &(seconds, _, ramp) in &curve.segments {
                let end = start + seconds;
                if !ramp {
                    let inside: Vec<_> =
                        changes.iter().filter(|c| (start..end).contains(&c.0)).collect();
                    if let Some(down) = inside.iter().position(|c| c.1 < 0) {
                        prop_assert!(
                            inside[down..].iter().all(|c| c.1 < 0),
                            "flat {}..{}: {:?}",
                            start,
                            end,
                            changes
                        );
                    }
                }
                start = end;
            }
        }
    }
}
