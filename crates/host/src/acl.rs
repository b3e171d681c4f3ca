//! POSIX access ACLs: the one the daemon puts on every lease's outer
//! directory (its owner alone may search it), and the probe that tells,
//! before any lease exists, whether the root's filesystem can hold one.
//!
//! The probe lives here, with the encoding, so that the daemon's refusal to
//! start, `builddird --check` and `builddir-ctl check` all set the very ACL
//! allocation sets and say what is wrong in the same words. Without it a
//! root on a filesystem without ACLs (ramfs; ext4 or btrfs mounted
//! `noacl`; tmpfs without `CONFIG_TMPFS_POSIX_ACL`) would serve and then
//! fail every allocation.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{fsetxattr, mkdirat, openat, unlinkat, AtFlags, Mode, XattrFlags};
use rustix::io::Errno;

use crate::id::LeaseId;
use crate::paths::DIR_OPEN;

/// The access ACL's extended attribute.
const ACL_ACCESS: &str = "system.posix_acl_access";
/// `POSIX_ACL_XATTR_VERSION`.
const VERSION: u32 = 2;
/// Entry tags (`<linux/posix_acl.h>`), in the order the kernel requires.
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
/// The id of entries that name no one (`ACL_UNDEFINED_ID`).
const NO_ID: u32 = u32::MAX;

/// The ACL `u::rwx,u:<uid>:--x,g::---,m::--x,o::---` in the kernel's
/// xattr encoding (little-endian).
fn owner_only_acl(uid: u32) -> Vec<u8> {
    let entries = [
        (USER_OBJ, 0o7, NO_ID),
        (USER, 0o1, uid),
        (GROUP_OBJ, 0o0, NO_ID),
        (MASK, 0o1, NO_ID),
        (OTHER, 0o0, NO_ID),
    ];
    let mut out = Vec::with_capacity(4 + entries.len() * 8);
    out.extend_from_slice(&VERSION.to_le_bytes());
    for (tag, perm, id) in entries {
        out.extend_from_slice(&u16::to_le_bytes(tag));
        out.extend_from_slice(&u16::to_le_bytes(perm));
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// Lets `uid` alone (and root) search the root-owned directory `dir`.
/// `EOPNOTSUPP` means the filesystem has no POSIX ACLs.
pub fn owner_only(dir: BorrowedFd<'_>, uid: u32) -> Result<(), Errno> {
    fsetxattr(dir, ACL_ACCESS, &owner_only_acl(uid), XattrFlags::empty())
}

/// Why the root cannot hold the leases' ACLs. Each message is one line,
/// "cause; fix" (so a check splits it into its detail and its fix).
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("the build root {root} is on a filesystem without POSIX ACLs ({fstype}: setting an ACL fails with EOPNOTSUPP), which every lease's directory needs; {fix}")]
    Unsupported {
        root: PathBuf,
        fstype: String,
        fix: String,
    },
    #[error("cannot probe the build root {root} for POSIX ACLs ({step}: {source}); run as root, with the build root on a writable filesystem")]
    Probe {
        root: PathBuf,
        step: &'static str,
        #[source]
        source: Errno,
    },
}

/// The fix for a root on `fstype` that has no ACLs.
fn fix_for(root: &Path, fstype: &str) -> String {
    match fstype {
        "tmpfs" => "tmpfs has POSIX ACLs only in kernels built with CONFIG_TMPFS_POSIX_ACL: use such a kernel, or backing = \"bind\" on ext4, XFS or btrfs".to_owned(),
        _ => format!(
            "remount it with ACLs (`mount -o remount,acl {}`) or put it on tmpfs, ext4, XFS or btrfs with ACLs",
            root.display()
        ),
    }
}

