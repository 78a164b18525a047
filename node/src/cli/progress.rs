//! How the CLI shows a rollout while it runs: on a terminal, a live line per host (indicatif:
//! host, step, elapsed in the step, what happened last); anywhere else, a plain line for every
//! change, so logs and CI output read top to bottom.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use halley_proto::NodeName;
use halley_proto::rollout::{HostProgress, HostStep};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A rollout's progress display.
pub enum Progress<'a, W: Write> {
    /// One line per change.
    Lines {
        /// Where lines go.
        out: &'a mut W,
        /// The last step and note printed per host.
        seen: HashMap<NodeName, (HostStep, String)>,
    },
    /// A live line per host on a terminal.
    Live {
        /// The bars.
        multi: MultiProgress,
        /// One per host.
        bars: HashMap<NodeName, (ProgressBar, HostStep)>,
    },
}

impl<'a, W: Write> Progress<'a, W> {
    /// Plain lines to `out`, or live lines on the terminal when `live`.
    pub fn new(out: &'a mut W, live: bool) -> Self {
        if live {
            Progress::Live {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
                bars: HashMap::new(),
            }
        } else {
            Progress::Lines {
                out,
                seen: HashMap::new(),
            }
        }
    }

    /// A line that stays (headers, phase changes, the summary).
    pub fn say(&mut self, text: &str) {
        match self {
            Progress::Lines { out, .. } => {
                let _ = writeln!(out, "{text}");
            }
            Progress::Live { multi, .. } => {
                let _ = multi.println(text);
            }
        }
    }

    /// Shows a host's current step.
    pub fn host(&mut self, h: &HostProgress) {
        match self {
            Progress::Lines { out, seen } => {
                let now = (h.step, h.note.clone());
                if seen.get(&h.node) != Some(&now) {
                    let _ = writeln!(
                        out,
                        "  {:<12} {:<10} {}",
                        h.node.as_str(),
                        h.step.as_str(),
                        h.note
                    );
                    seen.insert(h.node.clone(), now);
                }
            }
            Progress::Live { multi, bars } => {
                let (bar, step) = bars.entry(h.node.clone()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("  {prefix:<12} {spinner} {elapsed:>4} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_prefix(h.node.to_string());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    (bar, h.step)
                });
                if *step != h.step {
                    // The elapsed time is per step.
                    bar.reset_elapsed();
                    *step = h.step;
                }
                bar.set_message(format!("{:<10} {}", h.step.as_str(), h.note));
                if matches!(
                    h.step,
                    HostStep::Committed | HostStep::Reverted | HostStep::Failed | HostStep::Skipped
                ) {
                    bar.finish();
                }
            }
        }
    }

    /// Stops the live lines (they stay on screen).
    pub fn finish(&mut self) {
        if let Progress::Live { bars, .. } = self {
            for (bar, _) in bars.values() {
                bar.finish();
            }
        }
    }
}
