//! A failed call: its status and its one-line message (cause and fix).

use builddir_client::{Error, ErrorKind};
use builddir_proto::ProtoError;

use crate::abi::builddir_status::{self, *};

/// What a call returns to C when it fails.
#[derive(Debug)]
pub struct Failure {
    pub status: builddir_status,
    pub message: String,
}

impl Failure {
    pub fn new(status: builddir_status, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    /// A caller mistake: `BUILDDIR_ERR_INVALID_ARGUMENT`.
    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(BUILDDIR_ERR_INVALID_ARGUMENT, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let status = match &e {
            Error::Connect { .. } => BUILDDIR_ERR_CONNECT,
            Error::Refused(r) | Error::Server(r) => of_kind(r.kind),
            Error::Proto(p) => of_proto(p),
            Error::Unexpected(_) | Error::TooOld { .. } => BUILDDIR_ERR_PROTOCOL,
            Error::LeaseLost(_) | Error::Io { .. } | Error::OutOfStep => BUILDDIR_ERR_IO,
        };
        let message = match &e {
            Error::Proto(ProtoError::TimedOut) => "builddird did not answer within the timeout: the connection is out of step (a late reply would answer the wrong call); close it (the daemon then releases its leases) and connect again".to_owned(),
            Error::Proto(p @ ProtoError::FdLimit) => format!("{p}; the connection is out of step: close it (the daemon then releases its leases) and connect again"),
            Error::Proto(p) if status == BUILDDIR_ERR_IO => {
                format!("connection to builddird lost: {p} — is builddird running? after a daemon restart builddir_reconnect takes the leases over; else close the connection and connect again")
            }
            _ => e.to_string(),
        };
        Failure { status, message }
    }
}

/// The daemon's typed errors map one to one, but for a version mismatch,
/// which is a protocol failure to the caller.
fn of_kind(kind: ErrorKind) -> builddir_status {
    match kind {
        ErrorKind::PermissionDenied => BUILDDIR_ERR_PERMISSION_DENIED,
        ErrorKind::QuotaExceeded => BUILDDIR_ERR_QUOTA_EXCEEDED,
        ErrorKind::NoSpace => BUILDDIR_ERR_NO_SPACE,
        ErrorKind::InvalidName => BUILDDIR_ERR_INVALID_NAME,
        ErrorKind::NotFound => BUILDDIR_ERR_NOT_FOUND,
        ErrorKind::UnsupportedVersion => BUILDDIR_ERR_PROTOCOL,
        ErrorKind::Busy => BUILDDIR_ERR_BUSY,
        ErrorKind::Internal => BUILDDIR_ERR_INTERNAL,
        ErrorKind::BadRequest => BUILDDIR_ERR_BAD_REQUEST,
    }
}

/// A broken connection is I/O; a peer that says nonsense is protocol.
fn of_proto(e: &ProtoError) -> builddir_status {
    match e {
        ProtoError::Io { .. } | ProtoError::Closed | ProtoError::TimedOut | ProtoError::FdLimit => {
            BUILDDIR_ERR_IO
        }
        ProtoError::Frame(_)
        | ProtoError::Decode(_)
        | ProtoError::Encode(_)
        | ProtoError::Truncated(_)
        | ProtoError::UnexpectedFds(_)
        | ProtoError::ControlTruncated => BUILDDIR_ERR_PROTOCOL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use builddir_client::ErrorReply;

    #[test]
    fn daemon_kinds_map_to_their_statuses() {
        let f = Failure::from(Error::Server(ErrorReply::new(ErrorKind::NoSpace, "full")));
        assert_eq!(f.status, BUILDDIR_ERR_NO_SPACE);
        assert!(f.message.contains("full"));
        let f = Failure::from(Error::Refused(ErrorReply::new(
            ErrorKind::UnsupportedVersion,
            "old",
        )));
        assert_eq!(f.status, BUILDDIR_ERR_PROTOCOL);
        assert_eq!(
            Failure::from(Error::Proto(ProtoError::Closed)).status,
            BUILDDIR_ERR_IO
        );
        assert_eq!(
            Failure::from(Error::Proto(ProtoError::UnexpectedFds(2))).status,
            BUILDDIR_ERR_PROTOCOL
        );
    }
}
