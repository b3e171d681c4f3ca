//! Errors of the transport layer (framing, encoding, fd passing).

use std::io;

/// What went wrong while talking to the peer.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// A syscall on the socket failed.
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    /// The length prefix announced a frame above [`crate::MAX_FRAME`].
    #[error("frame rejected: {0}")]
    Frame(#[source] io::Error),
    /// A complete frame did not hold a valid message.
    #[error("malformed message: {0}")]
    Decode(#[source] bincode::Error),
    /// A message could not be encoded (for example above the size cap).
    #[error("cannot encode message: {0}")]
    Encode(#[source] bincode::Error),
    /// The peer closed the stream in the middle of a frame.
    #[error("connection closed in the middle of a frame ({0} bytes pending)")]
    Truncated(usize),
    /// The peer closed the stream where a message was expected.
    #[error("connection closed by peer")]
    Closed,
    /// The peer sent file descriptors that nothing asked for. They have
    /// already been closed.
    #[error("peer sent {0} file descriptor(s) unasked; they were closed")]
    UnexpectedFds(usize),
    /// The kernel truncated the control message (`MSG_CTRUNC`): the peer sent
    /// more descriptors than the receive buffer holds. Any that arrived were
    /// closed.
    #[error("control message truncated (MSG_CTRUNC): peer sent too many file descriptors")]
    ControlTruncated,
    /// The kernel truncated the control message because this process is at
    /// its open-file limit: a descriptor the peer sent was dropped.
    #[error("this process is at its open-file limit (RLIMIT_NOFILE), so a file descriptor builddird sent was dropped: close descriptors or raise the limit (ulimit -n)")]
    FdLimit,
    /// The peer did not answer within the allowed time.
    #[error("timed out waiting for the peer")]
    TimedOut,
}

impl ProtoError {
    /// Returns true if and only if the peer is simply gone (EOF, reset,
    /// broken pipe): the normal end of a connection, not worth a warning.
    pub fn is_disconnect(&self) -> bool {
        match self {
            ProtoError::Closed => true,
            ProtoError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}
