//! Creating a lease's directories, by descriptor only.
//!
//! 1. `mkdirat(b, ".new-<id>", 0700)` — a private temporary name, the
//!    daemon's own (0700 rather than 0: the daemon need not be root to
//!    open it, as in the in-process tests).
//! 2. open it (`O_DIRECTORY|O_NOFOLLOW`); it is `root:root`; an access ACL
//!    lets the owner alone traverse it ([`crate::lease::outer`]).
//! 3. `mkdirat(outer, "build", 0700)`, open it, `fchown(owner)`, `fchmod 0700`.
//! 4. the registry record `outer/lease.json` ([`crate::lease::registry`]),
//!    in a file made ahead of time if one is ready ([`Spares`]).
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

use crate::backend::Sizing;
use crate::failpoint;
use crate::host::layout::{id_name, Layout, BUILD, DIR_OPEN};
use crate::lease::id::LeaseId;
use crate::lease::registry::{self, LeaseMeta, Spares};

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
    /// The outer directory and (if one was used) the spare that became its
    /// record: nothing more is done through them, so the caller can close
    /// them after its reply.
    pub done_with: (OwnedFd, Option<OwnedFd>),
}

/// A new lease's id and reclaim secret, from one `getrandom`.
#[derive(Debug)]
pub struct Fresh {
    pub id: LeaseId,
    pub secret: String,
}

impl Fresh {
    pub fn generate() -> std::io::Result<Fresh> {
        let mut bytes = [0u8; 24];
        builddir_host::id::fill_random(&mut bytes)?;
        let (id, secret) = bytes.split_at(8);
        Ok(Fresh {
            id: LeaseId::from_random_bits(id.try_into().expect("8 bytes")),
            secret: registry::secret_from_random(secret.try_into().expect("16 bytes")),
        })
    }
}

/// Creates `b/<id>/build` owned by `uid:gid`, sized by `sizing`, recording
/// `meta(id)` (in one of `spares` if one is ready).
pub fn allocate(
    layout: &Layout,
    id: LeaseId,
    uid: u32,
    gid: u32,
    sizing: &Sizing,
    spares: &Spares,
    meta: impl FnOnce(LeaseId) -> LeaseMeta,
) -> Result<NewLease, AllocError> {
    let final_name = id_name(id);
    let tmp_name = format!(".new-{id}");
    let step = |step| move |source| AllocError { step, source };

    mkdirat(&layout.leases, tmp_name.as_str(), Mode::RWXU).map_err(step("mkdirat outer"))?;
    failpoint::hit("allocate:after-mkdir");
    let result = (|| {
        let outer = openat(&layout.leases, tmp_name.as_str(), DIR_OPEN, Mode::empty())
            .map_err(step("open outer"))?;
        // `b` is root's and not setgid, so the new directory is
        // `root:root` already; the ACL lets the owner alone traverse it.
        crate::lease::outer::owner_only(outer.as_fd(), uid).map_err(step(
            "give the outer dir its owner-only ACL (the root filesystem needs POSIX ACLs)",
        ))?;
        mkdirat(&outer, BUILD, Mode::RWXU).map_err(step("mkdirat build"))?;
        sizing
            .mount_on(outer.as_fd(), uid, gid)
            .map_err(step("mount the lease's tmpfs"))?;
        let build = openat(&outer, BUILD, DIR_OPEN, Mode::empty()).map_err(step("open build"))?;
        sizing
            .mark_build(build.as_fd())
            .map_err(step("set the build's project id"))?;
        // Owner first, then mode: the dir is never 0700 for the wrong owner.
        fchown(&build, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(step("fchown build"))?;
        fchmod(&build, Mode::from_raw_mode(0o700)).map_err(step("fchmod build"))?;
        let record = spares
            .write(outer.as_fd(), &meta(id))
            .map_err(step("write lease.json"))?;
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
        Ok((build, (outer, record)))
    })();
    match result {
        Ok((build, done_with)) => Ok(NewLease {
            id,
            build,
            done_with,
        }),
        Err(e) => {
            discard_partial(layout.leases.as_fd(), &tmp_name);
            Err(e)
        }
    }
}

/// The `source` of every lease tmpfs (it lives with the tmpfs backend).
pub use crate::backend::tmpfs::LEASE_TMPFS_SOURCE;

/// Best-effort removal of a half-made `.new-<id>` (at most one empty child).
fn discard_partial(leases: std::os::fd::BorrowedFd<'_>, tmp_name: &str) {
    if let Ok(outer) = openat(leases, tmp_name, DIR_OPEN, Mode::empty()) {
        // A tmpfs may already sit on `build`: detach it through our fd.
        crate::backend::tmpfs::detach_partial(outer.as_fd());
        let _ = unlinkat(&outer, BUILD, AtFlags::REMOVEDIR);
        let _ = unlinkat(&outer, registry::META, AtFlags::empty());
    }
    let _ = unlinkat(leases, tmp_name, AtFlags::REMOVEDIR);
}
