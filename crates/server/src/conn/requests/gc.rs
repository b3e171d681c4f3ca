use std::time::{Duration, SystemTime};

use builddir_proto::{LeaseState, Response};

use super::{Reply, Session};

impl Session {
    /// Deletes kept trees older than `older_than_secs` (0: all of them):
    /// the peer's own, or everyone's for operators.
    pub(super) async fn gc(&mut self, older_than_secs: u64) -> Reply {
        let cutoff = SystemTime::now() - Duration::from_secs(older_than_secs);
        let operator = self.is_operator();
        let uid = self.peer.uid;
        let ids: Vec<_> = self
            .daemon
            .leases()
            .values()
            .filter(|r| r.state == LeaseState::Kept)
            .filter(|r| operator || r.peer.uid == uid || r.owner_uid == uid)
            .filter(|r| r.kept_at.unwrap_or(r.created) <= cutoff)
            .map(|r| r.id)
            .collect();
        let mut done = Vec::new();
        for id in ids {
            if crate::lease::retention::remove_kept(&self.daemon, id, "gc") {
                done.push(id.to_string());
            }
        }
        tracing::info!(
            uid,
            pid = self.peer.pid,
            removed = done.len(),
            older_than_secs,
            "gc"
        );
        (Response::Collected { ids: done }, None)
    }
}
