use builddir_proto::{ErrorKind, LeaseEntry, Response};

use super::{error, Reply, Session};
use crate::lease::id::LeaseId;

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
            // Walking trees is I/O: on the blocking pool, never on a worker.
            let daemon = self.daemon.clone();
            let sized = tokio::task::spawn_blocking(move || {
                for row in &mut rows {
                    crate::failpoint::hit("list:size-walk");
                    if let Some(id) = LeaseId::parse(&row.id) {
                        row.size_bytes = crate::lease::size::lease_size(&daemon, id, row.state);
                    }
                }
                rows
            })
            .await;
            rows = match sized {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(error = %e, "list --size walk failed");
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
