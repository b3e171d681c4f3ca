//! The builddird wire protocol.
//!
//! A connection to `builddird` is a Unix stream socket carrying
//! length-delimited frames (4-byte big-endian length, at most
//! [`MAX_FRAME`] bytes) whose payloads are bincode messages (see [`codec`]).
//!
//! 1. The client sends a [`Hello`] with [`MAGIC`] and the range of protocol
//!    versions it speaks; the server answers with a [`HelloReply`].
//! 2. Then strictly one [`Request`] → one [`Response`] at a time.
//!
//! The only file descriptor that ever travels is the build directory in the
//! reply to [`Request::Allocate`]; it rides with the first byte of that
//! reply's frame (`SCM_RIGHTS`). Every read goes through `recvmsg` with
//! `MSG_CMSG_CLOEXEC` ([`fdpass`]), a truncated control message is an error,
//! and descriptors that no message claims are closed at once.
//!
//! `Connection` is the async (tokio) end, behind the default `tokio`
//! feature; [`BlockingConnection`] is the same over a std `UnixStream`,
//! with no runtime and no thread, for clients that cannot have one.

pub mod blocking;
pub mod codec;
#[cfg(feature = "tokio")]
pub mod connection;
pub mod error;
pub mod fdpass;
pub mod message;
pub mod version;

#[cfg(all(test, feature = "tokio"))]
mod fuzz;

pub use blocking::BlockingConnection;
#[cfg(feature = "tokio")]
pub use connection::Connection;
pub use error::ProtoError;
pub use fdpass::FdPolicy;
pub use message::*;
pub use version::{negotiate, MAGIC, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN};

/// Largest frame payload either side accepts, in bytes (SPEC §4).
pub const MAX_FRAME: usize = 64 * 1024;

/// Default path of the daemon's socket.
pub const DEFAULT_SOCKET: &str = "/run/builddird.sock";

/// Environment variable that overrides [`DEFAULT_SOCKET`] for clients.
pub const SOCKET_ENV: &str = "BUILDDIR_SOCKET";
