use std::io;
use std::path::PathBuf;

use builddir_proto::{ErrorReply, ProtoError};

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be reached; the message says what to check.
    #[error("cannot connect to {path}: {reason} — {hint}", reason = describe(source), hint = hint(source))]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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

fn hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => {
            "is builddird.socket enabled? (systemctl enable --now builddird.socket)"
        }
        io::ErrorKind::PermissionDenied => {
            "is your user in the socket's group (SocketGroup= in builddird.socket)?"
        }
        io::ErrorKind::ConnectionRefused => {
            "builddird is not running; start builddird.socket or builddird"
        }
        _ => "check that builddird is running and --socket / BUILDDIR_SOCKET point at it",
    }
}
