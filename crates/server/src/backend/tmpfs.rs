//! `lease_backend = "tmpfs"`: each lease's `build` is a tmpfs of its own,
//! mounted by fd with the lease's size. How one ends (emptied, then
//! unmounted, or kept mounted while held) is [`super::tmpfs_held`].

use std::os::fd::BorrowedFd;

use builddir_proto::SizeLimit;
use rustix::io::Errno;
use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, unmount, FsMountFlags,
    FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags,
};

use crate::host::layout::BUILD;

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
/// through the fd (best effort). Lazily: this tmpfs was never handed out
/// and holds nothing.
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
