//! The same API for code without an async runtime. Each client owns a small
//! runtime with one worker thread, which keeps a [`Lease`] alive in the
//! background (it reclaims the lease if the daemon restarts).

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use builddir_proto::{LeaseEntry, Owner, Released, StatusReport};
use tokio::runtime::Runtime;

use crate::Error;

fn runtime() -> Result<Arc<Runtime>, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("builddir-lease")
        .enable_io()
        .enable_time()
        .build()
        .map(Arc::new)
        .map_err(|source| Error::Io {
            context: "cannot start a tokio runtime",
            source,
        })
}

/// A blocking [`crate::Client`].
#[derive(Debug)]
pub struct Client {
    inner: crate::Client,
    rt: Arc<Runtime>,
}

impl Client {
    /// Connects to `socket` and sends the handshake (its answer is read
    /// with the first reply, see [`crate::Client::connect`]).
    pub fn connect(socket: impl AsRef<Path>) -> Result<Client, Error> {
        let rt = runtime()?;
        let inner = rt.block_on(crate::Client::connect(socket))?;
        Ok(Client { rt, inner })
    }

    /// Reads the daemon's answer to the handshake now (see
    /// [`crate::Client::handshake`]).
    pub fn handshake(&mut self) -> Result<crate::ServerInfo, Error> {
        let rt = self.rt.clone();
        rt.block_on(self.inner.handshake()).cloned()
    }

    /// Connects to [`crate::default_socket`].
    pub fn connect_default() -> Result<Client, Error> {
        Client::connect(crate::default_socket())
    }

    /// See [`crate::Client::allocate`].
    pub fn allocate(self, name: &str) -> Result<Lease, Error> {
        let inner = self.rt.block_on(self.inner.allocate(name))?;
        Ok(Lease { rt: self.rt, inner })
    }

    /// See [`crate::Client::allocate_for`].
    pub fn allocate_for(self, name: &str, owner: Owner) -> Result<Lease, Error> {
        let inner = self.rt.block_on(self.inner.allocate_for(name, owner))?;
        Ok(Lease { rt: self.rt, inner })
    }

    /// See [`crate::Client::release`].
    pub fn release(&mut self, id: &str, keep: bool) -> Result<Released, Error> {
        self.rt.block_on(self.inner.release(id, keep))
    }

    /// See [`crate::Client::remove`].
    pub fn remove(&mut self, id: &str) -> Result<(), Error> {
        self.rt.block_on(self.inner.remove(id))
    }

    /// See [`crate::Client::list`].
    pub fn list(&mut self, all: bool, size: bool) -> Result<Vec<LeaseEntry>, Error> {
        self.rt.block_on(self.inner.list(all, size))
    }

    /// See [`crate::Client::status`].
    pub fn status(&mut self) -> Result<StatusReport, Error> {
        self.rt.block_on(self.inner.status())
    }
}

/// A blocking [`crate::Lease`]; dropping it releases the lease.
#[derive(Debug)]
pub struct Lease {
    // Field order is drop order: the connection closes before its runtime.
    inner: crate::Lease,
    rt: Arc<Runtime>,
}

impl Lease {
    pub fn id(&self) -> &str {
        self.inner.id()
    }

    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    pub fn dir(&self) -> BorrowedFd<'_> {
        self.inner.dir()
    }

    pub fn owner(&self) -> (u32, u32) {
        self.inner.owner()
    }

    pub fn path_matches_dir(&self) -> bool {
        self.inner.path_matches_dir()
    }

    /// See [`crate::Lease::release`].
    pub fn release(self) -> Result<(), Error> {
        self.rt.block_on(self.inner.release())
    }

    /// See [`crate::Lease::keep`].
    pub fn keep(self) -> Result<PathBuf, Error> {
        self.rt.block_on(self.inner.keep())
    }
}
