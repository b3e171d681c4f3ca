//! Per-lease project quotas for disk-backed roots
//! (`lease_backend = "project-quota"`).
//!
//! Each lease's `build` directory gets a project id of its own, with
//! `PROJINHERIT`, and that project gets a hard block and inode limit: a
//! build that writes past it gets `EDQUOT` (ext4) or `ENOSPC` (XFS) in its
//! own tree, and nothing else on the filesystem is charged for it.
//!
//! The kernel is the source of truth for which ids are free: an id is
//! handed out only if no record in the lease table names it and the kernel
//! charges nothing to it. Limits are cleared when a lease's tree is gone.
//!
//! What this is not: a boundary against the tree's *owner* acting in the
//! host user namespace, who may move its own files to another project
//! (`FS_IOC_FSSETXATTR` needs only ownership there). It bounds runaway
//! builds; inside a user namespace (the Nix sandbox) the project cannot be
//! changed. `lease_backend = "tmpfs"` is the hard boundary. See
//! docs/security.md.

pub mod sys;

use std::ops::RangeInclusive;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::io::Errno;

pub use sys::{ProjectState, ProjectUsage};

/// Why project quotas cannot be used on a root; every text names the fix.
pub fn unavailable_reason(fs: BorrowedFd<'_>, fstype: &str) -> Option<String> {
    match sys::project_state(fs) {
        Ok(ProjectState {
            accounting: true,
            enforcing: true,
        }) => None,
        Ok(ProjectState {
            accounting: true,
            enforcing: false,
        }) => Some(format!(
            "{fstype} accounts project quotas but does not enforce them: mount it with -o prjquota"
        )),
        Ok(_) => Some(format!(
            "{fstype} does not account project quotas: for ext4 run `tune2fs -O quota,project` on the unmounted filesystem (or mkfs.ext4 -O quota,project) and mount with -o prjquota; for XFS mount with -o prjquota"
        )),
        Err(Errno::PERM) => Some(
            "quotactl_fd was refused (EPERM): the daemon needs CAP_SYS_ADMIN and quotactl_fd allowed by its SystemCallFilter".to_owned(),
        ),
        Err(e) => Some(format!(
            "{fstype} has no project quota support here (quotactl_fd: {e}): use ext4 made with -O quota,project (or `tune2fs -O quota,project` on the unmounted filesystem) or XFS, mounted with -o prjquota, on a kernel with CONFIG_QFMT_V2 (ext4) or CONFIG_XFS_QUOTA"
        )),
    }
}

/// Hands out project ids from the configured range, round-robin.
#[derive(Debug)]
pub struct ProjectIds {
    range: RangeInclusive<u32>,
    next: AtomicU32,
}

/// No free project id, or the kernel refused one.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    #[error("every project id in project_ids = {first}-{last} is in use; widen project_ids")]
    Exhausted { first: u32, last: u32 },
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
}

impl ProjectIds {
    pub fn new(range: RangeInclusive<u32>) -> ProjectIds {
        let first = *range.start();
        ProjectIds {
            range,
            next: AtomicU32::new(first),
        }
    }

    pub fn range(&self) -> &RangeInclusive<u32> {
        &self.range
    }

    /// Picks an id that `held` does not claim and to which the kernel
    /// charges nothing, and gives it these hard limits.
    ///
    /// Concurrent callers get distinct candidates (one atomic counter), so
    /// two allocations cannot pick the same id before either charges it.
    pub fn assign(
        &self,
        fs: BorrowedFd<'_>,
        held: impl Fn(u32) -> bool,
        bytes: u64,
        inodes: u64,
    ) -> Result<u32, AssignError> {
        let (first, last) = (*self.range.start(), *self.range.end());
        let span = u64::from(last - first) + 1;
        // Bounded: a full lap of the range, then give up.
        for _ in 0..span.min(1 << 20) {
            let offset = self
                .next
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_sub(first);
            let id = first + (u64::from(offset) % span) as u32;
            if held(id) {
                continue;
            }
            let usage =
                sys::project_usage(fs, id).map_err(|source| AssignError::Usage { id, source })?;
            if usage.inodes != 0 || usage.bytes != 0 {
                continue; // files outside our table (a leftover, or not ours)
            }
            sys::set_project_limits(fs, id, bytes, inodes)
                .map_err(|source| AssignError::Limits { id, source })?;
            return Ok(id);
        }
        Err(AssignError::Exhausted { first, last })
    }
}

/// Usage of project `id`, if the kernel can tell.
pub fn usage(fs: BorrowedFd<'_>, id: u32) -> Option<ProjectUsage> {
    sys::project_usage(fs, id).ok()
}

/// Returns true if and only if the project has (all but) used up a limit:
/// within 64 KiB of its block limit (the write that failed may have left
/// less than one block unused) or at its inode limit.
pub fn at_limit(u: &ProjectUsage) -> bool {
    (u.limit_bytes != 0 && u.bytes.saturating_add(64 << 10) >= u.limit_bytes)
        || (u.limit_inodes != 0 && u.inodes >= u.limit_inodes)
}

/// Clears the limits of project `id` once nothing is charged to it.
pub fn clear_if_empty(fs: BorrowedFd<'_>, id: u32) {
    match sys::project_usage(fs, id) {
        Ok(u) if u.inodes == 0 && u.bytes == 0 => {
            if let Err(e) = sys::set_project_limits(fs, id, 0, 0) {
                tracing::warn!(project_id = id, error = %e, "cannot clear a project's limits");
            }
        }
        _ => {}
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
