//! A client with no async runtime: std `UnixStream`, blocking calls, no
//! thread, no global state, no signal handlers. Every descriptor it holds is
//! close-on-exec (the socket, and each build directory as it arrives).
//!
//! One [`Client`] is one connection, and one connection holds any number of
//! leases: [`Client::allocate_dir`] hands out a [`BuildDir`] per build,
//! [`Client::release_dir`] / [`Client::keep_dir`] end one without touching
//! the others, and dropping the `Client` (closing the connection) makes the
//! daemon release every lease still held on it.
//!
//! With nothing running in the background, a daemon restart is handled by
//! the caller: when a call fails because the connection closed, connect
//! again and [`Client::reclaim_dir`] each lease (the daemon keeps them for
//! its reclaim grace period). Under systemd with the file-descriptor store
//! (the shipped units) the connection survives the restart and none of this
//! is needed.
//!
//! A call that fails on the wire (I/O, a timeout, a malformed or
//! unexpected reply) leaves the connection out of step: a late reply could
//! otherwise be read as the answer to the next request. Every later call on
//! that `Client` fails with [`Error::OutOfStep`]; drop it (the daemon then
//! releases its leases) and connect again. Typed errors from the daemon
//! ([`Error::Server`]) leave the connection usable.
//!
//! After `fork()`, only one of parent and child may use a `Client`: they
//! share the socket, and two processes talking on it interleave frames.
//! Use it in the parent; an `exec`'d child has none of its descriptors.
//!
//! ```no_run
//! # fn demo() -> Result<(), builddir_client::Error> {
//! use builddir_client::blocking::Client;
//!
//! let mut conn = Client::connect_default()?;
//! let a = conn.allocate_dir("a-1.0", None, None)?;
//! let b = conn.allocate_dir("b-2.0", None, None)?;
//! std::fs::write(a.path().join("main.c"), "int main(){return 0;}")?;
//! conn.release_dir(a)?;
//! let kept = conn.keep_dir(b)?.kept_path;
//! # Ok(()) }
//! ```
//!
//! [`Lease`] keeps the older one-lease-per-connection shape
//! (`Client::connect(s)?.allocate(name)?`): the lease owns its connection.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use builddir_proto::{
    BlockingConnection, FdPolicy, Hello, HelloReply, LeaseEntry, Owner, Released, Request,
    Response, SizeLimit, StatusReport,
};

use crate::{default_socket, Error, ServerInfo};

/// The name this client gives in the handshake (daemon logs show it).
const CLIENT_NAME: &str = concat!("builddir-client-blocking/", env!("CARGO_PKG_VERSION"));

/// A blocking connection to builddird.
#[derive(Debug)]
pub struct Client {
    conn: BlockingConnection,
    socket: PathBuf,
    server: ServerInfo,
    /// Bound on each call (`set_timeout`).
    timeout: Option<Duration>,
    /// A call failed on the wire: what the socket carries next may answer
    /// an earlier request, so nothing more is sent or read.
    broken: bool,
}

/// A build directory held on a [`Client`]'s connection.
///
/// Dropping it closes its descriptor only; the lease stays until
/// [`Client::release_dir`] / [`Client::keep_dir`] or until the connection
/// closes.
#[derive(Debug)]
pub struct BuildDir {
    dir: OwnedFd,
    id: String,
    path: PathBuf,
    uid: u32,
    gid: u32,
    secret: String,
    /// Device and inode of `dir`, from the `fstat` that checked it.
    dev_ino: (u64, u64),
}

