//! `lease_backend = "tmpfs"`: each lease's `build` is a tmpfs of its own,
//! mounted by fd with the lease's size, and detached (O(1), whatever it
//! holds) before its tree is reaped.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use builddir_proto::SizeLimit;
use rustix::fs::{statx, AtFlags, StatxFlags};
use rustix::io::Errno;
use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, unmount, FsMountFlags,
    FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags,
};

use crate::host::layout::{BUILD, TRASH};

/// The `source` of every lease tmpfs: how the reaper knows a mount at
/// `<outer>/build` is one of ours to detach (and not something to report).
pub const LEASE_TMPFS_SOURCE: &str = "builddird-lease";

/// Mounts a tmpfs of `limit` on `outer/build`, entirely by fd (the new
/// mount API: `fsopen` → `fsconfig` → `fsmount` → `move_mount`), owned by
/// `uid:gid`, mode 0700, `nosuid,nodev`, exec.
pub fn mount(outer: BorrowedFd<'_>, uid: u32, gid: u32, limit: SizeLimit) -> Result<(), Errno> {
    let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for (key, value) in [
        ("source", LEASE_TMPFS_SOURCE.to_owned()),
        ("size", limit.bytes.to_string()),
        ("nr_inodes", limit.inodes.to_string()),
        ("mode", "0700".to_owned()),
        ("uid", uid.to_string()),
        ("gid", gid.to_string()),
    ] {
        fsconfig_set_string(&fs, key, value.as_str())?;
    }
    fsconfig_create(&fs)?;
    let mnt = fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
    )?;
    move_mount(
        &mnt,
        c"",
        outer,
        BUILD,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
}

/// Detaches whatever is mounted on `outer/build` of a half-made lease,
/// through the fd (best effort).
pub fn detach_partial(outer: BorrowedFd<'_>) {
    let build = format!(
        "/proc/self/fd/{}/{BUILD}",
        std::os::fd::AsRawFd::as_raw_fd(&outer)
    );
    let _ = unmount(
        build.as_str(),
        UnmountFlags::DETACH | UnmountFlags::NOFOLLOW,
    );
}

/// A tmpfs lease is reaped by detaching its mount: O(1) whatever it holds.
/// Only a mount exactly at `<tree>/build` whose source is ours is detached;
/// anything else mounted in a tree is reported by the walk and left in
/// quarantine.
///
/// The detach is lazy: a process of the build that still holds an fd (or
/// its cwd) in the tmpfs keeps the tmpfs — and its memory — alive. So
/// before detaching, an inotify watch is put on the tmpfs's root; the
/// kernel sends `IN_UNMOUNT` on it when the tmpfs is really gone (its last
/// reference dropped). The watch does not keep the tmpfs alive. Returned
/// (an inotify fd) for [`TmpfsGone`].
pub fn detach_in_trash(root: &Path, trash: BorrowedFd<'_>, name: &CStr) -> Option<TmpfsGone> {
    let mut rel = name.to_bytes().to_vec();
    rel.extend_from_slice(b"/build");
    let Ok(rel) = CString::new(rel) else {
        return None;
    };
    let here = statx(trash, c"", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID);
    let there = statx(trash, &rel, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::MNT_ID);
    let (Ok(here), Ok(there)) = (here, there) else {
        return None;
    };
    if here.stx_mnt_id == there.stx_mnt_id
        || !crate::host::mount::mount_source_is(there.stx_mnt_id, LEASE_TMPFS_SOURCE)
    {
        return None;
    }
    let path = root
        .join(TRASH)
        .join(OsStr::from_bytes(name.to_bytes()))
        .join(BUILD);
    if let Ok(vfs) = rustix::fs::statvfs(&path) {
        if vfs.f_bavail == 0 || vfs.f_favail == 0 {
            tracing::warn!(
                path = %path.display(),
                limit_bytes = vfs.f_blocks * vfs.f_frsize,
                limit_inodes = vfs.f_files,
                "lease had reached its size limit (its build saw ENOSPC)"
            );
        }
    }
    let gone = TmpfsGone::watch(&path);
    if let Err(e) = unmount(&path, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
        tracing::warn!(path = %path.display(), error = %e, "cannot detach a lease tmpfs");
        return None;
    }
    gone
}

/// Tells when a detached lease tmpfs is really gone (see
/// [`detach_in_trash`]).
#[derive(Debug)]
pub struct TmpfsGone {
    inotify: OwnedFd,
}

impl TmpfsGone {
    /// Watches the tmpfs mounted at `path` (its root). The path is under
    /// the root-only trash, at a mount checked to be ours.
    fn watch(path: &Path) -> Option<TmpfsGone> {
        use rustix::fs::inotify;
        let fd =
            inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).ok()?;
        inotify::add_watch(
            &fd,
            path,
            inotify::WatchFlags::DELETE_SELF
                | inotify::WatchFlags::ONLYDIR
                | inotify::WatchFlags::DONT_FOLLOW,
        )
        .ok()?;
        Some(TmpfsGone { inotify: fd })
    }

    /// True once the kernel said the tmpfs is gone (`IN_UNMOUNT`, or the
    /// watch dropped with it: `IN_IGNORED`). Does not block.
    pub fn is_gone(&self) -> bool {
        use rustix::fs::inotify;
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
        let mut reader = inotify::Reader::new(&self.inotify, &mut buf);
        let mut gone = false;
        while let Ok(ev) = reader.next() {
            gone |= ev
                .events()
                .intersects(inotify::ReadFlags::UNMOUNT | inotify::ReadFlags::IGNORED);
        }
        gone
    }
}
