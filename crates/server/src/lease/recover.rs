//! What happens between "the mount is verified" and `READY=1`.
//!
//! - One daemon per root: an exclusive `flock` on the root fd.
//! - Every lease in `b/` with a registry record ([`crate::lease::registry`]) is
//!   live again: attached to its connection if systemd handed that back from
//!   the fd store, else detached and waiting `reclaim_grace_secs` for its
//!   client to reclaim it. Anything else in `b/` (a half-made `.new-*`, a
//!   directory without a record) is an orphan and moves to trash.
//! - Kept trees are listed again.
//! - Everything in trash is reaped in the background: readiness never waits
//!   for deletion. A tmpfs lease whose record says detaching (its tmpfs was
//!   still held, and stays mounted beside the record) is listed and counted
//!   as detaching again, and left to the periodic check.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::SystemTime;

use builddir_proto::LeaseState;
use rustix::fs::{flock, openat, statx, AtFlags, Dir, FlockOperation, Mode, StatxFlags};
use rustix::io::Errno;

use crate::host::identity::Peer;
use crate::host::layout::{Layout, BUILD, DIR_OPEN};
use crate::lease::id::LeaseId;
use crate::lease::registry;
use crate::lease::table::{Daemon, LeaseRecord, Restored};
use crate::lease::trash::move_to_trash;

/// Takes the per-root lock, or says who holds it.
pub fn lock_root(layout: &Layout) -> Result<(), String> {
    match flock(&layout.root.fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(Errno::WOULDBLOCK) => Err(format!(
            "root {} is in use by another builddird; stop it first or use another root",
            layout.root_path().display()
        )),
        Err(e) => Err(format!(
            "cannot lock root {}: {e}",
            layout.root_path().display()
        )),
    }
}

fn names_in(dir: BorrowedFd<'_>) -> Vec<CString> {
    let Ok(mut d) = Dir::read_from(dir) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    while let Some(Ok(entry)) = d.read() {
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    names
}

/// What [`recover`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    pub live: usize,
    pub orphans: usize,
    pub kept: usize,
    pub trash: usize,
    /// Of those in trash, tmpfs leases still held (detaching).
    pub detaching: usize,
    /// Connections to serve again, each with the ids of its leases.
    pub connections: Vec<(OwnedFd, Vec<LeaseId>)>,
}

/// Rebuilds the lease table from disk, matches the connections systemd
/// handed back, moves orphans to trash, starts reaping trash.
pub fn recover(daemon: &Arc<Daemon>, resumed: Vec<(LeaseId, OwnedFd)>) -> Recovered {
    let layout = &daemon.layout;
    let mut found = Recovered::default();
    let mut orphans = Vec::new();
    for name in names_in(layout.leases.as_fd()) {
        let meta = LeaseId::parse(&name.to_string_lossy()).and_then(|id| {
            let outer = openat(
                layout.leases.as_fd(),
                name.as_c_str(),
                DIR_OPEN,
                Mode::empty(),
            )
            .ok()?;
            registry::read_in(layout, outer.as_fd())
                .filter(|m| m.id == id.to_string())
                .map(|m| (id, m))
        });
        match meta {
            // A keep that stopped before its tree reached the kept area:
            // the user asked for it, so it is finished now.
            Some((id, meta)) if meta.hand_over.is_some() => {
                match crate::lease::trash::to_kept(layout, id) {
                    Ok(()) => {
                        tracing::info!(lease_id = %id, "finishing a keep interrupted by a restart")
                    }
                    Err(e) => {
                        tracing::error!(lease_id = %id, error = %e, "cannot finish an interrupted keep; the lease is live again");
                        daemon.table.restore(from_meta(id, &meta), Restored::Live);
                        found.live += 1;
                    }
                }
            }
            Some((id, meta)) => {
                daemon.table.restore(from_meta(id, &meta), Restored::Live);
                found.live += 1;
            }
            None => orphans.push(name),
        }
    }
    found.connections = attach(daemon, resumed);
    found.orphans = orphans.len();
    for name in &orphans {
        match move_to_trash(layout, layout.leases.as_fd(), name) {
            Ok(t) => {
                tracing::warn!(trash = t, path = %layout.root_path().join("b").join(name.to_string_lossy().as_ref()).display(), "orphan build dir (no live lease) moved to trash")
            }
            Err(e) => {
                tracing::error!(name = ?name, error = %e, "cannot move orphan to trash")
            }
        }
    }
    let kept = names_in(layout.kept.as_fd());
    for name in &kept {
        let Some(id) = LeaseId::parse(&name.to_string_lossy()) else {
            continue;
        };
        if let Some(record) = recover_kept(daemon, id, name) {
            daemon.table.restore(record, Restored::Kept);
        }
    }
    let trash = names_in(layout.trash.as_fd());
    for name in &trash {
        let name = name.to_string_lossy().into_owned();
        let id = LeaseId::parse(&name);
        if let Some(id) = id {
            // Its record (if any) still names it and its owner, who is
            // charged for it (and for its size, a tmpfs's) until it is gone.
            let meta = openat(layout.trash.as_fd(), name.as_str(), DIR_OPEN, Mode::empty())
                .ok()
                .and_then(|outer| registry::read_in(layout, outer.as_fd()));
            let held = meta.as_ref().is_some_and(|m| m.detaching);
            let record = meta.map_or_else(|| recovered(id, 0, 0), |m| from_meta(id, &m));
            let trash = name.clone();
            if held {
                // Its tmpfs was still held when the last daemon stopped:
                // detaching again, checked by `lease::detaching` (which
                // reaps it at once if its tmpfs is gone meanwhile).
                daemon.table.restore(record, Restored::Detaching { trash });
                found.detaching += 1;
                continue;
            }
            daemon.table.restore(record, Restored::Reaping { trash });
        }
        crate::lease::reaper::spawn(daemon.clone(), name, id);
    }
    found.kept = kept.len();
    found.trash = trash.len();
    found
}

