//! The connection behind `builddir_conn`: one blocking client and the
//! leases allocated on it. Safe code; `api` does the pointer work.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use builddir_client::blocking::Client;
use builddir_client::{Owner, Released, SizeLimit};
use builddir_proto::{validate_name, ErrorKind};
use rustix::process::{getpid, Pid};

use crate::abi::builddir_status::*;
use crate::failure::Failure;
use crate::fork_marker::ForkMarker;

/// Longest socket path a Unix socket address holds (`sun_path` less NUL).
const SUN_PATH_MAX: usize = 107;

/// One connection, many leases (opaque to C).
#[derive(Debug)]
pub struct Conn {
    client: Client,
    leases: HashMap<String, Held>,
    /// The process that connected: a forked child must not talk on the
    /// parent's socket (their frames would interleave). The PID alone is
    /// fooled by PID namespaces (parent and child both PID 1 of theirs);
    /// the marker page is not.
    pid: Pid,
    marker: Option<ForkMarker>,
    /// The timeout set by `builddir_set_timeout`, for a new connection.
    timeout: Option<std::time::Duration>,
}

/// A lease allocated on this connection: its directory's descriptor
/// (until the lease ends or the caller's call to end it), the identity of
/// that directory so that ending the lease closes our descriptor and never
/// a stranger's that reuses the number, and the secret that reclaims it.
#[derive(Debug)]
struct Held {
    fd: Option<OwnedFd>,
    dev: u64,
    ino: u64,
    secret: String,
}

impl Held {
    /// Closes the directory's descriptor (see [`close_if_ours`]).
    fn close(&mut self) {
        if let Some(fd) = self.fd.take() {
            close_if_ours(fd, self.dev, self.ino);
        }
    }
}

/// Returns true if `e` is a failure on the wire: the daemon's answer was not
/// read (or made no sense), so the lease may well still be held.
fn on_the_wire(e: &builddir_client::Error) -> bool {
    use builddir_client::Error as E;
    matches!(
        e,
        E::Proto(_) | E::Io { .. } | E::Unexpected(_) | E::OutOfStep
    )
}

/// Returns true if a keep-for failed before the daemon acted on the lease:
/// it refused the owner (the lease is untouched; see `Session::release` in
/// the daemon), or the daemon is too old and nothing was sent.
fn refused_before_ending(e: &builddir_client::Error) -> bool {
    use builddir_client::Error as E;
    match e {
        E::TooOld { .. } => true,
        E::Server(r) => r.kind == ErrorKind::PermissionDenied,
        _ => false,
    }
}

/// How a lease ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The daemon deletes the tree.
    Release,
    /// The tree is kept for the requesting uid.
    Keep,
    /// The tree is kept for another owner (root or an owner grant).
    KeepFor(Owner),
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
            marker: ForkMarker::new(),
            timeout: None,
        })
    }

    fn same_process(&self) -> Result<(), Failure> {
        let maker = self.marker.as_ref().is_none_or(ForkMarker::in_maker);
        if maker && getpid() == self.pid {
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
        // The identity the client checked the descriptor with (an `fstat`
        // on arrival: a directory), to close only this directory later.
        let (dev, ino) = dir.dev_ino();
        let granted = Granted {
            fd: dir.dir().as_raw_fd(),
            uid: dir.owner().0,
            gid: dir.owner().1,
            id: dir.id().to_owned(),
            path: dir.path().to_str().unwrap_or_default().to_owned(),
        };
        let secret = dir.secret().to_owned();
        self.leases.insert(
            granted.id.clone(),
            Held {
                fd: Some(dir.into_dir()),
                dev,
                ino,
                secret,
            },
        );
        Ok(granted)
    }

    /// Ends lease `id` (kept or released). Its descriptor is closed
    /// whatever the daemon answers; a lease this connection does not hold
    /// is `BUILDDIR_ERR_INVALID_ARGUMENT`. A call that fails on the wire
    /// leaves the lease in the table (without its descriptor), so that
    /// `builddir_reconnect` can still take it over and the caller end it
    /// after.
    ///
    /// A keep for another owner that the daemon refuses before touching the
    /// lease (no right to name that owner, a daemon too old for it) leaves
    /// it held too: the caller may still keep it for itself or release it.
    pub fn end(&mut self, id: &str, ending: Ending) -> Result<Released, Failure> {
        self.same_process()?;
        let Some(held) = self.leases.get_mut(id) else {
            return Err(Failure::invalid(format!(
                "lease {id:?} is not held on this connection (ended already, or allocated on another); pass a lease builddir_allocate filled in on this connection"
            )));
        };
        // The descriptor is closed whatever the daemon answers, once it has
        // (as the Rust client closes a `BuildDir` it released): the request
        // waits for nothing but the daemon.
        let closing = Closing(held.fd.take().map(|fd| (fd, held.dev, held.ino)));
        let result = match ending {
            Ending::Release => self.client.release(id, false),
            Ending::Keep => self.client.release(id, true),
            Ending::KeepFor(owner) => self.client.keep_for(id, owner),
        };
        drop(closing);
        let still_held = match &result {
            Err(e) if on_the_wire(e) => true,
            Err(e) if matches!(ending, Ending::KeepFor(_)) => refused_before_ending(e),
            _ => false,
        };
        if !still_held {
            self.leases.remove(id);
        }
        let released = result?;
        if ending != Ending::Release && released.kept_path.is_none() {
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
            match client.reclaim(id, &held.secret) {
                Ok(()) => {}
                Err(builddir_client::Error::Server(r)) if r.kind == ErrorKind::NotFound => {
                    gone.push(id.clone())
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.client = client;
        for id in &gone {
            if let Some(mut held) = self.leases.remove(id) {
                held.close();
            }
        }
        Ok(gone.len() as u32)
    }
}

/// A lease's descriptor, closed as [`close_if_ours`] does when this drops
/// (a panic on the way included).
struct Closing(Option<(OwnedFd, u64, u64)>);

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some((fd, dev, ino)) = self.0.take() {
            close_if_ours(fd, dev, ino);
        }
    }
}

/// Closes the lease's descriptor if the number still refers to the build
/// dir we received (the caller may have closed it, and the number been
/// reused); otherwise leaves that number alone. The limit, documented in
/// the header: a caller that closed it and opened the same directory again
/// under the same number loses that descriptor.
fn close_if_ours(fd: OwnedFd, dev: u64, ino: u64) {
    let same = rustix::fs::fstat(&fd).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino);
    if same {
        drop(fd);
    } else {
        // Not ours any more: forget the number without closing it.
        let _ = fd.into_raw_fd();
    }
}

impl Drop for Conn {
    /// Closing the socket releases every lease on the daemon's side; the
    /// directory descriptors are closed the same careful way.
    fn drop(&mut self) {
        for (_, mut held) in self.leases.drain() {
            held.close();
        }
    }
}
