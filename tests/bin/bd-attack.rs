//! `bd-attack SOCKET SCENARIO CANARY_DIR [N] [SECS]`: a hostile build.
//!
//! Allocates a lease as whoever runs it, builds a hostile tree in it through
//! the directory fd, prints `{"id","path"}`, waits for a line on stdin
//! ("go"), releases the lease, and keeps attacking through the fd it still
//! holds (the tree is now in the daemon's trash being reaped) for SECS
//! seconds. Exits non-zero if anything fails — or if the kernel breaks its
//! file lease (SIGIO kills it), which would mean the reaper opened a file.

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

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (socket, scenario, canary) = (&a[1], a[2].as_str(), std::path::PathBuf::from(&a[3]));
    let n: u64 = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let secs: f64 = a.get(5).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let lease = builddir_client::blocking::Client::connect(socket)
        .and_then(|c| c.allocate(scenario))
        .expect("allocate");
    let dir = lease.dir().try_clone_to_owned().unwrap();
    let d = dir.as_fd();
    let canary_dir = canary.join("dir");
    let canary_file = canary.join("file");
    let mut held: Vec<OwnedFd> = Vec::new();

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
    lease.release().expect("release");

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
        "specials" => std::thread::sleep(Duration::from_secs_f64(secs)),
        _ => {}
    }
    drop(held);
    println!("{}", serde_json::json!({ "released": true, "ops": ops }));
}
