use builddir_proto::{ErrorKind, LeaseEntry, Response};

use super::{error, Reply, Session};

impl Session {
    pub(super) async fn list(&mut self, all: bool, _size: bool) -> Reply {
        if all && !self.peer.is_operator() {
            return error(
                ErrorKind::PermissionDenied,
                "only operators (root) may list all leases; drop --all to see your own",
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
        (Response::Leases(rows), None)
    }
}
