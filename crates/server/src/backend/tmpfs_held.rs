//! The end of a lease's tmpfs: emptied, then unmounted — or, while
//! something still holds files in it, kept mounted where it is (in the
//! root-only trash, its lease's record beside it) and counted.
//!
//! Why this order. A tmpfs's memory lives as long as anything references
//! it, and not every reference makes the daemon's unmount busy: a process
//! whose cwd or open file is inside it through *the daemon's* mount does
//! (`EBUSY`), but a copy of that mount in another mount namespace does not
//! — `unshare -Urm` by the build, a sandbox's bind mount, any service
//! started with a private mount namespace while the lease existed. An
//! unmount that succeeds can therefore leave the tmpfs alive, full, in no
//! mount table the daemon can see, and a restarted daemon would know
//! nothing of it. So the daemon never lets go of its mount while the tmpfs
//! holds anything:
//!
//! 1. Close its root: root's, mode 0000, its xattrs and ACLs removed.
//!    From then on no holder, in any namespace, can create, list or look
//!    up anything at its top (its `..` included).
//! 2. Delete its tree (every entry, as the reaper deletes any tree): its
//!    memory is freed but what a holder has open — an unlinked file (which
//!    can still grow, up to the tmpfs's own size limit), a directory it is
//!    in (deleted, so nothing can be created there).
//! 3. Ask the kernel what is left (`fstatvfs` through the daemon's mount):
//!    only the root inode and no blocks means nothing is held that can
//!    hold memory, now or later. Anything more: the tmpfs stays mounted,
//!    and the lease detaching (listed, counted) until a later check
//!    finds it empty. Its mount in trash plus its record there are what a
//!    restarted daemon finds.
//! 4. Empty: unmount, non-lazily. If that is busy, something still has
//!    the empty, closed root as its cwd or an open fd (an orchestrator
//!    keeping the directory fd it was handed): `MNT_DETACH` then, which is
//!    safe exactly because of 1–3 — that root can never hold anything
//!    again — and ends a lease that no longer costs anything.
//!
//! `MNT_DETACH` is used there and nowhere else on a lease that was handed
//! out: not after some number of failed checks (that would hide a tmpfs
//! that still holds memory, the very thing this prevents), not when the
//! daemon stops (held tmpfses stay mounted under the root for the next
//! daemon; a daemon run by hand leaves the root mounted for them).
//!
//! Cost: a tmpfs lease's reap walks its tree like any other reap (about
//! `rm -rf`), where a bare detach let the kernel free it; that is the price
//! of never losing one.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{
    fchmod, fchown, flistxattr, fremovexattr, fstatvfs, openat, statx, AtFlags, Gid, Mode,
    StatxAttributes, StatxFlags, Uid,
};
use rustix::io::Errno;
use rustix::mount::{unmount, UnmountFlags};

use crate::host::layout::{BUILD, DIR_OPEN, TRASH};
use crate::tree::empty::empty_dir;
use crate::tree::remove::{Limits, Report};

/// Which pass over a lease tmpfs this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The reap of its lease: say if it was full, delete its tree.
    Reap,
    /// A later check of a tmpfs found held: delete its tree again
    /// (`true`: something may have refilled it) or only look.
    Recheck { empty_again: bool },
}

/// What is left in a tmpfs, as its `statvfs` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    /// Inodes in use, its root included.
    pub inodes: u64,
}

impl Usage {
    /// Nothing but its root: nothing anyone holds can use memory.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0 && self.inodes <= 1
    }
}

/// What became of the tmpfs at `trash/<name>/build`.
#[derive(Debug)]
pub enum Settled {
    /// No lease tmpfs there (none, or a mount that is not ours): the tree
    /// is reaped as usual (a foreign mount is reported by the walk).
    NoTmpfs,
    /// It was emptied and unmounted; the report covers its tree.
    Unmounted(Report),
    /// Something still holds files in it: it stays mounted, closed, its
    /// tree deleted as far as it could be. `usage`: `None` if unknown.
    Held {
        report: Report,
        usage: Option<Usage>,
    },
}

