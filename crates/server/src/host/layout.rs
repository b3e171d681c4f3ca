//! The directories under the verified root, held open by fd.
//!
//! ```text
//! root/            0755 root   the dedicated mount
//!   b/             0711 root   live leases: b/<id>/build   (traverse only)
//!     <id>/        0710 root:root + ACL u:<owner>:--x (owner only)
//!       build/     0700 owner  the build directory handed out by fd
//!   kept/          0711 root   kept trees: kept/<id>/build
//!   trash/         0700 root   released trees awaiting deletion
//! ```
//!
//! `b` and `kept` can be traversed but not listed by users, so a lease path
//! is reachable only by its owner (and root) and never guessable.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{fchmod, fchown, fstat, mkdirat, openat, Gid, Mode, Uid};
use rustix::io::Errno;

use crate::host::mount::VerifiedRoot;
use builddir_host::id::LeaseId;

pub use builddir_host::paths::{BUILD, DIR_OPEN, KEPT, LEASES, TRASH};

/// A layout directory could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("cannot prepare {path}: {what}: {source}; remove or fix it by hand (it must be a root-owned directory)")]
pub struct LayoutError {
    pub path: PathBuf,
    pub what: &'static str,
    #[source]
    pub source: Errno,
}

/// Open descriptors of the root and its three areas.
#[derive(Debug)]
pub struct Layout {
    pub root: VerifiedRoot,
    /// Who owns the areas and every outer directory: root for the daemon;
    /// the test's own user for an in-process test layout.
    pub owner: (u32, u32),
    pub leases: OwnedFd,
    pub kept: OwnedFd,
    pub trash: OwnedFd,
}

impl Layout {
    /// Creates (if missing) and opens the areas, fixing owner (root) and
    /// mode.
    pub fn open(root: VerifiedRoot) -> Result<Layout, LayoutError> {
        Layout::open_owned_by(root, (0, 0))
    }

    /// Like [`Layout::open`], owned by `owner`: in-process tests run the
    /// whole daemon on a temporary directory of their own, without root.
    pub fn open_owned_by(root: VerifiedRoot, owner: (u32, u32)) -> Result<Layout, LayoutError> {
        let leases = area(&root, LEASES, 0o711, owner)?;
        let kept = area(&root, KEPT, 0o711, owner)?;
        let trash = area(&root, TRASH, 0o700, owner)?;
        Ok(Layout {
            root,
            owner,
            leases,
            kept,
            trash,
        })
    }

    pub fn root_path(&self) -> &Path {
        &self.root.path
    }

    /// The path of a live lease's build directory.
    pub fn lease_path(&self, id: LeaseId) -> PathBuf {
        self.root.path.join(LEASES).join(id.to_string()).join(BUILD)
    }

    /// The path of a kept tree's build directory.
    pub fn kept_path(&self, id: LeaseId) -> PathBuf {
        self.root.path.join(KEPT).join(id.to_string()).join(BUILD)
    }
}

/// The C string form of an id, for `*at()` calls.
pub fn id_name(id: LeaseId) -> CString {
    CString::new(id.to_string()).expect("hex has no NUL")
}

fn area(
    root: &VerifiedRoot,
    name: &'static str,
    mode: u32,
    (uid, gid): (u32, u32),
) -> Result<OwnedFd, LayoutError> {
    let err = |what, source| LayoutError {
        path: root.path.join(name),
        what,
        source,
    };
    match mkdirat(&root.fd, name, Mode::from_raw_mode(mode)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(err("mkdir", e)),
    }
    let fd = openat(&root.fd, name, DIR_OPEN, Mode::empty()).map_err(|e| err("open", e))?;
    let st = fstat(&fd).map_err(|e| err("stat", e))?;
    if st.st_uid != uid || st.st_gid != gid {
        fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| err("chown", e))?;
    }
    if st.st_mode & 0o7777 != mode {
        fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| err("chmod", e))?;
    }
    Ok(fd)
}
