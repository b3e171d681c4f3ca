//! Part 5: readiness — exec to `READY=1`, with and without orphans.
//!
//! One daemon is restarted repeatedly on the same root (its mount stays):
//! alternately with an empty `b/` and with N orphan leases pre-created
//! there (`b/<16 hex>/build`, as a crash would leave them). The time runs
//! from just before `fork`/`exec` to the `READY=1` datagram on the
//! `NOTIFY_SOCKET` the harness bound. Also: how long after `READY=1` the
//! orphans are all reaped (the daemon reaps them in the background).

use std::ffi::CString;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::fs::{mkdirat, openat, Mode, OFlags};
use serde_json::json;

use crate::daemon::{Daemon, DaemonOpts};
use crate::report::{Report, Row, Stats};

#[derive(Debug, Clone)]
pub struct ReadyCfg {
    pub orphans: usize,
    pub samples: usize,
}

const DIR_OPEN: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn make_orphans(daemon: &Daemon, n: usize) -> Result<()> {
    let b = rustix::fs::open(daemon.root.join("b").as_path(), DIR_OPEN, Mode::empty())
        .context("opening b/")?;
    let mut made = 0;
    while made < n {
        let mut bytes = [0u8; 8];
        rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())?;
        let name = CString::new(format!("{:016x}", u64::from_le_bytes(bytes))).expect("hex");
        match mkdirat(&b, name.as_c_str(), Mode::from_raw_mode(0o710)) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(e).context("creating an orphan"),
        }
        let outer = openat(&b, name.as_c_str(), DIR_OPEN, Mode::empty())?;
        mkdirat(&outer, "build", Mode::from_raw_mode(0o700))?;
        made += 1;
    }
    Ok(())
}

pub fn run(
    report: &mut Report,
    opts: &DaemonOpts,
    dir: std::path::PathBuf,
    cfg: &ReadyCfg,
) -> Result<()> {
    report.section("5. readiness: exec -> READY=1");
    let (mut daemon, _first) = Daemon::start(opts, dir)?;
    let (mut empty, mut full, mut reaped) = (vec![], vec![], vec![]);
    for _ in 0..cfg.samples.max(1) {
        daemon.stop()?;
        empty.push(daemon.spawn()?.as_secs_f64() * 1e3);
        daemon.wait_idle(Duration::from_secs(60))?;
        daemon.stop()?;
        make_orphans(&daemon, cfg.orphans)?;
        let ready = daemon.spawn()?;
        let t_ready = Instant::now();
        full.push(ready.as_secs_f64() * 1e3);
        daemon.wait_idle(Duration::from_secs(600))?;
        reaped.push(t_ready.elapsed().as_secs_f64() * 1e3);
    }
    let empty = Stats::of(&empty);
    report.push(
        Row::new(
            5,
            "exec -> READY=1, empty root (restart)",
            "ms",
            empty.clone(),
        )
        .params(json!({"orphans": 0})),
    );
    report.push(
        Row::new(
            5,
            format!("exec -> READY=1, {} orphans", cfg.orphans),
            "ms",
            Stats::of(&full),
        )
        .params(json!({"orphans": cfg.orphans}))
        .floor("same daemon, empty root", empty)
        .note("orphans are moved to trash before READY=1, reaped after"),
    );
    report.push(
        Row::new(
            5,
            format!("READY=1 -> {} orphans reaped", cfg.orphans),
            "ms",
            Stats::of(&reaped),
        )
        .params(json!({"orphans": cfg.orphans})),
    );
    daemon.stop()?;
    Ok(())
}
