//! Failpoints: faults planted on purpose so `roost-chaos selftest` can show that its checker
//! finds them on a real cluster (issue 8). Compiled in only with the `testing` feature
//! (`cargo build -p roost --features testing`); without it every check is a constant `false`
//! and the optimiser removes it. With it, they are read once from `ROOST_FAILPOINTS` at start,
//! comma-separated:
//!
//! | failpoint | what the node does wrong |
//! |---|---|
//! | `drop_acked:N` | every Nth QoS 1/2 delivery to a local subscriber is skipped, while its publisher is acknowledged |
//! | `qos2_twice:N` | every Nth QoS 2 delivery is queued twice (two packet ids: a real duplicate) |
//! | `two_sessions` | a takeover never closes the connection it takes over |
//! | `forget_retained:N` | every Nth retained write is acknowledged and not stored |

#[cfg(feature = "testing")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    #[derive(Debug, Default)]
    struct Failpoints {
        drop_acked: u64,
        qos2_twice: u64,
        two_sessions: bool,
        forget_retained: u64,
    }

    static FAILPOINTS: OnceLock<Failpoints> = OnceLock::new();
    static DROP_ACKED: AtomicU64 = AtomicU64::new(0);
    static QOS2_TWICE: AtomicU64 = AtomicU64::new(0);
    static FORGET_RETAINED: AtomicU64 = AtomicU64::new(0);

    /// Reads `ROOST_FAILPOINTS` (once); an entry that does not parse stops the node.
    pub(crate) fn init() -> Result<(), String> {
        let spec = std::env::var("ROOST_FAILPOINTS").unwrap_or_default();
        let mut f = Failpoints::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, n) = match item.split_once(':') {
                Some((name, n)) => {
                    let n: u64 = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("ROOST_FAILPOINTS: {item:?}: N must be a positive number")
                    })?;
                    (name, n)
                }
                None => (item, 1),
            };
            match name {
                "drop_acked" => f.drop_acked = n,
                "qos2_twice" => f.qos2_twice = n,
                "two_sessions" => f.two_sessions = true,
                "forget_retained" => f.forget_retained = n,
                other => return Err(format!("ROOST_FAILPOINTS: unknown failpoint {other:?}")),
            }
        }
        tracing::warn!(failpoints = ?f, "this node is built with failpoints (feature testing): it breaks its promises on purpose");
        let _ = FAILPOINTS.set(f);
        Ok(())
    }

    fn every(n: u64, counter: &AtomicU64) -> bool {
        n > 0 && counter.fetch_add(1, Ordering::Relaxed) % n == n - 1
    }

    fn get() -> Option<&'static Failpoints> {
        FAILPOINTS.get()
    }

    pub(crate) fn drop_acked() -> bool {
        get().is_some_and(|f| every(f.drop_acked, &DROP_ACKED))
    }

    pub(crate) fn qos2_twice() -> bool {
        get().is_some_and(|f| every(f.qos2_twice, &QOS2_TWICE))
    }

    pub(crate) fn two_sessions() -> bool {
        get().is_some_and(|f| f.two_sessions)
    }

    pub(crate) fn forget_retained() -> bool {
        get().is_some_and(|f| every(f.forget_retained, &FORGET_RETAINED))
    }
}

#[cfg(not(feature = "testing"))]
mod imp {
    #[allow(clippy::unnecessary_wraps)]
    pub(crate) fn init() -> Result<(), String> {
        Ok(())
    }
    #[inline(always)]
    pub(crate) fn drop_acked() -> bool {
        false
    }
    #[inline(always)]
    pub(crate) fn qos2_twice() -> bool {
        false
    }
    #[inline(always)]
    pub(crate) fn two_sessions() -> bool {
        false
    }
    #[inline(always)]
    pub(crate) fn forget_retained() -> bool {
        false
    }
}

pub(crate) use imp::*;
