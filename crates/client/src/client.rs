use std::path::{Path, PathBuf};

use builddir_proto::{
    Connection, ErrorReply, FdPolicy, Hello, HelloReply, LeaseEntry, Owner, Released, Request,
    Response, SizeLimit, StatusReport, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
};
use tokio::net::UnixStream;

use crate::{default_socket, Error, Lease, ServerInfo};

/// A connection to builddird.
///
/// The version handshake is pipelined: [`Client::connect`] sends the hello
/// and returns, and the daemon's answer is read just before the reply to
/// the first request, so a lease costs one round trip instead of two.
#[derive(Debug)]
pub struct Client {
    conn: Connection,
    socket: PathBuf,
    /// The daemon's welcome, once read.
    server: Option<ServerInfo>,
    /// Its refusal, once read (the connection is over then).
    refused: Option<ErrorReply>,
}

impl Client {
    /// Connects to `socket` and sends the version handshake. A daemon that
    /// refuses it (version, policy) makes the first request fail with
    /// [`Error::Refused`]; [`Client::handshake`] asks for the answer now.
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Client, Error> {
        let path = socket.as_ref();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|error| Error::Connect {
                path: path.to_owned(),
                error,
            })?;
        let mut conn = Connection::new(stream, FdPolicy::Accept);
        let client = concat!("builddir-client/", env!("CARGO_PKG_VERSION"));
        conn.write(&Hello::current(client), None).await?;
        let mut client = Client {
            conn,
            socket: path.to_owned(),
            server: None,
            refused: None,
        };
        // A pipelined request is encoded before the version is agreed:
        // safe only while this client speaks a single version. Once it
        // speaks several, it waits for the welcome first.
        if PROTOCOL_VERSION_MIN != PROTOCOL_VERSION {
            client.handshake().await?;
        }
        Ok(client)
    }

    /// Connects to [`default_socket`].
    pub async fn connect_default() -> Result<Client, Error> {
        Client::connect(default_socket()).await
    }

    /// Reads the daemon's answer to the handshake (once; later calls
    /// return what it said).
    pub async fn handshake(&mut self) -> Result<&ServerInfo, Error> {
        if let Some(e) = &self.refused {
            return Err(Error::Refused(e.clone()));
        }
        match self.server {
            Some(ref info) => Ok(info),
            None => {
                // No fds are discarded here: with the hello pipelined, the
                // next reply's descriptor may already sit in the queue.
                let info = match ServerInfo::from_hello(self.conn.expect::<HelloReply>().await?) {
                    Ok(info) => info,
                    Err(e) => {
                        self.refused = Some(e.clone());
                        return Err(Error::Refused(e));
                    }
                };
                Ok(self.server.insert(info))
            }
        }
    }

    /// What the daemon said in the handshake, if its answer was read yet
    /// (after the first request, or [`Client::handshake`]).
    pub fn server_info(&self) -> Option<&ServerInfo> {
        self.server.as_ref()
    }

    /// Sends one request and reads its response; on an error response, the
    /// fds that came with it are closed (a success's fds are the caller's
    /// to claim).
    pub(crate) async fn call(&mut self, request: &Request) -> Result<Response, Error> {
        if let Err(e) = self.conn.write(request, None).await {
            // A daemon that refused the pipelined hello has closed the
            // connection: its refusal, already sent, explains the failure.
            if self.server.is_none() {
                self.handshake().await?;
            }
            return Err(e.into());
        }
        self.handshake().await?;
        let response: Response = self.conn.expect().await?;
        match response {
            Response::Error(e) => {
                self.conn.discard_fds();
                Err(Error::Server(e))
            }
            r => Ok(r),
        }
    }

    /// The socket this client connected to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Resolves when the daemon closes the connection (it never speaks
    /// unasked, so anything that arrives means the connection is over).
    pub(crate) async fn closed(&mut self) {
        let _ = self.conn.read::<Response>().await;
    }

    /// Takes over lease `id` after a daemon restart.
    pub(crate) async fn reclaim(&mut self, id: &str, secret: &str) -> Result<(), Error> {
        let request = Request::Reclaim {
            id: id.to_owned(),
            secret: secret.to_owned(),
        };
        match self.call(&request).await? {
            Response::Reclaimed { .. } => Ok(()),
            _ => Err(Error::Unexpected("expected a reclaim confirmation")),
        }
    }

    pub(crate) fn take_fd(&mut self) -> Option<std::os::fd::OwnedFd> {
        self.conn.take_fd()
    }

    pub(crate) fn discard_fds(&mut self) {
        self.conn.discard_fds();
    }

    /// Allocates a build directory owned by the caller. `name` is shown in
    /// listings only. The lease takes over this connection.
    pub async fn allocate(self, name: &str) -> Result<Lease, Error> {
        Lease::allocate(self, name, None, None).await
    }

    /// Allocates a build directory owned by `owner` (needs an owner grant).
    pub async fn allocate_for(self, name: &str, owner: Owner) -> Result<Lease, Error> {
        Lease::allocate(self, name, Some(owner), None).await
    }

    /// Allocates a build directory with its own size limit: a build that
    /// writes past it gets `ENOSPC` or `EDQUOT` inside its tree, nothing
    /// else is affected. Needs `lease_backend = "tmpfs"` or
    /// `"project-quota"` (else `bad-request`, saying why); a limit above
    /// the daemon's cap is `quota-exceeded`.
    pub async fn allocate_limited(self, name: &str, limit: SizeLimit) -> Result<Lease, Error> {
        Lease::allocate(self, name, None, Some(limit)).await
    }

    /// Allocates with an optional owner (see [`Client::allocate_for`]) and
    /// an optional size limit (see [`Client::allocate_limited`]).
    pub async fn allocate_with(
        self,
        name: &str,
        owner: Option<Owner>,
        limit: Option<SizeLimit>,
    ) -> Result<Lease, Error> {
        Lease::allocate(self, name, owner, limit).await
    }

    /// Releases lease `id` (yours, or anyone's for operators). With `keep`,
    /// returns the kept path.
    pub async fn release(&mut self, id: &str, keep: bool) -> Result<Released, Error> {
        match self
            .call(&Request::Release {
                id: id.to_owned(),
                keep,
            })
            .await?
        {
            Response::Released(r) => Ok(r),
            _ => Err(Error::Unexpected("expected a release confirmation")),
        }
    }

    /// Ends lease `id` keeping its tree, handed over to `owner` rather than
    /// to the requester. Needs root or an owner grant for `owner`, and a
    /// daemon at protocol 3 ([`Error::TooOld`] otherwise; nothing is sent).
    pub async fn keep_for(&mut self, id: &str, owner: Owner) -> Result<Released, Error> {
        self.handshake().await?.check_keep_for()?;
        let request = Request::KeepFor {
            id: id.to_owned(),
            owner,
        };
        match self.call(&request).await? {
            Response::Released(r) if r.kept_path.is_some() => Ok(r),
            Response::Released(_) => Err(Error::Unexpected("keep reply without a kept path")),
            _ => Err(Error::Unexpected("expected a release confirmation")),
        }
    }

    /// Deletes lease or kept tree `id` (operators).
    pub async fn remove(&mut self, id: &str) -> Result<(), Error> {
        match self.call(&Request::Remove { id: id.to_owned() }).await? {
            Response::Removed { .. } => Ok(()),
            _ => Err(Error::Unexpected("expected a removal confirmation")),
        }
    }

    /// Lists your leases, or everyone's with `all` (operators).
    pub async fn list(&mut self, all: bool, size: bool) -> Result<Vec<LeaseEntry>, Error> {
        match self.call(&Request::List { all, size }).await? {
            Response::Leases(rows) => Ok(rows),
            _ => Err(Error::Unexpected("expected a lease list")),
        }
    }

    /// Deletes kept trees older than `older_than_secs` (0: all); yours, or
    /// everyone's for operators. Returns the ids deleted.
    pub async fn gc(&mut self, older_than_secs: u64) -> Result<Vec<String>, Error> {
        match self.call(&Request::Gc { older_than_secs }).await? {
            Response::Collected { ids } => Ok(ids),
            _ => Err(Error::Unexpected("expected a gc result")),
        }
    }

    /// The daemon's metrics as OpenMetrics text.
    pub async fn metrics(&mut self) -> Result<String, Error> {
        match self.call(&Request::Metrics).await? {
            Response::Metrics { text } => Ok(text),
            _ => Err(Error::Unexpected("expected metrics")),
        }
    }

    /// The daemon's status.
    pub async fn status(&mut self) -> Result<StatusReport, Error> {
        match self.call(&Request::Status).await? {
            Response::Status(s) => Ok(s),
            _ => Err(Error::Unexpected("expected a status report")),
        }
    }
}
