//! What happens between "the mount is verified" and `READY=1`.
//!
//! - One daemon per root: an exclusive `flock` on the root fd.
//! - Every directory left in `b/` has no live lease (leases live in memory
//!   and with their connections), so it is an orphan: it moves to trash.
//! - Kept trees are listed again.
//! - Everything in trash is reaped in the background: readiness never waits
//!   for deletion.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::SystemTime;

use builddir_proto::LeaseState;
use rustix::fs::{flock, statx, AtFlags, Dir, FlockOperation, StatxFlags};
use rustix::io::Errno;

use crate::layout::{Layout, BUILD};
use crate::lease_id::LeaseId;
use crate::peer::Peer;
use crate::release::move_to_trash;
use crate::state::{Daemon, LeaseRecord};

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

/// Moves orphans to trash, relists kept trees, starts reaping trash.
/// Returns (orphans, kept, trash entries).
pub fn recover(daemon: &Arc<Daemon>) -> (usize, usize, usize) {
    let layout = &daemon.layout;
    let orphans = names_in(layout.leases.as_fd());
    for name in &orphans {
        match move_to_trash(layout, layout.leases.as_fd(), name) {
            Ok(t) => {
                tracing::warn!(trash = t, path = %layout.root_path().join("b").join(name.to_string_lossy().as_ref()).display(), "orphan build dir (no live lease) moved to trash")
            }
            Err(e) => {
                tracing::error!(name = %name.to_string_lossy(), error = %e, "cannot move orphan to trash")
            }
        }
    }
    let kept = names_in(layout.kept.as_fd());
    for name in &kept {
        let Some(id) = LeaseId::parse(&name.to_string_lossy()) else {
            continue;
        };
        let (uid, gid) = owner_of_build(layout.kept.as_fd(), name).unwrap_or((0, 0));
        daemon
            .leases()
            .insert(id, recovered(id, LeaseState::Kept, uid, gid, None));
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
        crate::reaper::spawn(daemon.clone(), name, id);
    }
    (orphans.len(), kept.len(), trash.len())
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
    }
}
