//! Telling a forked child from the process that made a connection, without
//! trusting PIDs: a parent that is PID 1 of its namespace and a child that
//! is PID 1 of a new one share a PID. The marker is one anonymous page
//! marked `MADV_WIPEONFORK` with a byte set to 1: the kernel hands a child
//! that page zeroed, so the byte reads 1 only in the process that set it.

// mmap/madvise/munmap of a page this module alone owns; each call carries
// a SAFETY comment.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr::null_mut;

use rustix::mm::{madvise, mmap_anonymous, munmap, Advice, MapFlags, ProtFlags};

/// One page that reads 1 in the process that made it, 0 in its children.
#[derive(Debug)]
pub struct ForkMarker {
    page: *mut c_void,
    len: usize,
}

impl ForkMarker {
    /// Maps the marker; `None` on a kernel without `MADV_WIPEONFORK`
    /// (before Linux 4.14) or if mapping fails: callers then fall back to
    /// comparing PIDs.
    pub fn new() -> Option<ForkMarker> {
        let len = rustix::param::page_size();
        // SAFETY: a fresh private anonymous mapping at an address the
        // kernel picks; nothing else refers to it.
        let page = unsafe {
            mmap_anonymous(
                null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .ok()?;
        let marker = ForkMarker { page, len };
        // SAFETY: `page` is our mapping of `len` bytes.
        unsafe { madvise(page, len, Advice::LinuxWipeOnFork) }.ok()?;
        // SAFETY: the mapping is readable and writable, `len` >= 1.
        unsafe { page.cast::<u8>().write_volatile(1) };
        Some(marker)
    }

    /// Returns true in the process that made the marker, false in a child
    /// forked from it.
    pub fn in_maker(&self) -> bool {
        // SAFETY: our live mapping; volatile because fork changes it
        // behind the compiler's back.
        unsafe { self.page.cast::<u8>().read_volatile() == 1 }
    }
}

impl Drop for ForkMarker {
    fn drop(&mut self) {
        // SAFETY: our mapping, unmapped once; nothing refers to it after.
        let _ = unsafe { munmap(self.page, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_reads_set_in_its_maker() {
        let m = ForkMarker::new().expect("kernel with MADV_WIPEONFORK (4.14+)");
        assert!(m.in_maker());
    }
}
