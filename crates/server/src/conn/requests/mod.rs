//! Request handlers, one file per request. A [`Session`] is the server side
//! of one connection after the handshake.

mod allocate;
mod gc;
mod limit;
mod list;
mod reclaim;
mod release;
mod status;

/// Where it lived before it moved to the lease module.
pub use crate::lease::size::{tree_size, tree_walk};
pub use status::status_report;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use builddir_proto::{ErrorKind, ErrorReply, Request, Response};

use crate::conn::peer::Peer;
use crate::lease::id::LeaseId;
use crate::lease::reaper::Reaping;
use crate::lease::table::{Daemon, LeaseRecord};
use release::End;

/// The state of one connection. Dropping it (the peer left, an early
/// return, a panic in a request) releases every live lease it holds —
/// except when the daemon is stopping, so a restart keeps running builds.
#[derive(Debug)]
pub struct Session {
    pub daemon: Arc<Daemon>,
    pub peer: Peer,
    pub conn_id: u64,
    /// What the request in hand left for after its reply
    /// ([`Session::after_reply`]; whatever is left when the session drops
    /// happens then).
    after_reply: Vec<Later>,
}

/// Work a request leaves for after its reply, which does not wait for it.
#[derive(Debug)]
enum Later {
    /// The reap of a tree it released (started if dropped).
    Reap(Reaping),
    /// A descriptor it is done with (closed if dropped).
    Close(OwnedFd),
    /// Spare record files for the next allocations.
    MakeSpares,
}

/// A handler's result: a response, and the fd that rides with it.
pub type Reply = (Response, Option<OwnedFd>);

fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
    (Response::Error(ErrorReply::new(kind, message)), None)
}

fn refusal(e: ErrorReply) -> Reply {
    (Response::Error(e), None)
}

impl Session {
    pub fn new(daemon: Arc<Daemon>, peer: Peer, conn_id: u64) -> Session {
        Session {
            daemon,
            peer,
            conn_id,
            after_reply: Vec::new(),
        }
    }

    /// Answers one request. Never panics on any input; every refusal is a
    /// typed error and a log line.
    pub async fn handle(&mut self, request: Request) -> Reply {
        // A refused reclaim logs itself, once per window per uid.
        let logs_itself = matches!(request, Request::Reclaim { .. });
        let reply = match request {
            // Boxed: an idle connection's task then holds a pointer, not
            // the largest request's state (10 000 connections × its size).
            Request::Allocate { name, owner, limit } => {
                Box::pin(self.allocate(name, owner, limit)).await
            }
            Request::Release { id, keep } => {
                let end = if keep { End::KeepForPeer } else { End::Delete };
                Box::pin(self.release(&id, end)).await
            }
            Request::KeepFor { id, owner } => {
                Box::pin(self.release(&id, End::KeepFor(owner))).await
            }
            Request::List { all, size } => Box::pin(self.list(all, size)).await,
            Request::Status => self.status(),
            Request::Remove { id } => self.remove(&id),
            Request::Gc { older_than_secs } => Box::pin(self.gc(older_than_secs)).await,
            Request::Reclaim { id, secret } => self.reclaim(&id, &secret),
            Request::Metrics => (
                Response::Metrics {
                    text: crate::metrics::render(&self.daemon),
                },
                None,
            ),
        };
        if let (Response::Error(e), _) = &reply {
            self.daemon.counters.refused(e.kind);
            if !logs_itself {
                tracing::info!(uid = self.peer.uid, pid = self.peer.pid, kind = %e.kind, message = e.message.as_str(), "request refused");
            }
        }
        reply
    }

    /// The work the request left for after its reply: closing what it is
    /// done with, reaping the trees it released, spare record files.
    pub fn after_reply(&mut self) {
        for later in self.after_reply.drain(..) {
            match later {
                Later::Reap(reaping) => reaping.start(),
                Later::Close(fd) => drop(fd),
                Later::MakeSpares => self.daemon.spares.refill(self.daemon.layout.trash.as_fd()),
            }
        }
    }

    /// Returns true if and only if the peer is root or in `operator_group`.
    pub fn is_operator(&self) -> bool {
        self.daemon.policy.is_operator(&self.peer)
    }

    /// Returns true if and only if this peer may make files that `owner`
    /// owns: its own ids, or root, or an owner grant. A decision about
    /// another owner is logged as `what`.
    fn may_name_owner(&self, owner: builddir_proto::Owner, what: &str) -> bool {
        let peer = &self.peer;
        if owner.uid == peer.uid && owner.gid == peer.gid {
            return true;
        }
        let granted = self.daemon.policy.may_assign(peer, owner.uid, owner.gid);
        tracing::info!(
            uid = peer.uid,
            pid = peer.pid,
            owner_uid = owner.uid,
            owner_gid = owner.gid,
            granted,
            "{what}"
        );
        granted
    }

    /// Looks up `id` and checks that this peer may act on it.
    fn authorized(&self, id: &str) -> Result<LeaseRecord, ErrorReply> {
        let not_found = || {
            ErrorReply::new(
                ErrorKind::NotFound,
                format!("no lease {id:?}; `builddir-ctl list` shows your leases"),
            )
        };
        let id = LeaseId::parse(id).ok_or_else(not_found)?;
        let record = self.daemon.table.get(id).ok_or_else(not_found)?;
        if self.is_operator() || record.concerns(self.peer.uid) {
            Ok(record)
        } else {
            // Same answer as a missing id: do not confirm that it exists.
            Err(not_found())
        }
    }

    /// Releases every live lease this connection holds.
    fn release_held(&mut self, why: &str) {
        for id in self.daemon.table.held_by(self.conn_id) {
            // end_lease logs its own failure; nobody is left to answer.
            // The reap starts as the result drops.
            let _ = self.end_lease(id, why);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.daemon.is_stopping() {
            // A restart: the leases outlive this daemon (fd store, reclaim).
            return;
        }
        let why = if std::thread::panicking() {
            "its connection's request panicked"
        } else {
            "disconnect"
        };
        self.release_held(why);
    }
}
