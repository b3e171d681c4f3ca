//! Who may enter a lease's outer directory: its owner alone.
//!
//! The outer directory is `root:root` with a POSIX access ACL granting
//! search (`--x`) to one user, the tree's owner, and nothing to its group
//! or others. A build that opens its own directory to everyone (`chmod 777
//! .`) therefore opens it to nobody else: other build users of the same
//! group (Nix's `nixbld`), who can read the path from `/proc/*/cmdline`,
//! cannot traverse the outer directory to reach it. A group owner would
//! let every member in; a per-lease group would need a group per lease in
//! the host's group database. See docs/security.md.
//!
//! The ACL is one `fsetxattr` on the directory's fd; it also sets the
//! mode's group bits (the ACL mask) to `--x`, so the directory reads as
//! `drwx--x---+ root root`. Releasing still closes it at once: `fchmod
//! 0000` clears the mask, and with it the owner's entry.

use std::os::fd::BorrowedFd;

use rustix::fs::{fsetxattr, XattrFlags};
use rustix::io::Errno;

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

/// Lets `uid` alone (and root) traverse the root-owned directory `outer`.
/// `EOPNOTSUPP` means the root filesystem has no POSIX ACLs (mounted
/// `noacl`, or a tmpfs without `CONFIG_TMPFS_POSIX_ACL`).
pub fn owner_only(outer: BorrowedFd<'_>, uid: u32) -> Result<(), Errno> {
    fsetxattr(outer, ACL_ACCESS, &owner_only_acl(uid), XattrFlags::empty())
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
}
