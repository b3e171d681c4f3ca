//! The lease registry on disk (`<outer>/lease.json`); its format lives in
//! `builddir_host::registry`, shared with `builddir-ctl list --offline`.

use std::os::fd::BorrowedFd;

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
