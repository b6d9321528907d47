//! The live progress line: an indicatif bar on a terminal, one plain line per second otherwise.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes.
#[derive(Debug)]
pub enum Progress {
    /// An indicatif bar on stderr.
    Bar(ProgressBar),
    /// Plain lines on stderr (logs, CI).
    Lines,
    /// Nothing (`--quiet`).
    Silent,
}

impl Progress {
    /// A bar counting to `total` on a terminal, plain lines otherwise; nothing when `quiet`.
    pub fn new(total: u64, quiet: bool) -> Self {
        Self::with_template(
            total,
            quiet,
            "{elapsed_precise} [{bar:24.cyan/blue}] {pos}/{len} {msg}",
        )
    }

    /// [`Progress::new`] for a run of `seconds`: the position is the elapsed seconds.
    pub fn timed(seconds: u64, quiet: bool) -> Self {
        Self::with_template(
            seconds,
            quiet,
            "{elapsed_precise} [{bar:24.cyan/blue}] {pos}/{len}s {msg}",
        )
    }

    fn with_template(total: u64, quiet: bool, template: &str) -> Self {
        if quiet {
            return Progress::Silent;
        }
        if !std::io::stderr().is_terminal() {
            return Progress::Lines;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        Progress::Bar(bar)
    }

    /// Shows `line` with `position` calls done.
    pub fn update(&self, elapsed: Duration, position: u64, line: &str) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(position);
                bar.set_message(line.to_owned());
            }
            Progress::Lines => eprintln!("[{:>5}s] {line}", elapsed.as_secs()),
            Progress::Silent => {}
        }
    }

    /// Removes the bar before the summary is printed.
    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