impl Client {
    /// Connects to `socket` and completes the version handshake. A daemon
    /// that refuses (version, policy, load) is [`Error::Refused`].
    pub fn connect(socket: impl AsRef<Path>) -> Result<Client, Error> {
        let path = socket.as_ref();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    return Err(Error::Connect {
                        path: path.to_owned(),
                        error,
                    })
                }
            }
        };
        let mut conn = BlockingConnection::new(stream, FdPolicy::Accept);
        if let Err(e) = conn.write(&Hello::current(CLIENT_NAME), None) {
            // A daemon refusing for load answers before reading the hello
            // and closes: its refusal, already sent, explains the failure.
            return Err(match conn.read::<HelloReply>() {
                Ok(Some(HelloReply::Refused(r))) => Error::Refused(r),
                _ => e.into(),
            });
        }
        let server =
            ServerInfo::from_hello(conn.expect::<HelloReply>()?).map_err(Error::Refused)?;
        // Nothing rides with a hello reply; anything that did is closed.
        conn.discard_fds();
        Ok(Client {
            conn,
            socket: path.to_owned(),
            server,
            timeout: None,
            broken: false,
        })
    }

    /// Connects to [`default_socket`].
    pub fn connect_default() -> Result<Client, Error> {
        Client::connect(default_socket())
    }

    /// What the daemon said in the handshake.
    pub fn server_info(&self) -> &ServerInfo {
        &self.server
    }

    /// The daemon's handshake answer (read by [`Client::connect`] already;
    /// kept for callers of the earlier API).
    pub fn handshake(&mut self) -> Result<ServerInfo, Error> {
        Ok(self.server.clone())
    }

    /// The socket this client connected to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The connection's socket (to `poll` it: it becomes readable only when
    /// the daemon closes the connection, since the daemon never speaks
    /// unasked).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.conn.stream().as_fd()
    }

    /// Bounds each later call, from its request to its reply, to
    /// `timeout` (`None`: wait for ever, the default). A call that runs out
    /// fails with a timeout, after which the connection is out of step
    /// ([`Error::OutOfStep`]): drop it and connect again.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        self.timeout = timeout;
        Ok(())
    }

    /// Returns true if and only if a call failed on the wire and the
    /// connection is no longer used ([`Error::OutOfStep`]).
    pub fn is_out_of_step(&self) -> bool {
        self.broken
    }

    /// Runs one call unless the connection is out of step, and marks it so
    /// if the call fails on the wire (transport, local I/O, a reply that
    /// does not fit the request).
    fn step<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T, Error>) -> Result<T, Error> {
        if self.broken {
            return Err(Error::OutOfStep);
        }
        let result = f(self);
        if let Err(Error::Proto(_) | Error::Io { .. } | Error::Unexpected(_)) = &result {
            self.broken = true;
            self.conn.discard_fds();
        }
        result
    }

    /// Sends one request and reads the message that answers it, within the
    /// timeout.
    fn exchange(&mut self, request: &Request) -> Result<Response, Error> {
        self.conn
            .set_deadline(self.timeout.map(|t| Instant::now() + t));
        self.conn.write(request, None)?;
        Ok(self.conn.expect::<Response>()?)
    }

    /// Sends one request and reads its response; the response claims no
    /// descriptor, so any that came with it is closed.
    fn call(&mut self, request: &Request) -> Result<Response, Error> {
        let response = self.exchange(request)?;
        self.conn.discard_fds();
        match response {
            Response::Error(e) => Err(Error::Server(e)),
            r => Ok(r),
        }
    }

    /// Allocates a build directory on this connection. `name` is metadata
    /// for listings; `owner: None` is the caller itself (another owner
    /// needs a grant); `limit: None` the daemon's default size limit.
    pub fn allocate_dir(
        &mut self,
        name: &str,
        owner: Option<Owner>,
        limit: Option<SizeLimit>,
    ) -> Result<BuildDir, Error> {
        let request = Request::Allocate {
            name: name.to_owned(),
            owner,
            limit,
        };
        self.step(|c| c.allocate_inner(&request))
    }

    fn allocate_inner(&mut self, request: &Request) -> Result<BuildDir, Error> {
        let response = self.exchange(request)?;
        // The directory's fd rides on the reply's first byte: exactly one
        // descriptor, arrived with this very reply.
        let count = self.conn.fds_with_last();
        let dir = self.conn.take_fd();
        self.conn.discard_fds();
        let a = match response {
            Response::Allocated(a) => a,
            Response::Error(e) => return Err(Error::Server(e)),
            _ => return Err(Error::Unexpected("expected an allocation")),
        };
        let dir = match (dir, count) {
            (Some(dir), 1) => dir,
            (None, _) => {
                return Err(Error::Unexpected(
                    "allocation reply came without the directory fd",
                ))
            }
            _ => {
                return Err(Error::Unexpected(
                    "allocation reply came with more than one descriptor",
                ))
            }
        };
        let dev_ino = match rustix::fs::fstat(&dir) {
            Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() => {
                (st.st_dev, st.st_ino)
            }
            _ => {
                return Err(Error::Unexpected(
                    "the descriptor sent with the allocation is not a directory",
                ))
            }
        };
        if a.id.is_empty() || a.id.contains('\0') {
            return Err(Error::Unexpected(
                "allocation reply has an empty or NUL-bearing lease id",
            ));
        }
        if !a.path.starts_with('/') || a.path.contains('\0') {
            return Err(Error::Unexpected(
                "allocation reply has a path that is not absolute or holds a NUL",
            ));
        }
        Ok(BuildDir {
            dir,
            id: a.id,
            path: PathBuf::from(a.path),
            uid: a.uid,
            gid: a.gid,
            secret: a.secret,
            dev_ino,
        })
    }

    /// Ends `dir`'s lease; the daemon deletes the tree in the background.
    /// `limit_reached` in the answer says whether the build filled its
    /// size limit.
    pub fn release_dir(&mut self, dir: BuildDir) -> Result<Released, Error> {
        self.release(&dir.id, false)
    }

    /// Ends `dir`'s lease keeping the tree (it is handed over to the
    /// requester); the answer's `kept_path` says where it went.
    pub fn keep_dir(&mut self, dir: BuildDir) -> Result<Released, Error> {
        self.step(|c| {
            let r = c.release(&dir.id, true)?;
            if r.kept_path.is_none() {
                return Err(Error::Unexpected("keep reply without a kept path"));
            }
            Ok(r)
        })
    }

    /// Takes over `dir`'s lease on this (new) connection after the daemon
    /// restarted and the old connection closed.
    pub fn reclaim_dir(&mut self, dir: &BuildDir) -> Result<(), Error> {
        self.reclaim(&dir.id, &dir.secret)
    }

    /// Takes over lease `id` with its reclaim `secret`.
    pub fn reclaim(&mut self, id: &str, secret: &str) -> Result<(), Error> {
        let request = Request::Reclaim {
            id: id.to_owned(),
            secret: secret.to_owned(),
        };
        self.step(|c| match c.call(&request)? {
            Response::Reclaimed { id: got } if got == id => Ok(()),
            Response::Reclaimed { .. } => Err(Error::Unexpected(
                "reclaim confirmation names another lease",
            )),
            _ => Err(Error::Unexpected("expected a reclaim confirmation")),
        })
    }

    /// Allocates a build directory owned by the caller; the returned
    /// [`Lease`] owns this connection.
    pub fn allocate(self, name: &str) -> Result<Lease, Error> {
        Lease::new(self, name, None, None)
    }

    /// Like [`Client::allocate`], owned by `owner` (needs an owner grant).
    pub fn allocate_for(self, name: &str, owner: Owner) -> Result<Lease, Error> {
        Lease::new(self, name, Some(owner), None)
    }

    /// Like [`Client::allocate`], with a size limit (needs a sized lease
    /// backend, else `bad-request`).
    pub fn allocate_limited(self, name: &str, limit: SizeLimit) -> Result<Lease, Error> {
        Lease::new(self, name, None, Some(limit))
    }

    /// Ends `dir`'s lease keeping the tree, handed over to `owner` rather
    /// than to the requester (an orchestrator keeping a failed build for
    /// the user who asked for it). Needs root or an owner grant for
    /// `owner`, and a daemon at protocol 3: against an older one the answer
    /// is [`Error::TooOld`], nothing is sent and the lease stays held on
    /// this connection (end it by id with [`Client::release`]).
    pub fn keep_dir_for(&mut self, dir: BuildDir, owner: Owner) -> Result<Released, Error> {
        self.keep_for(&dir.id, owner)
    }

    /// Ends lease `id` keeping its tree for `owner` (see
    /// [`Client::keep_dir_for`]); the answer carries the kept path.
    pub fn keep_for(&mut self, id: &str, owner: Owner) -> Result<Released, Error> {
        self.server.check_keep_for()?;
        let request = Request::KeepFor {
            id: id.to_owned(),
            owner,
        };
        self.step(|c| {
            let r = c.released(id, &request)?;
            if r.kept_path.is_none() {
                return Err(Error::Unexpected("keep reply without a kept path"));
            }
            Ok(r)
        })
    }

    /// Releases lease `id` (yours, or anyone's for operators). With `keep`,
    /// the answer carries the kept path.
    pub fn release(&mut self, id: &str, keep: bool) -> Result<Released, Error> {
        let request = Request::Release {
            id: id.to_owned(),
            keep,
        };
        self.step(|c| c.released(id, &request))
    }

    /// Sends an ending request for lease `id` and reads its confirmation.
    fn released(&mut self, id: &str, request: &Request) -> Result<Released, Error> {
        match self.call(request)? {
            Response::Released(r) if r.id == id => Ok(r),
            Response::Released(_) => Err(Error::Unexpected(
                "release confirmation names another lease",
            )),
            _ => Err(Error::Unexpected("expected a release confirmation")),
        }
    }

    /// Deletes lease or kept tree `id` (operators).
    pub fn remove(&mut self, id: &str) -> Result<(), Error> {
        self.step(|c| match c.call(&Request::Remove { id: id.to_owned() })? {
            Response::Removed { id: got } if got == id => Ok(()),
            Response::Removed { .. } => Err(Error::Unexpected(
                "removal confirmation names another lease",
            )),
            _ => Err(Error::Unexpected("expected a removal confirmation")),
        })
    }

    /// Lists your leases, or everyone's with `all` (operators).
    pub fn list(&mut self, all: bool, size: bool) -> Result<Vec<LeaseEntry>, Error> {
        self.step(|c| match c.call(&Request::List { all, size })? {
            Response::Leases(rows) => Ok(rows),
            _ => Err(Error::Unexpected("expected a lease list")),
        })
    }

    /// Deletes kept trees older than `older_than_secs` (0: all); yours, or
    /// everyone's for operators. Returns the ids deleted.
    pub fn gc(&mut self, older_than_secs: u64) -> Result<Vec<String>, Error> {
        self.step(|c| match c.call(&Request::Gc { older_than_secs })? {
            Response::Collected { ids } => Ok(ids),
            _ => Err(Error::Unexpected("expected a gc result")),
        })
    }

    /// The daemon's metrics as OpenMetrics text.
    pub fn metrics(&mut self) -> Result<String, Error> {
        self.step(|c| match c.call(&Request::Metrics)? {
            Response::Metrics { text } => Ok(text),
            _ => Err(Error::Unexpected("expected metrics")),
        })
    }

    /// The daemon's status.
    pub fn status(&mut self) -> Result<StatusReport, Error> {
        self.step(|c| match c.call(&Request::Status)? {
            Response::Status(s) => Ok(s),
            _ => Err(Error::Unexpected("expected a status report")),
        })
    }
}

