//! Per-lease project quotas for disk-backed roots
//! (`lease_backend = "project-quota"`).
//!
//! Each lease's `build` directory gets a project id of its own, with
//! `PROJINHERIT`, and that project gets a hard block and inode limit: a
//! build that writes past it gets `EDQUOT` (ext4) or `ENOSPC` (XFS) in its
//! own tree, and nothing else on the filesystem is charged for it.
//!
//! An id is handed out only if no allocation in flight reserved it, no
//! record in the lease table names it and the kernel charges nothing to it
//! ([`ProjectIds`]); its limits are read back, and cleared when the lease's
//! tree is gone.
//!
//! What this is not: a boundary against the tree's *owner* acting in the
//! host user namespace, who may move its own files to another project
//! (`FS_IOC_FSSETXATTR` needs only ownership there). It bounds runaway
//! builds; inside a user namespace (the Nix sandbox) the project cannot be
//! changed. `lease_backend = "tmpfs"` is the hard boundary. See
//! docs/security.md.

use builddir_host::quota_sys as sys;

use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::io::Errno;

pub use sys::{ProjectState, ProjectUsage};

pub use builddir_host::quota::unavailable_reason;

/// Hands out project ids from the configured range, round-robin.
///
/// Every decision about an id — handing it out, giving it up after a failed
/// allocation, clearing its limits after a reap — is taken under one lock,
/// against three sources: ids reserved by allocations in flight, ids the
/// lease table holds, and what the kernel charges to the id. So two leases
/// never share an id, and a live lease's limits are never cleared.
///
/// Shared (an `Arc` inside), so a [`Reservation`] owns what it needs and
/// the assignment can run on a blocking thread.
#[derive(Debug, Clone)]
pub struct ProjectIds {
    ids: Arc<Ids>,
}

#[derive(Debug)]
struct Ids {
    range: RangeInclusive<u32>,
    next: AtomicU32,
    /// Ids handed out whose lease is not in the table yet.
    reserved: Mutex<HashSet<u32>>,
    /// The root filesystem (a duplicate of the root's fd).
    fs: OwnedFd,
}

/// No free project id, or the kernel refused one.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    #[error("no free project id among the {checked} checked in project_ids = {first}-{last} (each is held by a lease or charged with files); widen project_ids or free kept trees")]
    Exhausted { first: u32, last: u32, checked: u64 },
    #[error("reading the usage of project {id}: {source}")]
    Usage {
        id: u32,
        #[source]
        source: Errno,
    },
    #[error("setting the limits of project {id}: {source}")]
    Limits {
        id: u32,
        #[source]
        source: Errno,
    },
    #[error("the kernel did not keep the limits of project {id} (asked {bytes} bytes / {inodes} inodes, has {kept_bytes} / {kept_inodes}); lower lease_size_max")]
    NotKept {
        id: u32,
        bytes: u64,
        inodes: u64,
        kept_bytes: u64,
        kept_inodes: u64,
    },
}

impl ProjectIds {
    /// Ids from `range` for projects on the filesystem of `fs`.
    pub fn new(range: RangeInclusive<u32>, fs: OwnedFd) -> ProjectIds {
        let first = *range.start();
        ProjectIds {
            ids: Arc::new(Ids {
                range,
                next: AtomicU32::new(first),
                reserved: Mutex::new(HashSet::new()),
                fs,
            }),
        }
    }

    pub fn range(&self) -> &RangeInclusive<u32> {
        &self.ids.range
    }

