//! Client for builddird: lease an exec-capable build directory, received
//! as a file descriptor.
//!
//! Two clients speak the same protocol:
//!
//! - [`blocking`]: std only — a `UnixStream`, no async runtime, no thread,
//!   no global state. One connection holds any number of leases. This is
//!   what orchestrators that fork per build use (and what the C library,
//!   `libbuilddir`, is built on). Always available.
//! - [`Client`] / [`Lease`] (feature `tokio`, on by default): async. A
//!   [`Lease`] owns its connection and lives exactly as long as it;
//!   [`Lease::release`] ends it and the daemon deletes the tree in the
//!   background; [`Lease::keep`] moves the tree to the kept area and returns
//!   its path; dropping a `Lease` (or the process dying, even by `kill -9`)
//!   closes the connection and the daemon releases it. A background task
//!   reclaims the lease if the daemon restarts.
//!
#![cfg_attr(feature = "tokio", doc = "```no_run")]
#![cfg_attr(not(feature = "tokio"), doc = "```ignore")]
//! # async fn demo() -> Result<(), builddir_client::Error> {
//! use builddir_client::Client;
//!
//! let lease = Client::connect_default().await?.allocate("hello-1.0").await?;
//! // `lease.dir()` is the build directory's fd (O_DIRECTORY), owned by us,
//! // mode 0700, on a nosuid,nodev,exec mount; `lease.path()` its path.
//! std::fs::write(lease.path().join("main.c"), "int main(){return 0;}")?;
//! lease.release().await?;
//! # Ok(()) }
//! ```

pub mod blocking;
#[cfg(feature = "tokio")]
mod client;
mod error;
mod info;
#[cfg(feature = "tokio")]
mod lease;

pub use builddir_proto::{
    ErrorKind, ErrorReply, LeaseEntry, LeaseState, Owner, Released, SizeLimit, StatusReport,
};
#[cfg(feature = "tokio")]
pub use client::Client;
pub use error::Error;
pub use info::{default_socket, ServerInfo};
#[cfg(feature = "tokio")]
pub use lease::{Lease, RECLAIM_PATIENCE};
