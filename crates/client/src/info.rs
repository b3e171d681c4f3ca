use std::path::PathBuf;

use builddir_proto::{DEFAULT_SOCKET, SOCKET_ENV};

/// The socket path clients use: `$BUILDDIR_SOCKET`, else `/run/builddird.sock`.
pub fn default_socket() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
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
