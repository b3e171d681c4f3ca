//! Ending a live lease, from wherever the end comes: a release, a
//! disconnect, an operator's remove, or an expired reclaim grace period.
//! The lease table hands each lease to exactly one ender (an atomic claim),
//! so racing ends act once.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::SystemTime;

use builddir_proto::{ErrorKind, ErrorReply};

use crate::lease::id::LeaseId;
use crate::lease::reaper::Reaping;
use crate::lease::registry::{self, PendingHandOver};
use crate::lease::table::{Counters, Daemon, End};
use crate::lease::trash::{to_kept, to_trash};

/// Who ends a lease, for the audit log.
#[derive(Debug, Clone, Copy)]
pub struct Ender<'a> {
    pub uid: u32,
    pub pid: u32,
    pub why: &'a str,
}

/// Moves live lease `id` to trash; its reap starts when the returned
/// [`Reaping`] is started or dropped (a session starts it once its reply
/// is sent).
pub fn release(daemon: &Arc<Daemon>, id: LeaseId, by: Ender<'_>) -> Result<Reaping, ErrorReply> {
    let claim = daemon.table.claim_live(id, End::Release).map_err(|e| {
        ErrorReply::new(ErrorKind::NotFound, format!("{e}: it was released already"))
    })?;
    crate::systemd::fdstore::forget(&daemon.config, id);
    match to_trash(&daemon.layout, id) {
        Ok(trash_name) => {
            claim.into_reaping(trash_name.clone());
            Counters::bump(&daemon.counters.releases);
            tracing::info!(
                lease_id = %id,
                uid = by.uid,
                pid = by.pid,
                path = %daemon.layout.lease_path(id).display(),
                why = by.why,
                "released"
            );
            Ok(Reaping::new(daemon.clone(), trash_name, id))
        }
        Err(e) => {
            // Dropping the claim puts the lease back, bound to its
            // connection as before.
            drop(claim);
            tracing::error!(lease_id = %id, error = %e, "release failed");
            Err(ErrorReply::new(ErrorKind::Internal, e.to_string()))
        }
    }
}

/// After a restart: releases every live lease that nobody reclaimed within
/// `reclaim_grace_secs` (and any whose stored connection could not be
/// served again).
pub fn spawn_grace_expiry(daemon: Arc<Daemon>) {
    let grace = std::time::Duration::from_secs(daemon.config.reclaim_grace_secs);
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        for id in daemon.table.detached() {
            // The reap starts as the result drops.
            let _ = release(
                &daemon,
                id,
                Ender {
                    uid: 0,
                    pid: 0,
                    why: "reclaim grace period expired",
                },
            );
        }
    });
}

/// A keep that ended with the tree in the kept area.
#[derive(Debug)]
pub struct KeptTree {
    pub path: std::path::PathBuf,
    /// Why the tree is not (entirely) the requester's, if it is not.
    pub not_handed_over: Option<NotHandedOver>,
}

/// Why a hand-over did not make a kept tree the requester's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotHandedOver {
    /// The bounded walk did not reach every entry, or an entry could not be
    /// handed over. The tree is not kept: it is deleted (an entry the walk
    /// never reached — a setuid binary below the depth bound, a subtree
    /// moved behind the walk — would stay as the build made it, inside a
    /// tree the requester trusts).
    #[error("{why}")]
    Incomplete {
        why: String,
        /// The walk saw the tree change (a live writer), rather than
        /// running into a bound.
        changed: bool,
    },
    /// The daemon could not do its part (open the tree, write its record):
    /// the tree stays kept, its build's, and the next start retries.
    #[error("{0}")]
    Failed(String),
}

