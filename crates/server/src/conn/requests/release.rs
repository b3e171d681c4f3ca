use builddir_proto::{ErrorKind, LeaseState, Released, Response};

use builddir_proto::ErrorReply;

use super::{error, refusal, Reply, Session};
use crate::lease::end::Ender;
use crate::lease::id::LeaseId;
use crate::lease::table::Counters;
use crate::lease::trash::to_kept;

impl Session {
    pub(super) async fn release(&mut self, id: &str, keep: bool) -> Reply {
        let record = match self.authorized(id) {
            Ok(r) => r,
            Err(e) => return refusal(e),
        };
        if record.state != LeaseState::Live {
            return error(
                ErrorKind::NotFound,
                format!("lease {id} is {} already, not live", record.state),
            );
        }
        // Asked before the tree moves: the answer comes from the live lease.
        let limit_reached = super::limit::reached(&self.daemon, &record);
        let result = self.end_lease(record.id, keep, "release");
        if let Ok(Some(_)) = &result {
            self.hand_over_kept(&record).await;
        }
        match result {
            Ok(kept_path) => (
                Response::Released(Released {
                    id: record.id.to_string(),
                    kept_path,
                    limit_reached,
                }),
                None,
            ),
            Err(e) => refusal(e),
        }
    }

    pub(super) fn remove(&mut self, id: &str) -> Reply {
        if !self.is_operator() {
            return error(
                ErrorKind::PermissionDenied,
                "remove is for operators; use `builddir-ctl release ID` for your own leases",
            );
        }
        let record = match self.authorized(id) {
            Ok(r) => r,
            Err(e) => return refusal(e),
        };
        let result = match record.state {
            LeaseState::Live => self.end_lease(record.id, false, "remove").map(|_| ()),
            LeaseState::Kept => {
                if crate::lease::retention::remove_kept(&self.daemon, record.id, "remove") {
                    Ok(())
                } else {
                    Err(ErrorReply::new(
                        ErrorKind::NotFound,
                        format!("lease {id} is not kept any more"),
                    ))
                }
            }
            state => Err(ErrorReply::new(
                ErrorKind::NotFound,
                format!("lease {id} is {state} already"),
            )),
        };
        match result {
            Ok(()) => (
                Response::Removed {
                    id: record.id.to_string(),
                },
                None,
            ),
            Err(e) => refusal(e),
        }
    }

    /// Ends a live lease: into trash (and reaped), or into the kept area.
    /// Returns the kept path when kept.
    pub(super) fn end_lease(
        &mut self,
        id: LeaseId,
        keep: bool,
        why: &str,
    ) -> Result<Option<String>, ErrorReply> {
        let by = Ender {
            uid: self.peer.uid,
            pid: self.peer.pid,
            why,
        };
        if !keep {
            return crate::lease::end::release(&self.daemon, id, by).map(|()| None);
        }
        if !self.daemon.claim_live(id, LeaseState::Kept) {
            return Err(ErrorReply::new(
                ErrorKind::NotFound,
                format!("lease {id} was released already"),
            ));
        }
        crate::systemd::fdstore::forget(&self.daemon.config, id);
        let layout = &self.daemon.layout;
        if let Err(e) = to_kept(layout, id) {
            self.daemon.unclaim(id);
            tracing::error!(lease_id = %id, error = %e, "keep failed");
            return Err(ErrorReply::new(ErrorKind::Internal, e.to_string()));
        }
        crate::failpoint::hit("keep:after-rename");
        let path = layout.kept_path(id);
        Counters::bump(&self.daemon.counters.releases);
        tracing::info!(lease_id = %id, uid = self.peer.uid, pid = self.peer.pid, path = %path.display(), why, "kept");
        Ok(Some(path.display().to_string()))
    }

    /// Gives a kept tree to the requester (off the async workers: the tree
    /// can be large), records its size, then applies retention.
    async fn hand_over_kept(&self, record: &crate::lease::table::LeaseRecord) {
        let daemon = self.daemon.clone();
        let (id, owner, to_uid, to_gid) =
            (record.id, record.owner_uid, self.peer.uid, self.peer.gid);
        let done = tokio::task::spawn_blocking(move || {
            crate::lease::hand_over::hand_over_kept(&daemon.layout, id, owner, to_uid, to_gid)
        })
        .await;
        let done = match done {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                tracing::error!(lease_id = %id, error = %e, "cannot hand over kept tree");
                return;
            }
            Err(e) => {
                tracing::error!(lease_id = %id, error = %e, "hand-over task failed");
                return;
            }
        };
        if let Some(r) = self.daemon.leases().get_mut(&id) {
            r.kept_at = Some(std::time::SystemTime::now());
            r.size_bytes = Some(done.walk.bytes);
        }
        tracing::info!(
            lease_id = %id,
            uid = to_uid,
            owner_uid = owner,
            chowned = done.chowned,
            setid_cleared = done.setid_cleared,
            skipped = done.skipped,
            too_deep = done.walk.too_deep,
            errors = done.walk.errors,
            first_error = done.walk.first_error.as_deref().unwrap_or(""),
            bytes = done.walk.bytes,
            "kept tree handed over"
        );
        crate::lease::retention::enforce(&self.daemon).await;
    }
}