/// Settles the lease tmpfs at `root/trash/<name>/build`, if there is one
/// (`ours`: is this mount id one of the daemon's lease tmpfses?). Its root
/// is closed to everyone but `owner` (the daemon's user). Never panics;
/// every failure leaves the tmpfs mounted and says why in the report.
pub fn settle(
    root: &Path,
    trash: BorrowedFd<'_>,
    name: &CStr,
    owner: (u32, u32),
    ours: &dyn Fn(u64) -> bool,
    pass: Pass,
) -> Settled {
    let Some((rel, mnt_id)) = locate(trash, name, ours) else {
        return Settled::NoTmpfs;
    };
    let path = root
        .join(TRASH)
        .join(OsStr::from_bytes(name.to_bytes()))
        .join(BUILD);
    let top = match open_root(trash, &rel, mnt_id) {
        Ok(fd) => fd,
        Err(e) => return held_failing(&path, "open its root", e),
    };
    if pass == Pass::Reap {
        log_if_full(top.as_fd(), &path);
    }
    if let Err((what, e)) = close(top.as_fd(), owner) {
        return held_failing(&path, what, e);
    }
    let mut report = match pass {
        Pass::Reap | Pass::Recheck { empty_again: true } => {
            empty_dir(top.as_fd(), Limits::default())
        }
        Pass::Recheck { empty_again: false } => Report::default(),
    };
    let usage = usage(top.as_fd());
    // Our own descriptor must not be what makes the unmount busy.
    drop(top);
    if !usage.is_some_and(|u| u.is_empty()) {
        return Settled::Held { report, usage };
    }
    match unmount(&path, UnmountFlags::NOFOLLOW) {
        Ok(()) => Settled::Unmounted(report),
        Err(Errno::BUSY) => {
            // Only an empty, closed root is held (see the module doc).
            match unmount(&path, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), "an empty lease tmpfs is still someone's cwd or open directory; detached");
                    Settled::Unmounted(report)
                }
                Err(e) => {
                    note(&mut report, &path, "detach", e);
                    Settled::Held { report, usage }
                }
            }
        }
        Err(e) => {
            note(&mut report, &path, "unmount", e);
            Settled::Held { report, usage }
        }
    }
}

/// `<name>/build` and its mount id, if a lease tmpfs of ours is mounted
/// exactly there. Anything else mounted in a tree is the walk's to report.
fn locate(
    trash: BorrowedFd<'_>,
    name: &CStr,
    ours: &dyn Fn(u64) -> bool,
) -> Option<(CString, u64)> {
    let mut rel = name.to_bytes().to_vec();
    rel.push(b'/');
    rel.extend_from_slice(BUILD.as_bytes());
    let rel = CString::new(rel).ok()?;
    let here = statx(trash, c"", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID).ok()?;
    let there = statx(trash, &rel, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::MNT_ID).ok()?;
    (here.stx_mnt_id != there.stx_mnt_id && ours(there.stx_mnt_id))
        .then_some((rel, there.stx_mnt_id))
}

/// Opens the root of the mount found at `rel` (the path is the root-only
/// trash's; only root can mount there), checked to be that mount's root.
fn open_root(trash: BorrowedFd<'_>, rel: &CStr, mnt_id: u64) -> Result<OwnedFd, Errno> {
    let fd = openat(trash, rel, DIR_OPEN, Mode::empty())?;
    let st = statx(&fd, c"", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?;
    let root_known = st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT);
    if st.stx_mnt_id != mnt_id
        || (root_known && !st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
    {
        return Err(Errno::STALE);
    }
    Ok(fd)
}

/// Closes the tmpfs's root to its build: the daemon's, mode 0000 (which
/// also voids any ACL entry through the mask), and no xattr left that can
/// be removed. An xattr on the root takes inode space (6.6+), and the root
/// must look like nothing but a bare inode to [`Usage::is_empty`]; one the
/// daemon may not remove (an SELinux label set on it by hand) keeps the
/// lease detaching: failing closed. The owner first: once the root is not
/// the build's, the build cannot change its mode back.
fn close(top: BorrowedFd<'_>, (uid, gid): (u32, u32)) -> Result<(), (&'static str, Errno)> {
    fchown(top, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(|e| ("chown its root", e))?;
    fchmod(top, Mode::empty()).map_err(|e| ("chmod 0000 its root", e))?;
    // XATTR_LIST_MAX: the kernel never lists more.
    let mut names = vec![0u8; 64 * 1024];
    let len = match flistxattr(top, &mut names[..]) {
        Ok(len) => len,
        Err(Errno::OPNOTSUPP) => 0,
        Err(e) => return Err(("list its xattrs", e)),
    };
    for name in names[..len.min(names.len())]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let _ = fremovexattr(top, name);
    }
    Ok(())
}

fn usage(top: BorrowedFd<'_>) -> Option<Usage> {
    let v = fstatvfs(top).ok()?;
    Some(Usage {
        bytes: v
            .f_blocks
            .saturating_sub(v.f_bfree)
            .saturating_mul(v.f_frsize),
        inodes: v.f_files.saturating_sub(v.f_ffree),
    })
}

fn log_if_full(top: BorrowedFd<'_>, path: &Path) {
    if let Ok(vfs) = fstatvfs(top) {
        if vfs.f_bavail == 0 || vfs.f_favail == 0 {
            tracing::warn!(
                path = %path.display(),
                limit_bytes = vfs.f_blocks * vfs.f_frsize,
                limit_inodes = vfs.f_files,
                "lease had reached its size limit (its build saw ENOSPC)"
            );
        }
    }
}

fn held_failing(path: &Path, what: &str, e: Errno) -> Settled {
    let mut report = Report::default();
    note(&mut report, path, what, e);
    Settled::Held {
        report,
        usage: None,
    }
}

fn note(report: &mut Report, path: &Path, what: &str, e: Errno) {
    report.errors += 1;
    report
        .first_error
        .get_or_insert_with(|| format!("{}: {what}: {e}", path.display()));
}
