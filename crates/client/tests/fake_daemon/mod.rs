//! A scripted fake builddird on a Unix socket in a scratch directory, for
//! tests that need a daemon to misbehave (late, wrong or fd-carrying
//! replies). No root needed. Shared by the client's and the C library's
//! tests.

#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use builddir_proto::{
    Allocated, BlockingConnection, FdPolicy, Hello, HelloReply, Released, Request, Response,
    PROTOCOL_VERSION,
};

/// One accepted connection, as the script sees it.
pub struct Peer {
    pub conn: BlockingConnection,
    /// The same socket, for raw writes (partial frames, dribbling).
    pub raw: UnixStream,
    /// Which connection this is (0: the first accepted).
    pub connection: u32,
    /// Requests read so far on this connection, this one included.
    pub n: u32,
    /// A directory to send as a lease's fd.
    pub dir: File,
    /// A regular file, to send where no fd (or a directory) belongs.
    pub file: File,
    /// The scratch directory (`dir` is it).
    pub root: PathBuf,
}

impl Peer {
    pub fn send(&mut self, r: &Response, fd: Option<BorrowedFd<'_>>) {
        let _ = self.conn.write(r, fd);
    }

    /// An allocation reply for lease `id`, with `self.dir` attached.
    pub fn allocated(&mut self, id: &str) {
        let r = allocation(id, self.root.display().to_string(), &format!("secret-{id}"));
        let dir = self.dir.try_clone().unwrap();
        self.send(&r, Some(dir.as_fd()));
    }

    /// A release (or keep) confirmation for `id`, as a correct daemon
    /// sends it.
    pub fn released(&mut self, id: &str, keep: bool) {
        let r = Response::Released(Released {
            id: id.into(),
            kept_path: keep.then(|| format!("/kept/{id}")),
            limit_reached: false,
        });
        self.send(&r, None);
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        let _ = self.raw.write_all(bytes);
    }
}

/// An allocation reply for lease `id` at `path`, owned by root. The scripts
/// vary only these and what rides along with the reply (a directory, a
/// file, nothing), so that each test says just what it breaks.
pub fn allocation(id: &str, path: String, secret: &str) -> Response {
    Response::Allocated(Allocated {
        id: id.into(),
        path,
        uid: 0,
        gid: 0,
        secret: secret.into(),
    })
}

/// What the script says after each request.
pub enum Next {
    Continue,
    /// Close this connection (and accept the next, if any is expected).
    Hang,
}

pub struct FakeDaemon {
    pub socket: PathBuf,
    pub root: PathBuf,
    thread: Option<JoinHandle<()>>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl FakeDaemon {
    /// Serves `connections` connections one after the other, answering
    /// each request with `script`.
    pub fn start(
        connections: u32,
        script: impl FnMut(&mut Peer, Request) -> Next + Send + 'static,
    ) -> FakeDaemon {
        FakeDaemon::start_at(PROTOCOL_VERSION, connections, script)
    }

    /// Like [`FakeDaemon::start`], agreeing on protocol `version` in the
    /// handshake (an older daemon).
    pub fn start_at(
        version: u32,
        connections: u32,
        mut script: impl FnMut(&mut Peer, Request) -> Next + Send + 'static,
    ) -> FakeDaemon {
        let root = std::env::temp_dir().join(format!(
            "builddir-fake-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("file"), "not a directory").unwrap();
        let socket = root.join("s.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let r = root.clone();
        let thread = std::thread::spawn(move || {
            for connection in 0..connections {
                let Ok((s, _)) = listener.accept() else {
                    return;
                };
                let raw = s.try_clone().unwrap();
                let mut peer = Peer {
                    conn: BlockingConnection::new(s, FdPolicy::Refuse),
                    raw,
                    connection,
                    n: 0,
                    dir: File::open(&r).unwrap(),
                    file: File::open(r.join("file")).unwrap(),
                    root: r.clone(),
                };
                if peer.conn.expect::<Hello>().is_err() {
                    continue;
                }
                let welcome = HelloReply::Welcome {
                    version,
                    server_version: "fake".into(),
                    features: vec![],
                };
                let _ = peer.conn.write(&welcome, None);
                while let Ok(Some(req)) = peer.conn.read::<Request>() {
                    peer.n += 1;
                    if let Next::Hang = script(&mut peer, req) {
                        break;
                    }
                }
            }
        });
        FakeDaemon {
            socket,
            root,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        // The script ends when the client closes; a thread stuck on a
        // script's sleep is left to finish on its own.
        if let Some(t) = self.thread.take() {
            if t.is_finished() {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Open descriptors of this process that refer to `path`.
pub fn fds_to(path: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

/// Waits (up to 3 s) until exactly `want` descriptors of this process
/// refer to `path` (the fake daemon's own come and go on its thread);
/// returns the last count.
pub fn settle_fds_to(path: &std::path::Path, want: usize) -> usize {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let n = fds_to(path);
        if n == want || std::time::Instant::now() > until {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
