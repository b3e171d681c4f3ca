//! Kept trees do not pile up: at most `kept_max_count` trees, at most
//! `kept_max_bytes` in total, none older than `kept_max_age_secs`; the
//! oldest go first. Applied after every keep and once a minute.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use builddir_proto::LeaseState;

use crate::lease::id::LeaseId;
use crate::lease::table::{Daemon, Phase};
use crate::lease::trash::kept_to_trash;

/// Moves kept tree `id` to trash and starts its reap. Returns true if and
/// only if this call did it (it was kept).
pub fn remove_kept(daemon: &Arc<Daemon>, id: LeaseId, why: &str) -> bool {
    let Ok(claim) = daemon.table.claim_kept(id) else {
        return false;
    };
    match kept_to_trash(&daemon.layout, id) {
        Ok(trash_name) => {
            claim.into_reaping(trash_name.clone());
            tracing::info!(lease_id = %id, why, "kept tree removed");
            crate::lease::reaper::spawn(daemon.clone(), trash_name, Some(id));
            true
        }
        Err(e) => {
            drop(claim); // kept again
            tracing::error!(lease_id = %id, error = %e, "cannot remove kept tree");
            false
        }
    }
}

/// Measures kept trees whose size is unknown (recovered at start), then
/// deletes the oldest until every retention limit holds.
///
/// Each measurement is a bounded walk; a tree whose walk stops early has no
/// size (what was counted is only a lower bound, and a tree that changes
/// under a walk has a live writer it should not have), so it is deleted
/// with the reason logged rather than counted as small.
pub async fn enforce(daemon: &Arc<Daemon>) {
    let unsized_ids = daemon
        .table
        .ids(|r| *r.phase() == Phase::Kept && r.size_bytes.is_none());
    for id in unsized_ids {
        let d = daemon.clone();
        let walked = tokio::task::spawn_blocking(move || {
            crate::lease::size::tree_walk(&d, id, LeaseState::Kept)
        })
        .await
        .ok()
        .flatten();
        match walked {
            Some(report) if report.complete() => daemon.table.measured(id, report.bytes),
            Some(report) => {
                let why = report.stopped.map_or("", |s| s.as_str());
                tracing::warn!(lease_id = %id, stopped = why, entries = report.entries, "kept tree size walk stopped early");
                remove_kept(daemon, id, "retention: size walk stopped early");
            }
            // Gone or unreadable: nothing to count.
            None => daemon.table.measured(id, 0),
        }
    }
    enforce_known(daemon);
}

/// Deletes the oldest kept trees until every retention limit holds, with
/// the sizes already known (no walk: fast enough for a reply to wait on).
pub fn enforce_known(daemon: &Arc<Daemon>) {
    let config = &daemon.config;
    let mut kept: Vec<(SystemTime, LeaseId, u64)> = daemon
        .table
        .select(|r| *r.phase() == Phase::Kept)
        .into_iter()
        .map(|r| {
            (
                r.kept_at.unwrap_or(r.created),
                r.id,
                r.size_bytes.unwrap_or(0),
            )
        })
        .collect();
    kept.sort();
    let now = SystemTime::now();
    let mut count = kept.len();
    let mut bytes: u64 = kept.iter().map(|k| k.2).sum();
    for (at, id, size) in kept {
        let too_old = config.kept_max_age_secs > 0
            && now.duration_since(at).unwrap_or_default()
                > Duration::from_secs(config.kept_max_age_secs);
        let too_many = config.kept_max_count > 0 && count > config.kept_max_count;
        let too_big = config.kept_max_bytes > 0 && bytes > config.kept_max_bytes;
        let why = match (too_old, too_many, too_big) {
            (true, _, _) => "retention: kept_max_age_secs",
            (_, true, _) => "retention: kept_max_count",
            (_, _, true) => "retention: kept_max_bytes",
            _ => break,
        };
        if remove_kept(daemon, id, why) {
            count -= 1;
            bytes = bytes.saturating_sub(size);
        }
    }
}

/// Applies retention once a minute.
pub fn spawn_periodic(daemon: Arc<Daemon>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            enforce(&daemon).await;
        }
    });
}
