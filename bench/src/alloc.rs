//! Part 1: allocation round trip and sustained rate, builddird vs the floor.
//!
//! builddird, per operation: `Client::connect` (connect, hello sent),
//! `allocate` (request pipelined behind the hello; welcome, then the reply
//! with the fd) — the *alloc* figure, the target's
//! round trip — then `release` (request, reply) — the *cycle* figure, the
//! issue's round trip — then the connection closes.
//!
//! Floor, per operation on an already open connection to the helper: `A`
//! (the allocation syscalls, the fd back by `SCM_RIGHTS`) — *alloc* — then
//! `R` (the release syscalls, a one-byte reply) — *cycle*.
//!
//! Blocks of floor and daemon operations alternate, so drift (page cache,
//! journal, CPU frequency) hits both alike. Concurrency `c` means `c`
//! clients each doing operations back to back: OS threads for the floor,
//! tokio tasks on a 2-worker runtime for the daemon (a current-thread
//! runtime at `c = 1`). Sustained rate = operations / wall time of a block,
//! for the daemon including the wait until its trash is empty again (its
//! reaping is deferred, not free).

use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use builddir_client::Client;
use serde_json::json;
use tokio::runtime::Runtime;

use crate::daemon::Daemon;
use crate::floor::{self, FloorDirs, Helper};
use crate::report::{Report, Row, Stat, Stats};

#[derive(Debug, Clone)]
pub struct AllocCfg {
    pub concurrency: Vec<usize>,
    /// Operations per concurrency level and system, over all blocks.
    pub ops: usize,
    pub blocks: usize,
    pub warmup: usize,
}

/// Samples of one block, in microseconds, and its wall time.
#[derive(Debug, Default)]
struct Samples {
    alloc: Vec<f64>,
    cycle: Vec<f64>,
    rates: Vec<f64>,
}

impl Samples {
    fn add(&mut self, b: Block) {
        self.rates.push(b.ops as f64 / b.wall.as_secs_f64());
        self.alloc.extend(b.alloc);
        self.cycle.extend(b.cycle);
    }
}

/// Latencies (µs) of one block of operations, and its wall time.
#[derive(Debug)]
pub struct Block {
    pub alloc: Vec<f64>,
    pub cycle: Vec<f64>,
    pub ops: usize,
    pub wall: Duration,
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn runtime(c: usize) -> Result<Runtime> {
    if c <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("tokio runtime")
    }
}

pub fn floor_block(helper: &Helper, c: usize, per_worker: usize) -> Result<Block> {
    let conns = (0..c)
        .map(|_| helper.connect())
        .collect::<Result<Vec<_>>>()?;
    let barrier = Barrier::new(c + 1);
    let (results, wall) = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .map(|mut conn| {
                let barrier = &barrier;
                s.spawn(move || -> std::io::Result<(Vec<f64>, Vec<f64>)> {
                    let mut a = Vec::with_capacity(per_worker);
                    let mut cy = Vec::with_capacity(per_worker);
                    barrier.wait();
                    for _ in 0..per_worker {
                        let t0 = Instant::now();
                        let (id, fd) = conn.alloc()?;
                        a.push(us(t0.elapsed()));
                        conn.release(&id)?;
                        drop(fd);
                        cy.push(us(t0.elapsed()));
                    }
                    Ok((a, cy))
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        (results, t0.elapsed())
    });
    let mut block = Block {
        alloc: Vec::new(),
        cycle: Vec::new(),
        ops: c * per_worker,
        wall,
    };
    for r in results {
        let (a, cy) = r
            .map_err(|_| anyhow::anyhow!("floor client panicked"))?
            .context("floor round trip")?;
        block.alloc.extend(a);
        block.cycle.extend(cy);
    }
    Ok(block)
}

/// One builddird client doing `n` connect/allocate/release cycles.
async fn daemon_worker(sock: PathBuf, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut a = Vec::with_capacity(n);
    let mut cy = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let lease = Client::connect(&sock).await?.allocate("bench").await?;
        a.push(us(t0.elapsed()));
        lease.release().await?;
        cy.push(us(t0.elapsed()));
    }
    Ok((a, cy))
}

/// `c` concurrent builddird clients, `per_worker` cycles each.
pub fn daemon_block(rt: &Runtime, daemon: &Daemon, c: usize, per_worker: usize) -> Result<Block> {
    let t0 = Instant::now();
    let results = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..c {
            set.spawn(daemon_worker(daemon.socket.clone(), per_worker));
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r);
        }
        out
    });
    daemon
        .wait_trash_empty(Duration::from_secs(120))
        .context("waiting for the reaper")?;
    let wall = t0.elapsed();
    let mut block = Block {
        alloc: Vec::new(),
        cycle: Vec::new(),
        ops: c * per_worker,
        wall,
    };
    for r in results {
        let (a, cy) = r.context("client task")?.context("builddird round trip")?;
        block.alloc.extend(a);
        block.cycle.extend(cy);
    }
    Ok(block)
}

