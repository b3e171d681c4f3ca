//! The floor: what an allocation costs with nothing but the work itself.
//!
//! - [`alloc`] / [`release`] / [`reap_empty`]: the daemon's own syscalls
//!   (`getrandom`, `mkdirat`, `openat(O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC)`,
//!   `fchown`, `fchmod`, `mkdirat`, `openat`, `fchown`, `fchmod`,
//!   `renameat2(RENAME_NOREPLACE)`; on release `openat`, `fchmod 0000`,
//!   `renameat2` into trash; then two `unlinkat(AT_REMOVEDIR)`), done
//!   directly on a directory of the same mount.
//! - The helper process (this binary, `__floor-helper`): a minimal
//!   thread-per-connection server that does those syscalls on request and
//!   passes the build directory's fd back with one `sendmsg(SCM_RIGHTS)` —
//!   the same `builddir_proto::fdpass` functions the daemon uses. A floor
//!   round trip is one request byte out, 16 bytes and the fd back.
//!
//! The floor does not connect per allocation, handshake, encode messages,
//! check quotas, keep a lease table or log: those are what the daemon adds.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use builddir_proto::fdpass;
use rustix::fs::{
    fchmod, fchown, mkdirat, openat, renameat_with, unlinkat, AtFlags, Gid, Mode, OFlags,
    RenameFlags, Uid,
};

use crate::env::{kill, mkdir_0755, register_pid, unregister_pid};

/// The daemon's flags for every directory it opens.
const DIR_OPEN: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// `b/` and `trash/` of the floor, on the daemon's mount.
#[derive(Debug)]
pub struct FloorDirs {
    pub b: OwnedFd,
    pub trash: OwnedFd,
}

impl FloorDirs {
    /// Creates (if needed) and opens `base/b` (0711) and `base/trash` (0700).
    pub fn open(base: &Path) -> Result<FloorDirs> {
        mkdir_0755(base)?;
        let area = |name: &str, mode: u32| -> Result<OwnedFd> {
            let p = base.join(name);
            match std::fs::create_dir(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("mkdir {}", p.display())),
            }
            let fd = rustix::fs::open(&p, DIR_OPEN, Mode::empty())?;
            fchmod(&fd, Mode::from_raw_mode(mode))?;
            Ok(fd)
        };
        Ok(FloorDirs {
            b: area("b", 0o711)?,
            trash: area("trash", 0o700)?,
        })
    }
}

fn random_id() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(u64::from_le_bytes(bytes))
}

/// The daemon's allocation syscalls: `b/<id>` (root:gid 0710) containing
/// `build` (uid:gid 0700), built under a temporary name and renamed into
/// place. Returns the id and the build directory's fd.
pub fn alloc(d: &FloorDirs, uid: u32, gid: u32) -> io::Result<(u64, OwnedFd)> {
    let id = random_id()?;
    let final_name = CString::new(format!("{id:016x}")).expect("hex");
    let tmp_name = format!(".new-{id:016x}");
    mkdirat(&d.b, tmp_name.as_str(), Mode::empty())?;
    let outer = openat(&d.b, tmp_name.as_str(), DIR_OPEN, Mode::empty())?;
    fchown(&outer, Some(Uid::ROOT), Some(Gid::from_raw(gid)))?;
    fchmod(&outer, Mode::from_raw_mode(0o710))?;
    mkdirat(&outer, "build", Mode::empty())?;
    let build = openat(&outer, "build", DIR_OPEN, Mode::empty())?;
    fchown(&build, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    fchmod(&build, Mode::from_raw_mode(0o700))?;
    renameat_with(
        &d.b,
        tmp_name.as_str(),
        &d.b,
        final_name.as_c_str(),
        RenameFlags::NOREPLACE,
    )?;
    Ok((id, build))
}

/// The daemon's release syscalls: `openat` the outer dir, `fchmod 0000`,
/// `renameat2` it into trash.
pub fn release(d: &FloorDirs, id: u64) -> io::Result<()> {
    let name = CString::new(format!("{id:016x}")).expect("hex");
    let outer = openat(&d.b, name.as_c_str(), DIR_OPEN, Mode::empty())?;
    fchmod(&outer, Mode::empty())?;
    drop(outer);
    renameat_with(
        &d.b,
        name.as_c_str(),
        &d.trash,
        name.as_c_str(),
        RenameFlags::NOREPLACE,
    )?;
    Ok(())
}

/// Deletes a released, empty lease from trash.
pub fn reap_empty(d: &FloorDirs, id: u64) -> io::Result<()> {
    let name = format!("{id:016x}");
    unlinkat(
        &d.trash,
        format!("{name}/build").as_str(),
        AtFlags::REMOVEDIR,
    )?;
    unlinkat(&d.trash, name.as_str(), AtFlags::REMOVEDIR)?;
    Ok(())
}

// ---------------------------------------------------------------- helper

/// Entry point of `builddir-bench __floor-helper SOCKET FLOOR_DIR`.
pub fn helper_main(socket: &Path, floor_dir: &Path) -> Result<()> {
    let dirs = Arc::new(FloorDirs::open(floor_dir)?);
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).context("helper bind")?;
    for stream in listener.incoming() {
        let stream = stream?;
        let dirs = dirs.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(&stream, &dirs) {
                eprintln!("floor helper: {e}");
            }
        });
    }
    Ok(())
}

