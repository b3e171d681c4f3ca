use builddir_proto::{ErrorKind, Response};

use super::{error, Reply, Session};
use crate::lease::id::LeaseId;
use crate::lease::registry::secrets_match;

impl Session {
    /// Attaches a lease that lost its connection (daemon restart) to this
    /// connection, if the secret matches. Every failure looks the same: a
    /// wrong secret does not confirm that the id exists.
    pub(super) fn reclaim(&mut self, id: &str, secret: &str) -> Reply {
        let refused = || {
            error(
                ErrorKind::NotFound,
                format!("no lease {id:?} waiting to be reclaimed; it was released or its grace period ended"),
            )
        };
        let Some(id) = LeaseId::parse(id) else {
            return refused();
        };
        let attached = self.daemon.table.attach(id, self.conn_id, |r| {
            !r.secret.is_empty() && secrets_match(&r.secret, secret)
        });
        if !attached {
            return refused();
        }
        tracing::info!(lease_id = %id, uid = self.peer.uid, pid = self.peer.pid, "reclaimed");
        (Response::Reclaimed { id: id.to_string() }, None)
    }
}