/// Moves live lease `id` into the kept area and hands its tree to the
/// requester `to_uid:to_gid`. The intent is recorded in the lease's
/// `lease.json` before the tree moves, so a crash at any point is finished
/// at the next start ([`crate::lease::recover`]); the record names the
/// requester as owner only once the hand-over reached every entry.
pub async fn keep(
    daemon: &Arc<Daemon>,
    id: LeaseId,
    by: Ender<'_>,
    to_uid: u32,
    to_gid: u32,
) -> Result<KeptTree, ErrorReply> {
    let mut claim = daemon.table.claim_live(id, End::Keep).map_err(|e| {
        ErrorReply::new(ErrorKind::NotFound, format!("{e}: it was released already"))
    })?;
    let (from_uid, from_gid) = (claim.record().owner_uid, claim.record().owner_gid);
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        tracing::error!(lease_id = %id, error = %e, "keep failed: {what}");
        ErrorReply::new(ErrorKind::Internal, format!("keep failed: {what}: {e}"))
    };
    let layout = &daemon.layout;
    let intent = PendingHandOver {
        from_uid,
        to_uid,
        to_gid,
    };
    let (outer, mut meta) = registry::open_record(layout, layout.leases.as_fd(), id)
        .map_err(|e| internal("read lease.json", &e))?;
    meta.hand_over = Some(intent);
    registry::rewrite(outer.as_fd(), &meta).map_err(|e| internal("record the keep", &e))?;
    if let Err(e) = to_kept(layout, id) {
        meta.hand_over = None;
        let _ = registry::rewrite(outer.as_fd(), &meta);
        return Err(internal("move into the kept area", &e));
    }
    claim.moved_to_kept();
    crate::systemd::fdstore::forget(&daemon.config, id);
    crate::failpoint::hit("keep:after-rename");
    Counters::bump(&daemon.counters.releases);
    let path = layout.kept_path(id);
    tracing::info!(lease_id = %id, uid = by.uid, pid = by.pid, path = %path.display(), why = by.why, "kept");
    let d = daemon.clone();
    // One hand-over at a time per requester (its many keeps queue behind
    // each other, never in front of another user's), and at most
    // `hand_over_concurrency` over all requesters, so many users keeping
    // at once cannot take every blocking thread and fd.
    let done = match daemon.hand_overs.place(to_uid).await {
        Some(place) => tokio::task::spawn_blocking(move || {
            let running = place.start();
            tracing::debug!(lease_id = %id, uid = to_uid, running = running.at_start, "kept tree hand-over started");
            let done = finish_hand_over(&d, id, meta);
            drop((running, place));
            done
        })
        .await
        .unwrap_or_else(|e| {
            Err(NotHandedOver::Failed(format!(
                "the hand-over task failed: {e}"
            )))
        }),
        // Never without a place (the cap would not hold): the tree stays
        // kept, the build's, and the next start hands it over.
        None => Err(NotHandedOver::Failed(
            "no hand-over place could be taken; the next start hands the tree over".into(),
        )),
    };
    let kept_at = SystemTime::now();
    let not_handed_over = match done {
        Ok(bytes) => {
            claim.into_kept((to_uid, to_gid), kept_at, Some(bytes));
            None
        }
        Err(why @ NotHandedOver::Incomplete { .. }) => {
            claim.into_kept((from_uid, from_gid), kept_at, None);
            let removed = crate::lease::retention::remove_kept(
                daemon,
                id,
                "keep: the hand-over did not reach every entry",
            );
            tracing::warn!(lease_id = %id, error = %why, removed, "kept tree not handed over; deleted");
            Some(why)
        }
        Err(why) => {
            // Left to the next start, which retries it before listing it.
            claim.into_kept((from_uid, from_gid), kept_at, None);
            tracing::error!(lease_id = %id, error = %why, "kept tree not handed over");
            Some(why)
        }
    };
    // Sizes already known only: this reply never waits for a walk of
    // anyone else's tree (unsized trees are measured by the periodic task).
    crate::lease::retention::enforce_known(daemon);
    Ok(KeptTree {
        path,
        not_handed_over,
    })
}

/// Hands kept tree `id` over as `meta.hand_over` says and records the new
/// owner; returns the tree's size. Blocking (a bounded walk of the tree).
pub fn finish_hand_over(
    daemon: &Daemon,
    id: LeaseId,
    mut meta: registry::LeaseMeta,
) -> Result<u64, NotHandedOver> {
    let Some(to) = meta.hand_over else {
        return Err(NotHandedOver::Failed("no hand-over recorded".into()));
    };
    let layout = &daemon.layout;
    let limits = crate::lease::hand_over::limits(&daemon.config);
    let done = crate::lease::hand_over::hand_over_kept(
        layout,
        id,
        to.from_uid,
        to.to_uid,
        to.to_gid,
        limits,
    )
    .map_err(|e| NotHandedOver::Failed(format!("cannot open the kept tree: {e}")))?;
    tracing::info!(
        lease_id = %id,
        uid = to.to_uid,
        owner_uid = to.from_uid,
        chowned = done.chowned,
        setid_cleared = done.setid_cleared,
        skipped = done.skipped,
        entries = done.walk.entries,
        stopped = done.walk.stopped.map_or("", |s| s.as_str()),
        errors = done.walk.errors,
        first_error = done.walk.first_error.as_deref().unwrap_or(""),
        bytes = done.walk.bytes,
        "kept tree hand-over walked"
    );
    if let Some(why) = done.refusal() {
        let changed = matches!(
            done.walk.stopped,
            Some(crate::tree::walk::Stopped::Revisit | crate::tree::walk::Stopped::Moved)
        );
        return Err(NotHandedOver::Incomplete { why, changed });
    }
    meta.owner_uid = to.to_uid;
    meta.owner_gid = to.to_gid;
    meta.hand_over = None;
    meta.kept_unix = Some(unix_now());
    let (outer, _) = registry::open_record(layout, layout.kept.as_fd(), id)
        .map_err(|e| NotHandedOver::Failed(format!("cannot reopen the kept tree's record: {e}")))?;
    registry::rewrite(outer.as_fd(), &meta)
        .map_err(|e| NotHandedOver::Failed(format!("cannot record the new owner: {e}")))?;
    Ok(done.walk.bytes)
}

/// Seconds since the epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
