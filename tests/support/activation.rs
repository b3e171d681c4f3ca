//! Socket activation as systemd does it: the listening socket becomes fd 3,
//! `LISTEN_FDS=1`, `LISTEN_PID` names the daemon, and `NOTIFY_SOCKET` points
//! at a datagram socket owned by the test.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The test's end of `NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct NotifySocket {
    pub sock: UnixDatagram,
}

impl NotifySocket {
    pub fn bind(path: &Path) -> NotifySocket {
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket { sock }
    }

    /// Receives datagrams until one contains `needle` as a line, or `timeout`
    /// passes. Returns every message seen.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> (bool, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = msg.lines().any(|l| l == needle);
                seen.push(msg);
                if hit {
                    return (true, seen);
                }
            }
        }
        (false, seen)
    }
}

/// Makes `cmd` start with `listener` as fd 3 and `LISTEN_FDS=1`, and with
/// `LISTEN_PID` set to its own pid (via `sh -c 'LISTEN_PID=$$ exec …'`:
/// exec keeps the pid).
pub fn activated(program: &Path, args: &[std::ffi::OsString], listener: &UnixListener) -> Command {
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$@\"")
        .arg("sh")
        .arg(program)
        .args(args)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "builddird.socket");
    // SAFETY: between fork and exec only async-signal-safe calls are made:
    // dup2 (and fcntl inside it) on descriptors this process owns. `fd`
    // stays open in the parent for the child's whole setup.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                // Already in place: only clear close-on-exec.
                if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// A listening socket at `path` (what systemd's `.socket` unit would make).
pub fn listen(path: &Path) -> UnixListener {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).expect("bind listening socket")
}
