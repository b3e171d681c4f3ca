//! Facts about this machine, shared with `builddir-ctl check`: the config,
//! the access policy, the mount and its verification, the on-disk layout,
//! and user/group lookups.

pub mod config;
pub mod identity;
pub mod layout;
pub mod mount;
pub mod policy;
