//! Client for builddird: lease an exec-capable build directory, received
//! as a file descriptor.
//!
//! A [`Lease`] owns its connection to the daemon: it lives exactly as long
//! as that connection. [`Lease::release`] ends it and the daemon deletes the
//! tree in the background; [`Lease::keep`] moves the tree to the kept area
//! and returns its path; dropping a `Lease` (or the process dying, even by
//! `kill -9`) closes the connection and the daemon releases it.
//!
//! ```no_run
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
//!
//! Non-async orchestrators use [`blocking`].

pub mod blocking;
mod client;
mod error;
mod lease;

pub use builddir_proto::{
    ErrorKind, ErrorReply, LeaseEntry, LeaseState, Owner, SizeLimit, StatusReport,
};
pub use client::{default_socket, Client, ServerInfo};
pub use error::Error;
pub use lease::Lease;
