//! Housekeeping for the global allocator, mimalloc 2 (RFC 0012).
//!
//! mimalloc gives a freed page back to the OS only after `purge_delay` (10 ms by default), and
//! only when the thread that owns the page calls into the allocator again after that: it has
//! no background thread. A runtime worker that goes idle after a burst (a connect storm that
//! then parks, a fan-out that ends) makes no further call, so what the burst freed stayed
//! resident until traffic returned: about 0.2 KiB per connection at 19,000 idle connections
//! (benches/results/2026-12-03-idle-housekeeping.md). So:
//!
//! - [`release_freed_memory`], once at start (`node.release_freed_memory`, on by default):
//!   freed pages are given back at once (`purge_delay = 0`) unless the operator set
//!   `MIMALLOC_PURGE_DELAY`, and the park hook below starts collecting;
//! - [`on_thread_park`], from each runtime's park hook: at most once a second per thread, a
//!   collection of that thread's heap (`mi_collect(false)`): empty pages, including the one
//!   mimalloc keeps "retired" per size class for reuse, go back to the segment and so to the
//!   OS. It visits only the pages that are not full (tens of microseconds at 19,000
//!   connections). Until `release_freed_memory` is called it does nothing.
//!
//! This is the project's one place with `unsafe` code besides what io_uring needs: two calls
//! into mimalloc's C API with no pointer arguments. If the process's global allocator is not
//! mimalloc (tests of other crates), both act on mimalloc's own empty state and do nothing.

use std::cell::Cell;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// mimalloc 2's `mi_option_purge_delay` (include/mimalloc.h: `mi_option_e`, the 16th entry;
/// `libmimalloc-sys` does not name it). Its default is 10 (ms): the test below checks the
/// index against that default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The environment variable by which mimalloc reads `purge_delay` at start.
const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// How often a thread collects its heap at most.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// Whether [`on_thread_park`] collects: set by [`release_freed_memory`].
static COLLECT_ON_PARK: AtomicBool = AtomicBool::new(false);

/// Makes the allocator give freed memory back: freed pages go back to the OS at once (unless
/// `MIMALLOC_PURGE_DELAY` is set: mimalloc read it at start and it stays), and each thread
/// that runs [`on_thread_park`] collects its heap when it parks, at most once a second. Call
/// once, before the runtime starts.
pub fn release_freed_memory() {
    COLLECT_ON_PARK.store(true, Ordering::Relaxed);
    if let Some(delay) = purge_delay(std::env::var_os(PURGE_DELAY_ENV).as_deref()) {
        #[allow(unsafe_code)]
        // SAFETY: `mi_option_set` takes an option index and a value, no pointers: it stores
        // a `long` that mimalloc reads at each purge decision. Called once at start, before
        // the runtime's threads exist; a thread started earlier sees the new delay at its
        // next purge decision or, at worst, purges 10 ms later as it would have anyway.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay);
        }
    }
}

/// The purge delay to set: none if the operator gave one in the environment.
fn purge_delay(env: Option<&OsStr>) -> Option<std::os::raw::c_long> {
    match env {
        Some(_) => None,
        None => Some(0),
    }
}

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// For a runtime's `on_thread_park`: when this thread last collected its heap a second or
/// more ago (or never), collects it now. A thread going idle so gives back what it freed
/// while busy; a busy thread parks often and pays for at most one collection a second.
pub fn on_thread_park() {
    if !COLLECT_ON_PARK.load(Ordering::Relaxed) {
        return;
    }
    let now = Instant::now();
    if LAST_COLLECT.with(|last| due(last, now)) {
        #[allow(unsafe_code)]
        // SAFETY: `mi_collect(false)` collects the calling thread's own heap (no pointers
        // passed); mimalloc itself runs the same collection from its allocation path, every
        // 10,000 slow-path allocations (`mi_option_generic_collect`).
        unsafe {
            libmimalloc_sys::mi_collect(false);
        }
    }
}

/// Whether a collection is due at `now`; if so, records `now` as the last one.
fn due(last: &Cell<Option<Instant>>, now: Instant) -> bool {
    match last.get() {
        Some(at) if now.saturating_duration_since(at) < COLLECT_EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_park_collects_then_at_most_once_a_second() {
        let last = Cell::new(None);
        let t0 = Instant::now();
        assert!(due(&last, t0));
        assert!(!due(&last, t0));
        assert!(!due(&last, t0 + Duration::from_millis(999)));
        assert!(due(&last, t0 + COLLECT_EVERY));
        assert!(!due(&last, t0 + COLLECT_EVERY + Duration::from_millis(500)));
        assert!(due(&last, t0 + COLLECT_EVERY * 3));
    }

    #[test]
    fn an_operators_purge_delay_is_kept() {
        assert_eq!(purge_delay(None), Some(0));
        assert_eq!(purge_delay(Some(OsStr::new("10"))), None);
        assert_eq!(purge_delay(Some(OsStr::new(""))), None);
    }

    #[test]
    fn the_option_index_is_mimallocs_purge_delay() {
        // This test process does not call `release_freed_memory`; mimalloc read the option from the
        // environment at start, or took its default, 10 ms.
        let expected = match std::env::var(PURGE_DELAY_ENV) {
            Ok(v) => v.trim().parse::<std::os::raw::c_long>().unwrap_or(10),
            Err(_) => 10,
        };
        #[allow(unsafe_code)]
        // SAFETY: reads an option by index; no pointers.
        let got = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(got, expected);
    }
}
