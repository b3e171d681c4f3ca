use builddir_proto::{
    validate_name, Allocated, ErrorKind, ErrorReply, LeaseState, Owner, Response, SizeLimit,
};
use std::collections::HashSet;
use std::os::fd::AsFd;
use std::time::SystemTime;

use super::{error, Reply, Session};
use crate::backend::project::{AssignError, Reservation};
use crate::backend::LeaseMode;
use crate::lease::create::{allocate, Sizing};
use crate::lease::registry::LeaseMeta;
use crate::lease::table::{Counters, Daemon, LeaseRecord};

impl Session {
    pub(super) fn allocate(
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
        if owner.uid != peer.uid || owner.gid != peer.gid {
            let granted = self.daemon.policy.may_assign(peer, owner.uid, owner.gid);
            tracing::info!(
                uid = peer.uid,
                pid = peer.pid,
                owner_uid = owner.uid,
                owner_gid = owner.gid,
                granted,
                "owner assignment decision"
            );
            if !granted {
                return error(
                    ErrorKind::PermissionDenied,
                    format!(
                        "uid {} may not allocate for {}:{}; ask for your own uid or add an owner_grants entry",
                        peer.uid, owner.uid, owner.gid
                    ),
                );
            }
        }
        let config = &self.daemon.config;
        let (all, mine) = self.daemon.live_counts(peer.uid);
        if all >= config.max_leases {
            return error(
                ErrorKind::QuotaExceeded,
                format!(
                    "max_leases = {} reached; release leases or raise max_leases",
                    config.max_leases
                ),
            );
        }
        if mine >= config.max_leases_per_uid {
            return error(
                ErrorKind::QuotaExceeded,
                format!(
                    "max_leases_per_uid = {} reached for uid {}; release leases or raise max_leases_per_uid",
                    config.max_leases_per_uid, peer.uid
                ),
            );
        }
        if let Some(refusal) = self.free_space_refusal() {
            return refusal;
        }
        let limit = match self.size_limit(limit) {
            Ok(limit) => limit,
            Err(e) => return (Response::Error(e), None),
        };
        let secret = match crate::lease::registry::new_secret() {
            Ok(s) => s,
            Err(e) => return error(ErrorKind::Internal, format!("getrandom: {e}")),
        };
        let daemon = self.daemon.clone();
        // A project id stays reserved until the lease is in the table; on
        // any early return (or a panic) the reservation is abandoned.
        let (sizing, reservation) = match sizing(&daemon, limit) {
            Ok(sized) => sized,
            Err(e) => return (Response::Error(e), None),
        };
        let project_id = reservation.as_ref().map(|r| r.id());
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
        };
        let layout = &self.daemon.layout;
        let lease = match allocate(layout, owner.uid, owner.gid, sizing, meta) {
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
        let path = self.daemon.layout.lease_path(lease.id);
        let count = {
            let mut leases = self.daemon.leases();
            leases.insert(
                lease.id,
                LeaseRecord {
                    id: lease.id,
                    name: name.clone(),
                    state: LeaseState::Live,
                    owner_uid: owner.uid,
                    owner_gid: owner.gid,
                    peer: peer.clone(),
                    conn: self.conn_id,
                    created,
                    trash_name: None,
                    kept_at: None,
                    size_bytes: None,
                    secret: secret.clone(),
                    limit_bytes: limit.map(|l| l.bytes),
                    project_id,
                },
            );
            leases.len()
        };
        self.daemon.trimmer.grew(count);
        if let Some(reservation) = reservation {
            reservation.settle(); // the table holds the id now
        }
        Counters::bump(&self.daemon.counters.allocations);
        tracing::info!(
            lease_id = %lease.id,
            uid = peer.uid,
            pid = peer.pid,
            owner_uid = owner.uid,
            owner_gid = owner.gid,
            name = name.as_str(),
            path = %path.display(),
            limit_bytes = limit.map(|l| l.bytes),
            project_id,
            "allocated"
        );
        let reply = Allocated {
            id: lease.id.to_string(),
            path: path.display().to_string(),
            uid: owner.uid,
            gid: owner.gid,
            secret,
        };
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

/// How this lease is bounded: a tmpfs of `limit`, or a project quota (an
/// id reserved and given `limit` now).
fn sizing(
    daemon: &Daemon,
    limit: Option<SizeLimit>,
) -> Result<(Sizing, Option<Reservation<'_>>), ErrorReply> {
    match (&daemon.mode, limit) {
        (LeaseMode::Dir { .. }, None) => Ok((Sizing::Unbounded, None)),
        (LeaseMode::Tmpfs, Some(limit)) => Ok((Sizing::Tmpfs(limit), None)),
        (LeaseMode::ProjectQuota(ids), Some(limit)) => {
            let held = || -> HashSet<u32> {
                daemon
                    .leases()
                    .values()
                    .filter_map(|r| r.project_id)
                    .collect()
            };
            let fs = daemon.layout.root.fd.as_fd();
            match ids.assign(fs, held, limit.bytes, limit.inodes) {
                Ok(r) => Ok((Sizing::Project(r.id()), Some(r))),
                Err(e) => {
                    tracing::error!(error = %e, "cannot give a lease a project quota");
                    let kind = match e {
                        AssignError::Exhausted { .. } => ErrorKind::QuotaExceeded,
                        _ => ErrorKind::Internal,
                    };
                    Err(ErrorReply::new(kind, e.to_string()))
                }
            }
        }
        // `size_limit` gives every sized backend a limit and refuses one on
        // `dir`; anything else is a bug, refused, not served.
        (LeaseMode::Dir { .. }, Some(_))
        | (LeaseMode::Tmpfs | LeaseMode::ProjectQuota(_), None) => Err(ErrorReply::new(
            ErrorKind::Internal,
            "lease sizing does not match the lease backend; please report this",
        )),
    }
}

impl Session {
    /// The size for this lease, with defaults and caps applied; a refusal
    /// if the request cannot be honoured.
    fn size_limit(&self, asked: Option<SizeLimit>) -> Result<Option<SizeLimit>, ErrorReply> {
        let c = &self.daemon.config;
        if !self.daemon.mode.sized() {
            return match asked {
                None => Ok(None),
                Some(_) => Err(ErrorReply::new(
                    ErrorKind::BadRequest,
                    self.daemon.mode.unsized_refusal(),
                )),
            };
        }
        let asked = asked.unwrap_or(SizeLimit {
            bytes: 0,
            inodes: 0,
        });
        let bytes = if asked.bytes == 0 {
            c.lease_size_default
        } else {
            asked.bytes
        };
        let inodes = if asked.inodes == 0 {
            c.lease_inodes_default
        } else {
            asked.inodes
        };
        if bytes > c.lease_size_max {
            return Err(ErrorReply::new(
                ErrorKind::QuotaExceeded,
                format!(
                    "a size of {bytes} bytes is above lease_size_max = {}; ask for less",
                    c.lease_size_max
                ),
            ));
        }
        if inodes > c.lease_inodes_max {
            return Err(ErrorReply::new(
                ErrorKind::QuotaExceeded,
                format!(
                    "{inodes} inodes is above lease_inodes_max = {}; ask for fewer",
                    c.lease_inodes_max
                ),
            ));
        }
        Ok(Some(SizeLimit { bytes, inodes }))
    }
}
