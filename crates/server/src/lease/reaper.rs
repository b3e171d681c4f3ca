//! Background deletion of released trees.
//!
//! Each tree in trash is deleted by [`crate::tree::remove::remove_tree`] on the
//! blocking pool, at most `reap_concurrency` at a time, so a huge reap never
//! delays allocations on the async workers. A tree that cannot be fully
//! deleted stays in trash, marked quarantined (still counted against its
//! requester's lease limits), and is retried by an operator's `remove` or at the next
//! start (trash is rescanned then). A tmpfs lease whose tmpfs is still
//! held after its tree is deleted stays detaching ([`held`]).
//!
//! A released lease whose build directory was left empty (plain-directory
//! leases) is removed at once instead, on the session's own thread after its
//! reply is sent ([`Reaping`]): three `unlinkat`s by fd, no thread at all.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use rustix::fs::{openat, unlinkat, AtFlags, Mode};
use rustix::io::Errno;

use crate::backend::tmpfs_held::{Settled, Usage};
use crate::backend::Backend;
use crate::host::layout::{BUILD, DIR_OPEN};
use crate::lease::id::LeaseId;
use crate::lease::registry::META;
use crate::lease::table::{Counters, Daemon};
use crate::tree::remove::{remove_tree, Limits, Report};

/// A released lease's tree, in trash, whose deletion has not started yet.
///
/// A session holds it until its reply is sent, so that deleting the tree
/// never delays the answer to the release; [`Reaping::start`] (or dropping
/// it, whatever ended the session) starts the deletion: a tree in trash is
/// never left without its reap.
#[derive(Debug)]
#[must_use = "the tree is reaped when this is started or dropped"]
pub struct Reaping {
    daemon: Arc<Daemon>,
    trash: String,
    id: LeaseId,
}

impl Reaping {
    /// Lease `id`'s tree, moved to `trash/<trash>`.
    pub fn new(daemon: Arc<Daemon>, trash: String, id: LeaseId) -> Reaping {
        Reaping { daemon, trash, id }
    }

    /// Starts deleting the tree now.
    pub fn start(self) {
        drop(self);
    }
}

impl Drop for Reaping {
    fn drop(&mut self) {
        let trash = std::mem::take(&mut self.trash);
        let started = Instant::now();
        if let Some(report) = remove_if_empty(&self.daemon, &trash) {
            finish(&self.daemon, &trash, Some(self.id), &report, started);
        } else {
            spawn(self.daemon.clone(), trash, Some(self.id));
        }
    }
}

/// Deletes `trash/<name>` at once if it is a plain-directory lease whose
/// build directory is empty, which is bounded work: `rmdir` of `build` (the
/// kernel refuses a directory that is not empty, or that is a mount point),
/// `unlink` of `lease.json`, `rmdir` of the outer directory, all by fd in the
/// root-only trash. `None` (nothing or only part deleted) leaves the rest
/// to the background reaper.
///
/// The build's user cannot put anything in the outer directory (it is
/// root's, and it may only search it), so `build` there is the directory
/// the daemon made; a process of the build that still holds it open cannot
/// add to it once it is removed.
fn remove_if_empty(daemon: &Daemon, name: &str) -> Option<Report> {
    if !matches!(daemon.backend, Backend::Dir) {
        return None;
    }
    let trash = daemon.layout.trash.as_fd();
    let outer = openat(trash, name, DIR_OPEN, Mode::empty()).ok()?;
    unlinkat(&outer, BUILD, AtFlags::REMOVEDIR).ok()?;
    let mut removed = 1;
    match unlinkat(&outer, META, AtFlags::empty()) {
        Ok(()) => removed += 1,
        Err(Errno::NOENT) => {}
        Err(_) => return None,
    }
    drop(outer);
    unlinkat(trash, name, AtFlags::REMOVEDIR).ok()?;
    Some(Report {
        removed: removed + 1,
        complete: true,
        ..Report::default()
    })
}

/// Deletes `trash/<trash_name>` in the background; `id` names the lease
/// whose record follows the reap (none for leftovers found at start).
///
/// Outside a runtime (a session dropped while the runtime shuts down) the
/// tree stays in trash: the next start reaps it.
pub fn spawn(daemon: Arc<Daemon>, trash_name: String, id: Option<LeaseId>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            trash = trash_name,
            "no runtime to reap in; the tree is reaped at the next start"
        );
        return;
    };
    runtime.spawn(async move {
        let Ok(permit) = daemon.reap_slots.clone().acquire_owned().await else {
            return; // semaphore closed: shutting down
        };
        let started = Instant::now();
        let d = daemon.clone();
        let name = trash_name.clone();
        let project = id.and_then(|id| daemon.table.get(id).and_then(|r| r.project_id));
        let outcome = tokio::task::spawn_blocking(move || reap(&d, &name, project, id))
            .await
            .unwrap_or_else(|e| Outcome::Reaped(failed(format!("reap task failed: {e}"))));
        match outcome {
            Outcome::Reaped(report) => finish(&daemon, &trash_name, id, &report, started),
            Outcome::Held {
                report,
                usage,
                marked,
            } => held(&daemon, &trash_name, id, &report, usage, marked),
        }
        drop(permit);
    });
}

