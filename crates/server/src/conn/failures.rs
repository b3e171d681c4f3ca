//! Failed attempts per uid, counted in fixed windows: past `max` failures
//! in a window a uid is refused before its attempt is even checked, and only
//! the first failure of each window is logged (with how many the previous
//! window had), so guessing costs the guesser time and the log one line a
//! minute, not one line per guess.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures per uid in the current window.
#[derive(Debug)]
pub struct FailureWindows {
    window: Duration,
    max: u32,
    by_uid: Mutex<HashMap<u32, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

/// Uids tracked before expired windows are dropped.
const PRUNE_AT: usize = 1024;

impl FailureWindows {
    pub fn new(window: Duration, max: u32) -> FailureWindows {
        FailureWindows {
            window,
            max,
            by_uid: Mutex::new(HashMap::new()),
        }
    }

    /// The window's length, for messages.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Returns false if `uid` failed `max` times in the current window.
    pub fn allowed(&self, uid: u32, now: Instant) -> bool {
        let map = self.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&uid)
            .is_none_or(|w| now.duration_since(w.start) >= self.window || w.failures < self.max)
    }

    /// Counts a failure of `uid`. Returns `Some(failures in the previous
    /// window)` if this is the first failure of a new window (log it),
    /// `None` if this window was logged already.
    pub fn failed(&self, uid: u32, now: Instant) -> Option<u32> {
        let mut map = self.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= PRUNE_AT {
            let window = self.window;
            map.retain(|_, w| now.duration_since(w.start) < window);
        }
        match map.get_mut(&uid) {
            Some(w) if now.duration_since(w.start) < self.window => {
                w.failures = w.failures.saturating_add(1);
                None
            }
            Some(w) => {
                let previous = w.failures;
                *w = Window {
                    start: now,
                    failures: 1,
                };
                Some(previous)
            }
            None => {
                map.insert(
                    uid,
                    Window {
                        start: now,
                        failures: 1,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_allows_max_failures_and_logs_once() {
        let f = FailureWindows::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        assert!(f.allowed(7, t0));
        assert_eq!(f.failed(7, t0), Some(0));
        assert_eq!(f.failed(7, t0), None);
        assert!(f.allowed(7, t0));
        assert_eq!(f.failed(7, t0), None);
        assert!(!f.allowed(7, t0), "a fourth try in the window");
        assert!(f.allowed(8, t0), "other uids are not affected");
        let later = t0 + Duration::from_secs(61);
        assert!(f.allowed(7, later));
        assert_eq!(
            f.failed(7, later),
            Some(3),
            "the next window reports the last"
        );
    }
}
