//! Part 4: daemon memory and descriptors.
//!
//! A fresh daemon: `VmRSS` idle; with 1 000 and 10 000 live leases (one
//! connection each, as clients hold them); then N allocate/release cycles
//! in ten chunks, sampling RSS and the fd count after each chunk once the
//! daemon is idle again (no lease, trash empty). Growth is judged from the
//! first checkpoint (after 10 % of the cycles: allocator and runtime
//! warmed up) to the last.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use builddir_client::{Client, Lease};
use serde_json::json;

use crate::alloc::{daemon_block, runtime};
use crate::daemon::{Daemon, DaemonOpts};
use crate::env::{register_pid, unregister_pid};
use crate::report::{Report, Row, Stat, Stats};

#[derive(Debug, Clone)]
pub struct MemCfg {
    pub leases: Vec<usize>,
    pub cycles: usize,
    pub cycle_concurrency: usize,
    pub latency_samples: usize,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Most leases one holder process keeps: two fds each (socket, build dir)
/// must fit the fd limit, whose hard value root cannot raise here.
const PER_HOLDER: usize = 4000;

/// Allocates `n` leases with 32 concurrent clients.
fn allocate_many(rt: &tokio::runtime::Runtime, sock: &Path, n: usize) -> Result<Vec<Lease>> {
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let workers = 32.min(n.max(1));
        for w in 0..workers {
            let share = n / workers + usize::from(w < n % workers);
            let sock = sock.to_owned();
            set.spawn(async move {
                let mut v = Vec::with_capacity(share);
                for _ in 0..share {
                    v.push(Client::connect(&sock).await?.allocate("held").await?);
                }
                Ok::<_, builddir_client::Error>(v)
            });
        }
        let mut all = Vec::with_capacity(n);
        while let Some(r) = set.join_next().await {
            all.extend(
                r.context("client task")?
                    .context("allocating held leases")?,
            );
        }
        Ok(all)
    })
}

/// Entry point of `builddir-bench __hold SOCKET N`: allocate N leases,
/// print `ok`, hold them until stdin closes, then drop them (disconnect).
pub fn hold_main(sock: &Path, n: usize) -> Result<()> {
    crate::env::raise_fd_limit(65_536)?;
    let rt = runtime(2)?;
    let leases = allocate_many(&rt, sock, n)?;
    println!("ok {}", leases.len());
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    rt.block_on(async move { drop(leases) });
    Ok(())
}

/// A child process holding leases.
#[derive(Debug)]
struct Holder {
    child: Child,
}

