use builddir_proto::{validate_name, Allocated, ErrorKind, ErrorReply, Owner, Response, SizeLimit};
use std::sync::Arc;
use std::time::SystemTime;

use super::{error, Later, Reply, Session};
use crate::backend::Sizing;
use crate::lease::create::{allocate, Fresh};
use crate::lease::registry::LeaseMeta;
use crate::lease::table::{Counters, Daemon, LeaseRecord};

impl Session {
    pub(super) async fn allocate(
        &mut self,
        name: String,
        owner: Option<Owner>,
        limit: Option<SizeLimit>,
    ) -> Reply {
        if let Err(e) = validate_name(&name) {
            return (Response::Error(e), None);
        }
        let peer = &self.peer;
        let owner = owner.unwrap_or(Owner {
            uid: peer.uid,
            gid: peer.gid,
        });
        // A directory for someone else needs root or an owner grant.
        if !self.may_name_owner(owner, "owner assignment decision") {
            return error(
                ErrorKind::PermissionDenied,
                format!(
                    "uid {} may not allocate for {}:{}; ask for your own uid or add an owner_grants entry",
                    peer.uid, owner.uid, owner.gid
                ),
            );
        }
        let daemon = self.daemon.clone();
        // Checked and counted in one step; the place is given back if this
        // allocation fails (or panics) before the lease is in the table.
        let slot = match daemon.table.reserve(peer.uid, daemon.limits()) {
            Ok(slot) => slot,
            Err(e) => return error(ErrorKind::QuotaExceeded, e.to_string()),
        };
        if let Some(refusal) = self.free_space_refusal() {
            return refusal;
        }
        let limit = match daemon.backend.size(limit, &daemon.config) {
            Ok(limit) => limit,
            Err(e) => return (Response::Error(e), None),
        };
        // tmpfs leases are memory: their sizes are capped in total, checked
        // and counted in one step (held until the lease is in the table).
        let _tmpfs_held = match (&daemon.backend, limit) {
            (crate::backend::Backend::Tmpfs, Some(l)) => {
                match daemon
                    .tmpfs_budget
                    .hold(l.bytes, || daemon.table.limit_bytes_total())
                {
                    Ok(held) => Some(held),
                    Err(e) => return (Response::Error(e), None),
                }
            }
            _ => None,
        };
        // The id and the reclaim secret, from one getrandom.
        let Fresh { id, secret } = match Fresh::generate() {
            Ok(fresh) => fresh,
            Err(e) => return error(ErrorKind::Internal, format!("getrandom: {e}")),
        };
        // What the backend reserves (a project id) stays reserved until the
        // lease is in the table; on any early return (or a panic) it is
        // given back.
        let sizing = match prepare(&daemon, limit).await {
            Ok(sizing) => sizing,
            Err(e) => return (Response::Error(e), None),
        };
        let project_id = sizing.project_id();
        let created = SystemTime::now();
        let meta = |id: crate::lease::id::LeaseId| LeaseMeta {
            id: id.to_string(),
            name: name.clone(),
            owner_uid: owner.uid,
            owner_gid: owner.gid,
            peer_uid: peer.uid,
            peer_gid: peer.gid,
            peer_pid: peer.pid,
            peer_command: peer.command.clone(),
            created_unix: created
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            secret: secret.clone(),
            limit_bytes: limit.map(|l| l.bytes),
            project_id,
            kept_unix: None,
            hand_over: None,
            detaching: false,
        };
        let layout = &self.daemon.layout;
        let spares = &self.daemon.spares;
        let lease = match allocate(layout, id, owner.uid, owner.gid, &sizing, spares, meta) {
            Ok(lease) => lease,
            Err(e) if e.is_no_space() => {
                return error(
                    ErrorKind::NoSpace,
                    format!(
                        "{e}; free space under {}",
                        self.daemon.layout.root_path().display()
                    ),
                )
            }
            Err(e) => {
                tracing::error!(uid = peer.uid, error = %e, "allocation failed");
                return error(ErrorKind::Internal, e.to_string());
            }
        };
        // Formatted once, for the audit line and the reply.
        let path = self
            .daemon
            .layout
            .lease_path(lease.id)
            .display()
            .to_string();
        let mut record = LeaseRecord::new(lease.id, peer.clone());
        record.name = name.clone();
        (record.owner_uid, record.owner_gid) = (owner.uid, owner.gid);
        record.created = created;
        record.secret = secret.clone();
        record.limit_bytes = limit.map(|l| l.bytes);
        record.project_id = project_id;
        let count = slot.admit(record, self.conn_id);
        self.daemon.trimmer.grew(count);
        sizing.settle(); // the table holds what it reserved now
        Counters::bump(&self.daemon.counters.allocations);
        tracing::info!(
            lease_id = %lease.id,
            uid = peer.uid,
            pid = peer.pid,
            owner_uid = owner.uid,
            owner_gid = owner.gid,
            name = name.as_str(),
            path = %path,
            limit_bytes = limit.map(|l| l.bytes),
            project_id,
            "allocated"
        );
        let reply = Allocated {
            id: lease.id.to_string(),
            path,
            uid: owner.uid,
            gid: owner.gid,
            secret,
        };
        let (outer, record) = lease.done_with;
        self.after_reply.push(Later::Close(outer));
        self.after_reply.extend(record.map(Later::Close));
        self.after_reply.push(Later::MakeSpares);
        (Response::Allocated(reply), Some(lease.build))
    }
}

impl Session {
    /// `no-space` if the root is below `min_free_bytes` or `min_free_inodes`.
    fn free_space_refusal(&self) -> Option<Reply> {
        let config = &self.daemon.config;
        if config.min_free_bytes == 0 && config.min_free_inodes == 0 {
            return None;
        }
        let vfs = match rustix::fs::fstatvfs(&self.daemon.layout.root.fd) {
            Ok(v) => v,
            Err(e) => return Some(error(ErrorKind::Internal, format!("statvfs of root: {e}"))),
        };
        let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        let root = self.daemon.layout.root_path().display();
        if free < config.min_free_bytes {
            return Some(error(
                ErrorKind::NoSpace,
                format!(
                    "{free} bytes free on {root}, below min_free_bytes = {}; free space (builddir-ctl gc) or lower the limit",
                    config.min_free_bytes
                ),
            ));
        }
        if vfs.f_favail < config.min_free_inodes {
            return Some(error(
                ErrorKind::NoSpace,
                format!(
                    "{} inodes free on {root}, below min_free_inodes = {}; free inodes (builddir-ctl gc) or lower the limit",
                    vfs.f_favail, config.min_free_inodes
                ),
            ));
        }
        None
    }
}

/// How this lease is bounded, settled by the backend: on a blocking
/// thread when that can take long (a project id search), so no other
/// user's request waits on it; a failed thread is an error reply.
async fn prepare(daemon: &Arc<Daemon>, limit: Option<SizeLimit>) -> Result<Sizing, ErrorReply> {
    if !daemon.backend.prepare_blocks() {
        return daemon.backend.prepare(limit, || daemon.table.project_ids());
    }
    let d = daemon.clone();
    tokio::task::spawn_blocking(move || d.backend.prepare(limit, || d.table.project_ids()))
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "preparing a lease's space failed");
            Err(ErrorReply::new(
                ErrorKind::Internal,
                format!("preparing the lease's space failed ({e}); retry"),
            ))
        })
}
