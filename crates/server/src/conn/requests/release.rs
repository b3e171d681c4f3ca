use builddir_proto::{ErrorKind, LeaseState, Released, Response};

use builddir_proto::ErrorReply;

use super::{error, refusal, Reply, Session};
use crate::lease::end::Ender;
use crate::lease::id::LeaseId;
use crate::lease::table::Counters;
use crate::lease::trash::to_kept;
use crate::tree::walk::{Limits, Stopped};

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
        let result = self.end_lease(record.id, keep, "release");
        if let Ok(Some(_)) = &result {
            if let Err(e) = self.hand_over_kept(&record).await {
                return refusal(e);
            }
        }
        match result {
            Ok(kept_path) => (
                Response::Released(Released {
                    id: record.id.to_string(),
                    kept_path,
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
    /// can be large), records its size, then applies retention to the
    /// sizes already known (no walk of anyone else's tree on this reply).
    ///
    /// All or nothing: if the bounded walk did not reach every entry (too
    /// many entries or bytes, too deep, too slow, or the tree changed under
    /// it), the tree is not handed over but deleted, and the reply says why.
    async fn hand_over_kept(
        &self,
        record: &crate::lease::table::LeaseRecord,
    ) -> Result<(), ErrorReply> {
        let daemon = self.daemon.clone();
        let (id, owner, to_uid, to_gid) =
            (record.id, record.owner_uid, self.peer.uid, self.peer.gid);
        let limits = hand_over_limits(&self.daemon.config);
        let done = tokio::task::spawn_blocking(move || {
            crate::lease::hand_over::hand_over_kept(
                &daemon.layout,
                id,
                owner,
                to_uid,
                to_gid,
                limits,
            )
        })
        .await;
        let done = match done {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                tracing::error!(lease_id = %id, error = %e, "cannot hand over kept tree");
                return Err(self.not_kept(
                    id,
                    ErrorKind::Internal,
                    &format!("cannot open it: {e}"),
                ));
            }
            Err(e) => {
                tracing::error!(lease_id = %id, error = %e, "hand-over task failed");
                return Err(self.not_kept(id, ErrorKind::Internal, "the hand-over task failed"));
            }
        };
        tracing::info!(
            lease_id = %id,
            uid = to_uid,
            owner_uid = owner,
            chowned = done.chowned,
            setid_cleared = done.setid_cleared,
            skipped = done.skipped,
            entries = done.walk.entries,
            stopped = done.walk.stopped.map_or("", |s| s.as_str()),
            errors = done.walk.errors,
            first_error = done.walk.first_error.as_deref().unwrap_or(""),
            bytes = done.walk.bytes,
            "kept tree hand-over walked"
        );
        if let Some(why) = done.refusal() {
            // A tree that changed under the walk has a live writer; one that
            // is too big for the bounds is over a limit.
            let kind = match done.walk.stopped {
                Some(Stopped::Revisit | Stopped::Moved) => ErrorKind::Busy,
                Some(_) => ErrorKind::QuotaExceeded,
                None => ErrorKind::Internal,
            };
            return Err(self.not_kept(id, kind, &why));
        }
        if let Some(r) = self.daemon.leases().get_mut(&id) {
            r.kept_at = Some(std::time::SystemTime::now());
            r.size_bytes = Some(done.walk.bytes);
        }
        crate::lease::retention::enforce_known(&self.daemon);
        Ok(())
    }

    /// The tree of `id` could not be handed over: it goes to trash (and is
    /// reaped) and the reply says why.
    fn not_kept(&self, id: LeaseId, kind: ErrorKind, why: &str) -> ErrorReply {
        let removed = crate::lease::retention::remove_kept(
            &self.daemon,
            id,
            "keep: the tree could not be handed over",
        );
        tracing::warn!(lease_id = %id, uid = self.peer.uid, why, removed, "kept tree not handed over");
        let limits = hand_over_limits(&self.daemon.config);
        ErrorReply::new(
            kind,
            format!(
                "lease {id} was released but its tree was not kept: {why}; it is being deleted \
                 (a kept tree must be walked whole: at most {} entries, {} levels, {} s)",
                limits.max_entries,
                limits.max_depth,
                limits.max_time.as_secs(),
            ),
        )
    }
}

/// Bounds on one hand-over walk: the defaults, and no more bytes than the
/// kept area may hold in total (such a tree would be evicted at once).
fn hand_over_limits(config: &crate::host::config::Config) -> Limits {
    Limits {
        max_bytes: match config.kept_max_bytes {
            0 => u64::MAX,
            n => n,
        },
        ..Limits::default()
    }
}
