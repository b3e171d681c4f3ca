//! Parts 2 and 3: release latency vs tree size, and reap time vs `rm -rf`.
//!
//! Per sample: allocate a lease, fill its build dir with a tree (by fd),
//! build an identical tree under `root/bench-rm/<n>/build` on the same
//! mount, then time
//! - the release: `Lease::release` (request sent → reply read);
//! - the reap: from sending the release until inotify reports
//!   `trash/<id>` deleted (the reaper's last `unlinkat`);
//! - `rm -rf root/bench-rm/<n>` (GNU coreutils; fork + exec + wait).
//!
//! Which of the two deletions runs first alternates between samples; both
//! trees were just created, so both are equally cache-hot.
//!
//! Shapes (N entries): *wide* is one directory of N empty files; *deep* is
//! a chain of N/10 nested directories, each holding 9 empty files and the
//! next directory (N = 100 000 is 10 000 levels, far beyond PATH_MAX).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use builddir_client::Client;
use rustix::fs::{mkdirat, openat, Mode, OFlags};
use serde_json::json;

use crate::alloc::{runtime, us};
use crate::daemon::{time_command, Daemon, DeleteWatch};
use crate::floor::Helper;
use crate::report::{Report, Row, Stat, Stats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Empty,
    Wide,
    Deep,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Empty => "empty",
            Shape::Wide => "wide",
            Shape::Deep => "deep",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TreeCfg {
    pub sizes: Vec<usize>,
    pub shapes: Vec<Shape>,
    /// Samples per sized tree (None: 15 up to 10 000 entries, else 9).
    pub samples: Option<usize>,
    pub empty_samples: usize,
    pub release: bool,
    pub reap: bool,
    /// Cold SCM_RIGHTS round trips (after `cold_busy` of CPU work).
    pub cold_samples: usize,
    pub cold_busy: Duration,
    /// The daemon runs `lease_backend = "tmpfs"`: reaping a lease deletes
    /// the tree in its tmpfs, then unmounts it; labelled as such.
    pub tmpfs_leases: bool,
}

const DIR_OPEN: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn touch(dir: BorrowedFd<'_>, name: &str) -> Result<()> {
    let fd = openat(
        dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .with_context(|| format!("creating {name}"))?;
    drop(fd);
    Ok(())
}

/// Fills `dir` with `entries` names in `shape`, by descriptor only.
pub fn build_tree(dir: BorrowedFd<'_>, shape: Shape, entries: usize) -> Result<()> {
    match shape {
        Shape::Empty => {}
        Shape::Wide => {
            for i in 0..entries {
                touch(dir, &format!("f{i:06}"))?;
            }
        }
        Shape::Deep => {
            let levels = (entries / 10).max(1);
            let mut cur: OwnedFd = openat(dir, ".", DIR_OPEN, Mode::empty())?;
            for level in 0..levels {
                for i in 0..9 {
                    touch(cur.as_fd(), &format!("f{i}"))?;
                }
                if level + 1 < levels {
                    mkdirat(&cur, "d", Mode::from_raw_mode(0o755))?;
                    cur = openat(&cur, "d", DIR_OPEN, Mode::empty())?;
                } else {
                    // The directory the chain would continue with, as a file:
                    // exactly 10 entries per level.
                    touch(cur.as_fd(), "f9")?;
                }
            }
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// An SCM_RIGHTS round trip to the floor helper right after this thread
/// kept its CPU busy for `busy` while the other CPU idled — the situation of
/// a release after the client built a tree. On a VM the idle vCPU halts and
/// waking it costs far more than a back-to-back round trip.
fn cold_pings(helper: &Helper, samples: usize, busy: Duration) -> Result<Vec<f64>> {
    let mut conn = helper.connect()?;
    conn.ping()?;
    let mut v = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        while t.elapsed() < busy {
            std::hint::spin_loop();
        }
        let t0 = Instant::now();
        drop(conn.ping()?);
        v.push(us(t0.elapsed()));
    }
    Ok(v)
}

pub fn run(report: &mut Report, exe: &Path, daemon: &Daemon, cfg: &TreeCfg) -> Result<()> {
    let rt = runtime(1)?;
    let rm_base = daemon.root.join("bench-rm");
    crate::env::mkdir_0755(&rm_base)?;
    let trash = daemon.root.join("trash");
    let mut cases = vec![(Shape::Empty, 0usize)];
    for &size in &cfg.sizes {
        for &shape in &cfg.shapes {
            if shape != Shape::Empty {
                cases.push((shape, size));
            }
        }
    }
    let mut releases = Vec::new();
    let mut reaps = Vec::new();
    let mut n_rm = 0usize;
    for (shape, size) in cases {
        let samples = if shape == Shape::Empty {
            cfg.empty_samples
        } else {
            cfg.samples.unwrap_or(if size <= 10_000 { 15 } else { 9 })
        }
        .max(1);
        let (mut rel, mut reap, mut rm, mut build_ms) = (vec![], vec![], vec![], vec![]);
        for i in 0..samples {
            let lease = rt
                .block_on(async {
                    Client::connect(&daemon.socket)
                        .await?
                        .allocate("tree")
                        .await
                })
                .context("allocating a lease for a tree")?;
            let t_build = Instant::now();
            build_tree(lease.dir(), shape, size)?;
            build_ms.push(ms(t_build.elapsed()));
            let rm_dir = rm_base.join(n_rm.to_string());
            n_rm += 1;
            if cfg.reap {
                std::fs::create_dir_all(rm_dir.join("build"))?;
                let fd = rustix::fs::open(rm_dir.join("build").as_path(), DIR_OPEN, Mode::empty())?;
                build_tree(fd.as_fd(), shape, size)?;
            }
            daemon.wait_trash_empty(Duration::from_secs(600))?;
            let rm_first = cfg.reap && i % 2 == 1;
            let mut rm_once = |dir: &Path| -> Result<()> {
                rm.push(ms(time_command(Command::new("rm").arg("-rf").arg(dir))?));
                Ok(())
            };
            if rm_first {
                rm_once(&rm_dir)?;
            }
            let watch = DeleteWatch::new(&trash)?;
            let id = lease.id().to_owned();
            let t0 = Instant::now();
            rt.block_on(lease.release()).context("release")?;
            rel.push(us(t0.elapsed()));
            let seen = watch.wait_deleted(&id, Duration::from_secs(600))?;
            reap.push(ms(seen.duration_since(t0)));
            if cfg.reap && !rm_first {
                rm_once(&rm_dir)?;
            }
        }
        let label = match (shape, cfg.tmpfs_leases) {
            (Shape::Empty, false) => "empty".to_owned(),
            (Shape::Empty, true) => "tmpfs lease, empty".to_owned(),
            (_, false) => format!("{} {size}", shape.name()),
            (_, true) => format!("tmpfs lease, {} {size}", shape.name()),
        };
        let params = json!({"shape": shape, "entries": size, "samples": samples,
            "tree_build_ms_median": Stats::of(&build_ms).median});
        releases.push(
            Row::new(
                2,
                format!("release latency, {label}"),
                "us",
                Stats::of(&rel),
            )
            .params(params.clone())
            .target_max(Stat::Median, 1000.0)
            .note("release request sent -> reply read"),
        );
        let mut row = Row::new(3, format!("reap time, {label}"), "ms", Stats::of(&reap))
            .params(params)
            .note("release sent -> trash/<id> deleted (inotify)");
        if cfg.reap {
            row = row.floor(format!("rm -rf, {label}"), Stats::of(&rm));
            if size > 0 {
                row = row.target_vs_floor(Stat::Median, 1.0);
            }
        }
        reaps.push(row);
    }
    if cfg.release {
        report.section("2. release latency vs tree size (reap deferred)");
        let floor_base = daemon.root.join("bench-floor");
        let helper = Helper::start(exe, daemon.dir.join("floor-trees.sock"), &floor_base)?;
        let cold = cold_pings(&helper, cfg.cold_samples.max(1), cfg.cold_busy)?;
        let busy_ms = cfg.cold_busy.as_millis();
        report.push(
            Row::new(2, format!("floor part: SCM_RIGHTS round trip after {busy_ms} ms busy"), "us", Stats::of(&cold))
                .params(json!({"busy_ms": busy_ms}))
                .note("client CPU busy (as after building a tree), other CPU idle: the idle-vCPU wake-up cost every release after a build pays"),
        );
        for r in releases {
            report.push(r);
        }
    }
    if cfg.reap {
        report.section(if cfg.tmpfs_leases {
            "3b. reap of tmpfs leases (the tree deleted in the tmpfs, then the tmpfs unmounted) vs GNU rm -rf of an identical tree on the root mount"
        } else {
            "3. reap time vs GNU rm -rf of an identical tree, same mount, same run"
        });
        for r in reaps {
            report.push(r);
        }
    }
    Ok(())
}
