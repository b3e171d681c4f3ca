//! builddird: a root helper that owns a dedicated `nosuid,nodev,exec` mount,
//! creates one directory per build by file descriptor, hands the descriptor
//! to the unprivileged orchestrator over a Unix socket, and deletes the tree
//! safely when the build ends.
//!
//! Module map, in the order a request meets them:
//! [`listener`] / [`systemd_fds`] → [`server`] (accept loop) →
//! [`handler`] (handshake, request loop) → [`cmd`] (one file per request) →
//! [`allocate`] (sized by [`backend`]: tmpfs or [`quota`]) / [`release`] →
//! [`reaper`] → [`rmtree`].
//! At start: [`config`] → [`mount`] → [`layout`] → [`backend`] → [`startup`]
//! → [`notify`].

pub mod allocate;
pub mod backend;
pub mod cmd;
pub mod config;
pub mod ending;
pub mod failpoint;
pub mod fdstore;
pub mod handler;
pub mod identity;
pub mod keep;
pub mod layout;
pub mod lease_id;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod mount;
pub mod notify;
pub mod peer;
pub mod policy;
pub mod quota;
pub mod reaper;
pub mod registry;
pub mod release;
pub mod retention;
pub mod rmtree;
pub mod server;
pub mod startup;
pub mod state;
pub mod systemd_fds;
pub mod trim;
pub mod walk;
