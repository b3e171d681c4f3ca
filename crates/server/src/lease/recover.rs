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
//!   for deletion.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::SystemTime;

use builddir_proto::LeaseState;
use rustix::fs::{flock, openat, statx, AtFlags, Dir, FlockOperation, Mode, StatxFlags};
use rustix::io::Errno;

use crate::conn::peer::Peer;
use crate::host::layout::{Layout, BUILD, DIR_OPEN};
use crate::lease::id::LeaseId;
use crate::lease::registry;
use crate::lease::table::{Daemon, LeaseRecord};
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
            registry::read(outer.as_fd())
                .filter(|m| m.id == id.to_string())
                .map(|m| (id, m))
        });
        match meta {
            Some((id, meta)) => {
                daemon
                    .leases()
                    .insert(id, from_meta(id, LeaseState::Live, &meta));
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
        let (uid, gid) = owner_of_build(layout.kept.as_fd(), name).unwrap_or((0, 0));
        let mut record = recovered(id, LeaseState::Kept, uid, gid, None);
        // Its record still names its size limit and project.
        if let Ok(outer) = openat(
            layout.kept.as_fd(),
            name.as_c_str(),
            DIR_OPEN,
            Mode::empty(),
        ) {
            if let Some(m) = crate::lease::registry::read(outer.as_fd()) {
                record.limit_bytes = m.limit_bytes;
                record.project_id = m.project_id;
            }
        }
        daemon.leases().insert(id, record);
    }
    let trash = names_in(layout.trash.as_fd());
    for name in &trash {
        let name = name.to_string_lossy().into_owned();
        let id = LeaseId::parse(&name);
        if let Some(id) = id {
            daemon.leases().insert(
                id,
                recovered(id, LeaseState::Reaping, 0, 0, Some(name.clone())),
            );
        }
        crate::lease::reaper::spawn(daemon.clone(), name, id);
    }
    found.kept = kept.len();
    found.trash = trash.len();
    found
}

/// Matches stored connections to live leases. Several leases may share one
/// connection (the store holds one dup per lease): they are grouped by the
/// socket's inode so each connection is served once. Fds of unknown leases
/// are closed.
fn attach(daemon: &Arc<Daemon>, resumed: Vec<(LeaseId, OwnedFd)>) -> Vec<(OwnedFd, Vec<LeaseId>)> {
    let mut by_socket: Vec<(u64, OwnedFd, Vec<LeaseId>)> = Vec::new();
    for (id, fd) in resumed {
        let live = daemon
            .leases()
            .get(&id)
            .is_some_and(|r| r.state == LeaseState::Live);
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
fn from_meta(id: LeaseId, state: LeaseState, m: &registry::LeaseMeta) -> LeaseRecord {
    LeaseRecord {
        id,
        name: m.name.clone(),
        state,
        owner_uid: m.owner_uid,
        owner_gid: m.owner_gid,
        peer: Peer {
            uid: m.peer_uid,
            gid: m.peer_gid,
            pid: m.peer_pid,
            command: m.peer_command.clone(),
            groups: Vec::new(),
        },
        conn: 0,
        created: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(m.created_unix),
        trash_name: None,
        kept_at: None,
        size_bytes: None,
        secret: m.secret.clone(),
        limit_bytes: m.limit_bytes,
        project_id: m.project_id,
    }
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

fn recovered(
    id: LeaseId,
    state: LeaseState,
    uid: u32,
    gid: u32,
    trash_name: Option<String>,
) -> LeaseRecord {
    LeaseRecord {
        id,
        name: String::new(),
        state,
        owner_uid: uid,
        owner_gid: gid,
        peer: Peer {
            uid,
            gid,
            pid: 0,
            command: String::new(),
            groups: Vec::new(),
        },
        conn: 0,
        created: SystemTime::now(),
        trash_name,
        kept_at: None,
        size_bytes: None,
        secret: String::new(),
        limit_bytes: None,
        project_id: None,
    }
}
