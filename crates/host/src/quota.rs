//! Whether a filesystem can give each lease a project quota: the kernel's
//! quota state and a probe that project ids can be set at all. Shared by
//! the daemon (which refuses to start `lease_backend = "project-quota"`
//! where it cannot work) and both host checks.

use std::os::fd::BorrowedFd;

use rustix::io::Errno;

use crate::quota_sys::{self as sys, ProjectState};

/// Why project quotas cannot be used on the root `root` (a directory fd);
/// every text names the fix. Beyond the kernel's quota state, setting the
/// root's own project id again (a no-op) shows whether the filesystem can
/// set project ids at all (ext4 cannot with 128-byte inodes).
pub fn unavailable_reason(root: BorrowedFd<'_>, fstype: &str) -> Option<String> {
    let why = state_reason(root, fstype);
    if why.is_some() {
        return why;
    }
    match sys::reapply_project(root) {
        Ok(()) => None,
        Err(e) => Some(format!(
            "{fstype} cannot set project ids here (FS_IOC_FSSETXATTR: {e}); for ext4 the inodes must be larger than 128 bytes (mkfs.ext4 -I 256)"
        )),
    }
}

fn state_reason(fs: BorrowedFd<'_>, fstype: &str) -> Option<String> {
    match sys::project_state(fs) {
        Ok(ProjectState {
            accounting: true,
            enforcing: true,
        }) => None,
        Ok(ProjectState {
            accounting: true,
            enforcing: false,
        }) => Some(format!(
            "{fstype} accounts project quotas but does not enforce them: mount it with -o prjquota"
        )),
        Ok(_) => Some(format!(
            "{fstype} does not account project quotas: for ext4 run `tune2fs -O quota,project` on the unmounted filesystem (or mkfs.ext4 -O quota,project) and mount with -o prjquota; for XFS mount with -o prjquota"
        )),
        // Q_XGETQSTATV needs no capability: EPERM is a seccomp filter.
        Err(Errno::PERM) => Some(
            "quotactl_fd was refused (EPERM) by a system call filter: allow it (the shipped unit has SystemCallFilter=quotactl_fd)".to_owned(),
        ),
        Err(Errno::NOSYS) if !sys::quotactl_fd_exists() => Some(
            "this kernel has no quotactl_fd (Linux 5.14 or later is needed)".to_owned(),
        ),
        Err(e) => Some(format!(
            "{fstype} has no project quota support here (quotactl_fd: {e}): use ext4 made with -O quota,project (or `tune2fs -O quota,project` on the unmounted filesystem) or XFS, mounted with -o prjquota, on a kernel with CONFIG_QFMT_V2 (ext4) or CONFIG_XFS_QUOTA"
        )),
    }
}
