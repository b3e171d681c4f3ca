use std::os::fd::{AsFd, OwnedFd};

use builddir_proto::{ErrorKind, LeaseEntry, LeaseState, Response};
use rustix::fs::{openat, Mode};

use super::{error, Reply, Session};
use crate::host::layout::{id_name, BUILD, DIR_OPEN};
use crate::lease::id::LeaseId;
use crate::lease::table::Daemon;
use crate::tree::walk::{walk, JustSize, WalkReport};

impl Session {
    pub(super) async fn list(&mut self, all: bool, size: bool) -> Reply {
        if all && !self.is_operator() {
            return error(
                ErrorKind::PermissionDenied,
                "only operators (root or operator_group) may list all leases; drop --all to see your own",
            );
        }
        let uid = self.peer.uid;
        let mut rows: Vec<LeaseEntry> = {
            let leases = self.daemon.leases();
            leases
                .values()
                .filter(|r| all || r.peer.uid == uid || r.owner_uid == uid)
                .map(|r| self.daemon.entry_of(r))
                .collect()
        };
        rows.sort_by(|a, b| {
            a.created_unix
                .cmp(&b.created_unix)
                .then_with(|| a.id.cmp(&b.id))
        });
        if size {
            // Walking trees is I/O: on the blocking pool, never on a worker.
            let daemon = self.daemon.clone();
            rows = tokio::task::spawn_blocking(move || {
                for row in &mut rows {
                    if let Some(id) = LeaseId::parse(&row.id) {
                        row.size_bytes = lease_size(&daemon, id, row.state);
                    }
                }
                rows
            })
            .await
            .unwrap_or_default();
        }
        (Response::Leases(rows), None)
    }
}

/// Bytes a live or kept lease uses: its project's usage as the kernel
/// counts it (`project-quota` leases: what the limit is checked against,
/// and O(1)), else by walking the tree.
fn lease_size(daemon: &Daemon, id: LeaseId, state: LeaseState) -> Option<u64> {
    let project = daemon.leases().get(&id).and_then(|r| r.project_id);
    if let (Some(project), LeaseState::Live | LeaseState::Kept) = (project, state) {
        if let Some(u) = crate::backend::project::usage(daemon.layout.root.fd.as_fd(), project) {
            return Some(u.bytes);
        }
    }
    tree_size(daemon, id, state)
}

/// Bytes in a live or kept tree (by a bounded fd walk); `None` for other
/// states, and when the walk stopped before reaching every entry (its
/// count would be a lower bound, not a size).
pub fn tree_size(daemon: &Daemon, id: LeaseId, state: LeaseState) -> Option<u64> {
    let report = tree_walk(daemon, id, state)?;
    if let Some(stopped) = report.stopped {
        tracing::info!(lease_id = %id, stopped = stopped.as_str(), entries = report.entries, "size walk stopped early; size unknown");
    }
    report.size()
}

/// The bounded size walk of a live or kept tree.
pub fn tree_walk(daemon: &Daemon, id: LeaseId, state: LeaseState) -> Option<WalkReport> {
    let area = match state {
        LeaseState::Live => &daemon.layout.leases,
        LeaseState::Kept => &daemon.layout.kept,
        _ => return None,
    };
    let outer: OwnedFd = openat(area, id_name(id).as_c_str(), DIR_OPEN, Mode::empty()).ok()?;
    let build = openat(&outer, BUILD, DIR_OPEN, Mode::empty()).ok()?;
    Some(walk(build, &mut JustSize))
}
