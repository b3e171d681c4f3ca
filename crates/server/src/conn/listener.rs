//! Where connections come from: the socket systemd passes, or one bound by
//! hand that replaces only a stale socket file, never a live one.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The socket could not be acquired.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("socket {0} is in use by a running builddird; stop it first (systemctl stop builddird.socket builddird.service) or pick another --socket")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; remove it or pick another --socket")]
    NotASocket(PathBuf),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("socket activation: {0}")]
    Activation(#[source] io::Error),
}

/// The listener and whether we own its path (and must remove it on exit).
#[derive(Debug)]
pub struct Listener {
    pub listener: UnixListener,
    pub bound_path: Option<PathBuf>,
    /// Lease connections systemd handed back from its fd store.
    pub resumed: Vec<(crate::lease::id::LeaseId, std::os::fd::OwnedFd)>,
}

impl Listener {
    /// Takes the systemd socket if activated, else binds `config.socket`
    /// with `socket_mode` and `socket_group`.
    pub fn acquire(config: &crate::host::config::Config) -> Result<Listener, ListenError> {
        let path = config.socket.as_path();
        let inherited = crate::systemd::listen_fds::take().map_err(ListenError::Activation)?;
        if let Some(listener) = inherited.listener {
            return Ok(Listener {
                listener,
                bound_path: None,
                resumed: inherited.leases,
            });
        }
        let mode = config.socket_mode_bits().unwrap_or(0o666);
        let listener = bind(path, mode)?;
        if !config.socket_group.is_empty() {
            let gid = crate::host::identity::Accounts::load()
                .gid(&config.socket_group)
                .ok_or_else(|| ListenError::Io {
                    what: "resolve socket_group for",
                    path: path.to_owned(),
                    source: io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no group {:?}", config.socket_group),
                    ),
                })?;
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| ListenError::Io {
                what: "chgrp",
                path: path.to_owned(),
                source,
            })?;
        }
        // Keep our own socket across restarts too (when systemd runs us).
        crate::systemd::fdstore::store(
            config,
            std::os::fd::AsFd::as_fd(&listener),
            crate::systemd::fdstore::LISTENER,
        );
        Ok(Listener {
            listener,
            // A socket kept in the fd store must keep its path for the next
            // instance; otherwise we remove what we bound.
            bound_path: (!crate::systemd::fdstore::enabled(config)).then(|| path.to_owned()),
            resumed: inherited.leases,
        })
    }

    /// Removes the socket file we bound (on shutdown).
    pub fn remove_path(&self) {
        if let Some(p) = &self.bound_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Binds `path` with `mode` (default 0666: any local user may connect;
/// policy decides what they may do). An existing file is replaced only if
/// it is a socket that nobody answers on.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, ListenError> {
    let io_err = |what| {
        move |source| ListenError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ListenError::NotASocket(path.to_owned()))
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => return Err(ListenError::InUse(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(io_err("remove stale socket"))?;
            }
            Err(e) => return Err(io_err("probe existing socket")(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect")(e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("create the directory of"))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            ListenError::InUse(path.to_owned())
        } else {
            io_err("bind")(e)
        }
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod"))?;
    Ok(listener)
}
