//! Sessions answered and up at the same moment, as the callers saw them: the cap judged from
//! outside the Proxy, so that a broken admission cannot hide behind its own gauge.
//!
//! Each answered session is a [`Span`] on this process's clock, drawn so that at every instant
//! the callers' count cannot exceed the sessions the Proxy holds:
//! - a call counts from its 2xx to the moment this side sent its BYE (the Proxy cannot free the
//!   slot before the BYE reaches it);
//! - a WebRTC session counts from its `201` to its `DELETE`;
//! - a session the far side ended (BYE from the Proxy, media stopped, connection lost) counts only
//!   until its last sign of life (the last echo heard, or the answer when none came): the Proxy
//!   may free the slot as it sends its BYE, before this process reads it.
//!
//! With those bounds a count above the cap is the Proxy's fault, never the measurement's. Spans
//! written with `--up-log` are in `CLOCK_MONOTONIC` nanoseconds, one clock for every process on
//! the machine, so [`Occupancy::read_logs`] merges the spans of several loadgen processes run at
//! once against one Proxy (`voxgate-loadgen occupancy`).

use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// What kind of session a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    /// A SIP call.
    Call,
    /// A WebRTC (WHIP) session.
    Webrtc,
}

/// One session up, from `up` (inclusive) to `down` (exclusive), in nanoseconds on one clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// The answer reached the caller.
    pub up: u64,
    /// The caller let go, or the last sign of life of a session the far side ended.
    pub down: u64,
    /// Call or WebRTC session.
    pub kind: SpanKind,
}

impl Span {
    /// A span from `up` to `down`, both since the run's epoch.
    pub fn since_epoch(kind: SpanKind, up: Duration, down: Duration) -> Self {
        Self {
            up: nanos(up),
            down: nanos(down),
            kind,
        }
    }
}

/// The most sessions up at once, and when.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peak {
    /// Sessions up at once.
    pub count: u64,
    /// The first moment it was reached (on the spans' clock).
    pub at: u64,
}

/// Every span of a run, and the count of sessions up over time.
#[derive(Debug, Clone, Default)]
pub struct Occupancy {
    spans: Vec<Span>,
    /// (time, count after every change at that time), built on first query.
    steps: Option<Vec<(u64, u64)>>,
}

impl Occupancy {
    /// No spans yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one span; an empty one (`down <= up`) counts nothing.
    pub fn add(&mut self, span: Span) {
        if span.down > span.up {
            self.spans.push(span);
            self.steps = None;
        }
    }

    /// Spans recorded.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// The most sessions up at once.
    pub fn peak(&mut self) -> Peak {
        self.steps()
            .iter()
            .fold(Peak::default(), |peak, &(at, count)| {
                if count > peak.count {
                    Peak { count, at }
                } else {
                    peak
                }
            })
    }

    /// The fewest sessions up at any moment in `from..=to`: what a reading of the Proxy taken
    /// somewhere in that window must at least show.
    pub fn lowest_between(&mut self, from: u64, to: u64) -> u64 {
        let steps = self.steps();
        // The count at `from`: after every change at or before it.
        let first_after = steps.partition_point(|&(at, _)| at <= from);
        let at_from = first_after.checked_sub(1).map_or(0, |index| steps[index].1);
        steps[first_after..]
            .iter()
            .take_while(|&&(at, _)| at <= to)
            .map(|&(_, count)| count)
            .fold(at_from, u64::min)
    }

    /// Writes the spans as JSON lines, moved onto `CLOCK_MONOTONIC` by `epoch` (the monotonic
    /// nanoseconds of the run's epoch).
    pub fn write_log(&self, path: &Path, epoch: u64) -> anyhow::Result<()> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        for span in &self.spans {
            let moved = Span {
                up: span.up.saturating_add(epoch),
                down: span.down.saturating_add(epoch),
                kind: span.kind,
            };
            serde_json::to_writer(&mut out, &moved)?;
            out.write_all(b"\n")?;
        }
        out.flush()
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The spans of every log in `paths` (written by [`Occupancy::write_log`]), on one clock.
    pub fn read_logs(paths: &[impl AsRef<Path>]) -> anyhow::Result<Self> {
        let mut occupancy = Self::new();
        for path in paths {
            let path = path.as_ref();
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line.with_context(|| format!("cannot read {}", path.display()))?;
                if line.trim().is_empty() {
                    continue;
                }
                let span: Span = serde_json::from_str(&line).with_context(|| {
                    format!("{} line {}: not a span", path.display(), number + 1)
                })?;
                occupancy.add(span);
            }
        }
        Ok(occupancy)
    }

    fn steps(&mut self) -> &[(u64, u64)] {
        let spans = &self.spans;
        self.steps.get_or_insert_with(|| {
            // A session going down and another coming up at the same instant do not overlap:
            // downs sort first.
            let mut changes: Vec<(u64, i8)> = spans
                .iter()
                .flat_map(|span| [(span.up, 1), (span.down, -1)])
                .collect();
            changes.sort_unstable();
            let mut steps: Vec<(u64, u64)> = Vec::with_capacity(changes.len());
            let mut count = 0u64;
            for (at, change) in changes {
                count = if change > 0 {
                    count + 1
                } else {
                    count.saturating_sub(1)
                };
                match steps.last_mut() {
                    Some(last) if last.0 == at => last.1 = count,
                    _ => steps.push((at, count)),
                }
            }
            steps
        })
    }
}

