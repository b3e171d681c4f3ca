//! Background deletion of released trees.
//!
//! Each tree in trash is deleted by [`crate::tree::remove::remove_tree`] on the
//! blocking pool, at most `reap_concurrency` at a time, so a huge reap never
//! delays allocations on the async workers. A tree that cannot be fully
//! deleted stays in trash, marked quarantined, and is retried at the next
//! start (trash is rescanned then).

use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use builddir_proto::LeaseState;

use crate::backend::LeaseMode;
use crate::lease::id::LeaseId;
use crate::lease::table::{Counters, Daemon};
use crate::tree::remove::{remove_tree, Limits, Report};

/// Deletes `trash/<trash_name>` in the background; `id` names the lease
/// whose record follows the reap (none for leftovers found at start).
pub fn spawn(daemon: Arc<Daemon>, trash_name: String, id: Option<LeaseId>) {
    tokio::spawn(async move {
        let Ok(_permit) = daemon.reap_slots.clone().acquire_owned().await else {
            return; // semaphore closed: shutting down
        };
        let started = Instant::now();
        let d = daemon.clone();
        let name = trash_name.clone();
        let project = id.and_then(|id| daemon.leases().get(&id).and_then(|r| r.project_id));
        let report = tokio::task::spawn_blocking(move || {
            let name = CString::new(name).expect("trash names come from the daemon");
            let free_before = free_bytes(&d);
            detach_lease_tmpfs(&d, &name);
            // A tree without a record (found at start) names its project
            // in its own lease.json, which the walk is about to delete.
            let project = match d.mode {
                LeaseMode::ProjectQuota(_) => project.or_else(|| project_on_disk(&d, &name)),
                _ => project,
            };
            if let Some(project) = project {
                log_if_project_full(&d, project, &name);
            }
            let report = remove_tree(d.layout.trash.as_fd(), &name, Limits::default());
            if let (true, Some(project), LeaseMode::ProjectQuota(ids)) =
                (report.complete, project, &d.mode)
            {
                let others = |p| {
                    d.leases()
                        .values()
                        .any(|r| r.project_id == Some(p) && Some(r.id) != id)
                };
                ids.clear_after_reap(d.layout.root.fd.as_fd(), project, others);
            }
            let freed = free_bytes(&d).saturating_sub(free_before);
            d.counters.reaped_bytes.fetch_add(freed, Ordering::Relaxed);
            report
        })
        .await
        .unwrap_or_else(|e| Report {
            errors: 1,
            first_error: Some(format!("reap task failed: {e}")),
            ..Report::default()
        });
        finish(&daemon, &trash_name, id, &report, started);
    });
}

fn finish(
    daemon: &Daemon,
    trash_name: &str,
    id: Option<LeaseId>,
    report: &Report,
    started: Instant,
) {
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    let c = &daemon.counters;
    c.reaped_entries
        .fetch_add(report.removed, Ordering::Relaxed);
    c.reap_errors.fetch_add(report.errors, Ordering::Relaxed);
    let lease_id = id.map(|i| i.to_string()).unwrap_or_default();
    if report.complete {
        Counters::bump(&c.reaped_trees);
        if let Some(id) = id {
            let left = {
                let mut leases = daemon.leases();
                leases.remove(&id);
                leases.len()
            };
            if daemon.trimmer.shrank(left) {
                // A rehash under the table lock, a few times per burst.
                daemon.leases().shrink_to_fit();
                tokio::task::spawn_blocking(crate::trim::give_back);
            }
        }
        tracing::info!(
            lease_id,
            trash = trash_name,
            removed = report.removed,
            restarts = report.restarts,
            elapsed_ms,
            "reaped"
        );
        return;
    }
    let first = report
        .first_error
        .clone()
        .unwrap_or_else(|| "unknown error".into());
    *daemon
        .last_reap_error
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(first.clone());
    if let Some(id) = id {
        if let Some(r) = daemon.leases().get_mut(&id) {
            r.state = LeaseState::Quarantined;
        }
    }
    tracing::warn!(
        lease_id,
        trash = trash_name,
        removed = report.removed,
        errors = report.errors,
        mount_points = report.mount_points,
        refilling = report.refilling,
        moved = report.moved,
        restarts = report.restarts,
        first_error = first,
        elapsed_ms,
        "tree left in quarantine; it is retried at the next start"
    );
}

