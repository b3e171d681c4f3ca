//! Every message that crosses the socket.
//!
//! bincode carries no field names or tags: any change to these types changes
//! the wire format and must bump [`crate::PROTOCOL_VERSION`].

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::{MAGIC, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN};

/// The client's first message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal [`MAGIC`].
    pub magic: [u8; 8],
    /// Oldest protocol version the client speaks.
    pub min_version: u32,
    /// Newest protocol version the client speaks.
    pub max_version: u32,
    /// Free-form client name and version, for logs.
    pub client: String,
}

impl Hello {
    /// A hello for the versions this build speaks.
    pub fn current(client: &str) -> Hello {
        Hello {
            magic: MAGIC,
            min_version: PROTOCOL_VERSION_MIN,
            max_version: PROTOCOL_VERSION,
            client: client.to_owned(),
        }
    }
}

/// The server's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// The connection is open for requests at `version`.
    Welcome {
        version: u32,
        server_version: String,
        features: Vec<String>,
    },
    /// The server will not talk to this client; it closes the connection.
    Refused(ErrorReply),
}

/// Who should own an allocated directory (when the peer is granted that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Per-build limits asked for at allocation. 0 means "the default".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeLimit {
    pub bytes: u64,
    pub inodes: u64,
}

/// A request, after the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Create a build directory. `name` is metadata for listings only (a
    /// derivation name, a job id); it never becomes part of a path.
    /// `owner: None` means the peer itself (`SO_PEERCRED`).
    Allocate {
        name: String,
        owner: Option<Owner>,
        /// A size limit for the build (needs `lease_backend = "tmpfs"`);
        /// `None`: the configured default.
        limit: Option<SizeLimit>,
    },
    /// End a lease held by this connection. With `keep`, the tree is moved
    /// to the kept area instead of being deleted.
    Release { id: String, keep: bool },
    /// List leases: the peer's own, or (operators) everyone's.
    List { all: bool, size: bool },
    /// Daemon status.
    Status,
    /// Delete any lease or kept tree (operators only).
    Remove { id: String },
    /// Delete kept trees older than `older_than_secs` (0: all): the peer's
    /// own, or everyone's for operators.
    Gc { older_than_secs: u64 },
    /// Counters and gauges in the Prometheus/OpenMetrics text format.
    Metrics,
    /// Take over a lease whose connection was lost (the daemon restarted),
    /// proving it with the secret from [`Allocated::secret`].
    Reclaim { id: String, secret: String },
    /// End a lease held by this connection keeping the tree, handed over to
    /// `owner` rather than to the requester: an orchestrator that builds for
    /// its own clients (the Nix daemon) keeps a failed build's tree for the
    /// user who asked for the build. Needs root or an owner grant for
    /// `owner`, as [`Request::Allocate`] does. Protocol 3 onwards.
    KeepFor { id: String, owner: Owner },
}

/// A response to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The build directory's descriptor rides with this message.
    Allocated(Allocated),
    Released(Released),
    Leases(Vec<LeaseEntry>),
    Status(StatusReport),
    Removed {
        id: String,
    },
    /// Ids of the kept trees a [`Request::Gc`] deleted.
    Collected {
        ids: Vec<String>,
    },
    /// OpenMetrics text, ending in `# EOF`.
    Metrics {
        text: String,
    },
    /// The lease now belongs to this connection.
    Reclaimed {
        id: String,
    },
    Error(ErrorReply),
}

/// A new lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocated {
    pub id: String,
    /// Absolute path of the build directory, for tools that need one.
    pub path: String,
    pub uid: u32,
    pub gid: u32,
    /// Proves ownership when reclaiming the lease after a daemon restart.
    /// 128 random bits; never logged.
    pub secret: String,
}

/// A lease that ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub id: String,
    /// Where the tree went, if it was kept.
    pub kept_path: Option<String>,
    /// True if the build filled its size or inode limit (the lease's tmpfs
    /// or project quota was full when it ended); false without a limit.
    pub limit_reached: bool,
}

