use builddir_proto::{ErrorKind, Response};

use super::{error, Reply, Session};
use crate::lease::id::LeaseId;
use crate::lease::registry::secrets_match;

impl Session {
    /// Attaches a lease that lost its connection (daemon restart) to this
    /// connection, if the secret matches and the peer is the lease's
    /// requester (or root). Every failure looks the same: a wrong secret
    /// does not confirm that the id exists. Failures are rate limited per
    /// uid and logged once per window (the caller does not log them).
    pub(super) fn reclaim(&mut self, id: &str, secret: &str) -> Reply {
        let uid = self.peer.uid;
        let now = std::time::Instant::now();
        let failures = &self.daemon.reclaim_failures;
        if !failures.allowed(uid, now) {
            return error(
                ErrorKind::Busy,
                format!(
                    "too many failed reclaims from uid {uid}; wait {} s",
                    failures.window().as_secs()
                ),
            );
        }
        let refused = || {
            if let Some(previous) = failures.failed(uid, now) {
                tracing::warn!(
                    uid,
                    pid = self.peer.pid,
                    id = id,
                    failures_in_previous_window = previous,
                    "reclaim refused (logged once per minute per uid)"
                );
            }
            error(
                ErrorKind::NotFound,
                format!("no lease {id:?} waiting to be reclaimed; it was released or its grace period ended"),
            )
        };
        let Some(lease) = LeaseId::parse(id) else {
            return refused();
        };
        let attached = self.daemon.table.attach(lease, self.conn_id, |r| {
            (uid == 0 || r.peer.uid == uid)
                && !r.secret.is_empty()
                && secrets_match(&r.secret, secret)
        });
        if !attached {
            return refused();
        }
        let id = lease;
        tracing::info!(lease_id = %id, uid = self.peer.uid, pid = self.peer.pid, "reclaimed");
        (Response::Reclaimed { id: id.to_string() }, None)
    }
}