/// Free bytes on the root mount. The difference around one reap is what it
/// freed (approximate while other trees are written or deleted at the same
/// time), at the cost of two `statvfs` calls instead of one `statx` per file.
fn free_bytes(daemon: &Daemon) -> u64 {
    rustix::fs::fstatvfs(&daemon.layout.root.fd).map_or(0, |v| v.f_bavail * v.f_frsize)
}

/// The project id recorded in `trash/<name>/lease.json`, if any.
fn project_on_disk(daemon: &Daemon, name: &std::ffi::CStr) -> Option<u32> {
    let outer = rustix::fs::openat(
        daemon.layout.trash.as_fd(),
        name,
        crate::host::layout::DIR_OPEN,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    crate::lease::registry::read(outer.as_fd())?.project_id
}

/// Logs that a `project-quota` lease used up its limit (its build saw
/// EDQUOT or ENOSPC), as the tmpfs backend does.
fn log_if_project_full(daemon: &Daemon, project: u32, name: &std::ffi::CStr) {
    let Some(u) = crate::backend::project::usage(daemon.layout.root.fd.as_fd(), project) else {
        return;
    };
    if crate::backend::project::at_limit(&u) {
        tracing::warn!(
            trash = ?name,
            project_id = project,
            used_bytes = u.bytes,
            used_inodes = u.inodes,
            limit_bytes = u.limit_bytes,
            limit_inodes = u.limit_inodes,
            "lease had reached its size limit (its build saw EDQUOT/ENOSPC)"
        );
    }
}

/// A tmpfs lease (`lease_backend = "tmpfs"`) is reaped by detaching its
/// mount: O(1) whatever it holds. Only a mount exactly at `<tree>/build`
/// whose source is ours is detached; anything else mounted in a tree is
/// reported by the walk and left in quarantine.
fn detach_lease_tmpfs(daemon: &Daemon, name: &std::ffi::CStr) {
    let mut rel = name.to_bytes().to_vec();
    rel.extend_from_slice(b"/build");
    let Ok(rel) = CString::new(rel) else {
        return;
    };
    let trash = daemon.layout.trash.as_fd();
    let here = rustix::fs::statx(
        trash,
        c"",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::MNT_ID,
    );
    let there = rustix::fs::statx(
        trash,
        &rel,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        rustix::fs::StatxFlags::MNT_ID,
    );
    let (Ok(here), Ok(there)) = (here, there) else {
        return;
    };
    if here.stx_mnt_id == there.stx_mnt_id
        || !crate::host::mount::mount_source_is(
            there.stx_mnt_id,
            crate::lease::create::LEASE_TMPFS_SOURCE,
        )
    {
        return;
    }
    let path = daemon
        .layout
        .root_path()
        .join(crate::host::layout::TRASH)
        .join(std::ffi::OsStr::from_bytes(name.to_bytes()))
        .join(crate::host::layout::BUILD);
    if let Ok(vfs) = rustix::fs::statvfs(&path) {
        if vfs.f_bavail == 0 || vfs.f_favail == 0 {
            tracing::warn!(
                path = %path.display(),
                limit_bytes = vfs.f_blocks * vfs.f_frsize,
                limit_inodes = vfs.f_files,
                "lease had reached its size limit (its build saw ENOSPC)"
            );
        }
    }
    if let Err(e) = rustix::mount::unmount(
        &path,
        rustix::mount::UnmountFlags::DETACH | rustix::mount::UnmountFlags::NOFOLLOW,
    ) {
        tracing::warn!(path = %path.display(), error = %e, "cannot detach a lease tmpfs");
    }
}