    /// The filesystem the projects are on.
    pub fn fs(&self) -> BorrowedFd<'_> {
        self.ids.fs.as_fd()
    }

    /// Picks an id that no allocation in flight reserved, that the lease
    /// table does not hold (`held`, read once, under this lock: an id only
    /// reaches the table after being reserved) and to which the kernel
    /// charges nothing; gives it these hard limits and checks the kernel
    /// kept them. The id stays reserved until the [`Reservation`] is
    /// settled (the lease is in the table) or dropped (abandoned).
    ///
    /// Up to a full lap of `quotactl` calls: call it on a blocking thread.
    pub fn assign(
        &self,
        held: impl FnOnce() -> HashSet<u32>,
        bytes: u64,
        inodes: u64,
    ) -> Result<Reservation, AssignError> {
        let ids = &self.ids;
        let fs = ids.fs.as_fd();
        let (first, last) = (*ids.range.start(), *ids.range.end());
        let span = u64::from(last - first) + 1;
        let mut reserved = ids.reserved();
        let held = held();
        // Bounded: at most a full lap of the range (or 2^20 ids).
        let checked = span.min(1 << 20);
        for _ in 0..checked {
            let offset = ids.next.fetch_add(1, Ordering::Relaxed).wrapping_sub(first);
            let id = first + (u64::from(offset) % span) as u32;
            if reserved.contains(&id) || held.contains(&id) {
                continue;
            }
            let usage =
                sys::project_usage(fs, id).map_err(|source| AssignError::Usage { id, source })?;
            if usage.inodes != 0 || usage.bytes != 0 {
                continue; // files outside our table (a leftover, or not ours)
            }
            sys::set_project_limits(fs, id, bytes, inodes)
                .map_err(|source| AssignError::Limits { id, source })?;
            // Fail closed: a limit the kernel rounded to 0 (or wrapped)
            // would be no limit at all.
            let kept = sys::project_usage(fs, id).map_err(|source| {
                clear(fs, id);
                AssignError::Usage { id, source }
            })?;
            let want_bytes = bytes.div_ceil(sys::QUOTA_BLOCK) * sys::QUOTA_BLOCK;
            if kept.limit_bytes != want_bytes
                || kept.limit_inodes != inodes
                || inodes == 0
                || bytes == 0
            {
                clear(fs, id);
                return Err(AssignError::NotKept {
                    id,
                    bytes,
                    inodes,
                    kept_bytes: kept.limit_bytes,
                    kept_inodes: kept.limit_inodes,
                });
            }
            reserved.insert(id);
            return Ok(Reservation {
                ids: ids.clone(),
                id,
                settled: false,
            });
        }
        Err(AssignError::Exhausted {
            first,
            last,
            checked,
        })
    }

    /// A reaped tree's project: clear its limits unless an allocation in
    /// flight reserved it or `held_by_others` (another lease) claims it.
    pub fn clear_after_reap(&self, id: u32, held_by_others: impl Fn(u32) -> bool) {
        if !self.ids.range.contains(&id) {
            return; // never ours
        }
        let reserved = self.ids.reserved();
        if reserved.contains(&id) || held_by_others(id) {
            return;
        }
        clear(self.ids.fs.as_fd(), id);
    }
}

impl Ids {
    fn reserved(&self) -> MutexGuard<'_, HashSet<u32>> {
        self.reserved.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A project id handed out by [`ProjectIds::assign`]. Settle it once the
/// lease is in the table; dropped unsettled (the allocation failed, or
/// panicked), its limits are cleared and the id is free again.
#[derive(Debug)]
pub struct Reservation {
    ids: Arc<Ids>,
    id: u32,
    settled: bool,
}

impl Reservation {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The lease is in the table now, which holds the id from here on.
    pub fn settle(mut self) {
        self.ids.reserved().remove(&self.id);
        self.settled = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            let mut reserved = self.ids.reserved();
            clear(self.ids.fs.as_fd(), self.id);
            reserved.remove(&self.id);
        }
    }
}

/// Usage of project `id`, if the kernel can tell.
pub fn usage(fs: BorrowedFd<'_>, id: u32) -> Option<ProjectUsage> {
    sys::project_usage(fs, id).ok()
}

/// Returns true if and only if the project has (all but) used up a limit:
/// within 64 KiB (or an eighth of the limit, if less) of its block limit —
/// the write that failed may have left less than a block unused — or at
/// its inode limit.
pub fn at_limit(u: &ProjectUsage) -> bool {
    let slack = (64 << 10).min(u.limit_bytes / 8);
    (u.limit_bytes != 0 && u.bytes.saturating_add(slack) >= u.limit_bytes)
        || (u.limit_inodes != 0 && u.inodes >= u.limit_inodes)
}

/// Clears the limits of project `id`. Only for an id no lease holds: the
/// limit belonged to a lease that is gone. Usage may still show for a
/// moment (XFS frees unlinked inodes in the background), so it is not
/// waited for; [`ProjectIds::assign`] skips an id until it is zero.
fn clear(fs: BorrowedFd<'_>, id: u32) {
    if let Err(e) = sys::set_project_limits(fs, id, 0, 0) {
        tracing::warn!(project_id = id, error = %e, "cannot clear a project's limits");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_limit_allows_a_partial_last_block() {
        let mut u = ProjectUsage {
            bytes: 4 << 20,
            inodes: 3,
            limit_bytes: 4 << 20,
            limit_inodes: 100,
        };
        assert!(at_limit(&u));
        u.bytes = (4 << 20) - 4096;
        assert!(at_limit(&u));
        u.bytes = 1 << 20;
        assert!(!at_limit(&u));
        u.inodes = 100;
        assert!(at_limit(&u));
        let none = ProjectUsage::default();
        assert!(!at_limit(&none));
    }
}
