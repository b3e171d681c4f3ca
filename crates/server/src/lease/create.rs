//! Creating a lease's directories, by descriptor only.
//!
//! 1. `mkdirat(b, ".new-<id>", 0)` — a private temporary name.
//! 2. open it (`O_DIRECTORY|O_NOFOLLOW`), `fchown(root, owner_gid)`, `fchmod 0710`.
//! 3. `mkdirat(outer, "build", 0)`, open it, `fchown(owner)`, `fchmod 0700`.
//! 4. the registry record `outer/lease.json` ([`crate::lease::registry`]).
//! 5. `renameat2(b/.new-<id>, b/<id>, RENAME_NOREPLACE)` — the lease appears
//!    complete, with its record, or not at all.
//!
//! `b` is root-owned 0711, so no user can create, swap or rename anything
//! in it; the fds make each step independent of path lookups anyway.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{
    fchmod, fchown, mkdirat, openat, renameat_with, unlinkat, AtFlags, Gid, Mode, RenameFlags, Uid,
};
use rustix::io::Errno;

use crate::failpoint;
use crate::host::layout::{id_name, Layout, BUILD, DIR_OPEN};
use crate::lease::id::LeaseId;
use crate::lease::registry::{self, LeaseMeta};
use builddir_proto::SizeLimit;
use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, unmount, FsMountFlags,
    FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags,
};
use std::os::fd::BorrowedFd;

/// A step of allocation failed.
#[derive(Debug, thiserror::Error)]
#[error("allocation failed at {step}: {source}")]
pub struct AllocError {
    pub step: &'static str,
    #[source]
    pub source: Errno,
}

impl AllocError {
    /// Returns true if and only if the filesystem is out of space or inodes.
    pub fn is_no_space(&self) -> bool {
        matches!(self.source, Errno::NOSPC | Errno::DQUOT)
    }
}

/// A freshly created lease directory.
#[derive(Debug)]
pub struct NewLease {
    pub id: LeaseId,
    /// The build directory (`b/<id>/build`), open for the client.
    pub build: OwnedFd,
}

/// How a lease's size is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizing {
    /// Not at all (a plain directory on the root).
    Unbounded,
    /// `build` is a fresh tmpfs of this size.
    Tmpfs(SizeLimit),
    /// `build` is in this project, whose limits are already set.
    Project(u32),
}

/// Creates `b/<id>/build` owned by `uid:gid`, sized by `sizing`, recording
/// `meta(id)`.
pub fn allocate(
    layout: &Layout,
    uid: u32,
    gid: u32,
    sizing: Sizing,
    meta: impl FnOnce(LeaseId) -> LeaseMeta,
) -> Result<NewLease, AllocError> {
    let id = LeaseId::generate().map_err(|e| AllocError {
        step: "getrandom",
        source: Errno::from_io_error(&e).unwrap_or(Errno::IO),
    })?;
    let final_name = id_name(id);
    let tmp_name = format!(".new-{id}");
    let step = |step| move |source| AllocError { step, source };

    mkdirat(&layout.leases, tmp_name.as_str(), Mode::empty()).map_err(step("mkdirat outer"))?;
    failpoint::hit("allocate:after-mkdir");
    let result = (|| {
        let outer = openat(&layout.leases, tmp_name.as_str(), DIR_OPEN, Mode::empty())
            .map_err(step("open outer"))?;
        fchown(&outer, Some(Uid::ROOT), Some(Gid::from_raw(gid))).map_err(step("fchown outer"))?;
        fchmod(&outer, Mode::from_raw_mode(0o710)).map_err(step("fchmod outer"))?;
        mkdirat(&outer, BUILD, Mode::empty()).map_err(step("mkdirat build"))?;
        if let Sizing::Tmpfs(limit) = sizing {
            mount_tmpfs(outer.as_fd(), uid, gid, limit).map_err(step("mount the lease's tmpfs"))?;
        }
        let build = openat(&outer, BUILD, DIR_OPEN, Mode::empty()).map_err(step("open build"))?;
        if let Sizing::Project(id) = sizing {
            // While `build` is still root's and empty: from here on every
            // inode created below it is charged to the lease's project.
            crate::backend::project_sys::set_project(build.as_fd(), id)
                .map_err(step("set the build's project id"))?;
        }
        // Owner first, then mode: the dir is never 0700 for the wrong owner.
        fchown(&build, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(step("fchown build"))?;
        fchmod(&build, Mode::from_raw_mode(0o700)).map_err(step("fchmod build"))?;
        registry::write(outer.as_fd(), &meta(id)).map_err(step("write lease.json"))?;
        failpoint::hit("allocate:before-rename");
        renameat_with(
            &layout.leases,
            tmp_name.as_str(),
            &layout.leases,
            final_name.as_c_str(),
            RenameFlags::NOREPLACE,
        )
        .map_err(step("renameat2 into place"))?;
        failpoint::hit("allocate:after-rename");
        Ok(build)
    })();
    match result {
        Ok(build) => Ok(NewLease { id, build }),
        Err(e) => {
            discard_partial(layout.leases.as_fd(), &tmp_name);
            Err(e)
        }
    }
}

/// Mounts a tmpfs of `limit` on `outer/build`, entirely by fd (the new
/// mount API: `fsopen` → `fsconfig` → `fsmount` → `move_mount`), owned by
/// `uid:gid`, mode 0700, `nosuid,nodev`, exec.
fn mount_tmpfs(outer: BorrowedFd<'_>, uid: u32, gid: u32, limit: SizeLimit) -> Result<(), Errno> {
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

/// The `source` of every lease tmpfs: how the reaper knows a mount at
/// `<outer>/build` is one of ours to detach (and not something to report).
pub const LEASE_TMPFS_SOURCE: &str = "builddird-lease";

/// Best-effort removal of a half-made `.new-<id>` (at most one empty child).
fn discard_partial(leases: std::os::fd::BorrowedFd<'_>, tmp_name: &str) {
    if let Ok(outer) = openat(leases, tmp_name, DIR_OPEN, Mode::empty()) {
        // A tmpfs may already sit on `build`: detach it through our fd.
        let build = format!(
            "/proc/self/fd/{}/{BUILD}",
            std::os::fd::AsRawFd::as_raw_fd(&outer)
        );
        let _ = unmount(
            build.as_str(),
            UnmountFlags::DETACH | UnmountFlags::NOFOLLOW,
        );
        let _ = unlinkat(&outer, BUILD, AtFlags::REMOVEDIR);
        let _ = unlinkat(&outer, registry::META, AtFlags::empty());
    }
    let _ = unlinkat(leases, tmp_name, AtFlags::REMOVEDIR);
}