/// A kept tree as its record describes it: name, requester, owner, age.
/// A hand-over the last daemon did not finish is finished first, so the
/// tree is listed as the requester's, setuid bits gone. A tree without a
/// record (kept by an older daemon) is its build directory's owner's.
/// A hand-over whose walk cannot reach every entry is not finished: the
/// tree goes to trash (reaped below, charged to its owner) and `None` is
/// returned.
fn recover_kept(daemon: &Daemon, id: LeaseId, name: &CString) -> Option<LeaseRecord> {
    let layout = &daemon.layout;
    let Ok((_, mut meta)) = registry::open_record(layout, layout.kept.as_fd(), id) else {
        let (uid, gid) = owner_of_build(layout.kept.as_fd(), name).unwrap_or((0, 0));
        return Some(recovered(id, uid, gid));
    };
    if meta.hand_over.is_some() {
        tracing::info!(lease_id = %id, "finishing a hand-over interrupted by a restart");
        match crate::lease::end::finish_hand_over(daemon, id, meta.clone()) {
            Ok(_) => {
                if let Ok((_, m)) = registry::open_record(layout, layout.kept.as_fd(), id) {
                    meta = m;
                }
            }
            Err(e @ crate::lease::end::NotHandedOver::Incomplete { .. }) => {
                match move_to_trash(layout, layout.kept.as_fd(), name) {
                    Ok(t) => {
                        tracing::warn!(lease_id = %id, error = %e, trash = t, "an interrupted hand-over cannot reach every entry; the tree is deleted");
                        return None;
                    }
                    Err(m) => {
                        tracing::error!(lease_id = %id, error = %e, move_error = %m, "an interrupted hand-over cannot reach every entry, and the tree cannot be moved to trash; retried at the next start")
                    }
                }
            }
            Err(e) => {
                tracing::error!(lease_id = %id, error = %e, "cannot finish an interrupted hand-over; retried at the next start")
            }
        }
    }
    let mut record = from_meta(id, &meta);
    record.kept_at = meta
        .kept_unix
        .map(|t| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t));
    record.secret.clear();
    Some(record)
}

/// Matches stored connections to live leases. Several leases may share one
/// connection (the store holds one dup per lease): they are grouped by the
/// socket's inode so each connection is served once. Fds of unknown leases
/// are closed.
fn attach(daemon: &Arc<Daemon>, resumed: Vec<(LeaseId, OwnedFd)>) -> Vec<(OwnedFd, Vec<LeaseId>)> {
    let mut by_socket: Vec<(u64, OwnedFd, Vec<LeaseId>)> = Vec::new();
    for (id, fd) in resumed {
        let live = daemon
            .table
            .get(id)
            .is_some_and(|r| r.state() == LeaseState::Live);
        if !live {
            tracing::info!(lease_id = %id, "closing a stored connection of a lease that no longer exists");
            crate::systemd::fdstore::forget(&daemon.config, id);
            continue;
        }
        let Ok(st) = rustix::fs::fstat(&fd) else {
            continue;
        };
        match by_socket.iter_mut().find(|(ino, _, _)| *ino == st.st_ino) {
            Some((_, _, ids)) => ids.push(id),
            None => by_socket.push((st.st_ino, fd, vec![id])),
        }
    }
    by_socket
        .into_iter()
        .map(|(_, fd, ids)| (fd, ids))
        .collect()
}

/// A lease table entry rebuilt from its registry record.
fn from_meta(id: LeaseId, m: &registry::LeaseMeta) -> LeaseRecord {
    let peer = Peer {
        uid: m.peer_uid,
        gid: m.peer_gid,
        pid: m.peer_pid,
        command: m.peer_command.clone(),
        groups: Vec::new(),
    };
    let mut r = LeaseRecord::new(id, peer);
    r.name = m.name.clone();
    r.owner_uid = m.owner_uid;
    r.owner_gid = m.owner_gid;
    r.created = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(m.created_unix);
    r.secret = m.secret.clone();
    r.limit_bytes = m.limit_bytes;
    r.project_id = m.project_id;
    r
}

fn owner_of_build(area: BorrowedFd<'_>, outer: &CString) -> Option<(u32, u32)> {
    let mut path = outer.to_bytes().to_vec();
    path.push(b'/');
    path.extend_from_slice(BUILD.as_bytes());
    let path = CString::new(path).ok()?;
    let st = statx(
        area,
        &path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::UID | StatxFlags::GID,
    )
    .ok()?;
    Some((st.stx_uid, st.stx_gid))
}

fn recovered(id: LeaseId, uid: u32, gid: u32) -> LeaseRecord {
    let peer = Peer {
        uid,
        gid,
        pid: 0,
        command: String::new(),
        groups: Vec::new(),
    };
    LeaseRecord::new(id, peer)
}
