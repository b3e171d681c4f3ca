//! Part 1, the orchestrator's case: allocation round trip on an already
//! open connection, for the runtime-free client
//! (`builddir_client::blocking`) and the C library (`libbuilddir`, through
//! its exported C functions), next to the floor in the same run.
//!
//! Per operation: allocate (request, reply with the fd) — *alloc* — then
//! release (request, reply) — *cycle* — on one connection opened before the
//! block. The floor is the same as part 1's: the allocation syscalls and an
//! `SCM_RIGHTS` round trip on an open connection to an in-process-cost
//! helper. No connect or handshake is paid on either side. Blocks of floor,
//! Rust client and C library alternate; after each daemon block the trash
//! is waited empty (reaping is deferred, not free) outside the timings.

// Calling the C library's exported functions is FFI by nature; each call
// carries a SAFETY comment (valid pointers to locals, a live connection).
#![allow(unsafe_code)]

use std::ffi::{c_char, CString};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use builddir::{builddir_conn, builddir_lease, builddir_outcome, builddir_status};
use builddir_client::blocking::Client;
use serde_json::json;

use crate::alloc::{floor_block, us, AllocCfg, Block};
use crate::daemon::Daemon;
use crate::floor::Helper;
use crate::report::{Report, Row, Stat, Stats};

/// The p50 target against the floor at c = 1.
const TARGET: f64 = 1.2;

/// Closes a daemon block of `ops` operations started at `start`: its wall time stops now, and
/// the reaper's deferred work is waited for afterwards, outside every
/// timing, so that the next block starts on an empty trash.
fn daemon_block(
    daemon: &Daemon,
    alloc: Vec<f64>,
    cycle: Vec<f64>,
    ops: usize,
    start: Instant,
) -> Result<Block> {
    let wall = start.elapsed();
    daemon
        .wait_trash_empty(Duration::from_secs(120))
        .context("waiting for the reaper")?;
    Ok(Block {
        alloc,
        cycle,
        ops,
        wall,
    })
}

fn rust_block(conn: &mut Client, daemon: &Daemon, n: usize) -> Result<Block> {
    let (mut alloc, mut cycle) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let t = Instant::now();
    for _ in 0..n {
        let t0 = Instant::now();
        let dir = conn.allocate_dir("bench", None, None)?;
        alloc.push(us(t0.elapsed()));
        conn.release_dir(dir)?;
        cycle.push(us(t0.elapsed()));
    }
    daemon_block(daemon, alloc, cycle, n, t)
}

/// A `libbuilddir` connection, closed on drop.
struct CConn(*mut builddir_conn);

impl CConn {
    fn connect(daemon: &Daemon) -> Result<CConn> {
        let path = CString::new(daemon.socket.as_os_str().as_encoded_bytes())?;
        let mut conn = std::ptr::null_mut();
        let mut err = [0 as c_char; 512];
        // SAFETY: a NUL-terminated path, a writable out slot, and an error
        // buffer of the length passed.
        let s = unsafe {
            builddir::builddir_connect(path.as_ptr(), &mut conn, err.as_mut_ptr(), err.len())
        };
        check(s, &err)?;
        Ok(CConn(conn))
    }
}

impl Drop for CConn {
    fn drop(&mut self) {
        // SAFETY: from builddir_connect, closed once.
        unsafe { builddir::builddir_close(self.0) };
    }
}

fn check(s: builddir_status, err: &[c_char]) -> Result<()> {
    if s == builddir_status::BUILDDIR_OK {
        return Ok(());
    }
    let bytes: Vec<u8> = err
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    bail!("libbuilddir: {s:?}: {}", String::from_utf8_lossy(&bytes))
}

fn c_block(conn: &CConn, daemon: &Daemon, n: usize) -> Result<Block> {
    let (mut alloc, mut cycle) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut lease: Box<builddir_lease> = Box::new(builddir_lease {
        dir_fd: -1,
        uid: 0,
        gid: 0,
        id: [0; builddir::BUILDDIR_ID_MAX],
        path: [0; builddir::BUILDDIR_PATH_MAX],
    });
    let mut outcome: Box<builddir_outcome> = Box::new(builddir_outcome {
        kept_path: [0; builddir::BUILDDIR_PATH_MAX],
        limit_reached: 0,
    });
    let mut err = [0 as c_char; 512];
    let t = Instant::now();
    for _ in 0..n {
        let t0 = Instant::now();
        // SAFETY: a live connection; a static name; NULL owner and limits
        // (allowed); writable lease and error buffer.
        let s = unsafe {
            builddir::builddir_allocate(
                conn.0,
                c"bench".as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                &mut *lease,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        alloc.push(us(t0.elapsed()));
        check(s, &err)?;
        // SAFETY: as above; the lease builddir_allocate filled.
        let s = unsafe {
            builddir::builddir_release(
                conn.0,
                &mut *lease,
                &mut *outcome,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        cycle.push(us(t0.elapsed()));
        check(s, &err)?;
    }
    daemon_block(daemon, alloc, cycle, n, t)
}

#[derive(Default)]
struct Samples {
    alloc: Vec<f64>,
    cycle: Vec<f64>,
}

impl Samples {
    fn add(&mut self, b: Block) {
        self.alloc.extend(b.alloc);
        self.cycle.extend(b.cycle);
    }
}

pub fn run(report: &mut Report, daemon: &Daemon, helper: &Helper, cfg: &AllocCfg) -> Result<()> {
    let per_block = (cfg.ops / cfg.blocks.max(1)).max(1);
    let mut rust = Client::connect(&daemon.socket).context("blocking client")?;
    let c = CConn::connect(daemon)?;
    let warm = cfg.warmup.max(1);
    floor_block(helper, 1, warm)?;
    rust_block(&mut rust, daemon, warm)?;
    c_block(&c, daemon, warm)?;
    let (mut f, mut r, mut k) = (Samples::default(), Samples::default(), Samples::default());
    for _ in 0..cfg.blocks.max(1) {
        f.add(floor_block(helper, 1, per_block)?);
        r.add(rust_block(&mut rust, daemon, per_block)?);
        k.add(c_block(&c, daemon, per_block)?);
    }
    let p = json!({"concurrency": 1, "blocks": cfg.blocks, "connection": "open"});
    let (fa, fc) = (Stats::of(&f.alloc), Stats::of(&f.cycle));
    let floor_alloc = "floor alloc round trip, open connection, c=1";
    let floor_cycle = "floor alloc+release cycle, open connection, c=1";
    report.push(Row::new(1, floor_alloc, "us", fa.clone()).params(p.clone()));
    report.push(Row::new(1, floor_cycle, "us", fc.clone()).params(p.clone()));
    for (who, s, note) in [
        (
            "runtime-free Rust client",
            &r,
            "builddir_client::blocking on one open connection: allocate (fd received), release; no connect, no handshake",
        ),
        (
            "C library",
            &k,
            "libbuilddir's builddir_allocate / builddir_release on one open connection",
        ),
    ] {
        report.push(
            Row::new(1, format!("{who} alloc round trip, open connection, c=1"), "us", Stats::of(&s.alloc))
                .params(p.clone())
                .floor(floor_alloc, fa.clone())
                .target_vs_floor(Stat::Median, TARGET)
                .note(note),
        );
        report.push(
            Row::new(1, format!("{who} alloc+release cycle, open connection, c=1"), "us", Stats::of(&s.cycle))
                .params(p.clone())
                .floor(floor_cycle, fc.clone())
                .note(note),
        );
    }
    Ok(())
}
