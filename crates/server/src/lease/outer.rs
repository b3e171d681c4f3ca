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
//!
//! A root whose filesystem cannot hold the ACL (ramfs; ext4 or btrfs
//! mounted `noacl`; tmpfs without `CONFIG_TMPFS_POSIX_ACL`) would serve
//! and fail every allocation, so the daemon refuses to start there
//! ([`require_acls`]): fail closed, at once, in one line. The encoding and
//! the probe live in `builddir_host::acl`, shared with both host checks.

use std::os::fd::AsFd;

use crate::host::layout::Layout;

pub use builddir_host::acl::owner_only;

/// Refuses a root whose filesystem has no POSIX ACLs, before any lease:
/// sets the leases' ACL on a scratch directory in the root-only trash
/// (rescanned at every start, so not even a crash mid-probe leaves it
/// behind) and removes it. `Err`: the one line naming the cause and fix.
pub fn require_acls(layout: &Layout) -> Result<(), builddir_host::acl::AclError> {
    builddir_host::acl::probe(
        layout.trash.as_fd(),
        layout.root_path(),
        &layout.root.fstype,
    )
}
