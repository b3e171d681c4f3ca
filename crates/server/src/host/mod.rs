//! Facts about this machine. Most live in `builddir_host` (shared with
//! `builddir-ctl check`) and are re-exported here under their old paths;
//! the layout of the root's areas, held open by fd, is the daemon's own.

pub use builddir_host::{config, identity, mount, policy};

pub mod layout;
