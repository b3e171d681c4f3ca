//! Places for kept-tree hand-overs: one at a time per requesting uid, and
//! at most `hand_over_concurrency` (default 4) at once over all uids.
//!
//! Each hand-over walks a tree on a blocking thread (tokio's blocking pool,
//! shared with reaps, size walks and project-id searches) with up to 16
//! directory fds for up to 60 s ([`crate::tree::walk::Limits`]). Per uid
//! alone, many users keeping at once would each take a thread and their
//! fds, without bound. So a keep first waits for its own uid's earlier
//! hand-overs, and only then for a global place: a uid's queue holds at
//! most one global place, never stands in front of another user's, and
//! another user's allocations (which need neither) are never behind it.
//! Places are granted first come, first served (tokio's semaphore is
//! fair), so every wait is bounded: see docs/security.md.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::lease::walks::share_of;

/// Places for hand-overs.
#[derive(Debug)]
pub struct HandOverPool {
    per_uid: Mutex<HashMap<u32, Arc<Semaphore>>>,
    total: Arc<Semaphore>,
    /// Hand-overs walking a tree right now (`builddird_hand_overs_running`).
    running: Arc<AtomicU64>,
}

/// A place for one hand-over, held until it ends.
#[derive(Debug)]
pub struct HandOverPlace {
    _total: OwnedSemaphorePermit,
    _mine: OwnedSemaphorePermit,
    running: Arc<AtomicU64>,
}

/// Counts a hand-over as running while it lives.
#[derive(Debug)]
pub struct Running {
    running: Arc<AtomicU64>,
    /// Hand-overs running when this one started, itself included.
    pub at_start: u64,
}

impl HandOverPool {
    /// A pool of `total` places (at least one).
    pub fn new(total: usize) -> HandOverPool {
        HandOverPool {
            per_uid: Mutex::new(HashMap::new()),
            total: Arc::new(Semaphore::new(total.max(1))),
            running: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A place for one hand-over requested by `uid`: waits for `uid`'s own
    /// earlier hand-overs, then for a global place. `None` only if the
    /// pool was closed (it never is): the caller must not hand over then.
    pub async fn place(&self, uid: u32) -> Option<HandOverPlace> {
        // The uid's place first: only the head of a uid's queue ever waits
        // for (or holds) a global place.
        let mine = share_of(&self.per_uid, uid, 1).acquire_owned().await.ok()?;
        let total = self.total.clone().acquire_owned().await.ok()?;
        Some(HandOverPlace {
            _total: total,
            _mine: mine,
            running: self.running.clone(),
        })
    }

    /// Hand-overs walking a tree now.
    pub fn running(&self) -> u64 {
        self.running.load(Ordering::Relaxed)
    }
}

impl HandOverPlace {
    /// Counts the hand-over as running, on its blocking thread, until the
    /// returned guard drops: the gauge shows walks, not places granted to
    /// tasks that have no thread yet.
    pub fn start(&self) -> Running {
        let at_start = self.running.fetch_add(1, Ordering::Relaxed) + 1;
        Running {
            running: self.running.clone(),
            at_start,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn within<T>(ms: u64, f: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_millis(ms), f)
            .await
            .ok()
    }

    #[tokio::test]
    async fn hand_overs_queue_per_uid_and_share_a_global_cap() {
        let pool = Arc::new(HandOverPool::new(2));
        let first = pool.place(1).await.expect("a place");
        // Uid 1's later keeps queue behind its first, holding no global
        // place while they wait.
        let queued: Vec<_> = (0..3)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.place(1).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(queued.iter().all(|t| !t.is_finished()), "uid 1 waits");
        // So another uid takes the second global place at once.
        let second = within(500, pool.place(2))
            .await
            .expect("not queued behind uid 1")
            .expect("a place");
        // The cap: a third uid waits for a global place.
        let third = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.place(3).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!third.is_finished(), "past the cap");
        // Uid 2's place freed goes to uid 3 (uid 1's queue waits for uid 1).
        drop(second);
        let third = within(500, third).await.expect("uid 3 goes next");
        assert!(third.expect("joined").is_some());
        assert!(queued.iter().all(|t| !t.is_finished()));
        drop(first);
        let mut next = None;
        for t in queued {
            if next.is_none() {
                next = Some(t);
            } else {
                t.abort();
            }
        }
        let next = within(500, next.expect("queued")).await;
        assert!(next.is_some(), "uid 1's next keep follows its first");
    }

    #[tokio::test]
    async fn running_counts_started_hand_overs_until_they_end() {
        let pool = HandOverPool::new(4);
        let a = pool.place(1).await.expect("a place");
        let b = pool.place(2).await.expect("a place");
        assert_eq!(pool.running(), 0, "granted places are not walks yet");
        let ra = a.start();
        let rb = b.start();
        assert_eq!((ra.at_start, rb.at_start, pool.running()), (1, 2, 2));
        drop(ra);
        assert_eq!(pool.running(), 1);
        drop((rb, a, b));
        assert_eq!(pool.running(), 0);
    }
}
