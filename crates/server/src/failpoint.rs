//! Crash points for the restart tests: with the `failpoints` feature,
//! `BUILDDIR_FAILPOINT=<name>` makes the daemon SIGKILL itself when it
//! reaches [`hit`]`(<name>)`. Without the feature `hit` is empty and
//! compiles away.

/// Dies here if `BUILDDIR_FAILPOINT` names this point.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    if std::env::var("BUILDDIR_FAILPOINT").is_ok_and(|v| v == name) {
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
