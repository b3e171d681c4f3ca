//! One client connection: handshake, then request → response until the
//! peer goes away, then release whatever leases it still holds.

use std::os::fd::AsFd;
use std::sync::Arc;

use builddir_proto::{
    negotiate, Connection, ErrorKind, ErrorReply, FdPolicy, Hello, HelloReply, Request, Response,
    MAGIC, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
};
use tokio::net::UnixStream;

use crate::conn::peer::Peer;
use crate::conn::requests::Session;
use crate::lease::id::LeaseId;
use crate::lease::table::{Counters, Daemon};

/// Features advertised in the handshake.
pub const FEATURES: &[&str] = &[
    "allocate", "release", "keep", "keep-for", "list", "status", "remove",
];

/// Serves one accepted connection to the end.
pub async fn serve(daemon: Arc<Daemon>, stream: UnixStream, conn_id: u64) {
    let peer = match crate::conn::peer::of(&stream, daemon.policy.uses_groups()) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read SO_PEERCRED; closing");
            return;
        }
    };
    let mut conn = Connection::new(stream, FdPolicy::Refuse);
    let slot_owner = daemon.clone();
    let _slot = match slot_owner.enter_connection(peer.uid) {
        Ok(slot) => slot,
        Err(message) => {
            daemon.counters.refused(ErrorKind::Busy);
            tracing::warn!(uid = peer.uid, pid = peer.pid, reason = ?message, "connection refused");
            refuse(&mut conn, ErrorKind::Busy, message).await;
            return;
        }
    };
    Counters::bump(&daemon.counters.connections);
    if !handshake(&daemon, &mut conn, &peer).await {
        return;
    }
    requests(Session::new(daemon, peer, conn_id), conn).await;
}

/// Serves a connection handed back by systemd's fd store after a restart:
/// its handshake happened with the previous daemon, so requests follow.
/// Its leases (`ids`) are bound to it only once it is served: if it cannot
/// be, they stay detached, reclaimable, and end with the grace period.
pub async fn resume(daemon: Arc<Daemon>, stream: UnixStream, conn_id: u64, ids: Vec<LeaseId>) {
    let peer = match crate::conn::peer::of(&stream, daemon.policy.uses_groups()) {
        Ok(peer) => peer,
        Err(e) => {
            tracing::warn!(error = %e, leases = ids.len(), "cannot serve a stored connection; its leases wait to be reclaimed");
            return;
        }
    };
    let slot_owner = daemon.clone();
    let _slot = match slot_owner.enter_connection(peer.uid) {
        Ok(slot) => slot,
        Err(reason) => {
            tracing::warn!(uid = peer.uid, pid = peer.pid, %reason, leases = ids.len(), "cannot serve a stored connection; its leases wait to be reclaimed");
            return;
        }
    };
    let session = Session::new(daemon.clone(), peer, conn_id);
    daemon.table.attach_resumed(&ids, conn_id);
    tracing::info!(
        uid = session.peer.uid,
        pid = session.peer.pid,
        "connection resumed from the fd store"
    );
    let conn = Connection::new(stream, FdPolicy::Refuse);
    requests(session, conn).await;
}

/// Request → response until the peer leaves; then its leases end (when
/// the session drops, whatever ended the loop, a panic included).
async fn requests(mut session: Session, mut conn: Connection) {
    loop {
        let request = match conn.read::<Request>().await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) if e.is_disconnect() => break,
            Err(e) => {
                tracing::warn!(uid = session.peer.uid, pid = session.peer.pid, error = %e, "protocol violation; closing");
                let reply = Response::Error(ErrorReply::new(ErrorKind::BadRequest, e.to_string()));
                let _ = conn.write(&reply, None).await;
                break;
            }
        };
        let (response, fd) = session.handle(request).await;
        if let Err(e) = conn.write(&response, fd.as_ref().map(|f| f.as_fd())).await {
            if !e.is_disconnect() {
                tracing::debug!(error = %e, "cannot send response");
            }
            break;
        }
        // A lease's connection goes to systemd's fd store, so that a daemon
        // restart does not close it.
        let stored = match &response {
            Response::Allocated(a) => Some(&a.id),
            Response::Reclaimed { id } => Some(id),
            _ => None,
        };
        if let Some(id) = stored.and_then(|id| crate::lease::id::LeaseId::parse(id)) {
            crate::systemd::fdstore::store(
                &session.daemon.config,
                conn.stream().as_fd(),
                &crate::systemd::fdstore::name_of(id),
            );
        }
        session.after_reply();
    }
    drop(session);
}

/// Reads and answers the [`Hello`]. Returns true if and only if the
/// connection may go on to requests.
async fn handshake(daemon: &Daemon, conn: &mut Connection, peer: &Peer) -> bool {
    let hello =
        match tokio::time::timeout(daemon.config.handshake_timeout(), conn.read::<Hello>()).await {
            Err(_) => {
                tracing::info!(
                    uid = peer.uid,
                    pid = peer.pid,
                    "handshake timed out; closing"
                );
                refuse(conn, ErrorKind::Busy, "handshake timed out".into()).await;
                return false;
            }
            Ok(Ok(Some(hello))) => hello,
            Ok(Ok(None)) => return false,
            Ok(Err(e)) if e.is_disconnect() => return false,
            Ok(Err(e)) => {
                tracing::info!(uid = peer.uid, pid = peer.pid, error = %e, "bad handshake");
                refuse(conn, ErrorKind::BadRequest, format!("bad handshake: {e}")).await;
                return false;
            }
        };
    if hello.magic != MAGIC {
        refuse(
            conn,
            ErrorKind::BadRequest,
            "bad magic: this socket serves builddird".into(),
        )
        .await;
        return false;
    }
    let Some(version) = negotiate(hello.min_version, hello.max_version) else {
        let message = format!(
            "client speaks protocol {}..={}, builddird {} speaks {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION}; upgrade the older side",
            hello.min_version,
            hello.max_version,
            env!("CARGO_PKG_VERSION")
        );
        tracing::info!(uid = peer.uid, pid = peer.pid, %message, "version mismatch");
        refuse(conn, ErrorKind::UnsupportedVersion, message).await;
        return false;
    };
    if !daemon.policy.may_connect(peer) {
        daemon.counters.refused(ErrorKind::PermissionDenied);
        tracing::warn!(
            uid = peer.uid,
            pid = peer.pid,
            "connection refused: not in allowed_users or allowed_groups"
        );
        let message = format!(
            "uid {} is not allowed to use builddird; an operator can add it to allowed_users or allowed_groups",
            peer.uid
        );
        refuse(conn, ErrorKind::PermissionDenied, message).await;
        return false;
    }
    let welcome = HelloReply::Welcome {
        version,
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        features: FEATURES.iter().map(|s| (*s).to_owned()).collect(),
    };
    conn.write(&welcome, None).await.is_ok()
}

async fn refuse(conn: &mut Connection, kind: ErrorKind, message: String) {
    let reply = HelloReply::Refused(ErrorReply::new(kind, message));
    // Bounded: a peer that does not read cannot hold us here.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn.write(&reply, None)).await;
}
