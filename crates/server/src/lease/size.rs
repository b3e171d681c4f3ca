//! How much a lease's tree holds: what the backend knows without a walk
//! (a project's usage), else a bounded walk of the tree.

use std::os::fd::OwnedFd;

use builddir_proto::LeaseState;
use rustix::fs::{openat, Mode};

use crate::host::layout::{id_name, BUILD, DIR_OPEN};
use crate::lease::id::LeaseId;
use crate::lease::table::Daemon;
use crate::tree::walk::{walk_within, JustSize, Limits, WalkReport};

/// Bytes a live or kept lease uses. Blocking (it may walk the tree).
pub fn lease_size(daemon: &Daemon, id: LeaseId, state: LeaseState) -> Option<u64> {
    lease_size_within(daemon, id, state, Limits::default())
}

/// [`lease_size`] with the walk's bounds given.
pub fn lease_size_within(
    daemon: &Daemon,
    id: LeaseId,
    state: LeaseState,
    limits: Limits,
) -> Option<u64> {
    if matches!(state, LeaseState::Live | LeaseState::Kept) {
        let project = daemon.table.get(id).and_then(|r| r.project_id);
        if let Some(bytes) = daemon.backend.usage(project) {
            return Some(bytes);
        }
    }
    let report = tree_walk_within(daemon, id, state, limits)?;
    walked_size(id, &report)
}

/// Bytes in a live or kept tree (by a bounded fd walk); `None` for other
/// states, and when the walk stopped before reaching every entry (its
/// count would be a lower bound, not a size).
pub fn tree_size(daemon: &Daemon, id: LeaseId, state: LeaseState) -> Option<u64> {
    let report = tree_walk(daemon, id, state)?;
    walked_size(id, &report)
}

/// The size a walk of `id`'s tree found; a walk that stopped early found
/// none (only a lower bound), and that is logged, since the operator then
/// sees a lease without a size.
fn walked_size(id: LeaseId, report: &WalkReport) -> Option<u64> {
    if let Some(stopped) = report.stopped {
        tracing::info!(
            lease_id = %id,
            stopped = stopped.as_str(),
            entries = report.entries,
            "size walk stopped early; size unknown"
        );
    }
    report.size()
}

/// The bounded size walk of a live or kept tree.
pub fn tree_walk(daemon: &Daemon, id: LeaseId, state: LeaseState) -> Option<WalkReport> {
    tree_walk_within(daemon, id, state, Limits::default())
}

/// [`tree_walk`] with the walk's bounds given.
pub fn tree_walk_within(
    daemon: &Daemon,
    id: LeaseId,
    state: LeaseState,
    limits: Limits,
) -> Option<WalkReport> {
    let area = match state {
        LeaseState::Live => &daemon.layout.leases,
        LeaseState::Kept => &daemon.layout.kept,
        _ => return None,
    };
    let outer: OwnedFd = openat(area, id_name(id).as_c_str(), DIR_OPEN, Mode::empty()).ok()?;
    let build = openat(&outer, BUILD, DIR_OPEN, Mode::empty()).ok()?;
    Some(walk_within(build, &mut JustSize, limits))
}
