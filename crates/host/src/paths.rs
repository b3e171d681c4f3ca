//! Names under the root and how the daemon opens directories there.

use rustix::fs::OFlags;

pub const LEASES: &str = "b";
pub const KEPT: &str = "kept";
pub const TRASH: &str = "trash";
pub const BUILD: &str = "build";

/// Flags for every directory the daemon opens.
pub const DIR_OPEN: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
