//! Crash points for the restart tests: with the `failpoints` feature,
//! `BUILDDIR_FAILPOINT=<name>[@<n>]` makes the daemon SIGKILL itself the
//! n-th time (default: first) it reaches [`hit`]`(<name>)`. Without the
//! feature `hit` is empty and compiles away.

/// Dies here if `BUILDDIR_FAILPOINT` names this point (and its count).
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HITS: AtomicU32 = AtomicU32::new(0);
    let Ok(spec) = std::env::var("BUILDDIR_FAILPOINT") else {
        return;
    };
    let (point, nth) = spec
        .split_once('@')
        .map_or((spec.as_str(), 1), |(p, n)| (p, n.parse().unwrap_or(1)));
    if point == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == nth {
        tracing::warn!(failpoint = name, "failpoint hit: SIGKILL");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

/// Dies here if `BUILDDIR_FAILPOINT` names this point (compiled out).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
