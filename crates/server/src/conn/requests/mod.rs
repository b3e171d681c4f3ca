//! Request handlers, one file per request. A [`Session`] is the server side
//! of one connection after the handshake.

mod allocate;
mod gc;
mod limit;
mod list;
mod reclaim;
mod release;
mod status;

pub use list::tree_size;
pub use status::status_report;

use std::os::fd::OwnedFd;
use std::sync::Arc;

use builddir_proto::{ErrorKind, ErrorReply, LeaseState, Request, Response};

use crate::conn::peer::Peer;
use crate::lease::id::LeaseId;
use crate::lease::table::{Daemon, LeaseRecord};

/// The state of one connection.
#[derive(Debug)]
pub struct Session {
    pub daemon: Arc<Daemon>,
    pub peer: Peer,
    pub conn_id: u64,
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
        }
    }

    /// Answers one request. Never panics on any input; every refusal is a
    /// typed error and a log line.
    pub async fn handle(&mut self, request: Request) -> Reply {
        let reply = match request {
            Request::Allocate { name, owner, limit } => self.allocate(name, owner, limit),
            Request::Release { id, keep } => self.release(&id, keep).await,
            Request::List { all, size } => self.list(all, size).await,
            Request::Status => self.status(),
            Request::Remove { id } => self.remove(&id),
            Request::Gc { older_than_secs } => self.gc(older_than_secs).await,
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
            tracing::info!(uid = self.peer.uid, pid = self.peer.pid, kind = %e.kind, message = %e.message, "request refused");
        }
        reply
    }

    /// Returns true if and only if the peer is root or in `operator_group`.
    pub fn is_operator(&self) -> bool {
        self.daemon.policy.is_operator(&self.peer)
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
        let record = self
            .daemon
            .leases()
            .get(&id)
            .cloned()
            .ok_or_else(not_found)?;
        if self.is_operator()
            || record.peer.uid == self.peer.uid
            || record.owner_uid == self.peer.uid
        {
            Ok(record)
        } else {
            // Same answer as a missing id: do not confirm that it exists.
            Err(not_found())
        }
    }

    /// Releases every live lease this connection holds (on disconnect).
    pub fn release_held(&mut self, why: &str) {
        let held: Vec<LeaseId> = self
            .daemon
            .leases()
            .values()
            .filter(|r| r.conn == self.conn_id && r.state == LeaseState::Live)
            .map(|r| r.id)
            .collect();
        for id in held {
            // end_lease logs its own failure; nobody is left to answer.
            let _ = self.end_lease(id, false, why);
        }
    }
}
