use std::time::{Duration, SystemTime};

use builddir_proto::{LeaseState, Response};

use super::{Reply, Session};

impl Session {
    /// Deletes kept trees older than `older_than_secs` (0: all of them):
    /// the peer's own, or everyone's for operators.
    pub(super) async fn gc(&mut self, older_than_secs: u64) -> Reply {
        // An age beyond the epoch: nothing is that old.
        let Some(cutoff) = SystemTime::now().checked_sub(Duration::from_secs(older_than_secs))
        else {
            return (Response::Collected { ids: Vec::new() }, None);
        };
        let operator = self.is_operator();
        let uid = self.peer.uid;
        let ids = self.daemon.table.ids(|r| {
            r.state() == LeaseState::Kept
                && (operator || r.concerns(uid))
                && r.kept_at.unwrap_or(r.created) <= cutoff
        });
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
