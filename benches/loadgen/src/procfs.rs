//! What the load generator reads from Linux `/proc`: a broker's resident memory and CPU time
//! (by pid, given on the command line), our own CPU time, and our open-file limit (and the
//! check the scenarios make against it before they connect).
//!
//! Memory is `VmRSS` / `VmHWM` from `/proc/PID/status` (KiB). CPU is `utime + stime` from
//! `/proc/PID/stat` in clock ticks; Linux reports those in `USER_HZ`, which is 100 on every
//! architecture we run on (x86-64, aarch64), so ticks / 100 = seconds.

use crate::target::UsageError;
use anyhow::{anyhow, Context, Result};

/// `USER_HZ`: clock ticks per second in `/proc/PID/stat`.
const TICKS_PER_SEC: f64 = 100.0;

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_status_kib(&text, field).ok_or_else(|| anyhow!("no {field} line in {path}"))
}

fn parse_status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Resident set size of `pid`, KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// Peak resident set size of `pid` since it started, KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM")
}

/// User + system CPU seconds used by `pid` (`"self"` works too) so far.
pub(crate) fn cpu_secs(pid: &str) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_stat_ticks(&text)
        .map(|ticks| ticks as f64 / TICKS_PER_SEC)
        .ok_or_else(|| anyhow!("cannot parse {path}"))
}

/// `utime + stime` (fields 14 and 15). The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat_ticks(text: &str) -> Option<u64> {
    let after_name = &text[text.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace(); // field 3 (state) first
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Our soft limit on open files (`Max open files` in `/proc/self/limits`); `None` if it
/// cannot be read or is unlimited.
pub(crate) fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Refuses a run whose `what` (e.g. "4 clients") need about `needed` open files when this
/// process may open fewer ([`open_files_limit`]; no limit known: no refusal).
pub(crate) fn check_open_files(needed: u64, what: &str) -> Result<(), UsageError> {
    match open_files_limit() {
        Some(limit) if needed > limit => Err(UsageError(format!(
            "{what} need about {needed} open files; this process may open {limit}"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_fields() {
        let text = "Name:\troost\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(parse_status_kib(text, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(text, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(text, "VmSwap"), None);
    }

    #[test]
    fn parses_stat_with_a_strange_command_name() {
        let text = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat_ticks(text), Some(300));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn reads_our_own_process() -> Result<()> {
        let me = std::process::id();
        assert!(rss_kib(me)? > 0);
        assert!(peak_rss_kib(me)? >= rss_kib(me)? / 2);
        assert!(cpu_secs("self")? >= 0.0);
        Ok(())
    }
}