/// Pushes the floor's row for `what` at concurrency `c`, then builddird's
/// against it, with the target for c = 1 (p50 ≤ 1.5×) and c = 64
/// (p99 ≤ 3×).
fn push_vs_floor(
    report: &mut Report,
    c: usize,
    params: &serde_json::Value,
    what: &str,
    floor: &Stats,
    daemon: &[f64],
    note: &str,
) {
    let floor_name = format!("floor {what}, c={c}");
    report.push(Row::new(1, floor_name.clone(), "us", floor.clone()).params(params.clone()));
    let row = Row::new(
        1,
        format!("builddird {what}, c={c}"),
        "us",
        Stats::of(daemon),
    )
    .params(params.clone())
    .floor(floor_name, floor.clone());
    let row = match c {
        1 => row.target_vs_floor(Stat::Median, 1.5),
        64 => row.target_vs_floor(Stat::P99, 3.0),
        _ => row,
    };
    report.push(row.note(note));
}

/// Connect + handshake only, `n` times.
fn connect_only(rt: &Runtime, sock: &Path, n: usize) -> Result<Vec<f64>> {
    rt.block_on(async {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            let mut client = Client::connect(sock).await?;
            client.handshake().await?;
            v.push(us(t0.elapsed()));
            drop(client);
        }
        Ok(v)
    })
}

