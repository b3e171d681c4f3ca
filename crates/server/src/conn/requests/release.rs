use builddir_proto::{ErrorKind, LeaseState, Owner, Released, Response};

use builddir_proto::ErrorReply;

use super::{error, refusal, Reply, Session};
use crate::lease::end::{Ender, NotHandedOver};
use crate::lease::id::LeaseId;
use crate::lease::reaper::Reaping;

/// How a release ends its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// The tree is deleted.
    Delete,
    /// The tree is kept and handed over to the requesting peer.
    KeepForPeer,
    /// The tree is kept and handed over to `Owner` (root or an owner grant).
    KeepFor(Owner),
}

impl Session {
    pub(super) async fn release(&mut self, id: &str, end: End) -> Reply {
        let record = match self.authorized(id) {
            Ok(r) => r,
            Err(e) => return refusal(e),
        };
        let keep_for = match end {
            End::Delete => None,
            End::KeepForPeer => Some(Owner {
                uid: self.peer.uid,
                gid: self.peer.gid,
            }),
            End::KeepFor(owner) => {
                if let Err(e) = self.may_keep_for(owner) {
                    return refusal(e);
                }
                Some(owner)
            }
        };
        if record.state() != LeaseState::Live {
            return error(
                ErrorKind::NotFound,
                format!("lease {id} is {} already, not live", record.state()),
            );
        }
        // Asked before the tree moves: the answer comes from the live lease.
        let limit_reached = super::limit::reached(&self.daemon, &record);
        let result = match keep_for {
            Some(to) => self.keep(record.id, to).await,
            None => self.end_lease(record.id, "release").map(|reaping| {
                // Deleted once the reply is out: the reap never delays it.
                self.after_reply.push(super::Later::Reap(reaping));
                None
            }),
        };
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
        let result = match record.state() {
            LeaseState::Live => self.end_lease(record.id, "remove").map(|reaping| {
                self.after_reply.push(super::Later::Reap(reaping));
            }),
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
            // An operator's retry, without a restart (the builder may have
            // stopped, the mount inside may be gone).
            LeaseState::Quarantined => match self.daemon.table.retry_reap(record.id) {
                Ok(trash) => {
                    tracing::info!(lease_id = %record.id, uid = self.peer.uid, trash, "quarantined tree: reap retried");
                    crate::lease::reaper::spawn(self.daemon.clone(), trash, Some(record.id));
                    Ok(())
                }
                Err(e) => Err(ErrorReply::new(ErrorKind::NotFound, e.to_string())),
            },
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

    fn ender<'a>(&self, why: &'a str) -> Ender<'a> {
        Ender {
            uid: self.peer.uid,
            pid: self.peer.pid,
            why,
        }
    }

    /// Ends a live lease into trash; its reap starts when the returned
    /// [`Reaping`] is started or dropped.
    pub(super) fn end_lease(&mut self, id: LeaseId, why: &str) -> Result<Reaping, ErrorReply> {
        crate::lease::end::release(&self.daemon, id, self.ender(why))
    }

    /// Checks that this peer may hand a kept tree to `owner`: itself, or
    /// anyone it could allocate for (root, an owner grant). Handing a tree
    /// to a uid makes files that uid owns, so it takes the same right as
    /// making a directory that uid owns.
    fn may_keep_for(&self, owner: Owner) -> Result<(), ErrorReply> {
        if self.may_name_owner(owner, "keep-for decision") {
            return Ok(());
        }
        Err(ErrorReply::new(
            ErrorKind::PermissionDenied,
            format!(
                "uid {} may not keep a tree for {}:{}; keep it for yourself or add an owner_grants entry",
                self.peer.uid, owner.uid, owner.gid
            ),
        ))
    }

    /// Keeps a live lease for `to`; returns the kept path. A tree kept
    /// but not handed over is an error that says where it is and why.
    async fn keep(&mut self, id: LeaseId, to: Owner) -> Result<Option<String>, ErrorReply> {
        let daemon = self.daemon.clone();
        let kept =
            crate::lease::end::keep(&daemon, id, self.ender("release"), to.uid, to.gid).await?;
        let path = kept.path.display().to_string();
        match kept.not_handed_over {
            None => Ok(Some(path)),
            Some(NotHandedOver::Incomplete { why, changed }) => {
                let limits = crate::lease::hand_over::limits(&self.daemon.config);
                Err(ErrorReply::new(
                    // A tree that changed under the walk has a live writer;
                    // one too big for the bounds is over a limit.
                    if changed {
                        ErrorKind::Busy
                    } else {
                        ErrorKind::QuotaExceeded
                    },
                    format!(
                        "lease {id} was released but its tree was not kept: {why}; it is being deleted \
                         (a kept tree must be walked whole: at most {} entries, {} levels, {} s)",
                        limits.max_entries,
                        limits.max_depth,
                        limits.max_time.as_secs(),
                    ),
                ))
            }
            Some(why) => Err(ErrorReply::new(
                ErrorKind::Internal,
                format!("the tree is kept at {path} but not handed over to uid {}: {why}; the daemon retries at its next start", to.uid),
            )),
        }
    }
}
