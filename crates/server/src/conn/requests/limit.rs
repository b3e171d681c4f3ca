//! Whether a live lease's build filled its size or inode limit, asked just
//! before the lease ends so the release reply can say so (an orchestrator
//! then reports "out of space" instead of a mysterious build failure).

use std::os::fd::AsFd;

use rustix::fs::{fstatvfs, openat, Mode};

use crate::host::layout::{id_name, BUILD, DIR_OPEN};
use crate::lease::table::{Daemon, LeaseRecord};

/// `project-quota` leases: the kernel's usage against the project's limit.
/// `tmpfs` leases: the lease's own tmpfs has no free block or inode left.
/// Unsized leases (`dir`): never. Anything unreadable: false (this is a
/// report, not a decision).
pub fn reached(daemon: &Daemon, record: &LeaseRecord) -> bool {
    if let Some(project) = record.project_id {
        return crate::backend::project::usage(daemon.layout.root.fd.as_fd(), project)
            .is_some_and(|u| crate::backend::project::at_limit(&u));
    }
    if record.limit_bytes.is_none() {
        return false;
    }
    // By fd, without following links: `b/<id>` is root's, `build` is the
    // lease tmpfs's root (its mount point), which the build cannot replace.
    let Ok(outer) = openat(
        &daemon.layout.leases,
        id_name(record.id).as_c_str(),
        DIR_OPEN,
        Mode::empty(),
    ) else {
        return false;
    };
    let Ok(build) = openat(&outer, BUILD, DIR_OPEN, Mode::empty()) else {
        return false;
    };
    fstatvfs(&build).is_ok_and(|v| v.f_bavail == 0 || v.f_favail == 0)
}
