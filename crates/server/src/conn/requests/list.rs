use std::time::{Duration, Instant};

use builddir_proto::{ErrorKind, LeaseEntry, Response};

use super::{error, Reply, Session};
use crate::lease::id::LeaseId;
use crate::lease::walks::WalkError;
use crate::tree::walk::Limits;

/// All size walks of one `list --size`, together.
const LIST_SIZE_BUDGET: Duration = Duration::from_secs(30);
/// How long a `list --size` waits for the same uid's earlier size walks.
const LIST_SIZE_PATIENCE: Duration = Duration::from_secs(5);

impl Session {
    pub(super) async fn list(&mut self, all: bool, size: bool) -> Reply {
        if all && !self.is_operator() {
            return error(
                ErrorKind::PermissionDenied,
                "only operators (root or operator_group) may list all leases; drop --all to see your own",
            );
        }
        let uid = self.peer.uid;
        let mut rows: Vec<LeaseEntry> = self
            .daemon
            .table
            .select(|r| all || r.concerns(uid))
            .iter()
            .map(|r| self.daemon.entry_of(r))
            .collect();
        rows.sort_by(|a, b| {
            a.created_unix
                .cmp(&b.created_unix)
                .then_with(|| a.id.cmp(&b.id))
        });
        if size {
            // Walking trees is I/O: on the walk pool (bounded, a share per
            // uid), never on a worker. No place free: listed without sizes,
            // at once, rather than waiting for other users' walks.
            let daemon = self.daemon.clone();
            let end = Instant::now() + LIST_SIZE_BUDGET;
            let unsized_rows = rows.clone();
            let sized = self
                .daemon
                .walks
                .run(uid, LIST_SIZE_PATIENCE, move || {
                    for row in &mut rows {
                        crate::failpoint::hit("list:size-walk");
                        let left = end.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break; // the rest stay unknown
                        }
                        if let Some(id) = LeaseId::parse(&row.id) {
                            let limits = Limits {
                                max_time: left.min(Limits::default().max_time),
                                ..Limits::default()
                            };
                            row.size_bytes = crate::lease::size::lease_size_within(
                                &daemon, id, row.state, limits,
                            );
                        }
                    }
                    rows
                })
                .await;
            rows = match sized {
                Ok(rows) => rows,
                Err(WalkError::NoPlace) => {
                    tracing::info!(uid, "size walks busy; listed without sizes");
                    unsized_rows
                }
                Err(WalkError::Failed(e)) => {
                    tracing::error!(uid, error = %e, "list --size walk failed");
                    return error(
                        ErrorKind::Internal,
                        format!("measuring sizes failed ({e}); retry without --size"),
                    );
                }
            };
        }
        (Response::Leases(rows), None)
    }
}