/// Sets the leases' ACL on a fresh scratch directory made in `dir` (a
/// directory on the root's filesystem, opened by the caller) and removes
/// the directory again, whatever happened. `root` and `fstype` only name
/// the root in the error.
///
/// The daemon probes in its root-only trash, which every start rescans, so
/// even a crash between `mkdir` and `rmdir` leaves nothing behind for long.
pub fn probe(dir: BorrowedFd<'_>, root: &Path, fstype: &str) -> Result<(), AclError> {
    let failed = |step| {
        move |source| AclError::Probe {
            root: root.to_owned(),
            step,
            source,
        }
    };
    let id = LeaseId::generate()
        .map_err(|e| failed("getrandom")(Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
    let name = format!(".acl-probe-{id}");
    mkdirat(dir, name.as_str(), Mode::RWXU).map_err(failed("mkdir a scratch directory"))?;
    let set = openat(dir, name.as_str(), DIR_OPEN, Mode::empty())
        .map_err(failed("open the scratch directory"))
        .and_then(|scratch| {
            // Any uid would do: the probe asks whether the filesystem takes
            // the ACL at all. Our own is mapped in any user namespace.
            let uid = rustix::process::geteuid().as_raw();
            owner_only(scratch.as_fd(), uid).map_err(|e| match e {
                Errno::OPNOTSUPP => AclError::Unsupported {
                    root: root.to_owned(),
                    fstype: if fstype.is_empty() {
                        "unknown filesystem".to_owned()
                    } else {
                        fstype.to_owned()
                    },
                    fix: fix_for(root, fstype),
                },
                e => failed("set system.posix_acl_access")(e),
            })
        });
    let removed = unlinkat(dir, name.as_str(), AtFlags::REMOVEDIR);
    set?;
    removed.map_err(failed("remove the scratch directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acl_names_the_owner_alone_in_the_kernels_order() {
        let acl = owner_only_acl(61_001);
        assert_eq!(acl.len(), 4 + 5 * 8);
        assert_eq!(acl[..4], 2u32.to_le_bytes());
        let entry = |i: usize| {
            let e = &acl[4 + i * 8..12 + i * 8];
            (
                u16::from_le_bytes([e[0], e[1]]),
                u16::from_le_bytes([e[2], e[3]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            )
        };
        assert_eq!(entry(1), (USER, 1, 61_001));
        assert_eq!(entry(2), (GROUP_OBJ, 0, NO_ID), "the group gets nothing");
        assert_eq!(entry(4), (OTHER, 0, NO_ID));
        let tags: Vec<u16> = (0..5).map(|i| entry(i).0).collect();
        let mut sorted = tags.clone();
        sorted.sort_unstable();
        assert_eq!(tags, sorted);
    }

    #[test]
    fn the_refusal_is_one_line_whose_cause_and_fix_split_at_the_first_semicolon() {
        for fstype in ["ramfs", "tmpfs", ""] {
            let e = AclError::Unsupported {
                root: "/x".into(),
                fstype: fstype.into(),
                fix: fix_for(Path::new("/x"), fstype),
            };
            let text = e.to_string();
            assert_eq!(text.lines().count(), 1, "{text}");
            let (cause, fix) = text.split_once("; ").expect("cause; fix");
            assert!(
                cause.starts_with("the build root /x is on a filesystem without POSIX ACLs"),
                "{cause}"
            );
            assert!(!cause.contains(" — "), "{cause}");
            assert!(fix.contains("ext4, XFS or btrfs"), "{fix}");
        }
    }

    /// Wherever the tests run, the probe leaves nothing behind: on a
    /// filesystem with ACLs it passes, without them it says so; either
    /// way its scratch directory is gone.
    #[test]
    fn the_probe_cleans_up_after_itself() {
        let dir = std::env::temp_dir().join(format!("bd-acl-probe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let fd = rustix::fs::open(&dir, DIR_OPEN, Mode::empty()).unwrap();
        match probe(fd.as_fd(), &dir, "test") {
            Ok(()) | Err(AclError::Unsupported { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir(&dir).unwrap();
    }
}
