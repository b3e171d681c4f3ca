//! Lease identifiers. The type lives with the host facts (`builddir_host`),
//! so the layout and the systemd hand-offs below the lease module can name
//! a lease without importing it.

pub use builddir_host::id::LeaseId;