/// This machine's `CLOCK_MONOTONIC` now, in nanoseconds: the clock `std::time::Instant` (and so
/// tokio's) reads on Linux, shared by every process.
pub fn monotonic_now() -> anyhow::Result<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .context("cannot read CLOCK_MONOTONIC")?;
    let seconds = u64::try_from(now.tv_sec()).context("CLOCK_MONOTONIC before its origin")?;
    let nanos = u64::try_from(now.tv_nsec()).context("CLOCK_MONOTONIC before its origin")?;
    Ok(seconds.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// The monotonic nanoseconds of `epoch`.
pub fn monotonic_at(epoch: tokio::time::Instant) -> anyhow::Result<u64> {
    Ok(monotonic_now()?.saturating_sub(nanos(epoch.elapsed())))
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(up: u64, down: u64) -> Span {
        Span {
            up,
            down,
            kind: SpanKind::Call,
        }
    }

    fn occupancy(spans: &[(u64, u64)]) -> Occupancy {
        let mut occupancy = Occupancy::new();
        for &(up, down) in spans {
            occupancy.add(span(up, down));
        }
        occupancy
    }

    #[test]
    fn overlapping_spans_peak_where_they_all_meet() {
        let mut spans = occupancy(&[(0, 10), (2, 8), (5, 20), (9, 12)]);
        assert_eq!(spans.peak(), Peak { count: 3, at: 5 });
    }

    #[test]
    fn a_span_ending_as_another_starts_does_not_overlap_it() {
        let mut spans = occupancy(&[(0, 10), (10, 20), (20, 30)]);
        assert_eq!(spans.peak().count, 1);
    }

    #[test]
    fn empty_spans_count_nothing() {
        let mut spans = occupancy(&[(5, 5), (7, 3)]);
        assert_eq!(spans.len(), 0);
        assert_eq!(spans.peak(), Peak::default());
    }

    #[test]
    fn lowest_count_in_a_window() {
        let mut spans = occupancy(&[(0, 10), (2, 8), (5, 20)]);
        // 0..2: 1, 2..5: 2, 5..8: 3, 8..10: 2, 10..20: 1, 20..: 0.
        assert_eq!(spans.lowest_between(5, 7), 3);
        assert_eq!(spans.lowest_between(3, 7), 2);
        assert_eq!(spans.lowest_between(6, 12), 1);
        assert_eq!(spans.lowest_between(21, 30), 0);
        assert_eq!(spans.lowest_between(0, 0), 1);
    }

    #[test]
    fn logs_of_several_processes_merge_on_one_clock() {
        let dir = std::env::temp_dir().join(format!("occupancy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
        // Two processes whose epochs are 1000 ns apart: each alone peaks at 1, together at 2.
        occupancy(&[(0, 500)]).write_log(&a, 1000).unwrap();
        occupancy(&[(100, 600)]).write_log(&b, 1300).unwrap();
        let mut merged = Occupancy::read_logs(&[&a, &b]).unwrap();
        assert_eq!(merged.peak(), Peak { count: 2, at: 1400 });
        std::fs::write(&b, "{\"up\": 1}\n").unwrap();
        let err = Occupancy::read_logs(&[&a, &b]).unwrap_err();
        assert!(format!("{err:#}").contains("line 1: not a span"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_monotonic_clock_is_the_one_instant_reads() {
        let epoch = tokio::time::Instant::now();
        let before = monotonic_now().unwrap();
        let at = monotonic_at(epoch).unwrap();
        // The epoch was read just before `before`.
        assert!(at <= before && before - at < 50_000_000, "{at} {before}");
    }
}
