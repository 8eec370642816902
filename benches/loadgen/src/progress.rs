//! The progress bar on stderr while a scenario runs (indicatif): elapsed / total seconds and
//! the messages per second sent and received over the last second; for `idle`, connections
//! established out of those asked for.
//!
//! Shown only when stderr is a terminal and `--no-progress` is absent ([`enabled`]): CI logs
//! and `2>file` stay free of control characters. The report itself never goes through the
//! bar; the bar is cleared before it is printed.
//!
//! The publishing scenarios' bar is driven by one task that wakes every [`TICK`] and reads the
//! [`Recorder`]'s two counters (the measuring tasks add to them in batches), so the hot path
//! does nothing for the bar.

use crate::series::Recorder;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How often the bar is redrawn.
const TICK: Duration = Duration::from_millis(250);

/// Whether to draw a bar: stderr is a terminal and `--no-progress` was not given.
pub(crate) fn enabled(no_progress: bool) -> bool {
    !no_progress && std::io::stderr().is_terminal()
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// A bar over a count (`idle`'s ramp); hidden when `enabled` is false.
pub(crate) fn counter(enabled: bool, prefix: &str, len: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(style("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})"));
    bar.set_prefix(prefix.to_owned());
    bar
}

/// The bar of a publishing scenario; [`RateBar::finish`] clears it.
pub(crate) struct RateBar {
    bar: ProgressBar,
    task: JoinHandle<()>,
}

impl RateBar {
    /// Starts the bar (or nothing, when `enabled` is false): `total` is warm-up + window,
    /// counted from `start`; after it the bar says it is draining.
    pub(crate) fn start(
        enabled: bool,
        prefix: &str,
        start: Instant,
        total: Duration,
        recorder: Arc<Recorder>,
    ) -> Option<RateBar> {
        if !enabled {
            return None;
        }
        let total_ms = total.as_millis().max(1) as u64;
        let bar = ProgressBar::with_draw_target(Some(total_ms), ProgressDrawTarget::stderr());
        bar.set_style(style("{prefix} [{bar:30}] {msg}"));
        bar.set_prefix(prefix.to_owned());
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            // (when, sent, received) over the last second, for the rates.
            let mut history: VecDeque<(Instant, u64, u64)> = VecDeque::new();
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                let now = Instant::now();
                let sent = recorder.sent.load(Ordering::Relaxed);
                let received = recorder.received.load(Ordering::Relaxed);
                history.push_back((now, sent, received));
                while history.len() > 2
                    && now.saturating_duration_since(history[1].0) >= Duration::from_secs(1)
                {
                    history.pop_front();
                }
                let (then, sent0, received0) = history[0];
                let secs = now.saturating_duration_since(then).as_secs_f64();
                let rate = |a: u64, b: u64| {
                    if secs > 0.0 {
                        b.saturating_sub(a) as f64 / secs
                    } else {
                        0.0
                    }
                };
                let elapsed = now.saturating_duration_since(start);
                shown.set_position((elapsed.as_millis() as u64).min(total_ms));
                let phase = if elapsed >= total {
                    "draining, ".to_owned()
                } else {
                    String::new()
                };
                shown.set_message(format!(
                    "{phase}{:.1}/{:.0} s  sent {:.0} msg/s  received {:.0} msg/s",
                    elapsed.as_secs_f64().min(total.as_secs_f64()),
                    total.as_secs_f64(),
                    rate(sent0, sent),
                    rate(received0, received),
                ));
            }
        });
        Some(RateBar { bar, task })
    }

    /// Stops updating and erases the bar.
    pub(crate) fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}
