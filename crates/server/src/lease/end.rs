//! Ending a live lease, from wherever the end comes: a release, a
//! disconnect, an operator's remove, or an expired reclaim grace period.
//! The lease table hands each lease to exactly one ender (an atomic claim),
//! so racing ends act once.

use std::sync::Arc;

use builddir_proto::{ErrorKind, ErrorReply, LeaseState};

use crate::lease::id::LeaseId;
use crate::lease::table::{Counters, Daemon};
use crate::lease::trash::to_trash;

/// Who ends a lease, for the audit log.
#[derive(Debug, Clone, Copy)]
pub struct Ender<'a> {
    pub uid: u32,
    pub pid: u32,
    pub why: &'a str,
}

/// Moves live lease `id` to trash and starts its reap.
pub fn release(daemon: &Arc<Daemon>, id: LeaseId, by: Ender<'_>) -> Result<(), ErrorReply> {
    if !daemon.claim_live(id, LeaseState::Reaping) {
        return Err(ErrorReply::new(
            ErrorKind::NotFound,
            format!("lease {id} was released already"),
        ));
    }
    crate::systemd::fdstore::forget(&daemon.config, id);
    match to_trash(&daemon.layout, id) {
        Ok(trash_name) => {
            Counters::bump(&daemon.counters.releases);
            start_reap(daemon, id, trash_name, by);
            Ok(())
        }
        Err(e) => {
            daemon.unclaim(id);
            tracing::error!(lease_id = %id, error = %e, "release failed");
            Err(ErrorReply::new(ErrorKind::Internal, e.to_string()))
        }
    }
}

/// Marks `id` reaping in `trash/<trash_name>` and deletes it in the background.
pub fn start_reap(daemon: &Arc<Daemon>, id: LeaseId, trash_name: String, by: Ender<'_>) {
    if let Some(r) = daemon.leases().get_mut(&id) {
        r.state = LeaseState::Reaping;
        r.conn = 0;
        r.trash_name = Some(trash_name.clone());
    }
    tracing::info!(
        lease_id = %id,
        uid = by.uid,
        pid = by.pid,
        path = %daemon.layout.lease_path(id).display(),
        why = by.why,
        "released"
    );
    crate::lease::reaper::spawn(daemon.clone(), trash_name, Some(id));
}

/// After a restart: releases every live lease that nobody reclaimed within
/// `reclaim_grace_secs`.
pub fn spawn_grace_expiry(daemon: Arc<Daemon>) {
    let grace = std::time::Duration::from_secs(daemon.config.reclaim_grace_secs);
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        let detached: Vec<LeaseId> = daemon
            .leases()
            .values()
            .filter(|r| r.state == LeaseState::Live && r.conn == 0)
            .map(|r| r.id)
            .collect();
        for id in detached {
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
