//! `bd-attack SOCKET SCENARIO CANARY_DIR [N] [SECS]`: a hostile build.
//!
//! Allocates a lease as whoever runs it, builds a hostile tree in it through
//! the directory fd, prints `{"id","path"}`, waits for a line on stdin
//! ("go", or "keep" to release with keep and print the answer as
//! `{"kept": PATH}` or `{"keep_error": MESSAGE}`), releases the lease, and
//! keeps attacking through the fd it still holds (the tree is now in the
//! daemon's trash being reaped) for SECS seconds. Exits non-zero if anything
//! fails — or if the kernel breaks its file lease (SIGIO kills it), which
//! would mean the reaper opened a file.
//!
//! The `mover` scenario attacks walks instead: once told "arm" (it answers
//! `{"armed": true}`) and until the lease ends, it moves a subtree ahead of whoever walks the tree, driven by
//! inotify (each time the walker opens the subtree, it goes into the next
//! directory the walker has not read yet).

#![allow(unsafe_code)] // fcntl(F_SETLEASE) only; see `take_lease`

use std::ffi::CString;
use std::io::BufRead;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::fs::{
    fchmod, linkat, mkdirat, mknodat, openat, renameat, symlinkat, unlinkat, AtFlags, FileType,
    Mode, OFlags,
};

const DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn mkdir_open(at: BorrowedFd<'_>, name: &str, mode: u32) -> OwnedFd {
    mkdirat(at, name, Mode::from_raw_mode(0o700)).unwrap_or_else(|e| panic!("mkdir {name}: {e}"));
    let fd = openat(at, name, DIR, Mode::empty()).unwrap();
    fchmod(&fd, Mode::from_raw_mode(mode)).unwrap();
    fd
}

fn touch(at: BorrowedFd<'_>, name: impl rustix::path::Arg, data: &[u8]) {
    let fd = openat(
        at,
        name,
        OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::EXCL,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    rustix::io::write(&fd, data).unwrap();
}

/// Takes a read lease on `fd`: if anyone opens the file for writing (or
/// truncates it), the kernel sends us SIGIO, whose default action kills us.
fn take_lease(fd: BorrowedFd<'_>) {
    // SAFETY: F_SETLEASE takes an int argument and touches no memory of ours;
    // `fd` is a valid open descriptor for the duration of the call.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
    assert_eq!(r, 0, "F_SETLEASE: {}", std::io::Error::last_os_error());
}

/// Directories the `mover` subtree hops through, and its size.
const MOVER_HOPS: usize = 200;
const MOVER_DIRS: usize = 1000;

/// Sets up the `mover` scenario: `hNNN` directories, and the subtree `s`
/// (directories and a 1 MiB file) in the one the walker reads first.
/// Returns the hop names in readdir order.
fn mover_setup(d: BorrowedFd<'_>) -> Vec<String> {
    for i in 0..MOVER_HOPS {
        drop(mkdir_open(d, &format!("h{i:03}"), 0o755));
    }
    // The order in which anyone reading this directory meets the hops.
    let mut order = Vec::new();
    let mut dir = rustix::fs::Dir::read_from(d).unwrap();
    while let Some(e) = dir.read() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with('h') {
            order.push(name);
        }
    }
    let first = openat(d, order[0].as_str(), DIR, Mode::empty()).unwrap();
    let s = mkdir_open(first.as_fd(), "s", 0o755);
    touch(s.as_fd(), "payload", &vec![7u8; 1 << 20]);
    for i in 0..MOVER_DIRS / 10 {
        let sub = mkdir_open(s.as_fd(), &format!("a{i}"), 0o755);
        for j in 0..9 {
            drop(mkdir_open(sub.as_fd(), &format!("b{j}"), 0o755));
        }
    }
    order
}

