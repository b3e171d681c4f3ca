//! The connection behind `builddir_conn`: one blocking client and the
//! leases allocated on it. Safe code; `api` does the pointer work.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::path::PathBuf;

use builddir_client::blocking::{BuildDir, Client};
use builddir_client::{Owner, Released, SizeLimit};
use builddir_proto::{validate_name, ErrorKind};
use rustix::process::{getpid, Pid};

use crate::abi::builddir_status::*;
use crate::failure::Failure;

/// Longest socket path a Unix socket address holds (`sun_path` less NUL).
const SUN_PATH_MAX: usize = 107;

/// One connection, many leases (opaque to C).
#[derive(Debug)]
pub struct Conn {
    client: Client,
    leases: HashMap<String, Held>,
    /// The process that connected: a forked child must not talk on the
    /// parent's socket (their frames would interleave).
    pid: Pid,
    /// The timeout set by `builddir_set_timeout`, for a new connection.
    timeout: Option<std::time::Duration>,
}

/// A lease allocated on this connection: its directory, and the identity
/// of that directory's fd so that ending the lease closes our descriptor
/// and never a stranger's that reuses the number.
#[derive(Debug)]
struct Held {
    dir: BuildDir,
    dev: u64,
    ino: u64,
}

/// What the caller's `builddir_lease` gets.
#[derive(Debug)]
pub struct Granted {
    pub fd: RawFd,
    pub uid: u32,
    pub gid: u32,
    pub id: String,
    pub path: String,
}

impl Conn {
    /// Connects to `socket` (`None`: `$BUILDDIR_SOCKET`, else the default)
    /// and completes the handshake.
    pub fn connect(socket: Option<String>) -> Result<Conn, Failure> {
        let path = match socket {
            Some(s) => PathBuf::from(s),
            None => builddir_client::default_socket(),
        };
        let len = path.as_os_str().len();
        if len == 0 {
            return Err(Failure::invalid(
                "socket path is empty; pass NULL for the default or a path",
            ));
        }
        if len > SUN_PATH_MAX {
            return Err(Failure::invalid(format!(
                "socket path {} is {len} bytes, a Unix socket address holds {SUN_PATH_MAX}; use a shorter path",
                path.display()
            )));
        }
        let client = Client::connect(&path)?;
        Ok(Conn {
            client,
            leases: HashMap::new(),
            pid: getpid(),
            timeout: None,
        })
    }

    fn same_process(&self) -> Result<(), Failure> {
        if getpid() == self.pid {
            return Ok(());
        }
        Err(Failure::invalid(
            "this connection belongs to the parent process (used after fork); connect again in the child",
        ))
    }

    /// Allocates a lease. `name` is checked here as the daemon would
    /// (`BUILDDIR_ERR_INVALID_NAME`), saving a round trip.
    pub fn allocate(
        &mut self,
        name: &str,
        owner: Option<Owner>,
        limit: Option<SizeLimit>,
    ) -> Result<Granted, Failure> {
        self.same_process()?;
        validate_name(name).map_err(|e| {
            Failure::new(
                BUILDDIR_ERR_INVALID_NAME,
                format!("{}: {}", ErrorKind::InvalidName, e.message),
            )
        })?;
        let dir = self.client.allocate_dir(name, owner, limit)?;
        let fits = dir.id().len() < crate::abi::BUILDDIR_ID_MAX
            && dir.path().as_os_str().len() < crate::abi::BUILDDIR_PATH_MAX
            && dir.path().to_str().is_some();
        if !fits {
            let id = dir.id().to_owned();
            let _ = self.client.release_dir(dir);
            return Err(Failure::new(
                BUILDDIR_ERR_PROTOCOL,
                format!("builddird sent a lease ({id}) whose id or path does not fit the C buffers; it was released — upgrade libbuilddir"),
            ));
        }
        let st = match rustix::fs::fstat(dir.dir()) {
            Ok(st) => st,
            Err(e) => {
                // Not handed out, so not left held either.
                let _ = self.client.release_dir(dir);
                return Err(Failure::new(
                    BUILDDIR_ERR_IO,
                    format!("fstat on the received build dir failed: {e}; the lease was released"),
                ));
            }
        };
        let granted = Granted {
            fd: dir.dir().as_raw_fd(),
            uid: dir.owner().0,
            gid: dir.owner().1,
            id: dir.id().to_owned(),
            path: dir.path().to_str().unwrap_or_default().to_owned(),
        };
        self.leases.insert(
            granted.id.clone(),
            Held {
                dir,
                dev: st.st_dev,
                ino: st.st_ino,
            },
        );
        Ok(granted)
    }

    /// Ends lease `id` (kept or released). Its descriptor is closed
    /// whatever the daemon answers; a lease this connection does not hold
    /// is `BUILDDIR_ERR_INVALID_ARGUMENT`.
    pub fn end(&mut self, id: &str, keep: bool) -> Result<Released, Failure> {
        self.same_process()?;
        let Some(held) = self.leases.remove(id) else {
            return Err(Failure::invalid(format!(
                "lease {id:?} is not held on this connection (ended already, or allocated on another); pass a lease builddir_allocate filled in on this connection"
            )));
        };
        let result = self.client.release(id, keep);
        close_if_ours(held.dir, held.dev, held.ino);
        let released = result?;
        if keep && released.kept_path.is_none() {
            return Err(Failure::new(
                BUILDDIR_ERR_PROTOCOL,
                "builddird kept the lease but sent no kept path; see `builddir-ctl list`",
            ));
        }
        Ok(released)
    }

    /// See `builddir_set_timeout`.
    pub fn set_timeout(&mut self, t: Option<std::time::Duration>) -> Result<(), Failure> {
        self.same_process()?;
        self.client.set_timeout(t)?;
        self.timeout = t;
        Ok(())
    }

    /// Replaces the connection with a new one to the same socket and takes
    /// over every lease held on the old one (after a daemon restart without
    /// the fd store). Leases the daemon no longer has are dropped (their
    /// descriptors closed); returns how many. On failure the connection is
    /// left as it was, and the call can be retried.
    pub fn reconnect(&mut self) -> Result<u32, Failure> {
        self.same_process()?;
        let mut client = Client::connect(self.client.socket())?;
        client.set_timeout(self.timeout)?;
        let mut gone = Vec::new();
        for (id, held) in &self.leases {
            match client.reclaim_dir(&held.dir) {
                Ok(()) => {}
                Err(builddir_client::Error::Server(r)) if r.kind == ErrorKind::NotFound => {
                    gone.push(id.clone())
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.client = client;
        for id in &gone {
            if let Some(held) = self.leases.remove(id) {
                close_if_ours(held.dir, held.dev, held.ino);
            }
        }
        Ok(gone.len() as u32)
    }
}

/// Closes the lease's descriptor if the number still refers to the build
/// dir we received (the caller may have closed it, and the number been
/// reused); otherwise leaves that number alone.
fn close_if_ours(dir: BuildDir, dev: u64, ino: u64) {
    let same = rustix::fs::fstat(dir.dir()).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino);
    if same {
        drop(dir);
    } else {
        // Not ours any more: forget the number without closing it.
        let _ = dir.into_dir().into_raw_fd();
    }
}

impl Drop for Conn {
    /// Closing the socket releases every lease on the daemon's side; the
    /// directory descriptors are closed the same careful way.
    fn drop(&mut self) {
        for (_, Held { dir, dev, ino }) in self.leases.drain() {
            close_if_ours(dir, dev, ino);
        }
    }
}
