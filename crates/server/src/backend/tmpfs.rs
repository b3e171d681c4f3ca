//! `lease_backend = "tmpfs"`: each lease's `build` is a tmpfs of its own,
//! mounted by fd with the lease's size, and detached (O(1), whatever it
//! holds) before its tree is reaped.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::BorrowedFd;
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
pub fn detach_in_trash(root: &Path, trash: BorrowedFd<'_>, name: &CStr) {
    let mut rel = name.to_bytes().to_vec();
    rel.extend_from_slice(b"/build");
    let Ok(rel) = CString::new(rel) else {
        return;
    };
    let here = statx(trash, c"", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID);
    let there = statx(trash, &rel, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::MNT_ID);
    let (Ok(here), Ok(there)) = (here, there) else {
        return;
    };
    if here.stx_mnt_id == there.stx_mnt_id
        || !crate::host::mount::mount_source_is(there.stx_mnt_id, LEASE_TMPFS_SOURCE)
    {
        return;
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
    if let Err(e) = unmount(&path, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
        tracing::warn!(path = %path.display(), error = %e, "cannot detach a lease tmpfs");
    }
}