pub fn run(
    report: &mut Report,
    exe: &Path,
    daemon: &Daemon,
    variants: &[(&str, &Daemon)],
    cfg: &AllocCfg,
    helper_sock: PathBuf,
) -> Result<()> {
    report.section("1. allocation round trip: builddird vs floor (same mount, same run)");
    let floor_base = daemon.root.join("bench-floor");
    let dirs = FloorDirs::open(&floor_base)?;
    let helper = Helper::start(exe, helper_sock, &floor_base)?;
    let rt1 = runtime(1)?;
    let rtn = runtime(2)?;
    let n1 = cfg.ops.max(1);

    // Components of the floor, and the protocol's fixed cost, at c = 1.
    let (mut sys_a, mut sys_r, mut pings) = (Vec::new(), Vec::new(), Vec::new());
    let mut conn = helper.connect()?;
    for i in 0..n1 + cfg.warmup {
        let t0 = Instant::now();
        let (id, fd) = floor::alloc(&dirs, 0, 0)?;
        let a = us(t0.elapsed());
        let t1 = Instant::now();
        floor::release(&dirs, id)?;
        let r = us(t1.elapsed());
        drop(fd);
        floor::reap_empty(&dirs, id)?;
        let t2 = Instant::now();
        let fd = conn.ping()?;
        let p = us(t2.elapsed());
        drop(fd);
        if i >= cfg.warmup {
            sys_a.push(a);
            sys_r.push(r);
            pings.push(p);
        }
    }
    drop(conn);
    let connect = connect_only(&rt1, &daemon.socket, n1)?;
    report.push(
        Row::new(1, "floor part: allocation syscalls in-process", "us", Stats::of(&sys_a))
            .params(json!({"concurrency": 1}))
            .note("getrandom, mkdirat, openat, fchown, fchmod, mkdirat, openat, fchown, fchmod, renameat2(NOREPLACE)"),
    );
    report.push(
        Row::new(
            1,
            "floor part: release syscalls in-process",
            "us",
            Stats::of(&sys_r),
        )
        .params(json!({"concurrency": 1}))
        .note("openat, fchmod 0000, renameat2 into trash"),
    );
    report.push(
        Row::new(
            1,
            "floor part: one SCM_RIGHTS round trip",
            "us",
            Stats::of(&pings),
        )
        .params(json!({"concurrency": 1}))
        .note("1 byte out; 1 byte + a directory fd back (sendmsg/recvmsg, MSG_CMSG_CLOEXEC)"),
    );
    report.push(
        Row::new(
            1,
            "builddird connect + handshake only",
            "us",
            Stats::of(&connect),
        )
        .params(json!({"concurrency": 1}))
        .note("a cost the floor does not pay: one connection per lease"),
    );

    for &c in &cfg.concurrency {
        let rt = if c <= 1 { &rt1 } else { &rtn };
        let per_worker = (cfg.ops / cfg.blocks.max(1) / c).max(1);
        let warm = (cfg.warmup / c).max(1);
        floor_block(&helper, c, warm)?;
        daemon_block(rt, daemon, c, warm)?;
        let variants: &[(&str, &Daemon)] = if c == 1 { variants } else { &[] };
        for (_, v) in variants {
            daemon_block(rt, v, c, warm)?;
        }
        let (mut f, mut d) = (Samples::default(), Samples::default());
        let mut vs: Vec<Samples> = variants.iter().map(|_| Samples::default()).collect();
        for _ in 0..cfg.blocks.max(1) {
            f.add(floor_block(&helper, c, per_worker)?);
            d.add(daemon_block(rt, daemon, c, per_worker)?);
            for ((_, v), s) in variants.iter().zip(vs.iter_mut()) {
                s.add(daemon_block(rt, v, c, per_worker)?);
            }
        }
        let p = json!({"concurrency": c, "blocks": cfg.blocks});
        let fa = Stats::of(&f.alloc);
        let fc = Stats::of(&f.cycle);
        push_vs_floor(
            report,
            c,
            &p,
            "alloc round trip",
            &fa,
            &d.alloc,
            "connect, handshake, allocate, fd received (the target)",
        );
        push_vs_floor(
            report,
            c,
            &p,
            "alloc+release cycle",
            &fc,
            &d.cycle,
            "connect, handshake, allocate, fd received, release reply",
        );
        for ((label, _), v) in variants.iter().zip(&vs) {
            let what = match *label {
                "log=warn" => "same, daemon started with --log-level warn (no per-lease audit lines)",
                "fd store" => "same, daemon run under a NOTIFY_SOCKET read by the harness: each lease's connection is sent to the fd store (FDSTORE=1) and removed on release (FDSTOREREMOVE=1); systemd would do more work per message than the harness",
                _ => "same, lease_backend = \"tmpfs\": every lease is its own tmpfs (fsopen/fsmount/move_mount), released by deleting its tree and unmounting it",
            };
            report.push(
                Row::new(
                    1,
                    format!("builddird alloc round trip, c={c}, {label}"),
                    "us",
                    Stats::of(&v.alloc),
                )
                .params(p.clone())
                .floor(format!("floor alloc round trip, c={c}"), fa.clone())
                .note(what),
            );
            report.push(
                Row::new(
                    1,
                    format!("builddird alloc+release cycle, c={c}, {label}"),
                    "us",
                    Stats::of(&v.cycle),
                )
                .params(p.clone())
                .floor(format!("floor alloc+release cycle, c={c}"), fc.clone())
                .note(what),
            );
        }
        report.push(
            Row::new(
                1,
                format!("floor cycles/s sustained, c={c}"),
                "ops/s",
                Stats::of(&f.rates),
            )
            .params(p.clone()),
        );
        report.push(
            Row::new(1, format!("builddird cycles/s sustained, c={c}"), "ops/s", Stats::of(&d.rates))
                .params(p)
                .floor(format!("floor cycles/s sustained, c={c}"), Stats::of(&f.rates))
                .note("per block: operations / (wall time until the trash is empty again); higher is better"),
        );
    }
    crate::open_conn::run(report, daemon, &helper, cfg)?;
    Ok(())
}
