//! Socket activation as systemd does it: the listening socket becomes fd 3,
//! `LISTEN_FDS=1`, `LISTEN_PID` names the daemon, and `NOTIFY_SOCKET` points
//! at a datagram socket owned by the test.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
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

impl NotifySocket {
    /// Receives datagrams for `window`, keeping the fds that `FDSTORE=1`
    /// messages carry, by `FDNAME`, and applying `FDSTOREREMOVE=1` — what
    /// systemd's fd store does. Returns every message seen.
    pub fn collect_store(
        &self,
        store: &mut Vec<(String, OwnedFd)>,
        window: Duration,
    ) -> Vec<String> {
        use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        let deadline = Instant::now() + window;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let mut buf = [0u8; 4096];
            let mut space =
                [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(8))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let Ok(msg) = recvmsg(&self.sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
            else {
                continue;
            };
            let mut fds: Vec<OwnedFd> = Vec::new();
            for c in control.drain() {
                if let RecvAncillaryMessage::ScmRights(r) = c {
                    fds.extend(r);
                }
            }
            let text = String::from_utf8_lossy(&buf[..msg.bytes]).into_owned();
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .unwrap_or("stored")
                .to_owned();
            if text.lines().any(|l| l == "FDSTORE=1") {
                store.extend(fds.into_iter().map(|fd| (name.clone(), fd)));
            } else if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
                store.retain(|(n, _)| *n != name);
            }
            seen.push(text);
        }
        seen
    }
}

/// Makes `cmd` start with `listener` as fd 3 and `LISTEN_FDS=1`, and with
/// `LISTEN_PID` set to its own pid (via `sh -c 'LISTEN_PID=$$ exec …'`:
/// exec keeps the pid).
pub fn activated(program: &Path, args: &[std::ffi::OsString], listener: &UnixListener) -> Command {
    activated_with(
        program,
        args,
        &[(listener.as_raw_fd(), "builddird.socket".into())],
    )
}

/// Like [`activated`] with several named fds (3, 4, …), as systemd passes
/// a socket plus its file descriptor store.
pub fn activated_with(
    program: &Path,
    args: &[std::ffi::OsString],
    fds: &[(RawFd, String)],
) -> Command {
    let raw: Vec<RawFd> = fds.iter().map(|(fd, _)| *fd).collect();
    let names: Vec<&str> = fds.iter().map(|(_, n)| n.as_str()).collect();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$@\"")
        .arg("sh")
        .arg(program)
        .args(args)
        .env("LISTEN_FDS", raw.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"));
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (dup, dup2, fcntl) on descriptors this process owns; the fds stay
    // open in the parent for the child's whole setup. Sources are first
    // moved above the target range so that no dup2 overwrites a source
    // that is still to be placed.
    unsafe {
        cmd.pre_exec(move || {
            let high: Vec<RawFd> = raw
                .iter()
                .map(|&fd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100))
                .collect();
            for (i, &fd) in high.iter().enumerate() {
                if fd == -1 || libc::dup2(fd, 3 + i as RawFd) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}

/// A listening socket at `path` (what systemd's `.socket` unit would make).
pub fn listen(path: &Path) -> UnixListener {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).expect("bind listening socket");
    // As SocketMode=0666 would: the tests connect as other uids too.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    listener
}

/// A daemon process killed when dropped (also when a test fails), so that
/// a failed assertion never leaves a daemon holding the test's mount.
#[derive(Debug)]
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// builddird socket-activated with `listener` plus `stored` fds, as systemd
/// starts it after a restart, with `config`; it logs to `daemon.log` in
/// `s` and is ready (it sent `READY=1` to `notify`) on return.
pub fn start_activated(
    s: &crate::Scratch,
    config: &str,
    listener: &UnixListener,
    stored: &[(String, OwnedFd)],
    notify: &NotifySocket,
) -> Killed {
    start_activated_env(s, config, listener, stored, notify, &[])
}

/// [`start_activated`] with extra environment (a failpoint).
pub fn start_activated_env(
    s: &crate::Scratch,
    config: &str,
    listener: &UnixListener,
    stored: &[(String, OwnedFd)],
    notify: &NotifySocket,
    env: &[(&str, &str)],
) -> Killed {
    let cfg = s.dir.join("cfg.toml");
    std::fs::write(&cfg, config).unwrap();
    let args: Vec<std::ffi::OsString> = vec![
        "--config".into(),
        cfg.into(),
        "--root".into(),
        s.dir.join("root").into(),
    ];
    let mut fds = vec![(listener.as_raw_fd(), "builddird.socket".to_owned())];
    fds.extend(stored.iter().map(|(n, fd)| (fd.as_raw_fd(), n.clone())));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(s.dir.join("daemon.log"))
        .unwrap();
    let child = activated_with(&crate::bin("builddird"), &args, &fds)
        .env("NOTIFY_SOCKET", s.dir.join("notify"))
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let child = Killed(child);
    assert!(
        notify.wait_for("READY=1", Duration::from_secs(10)).0,
        "no READY=1"
    );
    child
}