/// Watches the subtree `s` for opens; returns the inotify fd.
fn mover_watch(d: BorrowedFd<'_>, order: &[String]) -> OwnedFd {
    use rustix::fs::inotify;
    let ino = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
        .expect("inotify_init");
    let s_path = format!("{}/s", order[0]);
    let s = openat(d, s_path.as_str(), DIR, Mode::empty()).unwrap();
    inotify::add_watch(
        &ino,
        format!("/proc/self/fd/{}", s.as_raw_fd()).as_str(),
        inotify::WatchFlags::OPEN | inotify::WatchFlags::ONLYDIR,
    )
    .expect("inotify_add_watch");
    // Our own open of `s` above came before the watch: no event from it.
    ino
}

/// Moves `s` one hop further each time someone opens it, until `stop`.
/// Returns the number of moves.
fn mover_run(
    d: OwnedFd,
    ino: OwnedFd,
    order: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> u64 {
    use rustix::fs::inotify;
    use std::sync::atomic::Ordering;
    let mut at = 0usize;
    let mut moves = 0u64;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    while !stop.load(Ordering::Relaxed) {
        let mut opened = false;
        {
            let mut reader = inotify::Reader::new(&ino, &mut buf);
            // The subtree itself (no name) was opened: a walker is in.
            while let Ok(ev) = reader.next() {
                opened |= ev.file_name().is_none();
            }
        }
        if !opened {
            std::thread::sleep(Duration::from_micros(20));
            continue;
        }
        if at + 1 < order.len() {
            let from = format!("{}/s", order[at]);
            let to = format!("{}/s", order[at + 1]);
            if renameat(&d, from.as_str(), &d, to.as_str()).is_ok() {
                at += 1;
                moves += 1;
            }
        }
    }
    moves
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (socket, scenario, canary) = (&a[1], a[2].as_str(), std::path::PathBuf::from(&a[3]));
    let n: u64 = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let secs: f64 = a.get(5).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let mut name = scenario.to_owned();
    if scenario == "comm" {
        // What `list` shows as the client's command, and a lease name that
        // would forge fields in an unquoted log line.
        std::fs::write("/proc/self/comm", b"\x1b[2J\nFAKE ROW").expect("set comm");
        name = "x path=/etc/shadow uid=0".into();
    }
    let lease = builddir_client::blocking::Client::connect(socket)
        .and_then(|c| c.allocate(&name))
        .expect("allocate");
    let dir = lease.dir().try_clone_to_owned().unwrap();
    let d = dir.as_fd();
    let canary_dir = canary.join("dir");
    let canary_file = canary.join("file");
    let mut held: Vec<OwnedFd> = Vec::new();
    let mut mover: Option<std::thread::JoinHandle<u64>> = None;
    let mut mover_order: Vec<String> = Vec::new();
    let stop_mover = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut movers: Vec<(OwnedFd, OwnedFd)> = Vec::new();

    match scenario {
        "symlink-swap" => {
            let a = mkdir_open(d, "a", 0o755);
            for i in 0..n {
                touch(a.as_fd(), format!("f{i}"), b"x");
            }
            let b = mkdir_open(a.as_fd(), "sub", 0o755);
            touch(b.as_fd(), "g", b"y");
        }
        "symlinks" => {
            let x = mkdir_open(d, "x", 0o755);
            symlinkat(&canary_dir, d, "abs-dir").unwrap();
            symlinkat(&canary_file, d, "abs-file").unwrap();
            symlinkat("../../../../../../../../..", x.as_fd(), "up").unwrap();
            symlinkat("/proc/self/root", d, "proc-root").unwrap();
            symlinkat("/proc/self/fd/3", d, "proc-fd").unwrap();
            symlinkat("/proc/self/cwd", x.as_fd(), "proc-cwd").unwrap();
            // A symlink where a directory is expected deep down.
            let deep = mkdir_open(x.as_fd(), "deep", 0o755);
            symlinkat(&canary_dir, deep.as_fd(), "looks-like-a-dir").unwrap();
        }
        "hardlinks" => {
            linkat(
                rustix::fs::CWD,
                &canary_file,
                d,
                "shadow-like",
                AtFlags::empty(),
            )
            .expect("hard link to the canary (needs fs.protected_hardlinks=0)");
            let x = mkdir_open(d, "x", 0o755);
            linkat(
                rustix::fs::CWD,
                &canary_file,
                x.as_fd(),
                "again",
                AtFlags::empty(),
            )
            .unwrap();
        }
        "modes" => {
            for (name, mode) in [
                ("m000", 0o000),
                ("m100", 0o100),
                ("m500", 0o500),
                ("sticky", 0o1777),
            ] {
                let sub = mkdir_open(d, name, 0o700);
                touch(sub.as_fd(), "inside", b"z");
                let inner = mkdir_open(sub.as_fd(), "inner", 0o000);
                drop(inner);
                fchmod(&sub, Mode::from_raw_mode(mode)).unwrap();
            }
            fchmod(d, Mode::from_raw_mode(0o000)).unwrap();
        }
        "deep" => {
            let name = "d".repeat(255);
            let mut cur = mkdir_open(d, &name, 0o700);
            for _ in 1..n {
                cur = mkdir_open(cur.as_fd(), &name, 0o700);
            }
            touch(cur.as_fd(), "bottom", b"b");
        }
        "wide" => {
            let w = mkdir_open(d, "w", 0o755);
            touch(w.as_fd(), "seed", b"s");
            for i in 0..n {
                linkat(
                    w.as_fd(),
                    "seed",
                    w.as_fd(),
                    format!("{i:08}"),
                    AtFlags::empty(),
                )
                .unwrap();
            }
        }
        "names" => {
            let odd: Vec<Vec<u8>> = vec![
                b"new\nline".to_vec(),
                vec![0xff, 0xfe, b'x'],
                b"-rf".to_vec(),
                b"--no-preserve-root".to_vec(),
                b" ".to_vec(),
                b"...".to_vec(),
            ];
            for name in &odd {
                let c = CString::new(name.clone()).unwrap();
                touch(d, c.as_c_str(), b"n");
            }
            let sub = mkdir_open(d, "-dir", 0o755);
            touch(
                sub.as_fd(),
                CString::new(vec![b'\n']).unwrap().as_c_str(),
                b"n",
            );
        }
        "specials" => {
            mknodat(d, "fifo", FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
            let sock = lease.path().join("sock");
            let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
            held.push(OwnedFd::from(listener));
            touch(d, "leased", b"l");
            let f = openat(d, "leased", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).unwrap();
            take_lease(f.as_fd());
            held.push(f);
        }
        "mover" => mover_order = mover_setup(d),
        "deep-setuid" => {
            // A setuid/setgid binary far below where walks used to stop.
            let mut cur = mkdir_open(d, "d", 0o755);
            for _ in 1..n {
                cur = mkdir_open(cur.as_fd(), "d", 0o755);
            }
            touch(cur.as_fd(), "suid", b"#!/bin/sh\n");
            let f = openat(
                &cur,
                "suid",
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .unwrap();
            fchmod(&f, Mode::from_raw_mode(0o6755)).unwrap();
        }
        "deep-wide" => {
            // N levels, then 20 000 files at the bottom: a walk that keeps
            // one fd per level holds N fds for as long as it reads them.
            let mut cur = mkdir_open(d, "d", 0o755);
            for _ in 1..n {
                cur = mkdir_open(cur.as_fd(), "d", 0o755);
            }
            for i in 0..20_000 {
                touch(cur.as_fd(), format!("f{i}"), b"");
            }
        }
        "move-ancestors" => {
            // N pairs `pK`, `qK`; `pK/m` holds a chain deeper than the
            // reaper's fd budget, so the reaper closes `pK` while inside it
            // and must come back to it through `..` — while we move `m`.
            for k in 0..n.max(1) {
                let p = mkdir_open(d, &format!("p{k}"), 0o755);
                let q = mkdir_open(d, &format!("q{k}"), 0o755);
                let mut cur = mkdir_open(p.as_fd(), "m", 0o755);
                for _ in 0..40 {
                    cur = mkdir_open(cur.as_fd(), "d", 0o755);
                    touch(cur.as_fd(), "f", b"f");
                }
                movers.push((p, q));
            }
        }
        "comm" => {
            touch(d, "f", b"x");
        }
        "pin" => {
            // A leftover process of the build: an open file in the lease
            // (a tmpfs lease stays alive as long as it is open).
            touch(d, "pinned", b"p");
            held.push(
                openat(d, "pinned", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).unwrap(),
            );
        }
        "refill" | "hold" | "chmod777" => {
            if scenario == "chmod777" {
                fchmod(d, Mode::from_raw_mode(0o777)).unwrap();
            }
            let _ = mkdir_open(d, "spool", 0o755);
        }
        other => panic!("unknown scenario {other}"),
    }
    println!(
        "{}",
        serde_json::json!({ "id": lease.id(), "path": lease.path() })
    );
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    if line.trim() == "arm" && scenario == "mover" {
        // From now on, any walker that opens the subtree makes it move.
        let fd = dir.try_clone().unwrap();
        let stop = stop_mover.clone();
        let order = std::mem::take(&mut mover_order);
        let ino = mover_watch(d, &order);
        mover = Some(std::thread::spawn(move || mover_run(fd, ino, order, stop)));
        println!("{}", serde_json::json!({ "armed": true }));
        line.clear();
        std::io::stdin().lock().read_line(&mut line).unwrap();
    }
    if line.trim() == "keep" {
        let answer = match lease.keep() {
            Ok(path) => serde_json::json!({ "kept": path }),
            Err(e) => serde_json::json!({ "keep_error": e.to_string() }),
        };
        println!("{answer}");
    } else {
        lease.release().expect("release");
    }
    if let Some(mover) = mover.take() {
        stop_mover.store(true, std::sync::atomic::Ordering::Relaxed);
        let moves = mover.join().expect("mover thread");
        println!("{}", serde_json::json!({ "moves": moves }));
    }

    // The concurrent part: keep acting on the tree through our fd.
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut ops = 0u64;
    match scenario {
        "symlink-swap" => {
            while Instant::now() < deadline {
                if renameat(d, "a", d, "a.away").is_ok() {
                    let _ = symlinkat(&canary_dir, d, "a");
                    std::thread::yield_now();
                    let _ = unlinkat(d, "a", AtFlags::empty());
                    let _ = renameat(d, "a.away", d, "a");
                }
                // And the same inside, one level down.
                let _ = symlinkat(&canary_dir, d, "late-link");
                let _ = unlinkat(d, "late-link", AtFlags::empty());
                ops += 1;
            }
        }
        "refill" => {
            if let Ok(spool) = openat(d, "spool", DIR, Mode::empty()) {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let name = format!("r{i}");
                    if openat(
                        &spool,
                        name.as_str(),
                        OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o644),
                    )
                    .is_ok()
                    {
                        ops += 1;
                    }
                    i += 1;
                }
            }
        }
        "move-ancestors" => {
            let threads: Vec<_> = movers
                .into_iter()
                .map(|(p, q)| {
                    std::thread::spawn(move || {
                        let mut moved = 0u64;
                        while Instant::now() < deadline {
                            moved += u64::from(renameat(&p, "m", &q, "m").is_ok());
                            moved += u64::from(renameat(&q, "m", &p, "m").is_ok());
                        }
                        moved
                    })
                })
                .collect();
            ops = threads.into_iter().map(|t| t.join().unwrap()).sum();
        }
        "specials" | "pin" => std::thread::sleep(Duration::from_secs_f64(secs)),
        _ => {}
    }
    drop(held);
    println!("{}", serde_json::json!({ "released": true, "ops": ops }));
}
