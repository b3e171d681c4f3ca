//! The hand-offs with PID 1: the listening sockets it passes (`LISTEN_FDS`),
//! readiness and status (`sd_notify`), and the file-descriptor store that
//! keeps leases' connections across a restart.

pub mod fdstore;
pub mod listen_fds;
pub mod notify;
