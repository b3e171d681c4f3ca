use std::io;
use std::path::PathBuf;

use builddir_proto::{ErrorReply, ProtoError};

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be reached; the message says what to check, for
    /// a host with systemd and for a daemon run by hand. The I/O error is
    /// part of the message, not a separate cause, so a one-line report of
    /// the chain does not say it twice.
    #[error("cannot connect to {path}: {reason} — {hint}", reason = describe(error), hint = hint(error, path))]
    Connect { path: PathBuf, error: io::Error },
    /// The daemon refused the handshake (version, policy, load).
    #[error("builddird refused the connection: {0}")]
    Refused(ErrorReply),
    /// The daemon answered a request with a typed error.
    #[error("{0}")]
    Server(ErrorReply),
    /// Transport failure (framing, fd passing, connection lost).
    #[error("{0}")]
    Proto(#[from] ProtoError),
    /// The daemon answered with something that does not fit the request.
    #[error("protocol error: {0}")]
    Unexpected(&'static str),
    /// The lease ended without being asked to: builddird restarted and did
    /// not take it back (its grace period passed, or it was removed).
    #[error("lease {0} was lost: builddird restarted and did not accept it back within its reclaim grace period")]
    LeaseLost(String),
    /// An earlier call on this connection failed on the wire, so a reply
    /// still on its way could be read as the answer to this one; nothing
    /// more is sent on it.
    #[error("the connection is out of step: close it and connect again")]
    OutOfStep,
    /// The daemon speaks an older protocol version that lacks the request;
    /// nothing was sent.
    #[error(
        "builddird speaks protocol version {has}; {what} needs version {needs}: upgrade builddird"
    )]
    TooOld {
        what: &'static str,
        needs: u32,
        has: u32,
    },
    /// A local filesystem step failed.
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The daemon's typed error, if this is one.
    pub fn reply(&self) -> Option<&ErrorReply> {
        match self {
            Error::Refused(r) | Error::Server(r) => Some(r),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(source: io::Error) -> Error {
        Error::Io {
            context: "local I/O",
            source,
        }
    }
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => e.to_string(),
    }
}

fn hint(e: &io::Error, path: &std::path::Path) -> String {
    let path = path.display();
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => format!(
            "builddird is not listening there: start it (with systemd: \
             systemctl enable --now builddird.socket; without: builddird --socket {path} &, as root), \
             or point --socket / BUILDDIR_SOCKET at its socket"
        ),
        io::ErrorKind::PermissionDenied => "your user may not use that socket: ask its operator to add you \
             to the socket's group (usermod -aG builddir USER, then log in again)"
            .to_owned(),
        _ => "check that builddird is running and --socket / BUILDDIR_SOCKET point at it".to_owned(),
    }
}
