//! Kept trees do not pile up: per owner at most `kept_max_count` trees and
//! `kept_max_bytes` bytes, none older than `kept_max_age_secs`, and
//! optionally at most `kept_total_max_count` / `kept_total_max_bytes` over
//! all owners; the oldest go first. Per owner, so that one user's keeps
//! never evict another user's tree (only the optional totals do). Applied
//! after every keep and once a minute.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use builddir_proto::LeaseState;

use crate::lease::id::LeaseId;
use crate::lease::table::{Daemon, Phase};
use crate::lease::trash::kept_to_trash;
use crate::lease::walks::WalkError;

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
        // On the walk pool, as root's share: waits only for its own
        // earlier walks; with the pool full, measured at the next tick.
        let walked = match daemon
            .walks
            .run(0, Duration::from_secs(60), move || {
                crate::lease::size::tree_walk(&d, id, LeaseState::Kept)
            })
            .await
        {
            Ok(walked) => walked,
            Err(WalkError::NoPlace) => continue,
            Err(WalkError::Failed(e)) => {
                // Unmeasured, so retried at the next tick.
                tracing::error!(lease_id = %id, error = %e, "kept tree size walk failed");
                continue;
            }
        };
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
    let mut kept: Vec<(SystemTime, LeaseId, u64, u32)> = daemon
        .table
        .select(|r| *r.phase() == Phase::Kept)
        .into_iter()
        .map(|r| {
            (
                r.kept_at.unwrap_or(r.created),
                r.id,
                r.size_bytes.unwrap_or(0),
                r.owner_uid,
            )
        })
        .collect();
    kept.sort();
    let now = SystemTime::now();
    let mut per_owner: HashMap<u32, (usize, u64)> = HashMap::new();
    for k in &kept {
        let e = per_owner.entry(k.3).or_default();
        e.0 += 1;
        e.1 += k.2;
    }
    let mut total = (kept.len(), kept.iter().map(|k| k.2).sum::<u64>());
    for (at, id, size, owner) in kept {
        let mine = per_owner.get(&owner).copied().unwrap_or_default();
        let over = |limit: u64, value: u64| limit > 0 && value > limit;
        let too_old = config.kept_max_age_secs > 0
            && now.duration_since(at).unwrap_or_default()
                > Duration::from_secs(config.kept_max_age_secs);
        let why = if too_old {
            "retention: kept_max_age_secs"
        } else if over(config.kept_max_count as u64, mine.0 as u64) {
            "retention: kept_max_count"
        } else if over(config.kept_max_bytes, mine.1) {
            "retention: kept_max_bytes"
        } else if over(config.kept_total_max_count as u64, total.0 as u64) {
            "retention: kept_total_max_count"
        } else if over(config.kept_total_max_bytes, total.1) {
            "retention: kept_total_max_bytes"
        } else {
            // Another owner's older trees may still be over their limits.
            continue;
        };
        if remove_kept(daemon, id, why) {
            if let Some(e) = per_owner.get_mut(&owner) {
                e.0 -= 1;
                e.1 = e.1.saturating_sub(size);
            }
            total.0 -= 1;
            total.1 = total.1.saturating_sub(size);
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