/// What a lease's directory is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseState {
    /// Held by a connected client.
    Live,
    /// Released with keep; stays until retention or an operator removes it.
    Kept,
    /// Released; the tree is being deleted in the background.
    Reaping,
    /// Deletion gave up (mount point inside, refilling writer, errors); the
    /// tree stays in trash and is retried at the next start.
    Quarantined,
    /// Released, its tree deleted (or being deleted), but its tmpfs is still
    /// held by a process of the build (the detach is lazy): its memory stays
    /// counted until the kernel reports the tmpfs gone. Protocol 2 onwards.
    Detaching,
}

impl LeaseState {
    /// The lower-case name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Live => "live",
            LeaseState::Kept => "kept",
            LeaseState::Reaping => "reaping",
            LeaseState::Quarantined => "quarantined",
            LeaseState::Detaching => "detaching",
        }
    }
}

impl fmt::Display for LeaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEntry {
    pub id: String,
    pub name: String,
    pub state: LeaseState,
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// Credentials of the connection that asked for it (`SO_PEERCRED`).
    pub peer_uid: u32,
    pub peer_pid: u32,
    /// The peer's command (`/proc/PID/comm`) at connect time.
    pub peer_command: String,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    pub path: String,
    /// Bytes in the tree, when asked for with `size`.
    pub size_bytes: Option<u64>,
    /// The build's size limit (tmpfs leases), if any.
    pub limit_bytes: Option<u64>,
}

/// The daemon's state, for `builddir-ctl status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub server_version: String,
    pub protocol_version: u32,
    pub uptime_secs: u64,
    pub root: String,
    pub backing: String,
    /// Mount flags as verified by `fstatvfs` on the root fd.
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub free_inodes: u64,
    pub connections: u64,
    pub live: u64,
    pub kept: u64,
    pub reaping: u64,
    pub quarantined: u64,
    pub reaped_total: u64,
    pub reap_errors: u64,
    /// The most recent reap error, if any (`path: error`).
    pub last_reap_error: Option<String>,
    /// Leases released whose tmpfs a process of the build still holds.
    pub detaching: u64,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    PermissionDenied,
    QuotaExceeded,
    NoSpace,
    InvalidName,
    NotFound,
    UnsupportedVersion,
    Busy,
    Internal,
    /// The peer broke the protocol (bad magic, fds sent, malformed frame).
    BadRequest,
}

impl ErrorKind {
    /// The stable kebab-case name (logs, JSON, metrics labels).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::PermissionDenied => "permission-denied",
            ErrorKind::QuotaExceeded => "quota-exceeded",
            ErrorKind::NoSpace => "no-space",
            ErrorKind::InvalidName => "invalid-name",
            ErrorKind::NotFound => "not-found",
            ErrorKind::UnsupportedVersion => "unsupported-version",
            ErrorKind::Busy => "busy",
            ErrorKind::Internal => "internal",
            ErrorKind::BadRequest => "bad-request",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed error with a human message (cause and what to do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

impl ErrorReply {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ErrorReply {}

/// Longest lease name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Checks a lease name: at most [`MAX_NAME_LEN`] bytes, printable, no
/// control characters (names end up in logs and tables).
pub fn validate_name(name: &str) -> Result<(), ErrorReply> {
    if name.len() > MAX_NAME_LEN {
        return Err(ErrorReply::new(
            ErrorKind::InvalidName,
            format!(
                "name is {} bytes, the limit is {MAX_NAME_LEN}; use a shorter name",
                name.len()
            ),
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(ErrorReply::new(
            ErrorKind::InvalidName,
            format!("name contains control character {c:?}; use printable characters only"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_control_chars_or_too_long_are_invalid() {
        assert!(validate_name("hello-1.0.drv").is_ok());
        assert!(validate_name("").is_ok());
        assert_eq!(
            validate_name("a\nb").unwrap_err().kind,
            ErrorKind::InvalidName
        );
        assert_eq!(
            validate_name(&"x".repeat(256)).unwrap_err().kind,
            ErrorKind::InvalidName
        );
    }
}
