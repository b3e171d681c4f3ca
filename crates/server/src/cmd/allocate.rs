use builddir_proto::{validate_name, Allocated, ErrorKind, LeaseState, Owner, Response};
use std::time::SystemTime;

use super::{error, Reply, Session};
use crate::allocate::allocate;
use crate::state::{Counters, LeaseRecord};

impl Session {
    pub(super) fn allocate(&mut self, name: String, owner: Option<Owner>) -> Reply {
        if let Err(e) = validate_name(&name) {
            return (Response::Error(e), None);
        }
        let peer = &self.peer;
        let owner = owner.unwrap_or(Owner {
            uid: peer.uid,
            gid: peer.gid,
        });
        // Only root may hand a directory to someone else (owner grants for
        // orchestrators come with the policy configuration).
        if (owner.uid != peer.uid || owner.gid != peer.gid) && !peer.is_operator() {
            return error(
                ErrorKind::PermissionDenied,
                format!(
                    "uid {} may not allocate for {}:{}; ask for your own uid or get an owner grant",
                    peer.uid, owner.uid, owner.gid
                ),
            );
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
        let lease = match allocate(&self.daemon.layout, owner.uid, owner.gid) {
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
        self.daemon.leases().insert(
            lease.id,
            LeaseRecord {
                id: lease.id,
                name: name.clone(),
                state: LeaseState::Live,
                owner_uid: owner.uid,
                owner_gid: owner.gid,
                peer: peer.clone(),
                conn: self.conn_id,
                created: SystemTime::now(),
                trash_name: None,
            },
        );
        Counters::bump(&self.daemon.counters.allocations);
        tracing::info!(
            lease_id = %lease.id,
            uid = peer.uid,
            pid = peer.pid,
            owner_uid = owner.uid,
            owner_gid = owner.gid,
            name = %name,
            path = %path.display(),
            "allocated"
        );
        let reply = Allocated {
            id: lease.id.to_string(),
            path: path.display().to_string(),
            uid: owner.uid,
            gid: owner.gid,
        };
        (Response::Allocated(reply), Some(lease.build))
    }
}
