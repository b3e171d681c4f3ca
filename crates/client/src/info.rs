use std::path::PathBuf;

use builddir_proto::{ErrorReply, HelloReply, DEFAULT_SOCKET, SOCKET_ENV};

/// The socket path clients use: `$BUILDDIR_SOCKET`, else `/run/builddird.sock`.
/// A process in secure-execution mode (setuid, setgid, file capabilities:
/// `AT_SECURE`) ignores `$BUILDDIR_SOCKET`, as `secure_getenv` would: its
/// environment is its less privileged caller's.
pub fn default_socket() -> PathBuf {
    socket_from(
        std::env::var_os(SOCKET_ENV),
        crate::secure::secure_execution(),
    )
}

fn socket_from(env: Option<std::ffi::OsString>, secure: bool) -> PathBuf {
    env.filter(|v| !v.is_empty() && !secure)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builddir_socket_is_ignored_in_secure_execution_mode() {
        let env = || Some(std::ffi::OsString::from("/tmp/evil.sock"));
        assert_eq!(socket_from(env(), false), PathBuf::from("/tmp/evil.sock"));
        assert_eq!(socket_from(env(), true), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            socket_from(Some("".into()), false),
            PathBuf::from(DEFAULT_SOCKET)
        );
        assert_eq!(socket_from(None, false), PathBuf::from(DEFAULT_SOCKET));
    }
}

/// What the daemon said about itself in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The daemon's version string.
    pub server_version: String,
    /// The protocol version both sides agreed on.
    pub protocol_version: u32,
    /// Features the daemon advertised.
    pub features: Vec<String>,
}

/// The first protocol version with [`builddir_proto::Request::KeepFor`].
pub(crate) const KEEP_FOR_VERSION: u32 = 3;

impl ServerInfo {
    /// Checks that the agreed protocol version has `KeepFor`.
    pub(crate) fn check_keep_for(&self) -> Result<(), crate::Error> {
        if self.protocol_version >= KEEP_FOR_VERSION {
            Ok(())
        } else {
            Err(crate::Error::TooOld {
                what: "keeping a tree for another user",
                needs: KEEP_FOR_VERSION,
                has: self.protocol_version,
            })
        }
    }

    /// The daemon's handshake answer: what it said about itself, or the
    /// refusal it sent instead. Both clients read the same reply; each
    /// decides what a refusal does to its connection.
    pub(crate) fn from_hello(reply: HelloReply) -> Result<ServerInfo, ErrorReply> {
        match reply {
            HelloReply::Welcome {
                version,
                server_version,
                features,
            } => Ok(ServerInfo {
                server_version,
                protocol_version: version,
                features,
            }),
            HelloReply::Refused(e) => Err(e),
        }
    }
}