/// How one reap ended.
enum Outcome {
    /// The tree is deleted (or quarantined: `complete` says which).
    Reaped(Report),
    /// A lease tmpfs in it is still held: the tree inside the tmpfs is
    /// deleted, the tmpfs stays mounted in trash with the record beside
    /// it (`marked`: whether that record now says detaching).
    Held {
        report: Report,
        usage: Option<Usage>,
        marked: Result<(), rustix::io::Errno>,
    },
}

fn failed(why: String) -> Report {
    Report {
        errors: 1,
        first_error: Some(why),
        ..Report::default()
    }
}

/// The blocking part of a reap.
fn reap(d: &Daemon, name: &str, project: Option<u32>, id: Option<LeaseId>) -> Outcome {
    let Ok(name) = CString::new(name) else {
        return Outcome::Reaped(failed(format!("trash name {name:?} holds a NUL")));
    };
    let free_before = free_bytes(d);
    // A tree without a record (found at start) names its project
    // in its own lease.json, which the walk is about to delete.
    let project = project.or_else(|| project_on_disk(d, &name));
    let trash = d.layout.trash.as_fd();
    let root = d.layout.root_path();
    let inside = match d
        .backend
        .before_reap(root, trash, &name, project, d.layout.owner)
    {
        Settled::Held { report, usage } => {
            // The record first: a restart from here on lists the lease
            // as detaching, as the table is about to.
            let marked = match id {
                Some(_) => crate::lease::registry::mark_detaching(&d.layout, &name),
                None => Ok(()),
            };
            return Outcome::Held {
                report,
                usage,
                marked,
            };
        }
        Settled::Unmounted(inside) => Some(inside),
        Settled::NoTmpfs => None,
    };
    let mut report = remove_tree(trash, &name, Limits::default());
    if let Some(inside) = &inside {
        report.add_counts(inside);
    }
    d.backend.after_reap(project, report.complete, |p| {
        !d.table
            .ids(|r| r.project_id == Some(p) && Some(r.id) != id)
            .is_empty()
    });
    let freed = free_bytes(d).saturating_sub(free_before);
    d.counters.reaped_bytes.fetch_add(freed, Ordering::Relaxed);
    Outcome::Reaped(report)
}

/// A tmpfs lease whose tmpfs something still holds files in is not gone:
/// it stays in the table as detaching — listed, counted against its
/// user's limits and the tmpfs total — until the periodic check
/// ([`crate::lease::detaching`]) finds the tmpfs empty and unmounts it.
/// The reap slot is given back meanwhile.
fn held(
    daemon: &Daemon,
    trash_name: &str,
    id: Option<LeaseId>,
    report: &Report,
    usage: Option<Usage>,
    marked: Result<(), rustix::io::Errno>,
) {
    let c = &daemon.counters;
    c.reaped_entries
        .fetch_add(report.removed, Ordering::Relaxed);
    c.reap_errors.fetch_add(report.errors, Ordering::Relaxed);
    let first_error = report.first_error.clone().unwrap_or_default();
    let (used_bytes, used_inodes) = usage.map_or((None, None), |u| (Some(u.bytes), Some(u.inodes)));
    let Some(lease) = id else {
        tracing::warn!(
            trash = trash_name,
            used_bytes,
            used_inodes,
            first_error,
            "a leftover lease tmpfs in trash is still held; it stays mounted there and is retried at the next start"
        );
        return;
    };
    if let Err(e) = marked {
        tracing::warn!(lease_id = %lease, error = %e, "cannot mark the record of a held tmpfs lease detaching; after a restart it is checked again before it is listed as detaching");
    }
    if let Err(e) = daemon.table.detaching(lease) {
        tracing::warn!(lease_id = %lease, error = %e, "a held tmpfs for a lease not being deleted");
    }
    tracing::warn!(
        lease_id = %lease,
        trash = trash_name,
        removed = report.removed,
        used_bytes,
        used_inodes,
        first_error,
        "tmpfs still held by a process after release: its tree is deleted, it stays mounted in trash and counted until it holds nothing"
    );
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
    c.reap_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    let lease_id = id.map(|i| i.to_string()).unwrap_or_default();
    if report.complete {
        Counters::bump(&c.reaped_trees);
        if let Some(id) = id {
            match daemon.table.reaped(id) {
                Ok(left) if daemon.trimmer.shrank(left) => {
                    // A rehash under the table lock, a few times per burst.
                    daemon.table.shrink_to_fit();
                    // A reap finished where a session dropped may run
                    // outside the runtime (it is shutting down): no trim then.
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        runtime.spawn_blocking(crate::trim::give_back);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(lease_id = %id, error = %e, "reaped a tree its lease did not expect")
                }
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
    Counters::bump(&c.reap_quarantined);
    *daemon
        .last_reap_error
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(first.clone());
    if let Some(id) = id {
        if let Err(e) = daemon.table.quarantined(id) {
            tracing::warn!(lease_id = %id, error = %e, "quarantined a tree its lease did not expect");
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
        "tree left in quarantine; it is retried at the next start, or now by an operator's `builddir-ctl remove ID`"
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
    crate::lease::registry::read_in(&daemon.layout, outer.as_fd())?.project_id
}
