//! Giving freed memory back to the kernel after a burst of builds.
//!
//! A connection's task and buffers are allocated on whichever runtime
//! worker accepted it, and glibc keeps what such threads free in their own
//! arenas: after 10 000 leases end, the daemon held ≈ 32 MiB it no longer
//! used (builddir-bench part 4), against 12.4 MiB with the trim below.
//! `malloc_trim(0)` returns the free pages of every arena. glibc only: with
//! another libc (musl) [`give_back`] does nothing and the figures differ.
//!
//! The third and last module that opts in to `unsafe` (with
//! [`crate::systemd::listen_fds`] and [`crate::backend::project_sys`]): one call, no pointers.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bursts smaller than this are not worth a trim.
const MIN_PEAK: usize = 1024;

/// Watches the lease count; says when it has fallen far enough from its
/// peak that the memory behind the difference is worth giving back.
#[derive(Debug, Default)]
pub struct Trimmer {
    peak: AtomicUsize,
}

impl Trimmer {
    /// Records that `n` leases exist.
    pub fn grew(&self, n: usize) {
        self.peak.fetch_max(n, Ordering::Relaxed);
    }

    /// Records that `n` leases are left. Returns true if and only if this
    /// caller should trim now: `n` is below half of a peak of at least
    /// `MIN_PEAK` (1 024; the peak then restarts from `n`, so one burst's decline
    /// trims a few times, each after half of what was left has gone).
    pub fn shrank(&self, n: usize) -> bool {
        let peak = self.peak.load(Ordering::Relaxed);
        peak >= MIN_PEAK
            && n.saturating_mul(2) < peak
            && self
                .peak
                .compare_exchange(peak, n, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Returns the free pages of every malloc arena to the kernel. Takes a few
/// milliseconds for tens of MiB: call it on the blocking pool.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and has no preconditions; glibc
    // walks its arenas under their own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_large_burst_halves() {
        let t = Trimmer::default();
        t.grew(100);
        assert!(!t.shrank(10), "a small burst is not worth it");
        t.grew(10_000);
        assert!(!t.shrank(6_000));
        assert!(t.shrank(4_999));
        assert!(!t.shrank(4_000), "the peak restarted at 4 999");
        assert!(t.shrank(2_000));
        assert!(t.shrank(900));
        assert!(!t.shrank(0), "900 is below the minimum peak");
        give_back();
    }
}
