//! Ending a lease fast, whatever the size of its tree.
//!
//! Release is two syscalls on the outer directory: `fchmod 0000` (the owner
//! can no longer enter by path) and an atomic `renameat2` into the root-only
//! trash on the same mount. Deletion happens later, in the background
//! ([`crate::lease::reaper`]). Keep is one rename into the kept area.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{fchmod, openat, renameat_with, Mode, RenameFlags};
use rustix::io::Errno;

use crate::host::layout::{id_name, Layout, DIR_OPEN};
use crate::lease::id::LeaseId;

/// A release step failed; the tree stays where it was.
#[derive(Debug, thiserror::Error)]
#[error("release failed at {step}: {source}")]
pub struct ReleaseError {
    pub step: &'static str,
    #[source]
    pub source: Errno,
}

/// Moves `b/<id>` into trash and returns the trash entry's name.
pub fn to_trash(layout: &Layout, id: LeaseId) -> Result<String, ReleaseError> {
    move_to_trash(layout, layout.leases.as_fd(), &id_name(id))
}

/// Moves `kept/<id>` into trash and returns the trash entry's name.
pub fn kept_to_trash(layout: &Layout, id: LeaseId) -> Result<String, ReleaseError> {
    move_to_trash(layout, layout.kept.as_fd(), &id_name(id))
}

/// Moves `from/<name>` into trash under a name not in use there.
pub fn move_to_trash(
    layout: &Layout,
    from: BorrowedFd<'_>,
    name: &CStr,
) -> Result<String, ReleaseError> {
    let step = |step| move |source| ReleaseError { step, source };
    let outer = openat(from, name, DIR_OPEN, Mode::empty()).map_err(step("open outer"))?;
    let was = rustix::fs::fstat(&outer)
        .map_err(step("fstat outer"))?
        .st_mode
        & 0o7777;
    fchmod(&outer, closed_mode(layout)).map_err(step("fchmod 0000"))?;
    crate::failpoint::hit("release:after-chmod");
    let moved = rename_into_trash(layout, from, name);
    if moved.is_err() {
        // The lease stays where it was: open it to its owner again (the
        // mode's group bits are the ACL mask that lets the owner in).
        let _ = fchmod(&outer, Mode::from_raw_mode(was));
    }
    moved
}

fn rename_into_trash(
    layout: &Layout,
    from: BorrowedFd<'_>,
    name: &CStr,
) -> Result<String, ReleaseError> {
    let step = |step| move |source| ReleaseError { step, source };
    let base = name.to_string_lossy().into_owned();
    // A name can already be in trash only after a crash mid-reap of a tree
    // with the same name (`.new-*` leftovers); never replace it.
    for attempt in 0u32..16 {
        let target = if attempt == 0 {
            base.clone()
        } else {
            format!("{base}.{attempt}")
        };
        match renameat_with(
            from,
            name,
            &layout.trash,
            target.as_str(),
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {
                crate::failpoint::hit("release:after-rename");
                return Ok(target);
            }
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(step("renameat2 into trash")(e)),
        }
    }
    Err(step("renameat2 into trash")(Errno::EXIST))
}

/// The mode that closes an outer directory to everyone but the daemon:
/// 0000 (root needs no permission bits). A daemon that is not root (the
/// in-process tests) keeps 0700 for itself, which closes the directory to
/// everyone else just as well: it is the daemon's, and 0700 clears the ACL
/// mask, and with it the owner's entry.
fn closed_mode(layout: &Layout) -> Mode {
    if layout.owner.0 == 0 {
        Mode::empty()
    } else {
        Mode::RWXU
    }
}

/// Moves `b/<id>` into the kept area.
pub fn to_kept(layout: &Layout, id: LeaseId) -> Result<(), ReleaseError> {
    let name = id_name(id);
    renameat_with(
        &layout.leases,
        name.as_c_str(),
        &layout.kept,
        name.as_c_str(),
        RenameFlags::NOREPLACE,
    )
    .map_err(|source| ReleaseError {
        step: "renameat2 into kept",
        source,
    })
}