/// Requests: `A` allocate (reply: 16 hex bytes + the build fd), `R<16 hex>`
/// release (reply `k`; the empty tree is then deleted before the next
/// request is read), `P` pass a fd only (reply `p` + the `b/` fd).
fn serve(stream: &UnixStream, dirs: &FloorDirs) -> io::Result<()> {
    let sock = stream.as_fd();
    let mut buf = [0u8; 256];
    let mut pending: Vec<u8> = Vec::with_capacity(64);
    loop {
        let got = fdpass::recv(sock, &mut buf)?;
        if got.bytes == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..got.bytes]);
        while let Some(&op) = pending.first() {
            match op {
                b'A' => {
                    pending.remove(0);
                    let (id, build) = alloc(dirs, 0, 0)?;
                    send_all(sock, format!("{id:016x}").as_bytes(), Some(build.as_fd()))?;
                }
                b'R' => {
                    if pending.len() < 17 {
                        break;
                    }
                    let hex: Vec<u8> = pending.drain(..17).skip(1).collect();
                    let id = u64::from_str_radix(std::str::from_utf8(&hex).unwrap_or(""), 16)
                        .map_err(|_| io::Error::other("bad id"))?;
                    release(dirs, id)?;
                    send_all(sock, b"k", None)?;
                    reap_empty(dirs, id)?;
                }
                b'P' => {
                    pending.remove(0);
                    send_all(sock, b"p", Some(dirs.b.as_fd()))?;
                }
                _ => return Err(io::Error::other("unknown floor request")),
            }
        }
    }
}

fn send_all(sock: BorrowedFd<'_>, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut sent = 0;
    let mut fd = fd;
    while sent < bytes.len() {
        let n = fdpass::send(sock, &bytes[sent..], fd)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
        fd = None;
    }
    Ok(())
}

/// The running helper process.
#[derive(Debug)]
pub struct Helper {
    child: Option<Child>,
    pub socket: PathBuf,
}

impl Helper {
    /// Starts `exe __floor-helper` with its floor dirs under `floor_dir`.
    pub fn start(exe: &Path, socket: PathBuf, floor_dir: &Path) -> Result<Helper> {
        let child = Command::new(exe)
            .arg("__floor-helper")
            .arg(&socket)
            .arg(floor_dir)
            .stdin(Stdio::null())
            .spawn()
            .context("starting the floor helper")?;
        register_pid(child.id());
        let mut h = Helper {
            child: Some(child),
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&h.socket).is_err() {
            if let Some(s) = h.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("floor helper exited: {s}");
            }
            if Instant::now() > deadline {
                bail!("floor helper did not start");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(h)
    }

    pub fn connect(&self) -> Result<FloorConn> {
        Ok(FloorConn {
            sock: UnixStream::connect(&self.socket).context("connecting to the floor helper")?,
        })
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(c.id(), rustix::process::Signal::KILL);
            let _ = c.wait();
            unregister_pid(c.id());
        }
    }
}

/// A blocking client of the helper.
#[derive(Debug)]
pub struct FloorConn {
    sock: UnixStream,
}

impl FloorConn {
    fn recv_exact(&mut self, want: usize) -> io::Result<([u8; 16], Option<OwnedFd>)> {
        let mut out = [0u8; 16];
        let mut have = 0;
        let mut fd = None;
        while have < want {
            let got = fdpass::recv(self.sock.as_fd(), &mut out[have..want])?;
            if got.bytes == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            have += got.bytes;
            for f in got.fds {
                fd.get_or_insert(f);
            }
        }
        Ok((out, fd))
    }

    /// One allocation round trip; returns the id and the received fd.
    pub fn alloc(&mut self) -> io::Result<([u8; 16], OwnedFd)> {
        send_all(self.sock.as_fd(), b"A", None)?;
        let (id, fd) = self.recv_exact(16)?;
        Ok((id, fd.ok_or_else(|| io::Error::other("no fd"))?))
    }

    /// One release round trip.
    pub fn release(&mut self, id: &[u8; 16]) -> io::Result<()> {
        let mut msg = [0u8; 17];
        msg[0] = b'R';
        msg[1..].copy_from_slice(id);
        send_all(self.sock.as_fd(), &msg, None)?;
        self.recv_exact(1)?;
        Ok(())
    }

    /// One bare `SCM_RIGHTS` round trip (a fd comes back, no syscalls).
    pub fn ping(&mut self) -> io::Result<OwnedFd> {
        send_all(self.sock.as_fd(), b"P", None)?;
        let (_, fd) = self.recv_exact(1)?;
        fd.ok_or_else(|| io::Error::other("no fd"))
    }
}
