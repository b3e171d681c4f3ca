//! The lease registry on disk (`<outer>/lease.json`); its format lives in
//! `builddir_host::registry`, shared with `builddir-ctl list --offline`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rustix::fs::{openat, Mode};
use rustix::io::Errno;

pub use builddir_host::registry::*;

/// Opens `area/<id>` and reads its record.
pub fn open_record(
    layout: &crate::host::layout::Layout,
    area: BorrowedFd<'_>,
    id: crate::lease::id::LeaseId,
) -> Result<(std::os::fd::OwnedFd, LeaseMeta), Errno> {
    let outer = openat(
        area,
        crate::host::layout::id_name(id).as_c_str(),
        crate::host::layout::DIR_OPEN,
        Mode::empty(),
    )?;
    let meta = read_in(layout, std::os::fd::AsFd::as_fd(&outer)).ok_or(Errno::NOENT)?;
    Ok((outer, meta))
}

/// Reads `outer/lease.json` if this daemon's user wrote it.
pub fn read_in(layout: &crate::host::layout::Layout, outer: BorrowedFd<'_>) -> Option<LeaseMeta> {
    read_written_by(outer, layout.owner.0)
}

/// Marks the record of `trash/<name>` detaching (its tmpfs held and kept
/// mounted beside it), unless it is already.
pub fn mark_detaching(
    layout: &crate::host::layout::Layout,
    name: &std::ffi::CStr,
) -> Result<(), Errno> {
    let outer = openat(
        &layout.trash,
        name,
        crate::host::layout::DIR_OPEN,
        Mode::empty(),
    )?;
    let mut meta = read_in(layout, std::os::fd::AsFd::as_fd(&outer)).ok_or(Errno::NOENT)?;
    if meta.detaching {
        return Ok(());
    }
    meta.detaching = true;
    rewrite(std::os::fd::AsFd::as_fd(&outer), &meta)
}

/// Spare record files kept ready: one per async worker.
const SPARES_KEPT: usize = 2;

/// Record files made ahead of time ([`spare`]): a session makes them after
/// an allocation's reply is sent, so that the next allocation only fills
/// one and links it into place ([`write_spare`]) instead of creating a file
/// (an inode and its first page) on its way.
#[derive(Debug, Default)]
pub struct Spares {
    fds: Mutex<Vec<OwnedFd>>,
    /// Set once a spare could not be linked (no `CAP_DAC_READ_SEARCH`, as
    /// for an unprivileged test daemon): records are then made whole at
    /// allocation, as without spares.
    off: AtomicBool,
}

impl Spares {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OwnedFd>> {
        self.fds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes spares in `dir` (on the root's filesystem) until enough are
    /// ready. Best effort: a failure leaves allocations to make their
    /// records themselves.
    pub fn refill(&self, dir: BorrowedFd<'_>) {
        while !self.off.load(Ordering::Relaxed) && self.lock().len() < SPARES_KEPT {
            match spare(dir) {
                Ok(fd) => self.lock().push(fd),
                Err(_) => return,
            }
        }
    }

    /// Writes `meta` as `outer/lease.json`, in a spare if one is ready (then
    /// returned, for the caller to close once it has replied), else in a
    /// file made now.
    pub fn write(&self, outer: BorrowedFd<'_>, meta: &LeaseMeta) -> Result<Option<OwnedFd>, Errno> {
        let spare = if self.off.load(Ordering::Relaxed) {
            None
        } else {
            self.lock().pop()
        };
        if let Some(spare) = spare {
            match write_spare(spare.as_fd(), outer, meta) {
                Ok(()) => return Ok(Some(spare)),
                // Out of space: so is the file made the other way.
                Err(e @ (Errno::NOSPC | Errno::DQUOT)) => return Err(e),
                Err(e) => {
                    if !self.off.swap(true, Ordering::Relaxed) {
                        tracing::info!(error = %e, "cannot link a record file made ahead of time; records are made at allocation");
                        self.lock().clear();
                    }
                }
            }
        }
        write(outer, meta).map(|()| None)
    }
}