impl Holder {
    fn start(exe: &Path, sock: &Path, n: usize) -> Result<Holder> {
        let child = Command::new(exe)
            .arg("__hold")
            .arg(sock)
            .arg(n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a lease holder")?;
        register_pid(child.id());
        Ok(Holder { child })
    }

    /// Waits for the holder's `ok`.
    fn wait_ready(&mut self) -> Result<()> {
        let out = self.child.stdout.take().context("holder stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        if !line.starts_with("ok") {
            bail!("lease holder failed (see its error above)");
        }
        Ok(())
    }

    /// Closes its stdin: it drops its leases and exits.
    fn release(&mut self) {
        drop(self.child.stdin.take());
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.release();
        let _ = self.child.wait();
        unregister_pid(self.child.id());
    }
}

pub fn run(
    report: &mut Report,
    exe: &Path,
    opts: &DaemonOpts,
    dir: std::path::PathBuf,
    cfg: &MemCfg,
) -> Result<()> {
    report.section("4. daemon memory and fds");
    let (mut daemon, _) = Daemon::start(opts, dir)?;
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss = daemon.rss_kib()?;
    let idle_fds = daemon.fd_count()?;
    report.push(
        Row::new(
            4,
            "daemon RSS idle (fresh start)",
            "MiB",
            Stats::one(mib(idle_rss)),
        )
        .params(json!({"fds": idle_fds, "threads": daemon.threads()?}))
        .target_max(Stat::Median, 16.0),
    );
    let rt1 = runtime(1)?;
    let rtn = runtime(2)?;
    let latency = |rt: &tokio::runtime::Runtime| -> Result<Vec<f64>> {
        Ok(daemon_block(rt, &daemon, 1, cfg.latency_samples)?.cycle)
    };
    let base_latency = Stats::of(&latency(&rt1)?);

    let mut holders: Vec<Holder> = Vec::new();
    let mut held = 0usize;
    let mut levels = cfg.leases.clone();
    levels.sort_unstable();
    for level in levels {
        let more = level.saturating_sub(held);
        let t0 = Instant::now();
        let mut new: Vec<Holder> = Vec::new();
        let mut left = more;
        while left > 0 {
            let n = left.min(PER_HOLDER);
            new.push(Holder::start(exe, &daemon.socket, n)?);
            left -= n;
        }
        for h in &mut new {
            h.wait_ready()?;
        }
        holders.extend(new);
        held += more;
        let took = t0.elapsed();
        std::thread::sleep(Duration::from_millis(200));
        let rss = daemon.rss_kib()?;
        let fds = daemon.fd_count()?;
        let mut row = Row::new(
            4,
            format!("daemon RSS with {level} live leases"),
            "MiB",
            Stats::one(mib(rss)),
        )
        .params(
            json!({"leases": level, "fds": fds, "threads": daemon.threads()?,
                "allocate_seconds": took.as_secs_f64(), "added": more}),
        );
        if level >= 10_000 {
            row = row.target_max(Stat::Median, 64.0);
        }
        report.push(row);
        report.push(
            Row::new(
                4,
                format!("daemon fds with {level} live leases"),
                "fds",
                Stats::one(fds as f64),
            )
            .params(json!({"leases": level}))
            .floor("idle", Stats::one(idle_fds as f64)),
        );
        report.push(
            Row::new(
                4,
                format!("alloc+release cycle with {level} leases held"),
                "us",
                Stats::of(&latency(&rt1)?),
            )
            .params(json!({"leases": level, "concurrency": 1}))
            .floor("same daemon, 0 leases held", base_latency.clone())
            .note("what one more client pays while many leases are live"),
        );
    }
    if held > 0 {
        let n = held;
        for h in &mut holders {
            h.release();
        }
        let idle_after = daemon.wait_idle(Duration::from_secs(600))?;
        drop(holders);
        report.push(
            Row::new(
                4,
                format!("disconnect {n} leases: until all reaped"),
                "ms",
                Stats::one(idle_after.as_secs_f64() * 1e3),
            )
            .params(json!({"leases": n, "holder_processes": n.div_ceil(PER_HOLDER)}))
            .note("all clients close at once; time until b/ and trash/ are empty"),
        );
        std::thread::sleep(Duration::from_millis(200));
        report.push(
            Row::new(
                4,
                format!("daemon RSS after {n} leases released"),
                "MiB",
                Stats::one(mib(daemon.rss_kib()?)),
            )
            .params(json!({"fds": daemon.fd_count()?})),
        );
    }

    // Cycles, in ten chunks.
    let chunks = 10usize;
    let c = cfg.cycle_concurrency.max(1);
    let per_chunk = (cfg.cycles / chunks).max(c);
    let per_worker = per_chunk / c;
    let mut points = Vec::new();
    let t0 = Instant::now();
    for k in 1..=chunks {
        daemon_block(&rtn, &daemon, c, per_worker)?;
        daemon.wait_idle(Duration::from_secs(120))?;
        std::thread::sleep(Duration::from_millis(50));
        points.push((k * per_worker * c, daemon.rss_kib()?, daemon.fd_count()?));
    }
    let total = per_worker * c * chunks;
    let secs = t0.elapsed().as_secs_f64();
    let (_, rss0, fds0) = points[0];
    let (_, rss1, fds1) = points[points.len() - 1];
    let series: Vec<_> = points
        .iter()
        .map(|(n, r, f)| json!({"cycles": n, "rss_kib": r, "fds": f}))
        .collect();
    let params = json!({"cycles": total, "concurrency": c, "seconds": secs, "checkpoints": series});
    report.push(
        Row::new(
            4,
            format!("fd growth over {total} cycles (10%->100%)"),
            "fds",
            Stats::one(fds1 as f64 - fds0 as f64),
        )
        .params(params.clone())
        .target_max(Stat::Median, 0.0),
    );
    report.push(
        Row::new(
            4,
            format!("RSS growth over {total} cycles (10%->100%)"),
            "MiB",
            Stats::one(mib(rss1) - mib(rss0)),
        )
        .params(params.clone())
        .target_max(Stat::Median, 1.0)
        .note("'no growth' judged with 1 MiB tolerance for allocator noise; checkpoints in params"),
    );
    report.push(
        Row::new(
            4,
            format!("daemon RSS after {total} cycles, idle"),
            "MiB",
            Stats::one(mib(rss1)),
        )
        .params(
            json!({"fds": fds1, "idle_rss_mib_fresh": mib(idle_rss), "idle_fds_fresh": idle_fds}),
        )
        .floor("fresh start", Stats::one(mib(idle_rss)))
        .target_max(Stat::Median, 16.0),
    );
    daemon.stop()?;
    Ok(())
}
