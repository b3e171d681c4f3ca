//! The periodic check of detaching leases: tmpfs leases whose tree is
//! deleted but whose tmpfs something still held, kept mounted in trash
//! ([`crate::backend::tmpfs_held`]).
//!
//! Every [`CHECK_EVERY`] each one's tmpfs is looked at through the
//! daemon's mount (`fstatvfs`): once it holds nothing it is unmounted, the
//! lease goes back to being reaped (`LeaseTable::tmpfs_gone`) and the
//! reaper deletes what is left of its tree (its record, the mount point)
//! and drops it. Leases restored as detaching at start are checked the
//! same way, so the check does not care which daemon saw them first.
//!
//! Bounds: one tick does one pass over the detaching leases (at most
//! `max_leases`, they count against it), on one blocking thread, and the
//! next tick waits for it. A pass over one lease is a few system calls;
//! its tree is deleted again (a bounded walk, as every reap) at most every
//! [`EMPTY_AGAIN_EVERY`], in case a holder refilled a directory faster than
//! the first deletion could empty it — so a holder that keeps refilling
//! costs one bounded walk per lease per that period, not per tick.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::tmpfs::LEASE_TMPFS_SOURCE;
use crate::backend::tmpfs_held::{settle, Pass, Settled};
use crate::lease::id::LeaseId;
use crate::lease::table::{Daemon, Phase};

/// How often a held tmpfs is checked: a lease is gone at most this long
/// (plus its final reap) after the last holder let go.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How often a held tmpfs's tree is deleted again.
const EMPTY_AGAIN_EVERY: Duration = Duration::from_secs(30);

/// Starts the periodic check (it runs until the runtime stops).
pub fn spawn_periodic(daemon: Arc<Daemon>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When this daemon last deleted each held tree (none yet for one
        // restored at start: its first check deletes it again).
        let mut emptied: HashMap<LeaseId, Instant> = HashMap::new();
        loop {
            tick.tick().await;
            let held = detaching(&daemon);
            emptied.retain(|id, _| held.iter().any(|(h, _)| h == id));
            if held.is_empty() {
                continue;
            }
            let now = Instant::now();
            let work: Vec<(LeaseId, String, bool)> = held
                .into_iter()
                .map(|(id, trash)| {
                    let again = emptied
                        .get(&id)
                        .is_none_or(|at| now.duration_since(*at) >= EMPTY_AGAIN_EVERY);
                    if again {
                        emptied.insert(id, now);
                    }
                    (id, trash, again)
                })
                .collect();
            let d = daemon.clone();
            let Ok(unmounted) = tokio::task::spawn_blocking(move || check(&d, work)).await else {
                continue; // the runtime is shutting down
            };
            for id in unmounted {
                match daemon.table.tmpfs_gone(id) {
                    Ok(trash) => {
                        tracing::info!(lease_id = %id, trash, "held tmpfs now empty and unmounted; reaping the rest of its tree");
                        crate::lease::reaper::spawn(daemon.clone(), trash, Some(id));
                    }
                    Err(e) => {
                        tracing::warn!(lease_id = %id, error = %e, "a held tmpfs unmounted for a lease not detaching")
                    }
                }
            }
        }
    });
}

/// The detaching leases and their trash names.
fn detaching(daemon: &Daemon) -> Vec<(LeaseId, String)> {
    daemon
        .table
        .select(|r| matches!(r.phase(), Phase::Detaching { .. }))
        .into_iter()
        .filter_map(|r| match r.phase() {
            Phase::Detaching { trash } => Some((r.id, trash.clone())),
            _ => None,
        })
        .collect()
}

/// One pass: settles each held tmpfs; returns the leases whose tmpfs is
/// unmounted (or no longer there).
fn check(daemon: &Daemon, work: Vec<(LeaseId, String, bool)>) -> Vec<LeaseId> {
    // One read of mountinfo for the whole pass.
    let ours = match builddir_host::mount::mount_ids_with_source(LEASE_TMPFS_SOURCE) {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /proc/self/mountinfo; held tmpfs leases are checked again at the next tick");
            return Vec::new();
        }
    };
    let layout = &daemon.layout;
    let mut unmounted = Vec::new();
    for (id, trash, empty_again) in work {
        let Ok(name) = CString::new(trash) else {
            continue;
        };
        let settled = settle(
            layout.root_path(),
            layout.trash.as_fd(),
            &name,
            layout.owner,
            &|m| ours.contains(&m),
            Pass::Recheck { empty_again },
        );
        match settled {
            Settled::Held { report, usage } => {
                if let Some(e) = report.first_error {
                    tracing::debug!(lease_id = %id, error = e, "held tmpfs check");
                }
                tracing::trace!(lease_id = %id, ?usage, "tmpfs still held");
            }
            Settled::Unmounted(_) | Settled::NoTmpfs => unmounted.push(id),
        }
    }
    unmounted
}