impl BuildDir {
    /// The lease id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The build directory's absolute path (for sandbox bind mounts and
    /// tools that need a path).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The build directory itself (`O_DIRECTORY`, close-on-exec), for the
    /// caller's own `*at()` file operations.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Owner uid and gid of the directory.
    pub fn owner(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }

    /// Device and inode numbers of the directory as received (from the
    /// `fstat` that checked it is a directory): what tells this directory
    /// from another one later opened under the same descriptor number.
    pub fn dev_ino(&self) -> (u64, u64) {
        self.dev_ino
    }

    /// Takes the directory's descriptor out (the lease itself stays until
    /// released by id or the connection closes).
    pub fn into_dir(self) -> OwnedFd {
        self.dir
    }

    /// The secret that proves this lease is ours in [`Client::reclaim_dir`].
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Returns true if and only if [`BuildDir::path`] names the directory
    /// [`BuildDir::dir`] refers to (same device and inode), checked now.
    pub fn path_matches_dir(&self) -> bool {
        let by_fd = rustix::fs::fstat(&self.dir);
        let by_path = rustix::fs::stat(&self.path);
        matches!((by_fd, by_path), (Ok(a), Ok(b)) if a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    }
}

/// One lease that owns its connection: dropping it (or the process dying)
/// closes the connection, and the daemon releases the lease.
#[derive(Debug)]
pub struct Lease {
    client: Client,
    dir: BuildDir,
}

impl Lease {
    fn new(
        mut client: Client,
        name: &str,
        owner: Option<Owner>,
        limit: Option<SizeLimit>,
    ) -> Result<Lease, Error> {
        let dir = client.allocate_dir(name, owner, limit)?;
        Ok(Lease { client, dir })
    }

    /// The lease id.
    pub fn id(&self) -> &str {
        self.dir.id()
    }

    /// The build directory's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The build directory's descriptor.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.dir()
    }

    /// Owner uid and gid of the directory.
    pub fn owner(&self) -> (u32, u32) {
        self.dir.owner()
    }

    /// See [`BuildDir::path_matches_dir`].
    pub fn path_matches_dir(&self) -> bool {
        self.dir.path_matches_dir()
    }

    /// The connection this lease holds (for `list`, `status`, more leases).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Ends the lease; the daemon deletes the tree in the background.
    pub fn release(self) -> Result<(), Error> {
        let Lease { mut client, dir } = self;
        client.release_dir(dir).map(|_| ())
    }

    /// Ends the lease but keeps the tree; returns where it now lives.
    pub fn keep(self) -> Result<PathBuf, Error> {
        let Lease { mut client, dir } = self;
        client
            .keep_dir(dir)?
            .kept_path
            .map(PathBuf::from)
            .ok_or(Error::Unexpected("keep reply without a kept path"))
    }
}
