//! Size walks (`list --size`, retention's measurements) run on a bounded
//! pool of their own: at most [`WALKS_TOTAL`] at once over all users and
//! [`WALKS_PER_UID`] per requesting uid, each on a blocking thread holding
//! at most 16 directory fds (see [`crate::tree::walk::Limits`]).
//!
//! So one uid asking for sizes over and over (or over a hostile tree) can
//! neither take all of tokio's blocking threads — which reaps and
//! hand-overs need — nor the daemon's fds. A request never waits for a
//! place held by another user's walk: if the pool is full, it is answered
//! without sizes (unknown) at once. It waits, for a bounded time, only for
//! its own uid's earlier walks.
//!
//! Hand-overs (a keep) are not refused for a full pool: they have places of
//! their own ([`crate::lease::hand_overs`]), one at a time per uid and a
//! global cap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Size walks at once, all users.
pub const WALKS_TOTAL: usize = 4;
/// Size walks at once per requesting uid.
pub const WALKS_PER_UID: usize = 1;

/// Places for size walks.
#[derive(Debug)]
pub struct WalkPool {
    total: Arc<Semaphore>,
    per_uid: Mutex<HashMap<u32, Arc<Semaphore>>>,
}

impl Default for WalkPool {
    fn default() -> WalkPool {
        WalkPool {
            total: Arc::new(Semaphore::new(WALKS_TOTAL)),
            per_uid: Mutex::new(HashMap::new()),
        }
    }
}

/// The semaphore of `uid` in `map`, created with `permits` places.
pub(crate) fn share_of(
    map: &Mutex<HashMap<u32, Arc<Semaphore>>>,
    uid: u32,
    permits: usize,
) -> Arc<Semaphore> {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    // Drop idle uids' semaphores so the map stays small. Idle means no one
    // else holds it: not a permit (which holds a clone), and not a task
    // waiting for one or about to wait (clones are made only here, under
    // this lock). Free permits alone would not do: a uid whose semaphore
    // was replaced while one of its tasks was about to acquire it would
    // get a second place at once.
    if map.len() > 1024 {
        map.retain(|_, s| Arc::strong_count(s) > 1);
    }
    map.entry(uid)
        .or_insert_with(|| Arc::new(Semaphore::new(permits)))
        .clone()
}

/// A place in the pool, held until the walk ends (dropped on its thread).
#[derive(Debug)]
pub struct WalkPlace {
    _mine: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl WalkPool {
    /// Takes a place for a walk on behalf of `uid`: waits at most `patience`
    /// for `uid`'s own earlier walks, never for other users'. `None`: no
    /// place (answer without the walk).
    pub async fn place(&self, uid: u32, patience: Duration) -> Option<WalkPlace> {
        let mine = share_of(&self.per_uid, uid, WALKS_PER_UID);
        let mine = tokio::time::timeout(patience, mine.acquire_owned())
            .await
            .ok()?
            .ok()?;
        let total = self.total.clone().try_acquire_owned().ok()?;
        Some(WalkPlace {
            _mine: mine,
            _total: total,
        })
    }

    /// Runs the blocking `walk` in a place for `uid`. `Err(NoPlace)` at
    /// once if there is none (see [`WalkPool::place`]); `Err(Failed)` if the
    /// walk itself panicked, which a caller must report, never answer as if
    /// the walk had not been asked for.
    pub async fn run<T: Send + 'static>(
        &self,
        uid: u32,
        patience: Duration,
        walk: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WalkError> {
        let place = self.place(uid, patience).await.ok_or(WalkError::NoPlace)?;
        tokio::task::spawn_blocking(move || {
            let out = walk();
            drop(place);
            out
        })
        .await
        .map_err(|e| WalkError::Failed(e.to_string()))
    }
}

/// Why [`WalkPool::run`] has no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkError {
    /// Every place is taken (by this uid's earlier walks or by the pool's
    /// total): answer without the walk, at once.
    NoPlace,
    /// The walk panicked or was cancelled.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_uid_gets_its_share_and_never_waits_for_others() {
        let pool = WalkPool::default();
        let a = pool.place(1, Duration::ZERO).await.expect("first place");
        assert!(
            pool.place(1, Duration::from_millis(10)).await.is_none(),
            "a second walk of the same uid waits for the first"
        );
        let others: Vec<_> = (2..2 + WALKS_TOTAL as u32 - 1)
            .map(|uid| pool.place(uid, Duration::ZERO))
            .collect();
        let mut held = Vec::new();
        for p in others {
            held.push(p.await.expect("other uids have places"));
        }
        // The pool is full: one more uid is answered at once, not queued.
        let t0 = std::time::Instant::now();
        assert!(pool.place(99, Duration::from_secs(5)).await.is_none());
        assert!(t0.elapsed() < Duration::from_secs(1));
        drop(a);
        assert!(pool.place(99, Duration::ZERO).await.is_some());
    }

    #[test]
    fn pruning_idle_uids_keeps_every_semaphore_in_use() {
        let map = Mutex::new(HashMap::new());
        let held = share_of(&map, 7, 1).try_acquire_owned().expect("free");
        let waiting = share_of(&map, 8, 1);
        for uid in 1000..2100 {
            drop(share_of(&map, uid, 1));
        }
        assert!(map.lock().unwrap().len() < 1100, "idle uids pruned");
        // Uid 7's place is still taken, uid 8's waiter still has its own.
        assert!(share_of(&map, 7, 1).try_acquire_owned().is_err());
        assert!(Arc::ptr_eq(&share_of(&map, 8, 1), &waiting));
        drop(held);
    }
}
