//! Fault points for the integration tests: with the `failpoints` feature,
//! `BUILDDIR_FAILPOINT=<name>[@<n>][=<action>]` acts the n-th time (default:
//! first; `@*`: every time) the daemon reaches [`hit`]`(<name>)`. Actions:
//!
//! - `kill` (the default): SIGKILL the daemon, for the restart tests;
//! - `panic`: panic in the calling thread, to test that a failed task is
//!   answered as a failure and the daemon serves on;
//! - `sleep-ms:<N>`: sleep N milliseconds in the calling thread, to test
//!   that a stalled step holds up no one else.
//!
//! Without the feature `hit` is empty and compiles away.

/// What a failpoint does when it fires.
#[cfg(feature = "failpoints")]
#[derive(Debug, PartialEq)]
enum Action {
    Kill,
    Panic,
    Sleep(std::time::Duration),
}

/// Splits `<name>[@<n>][=<action>]`; `None` for an action it does not know
/// (a typo then fires nothing rather than killing by surprise). The count
/// 0 (`@*`) means every hit.
#[cfg(feature = "failpoints")]
fn parse(spec: &str) -> Option<(&str, u32, Action)> {
    let (point, action) = match spec.split_once('=') {
        None => (spec, Action::Kill),
        Some((p, "kill")) => (p, Action::Kill),
        Some((p, "panic")) => (p, Action::Panic),
        Some((p, a)) => {
            let ms = a.strip_prefix("sleep-ms:")?.parse().ok()?;
            (p, Action::Sleep(std::time::Duration::from_millis(ms)))
        }
    };
    let (point, nth) = point.split_once('@').map_or((point, 1), |(p, n)| {
        (p, if n == "*" { 0 } else { n.parse().unwrap_or(1) })
    });
    Some((point, nth, action))
}

/// Acts here if `BUILDDIR_FAILPOINT` names this point (and its count).
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HITS: AtomicU32 = AtomicU32::new(0);
    let Ok(spec) = std::env::var("BUILDDIR_FAILPOINT") else {
        return;
    };
    let Some((point, nth, action)) = parse(&spec) else {
        return;
    };
    if point != name {
        return;
    }
    let hit = HITS.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    if nth != 0 && hit != nth {
        return;
    }
    tracing::warn!(failpoint = name, ?action, "failpoint hit");
    match action {
        Action::Kill => {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
        Action::Panic => panic!("failpoint {name}"),
        Action::Sleep(d) => std::thread::sleep(d),
    }
}

/// Acts here if `BUILDDIR_FAILPOINT` names this point (compiled out).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::{parse, Action};
    use std::time::Duration;

    #[test]
    fn specs_name_a_point_a_count_and_an_action() {
        assert_eq!(
            parse("release:after-chmod"),
            Some(("release:after-chmod", 1, Action::Kill))
        );
        assert_eq!(parse("a:b@3"), Some(("a:b", 3, Action::Kill)));
        assert_eq!(parse("a:b@2=kill"), Some(("a:b", 2, Action::Kill)));
        assert_eq!(parse("a:b=panic"), Some(("a:b", 1, Action::Panic)));
        assert_eq!(
            parse("a:b=sleep-ms:1500"),
            Some(("a:b", 1, Action::Sleep(Duration::from_millis(1500))))
        );
        assert_eq!(
            parse("a:b@*=sleep-ms:10"),
            Some(("a:b", 0, Action::Sleep(Duration::from_millis(10))))
        );
        assert_eq!(parse("a:b=sleep-ms:x"), None);
        assert_eq!(parse("a:b=explode"), None);
    }
}
