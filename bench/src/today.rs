//! Part 6: what orchestrators do without builddird, on the same mount.
//!
//! - *in place*: a root process creates `dir/build-<random>` by path
//!   (`mkdir` 0700, `chown`), the way Nix/Guix/CI runners made build dirs
//!   in `$TMPDIR`; release is an in-process recursive delete by path
//!   (`std::fs::remove_dir_all`).
//! - *install -d*: a fork/exec of `install -d -o UID -g GID -m 0700 PATH`
//!   per build (the `sudo install -d` pattern of unprivileged
//!   orchestrators); release is a fork/exec of `rm -rf PATH`.
//!
//! Both are compared with builddird's own c = 1 figures, measured in
//! alternating blocks in the same run. Owner is root (0:0) everywhere, as
//! it is for builddird with a root client.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use crate::alloc::{daemon_block, runtime, us};
use crate::daemon::{time_command, Daemon};
use crate::report::{Report, Row, Stats};

#[derive(Debug, Clone)]
pub struct TodayCfg {
    pub ops: usize,
    pub install_ops: usize,
    pub blocks: usize,
}

fn random_name() -> Result<String> {
    let mut bytes = [0u8; 8];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())?;
    Ok(format!("build-{:016x}", u64::from_le_bytes(bytes)))
}

fn in_place(dir: &Path, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut a, mut cy) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t0 = Instant::now();
        let path = dir.join(random_name()?);
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        std::os::unix::fs::chown(&path, Some(0), Some(0))?;
        a.push(us(t0.elapsed()));
        std::fs::remove_dir_all(&path)?;
        cy.push(us(t0.elapsed()));
    }
    Ok((a, cy))
}

fn install_d(dir: &Path, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut a, mut cy) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t0 = Instant::now();
        let path = dir.join(random_name()?);
        time_command(
            Command::new("install")
                .args(["-d", "-o", "0", "-g", "0", "-m", "0700"])
                .arg(&path),
        )?;
        a.push(us(t0.elapsed()));
        time_command(Command::new("rm").arg("-rf").arg(&path))?;
        cy.push(us(t0.elapsed()));
    }
    Ok((a, cy))
}

pub fn run(report: &mut Report, daemon: &Daemon, cfg: &TodayCfg) -> Result<()> {
    report.section("6. what users do today (same mount, same run, c=1)");
    let dir = daemon.root.join("bench-today");
    crate::env::mkdir_0755(&dir)?;
    let rt = runtime(1)?;
    let blocks = cfg.blocks.max(1);
    let (mut da, mut dc) = (vec![], vec![]);
    let (mut ia, mut ic) = (vec![], vec![]);
    let (mut xa, mut xc) = (vec![], vec![]);
    // Warm-up, then alternate.
    daemon_block(&rt, daemon, 1, 50)?;
    in_place(&dir, 50)?;
    install_d(&dir, 5)?;
    for _ in 0..blocks {
        let b = daemon_block(&rt, daemon, 1, (cfg.ops / blocks).max(1))?;
        da.extend(b.alloc);
        dc.extend(b.cycle);
        let (a, c) = in_place(&dir, (cfg.ops / blocks).max(1))?;
        ia.extend(a);
        ic.extend(c);
        let (a, c) = install_d(&dir, (cfg.install_ops / blocks).max(1))?;
        xa.extend(a);
        xc.extend(c);
    }
    let (da, dc) = (Stats::of(&da), Stats::of(&dc));
    report.push(Row::new(
        6,
        "builddird alloc round trip, c=1 (reference)",
        "us",
        da.clone(),
    ));
    report.push(
        Row::new(
            6,
            "root mkdir+chown in place (path-based)",
            "us",
            Stats::of(&ia),
        )
        .params(json!({"method": "in-place"}))
        .floor("builddird alloc, same run", da.clone())
        .note("xfloor here = this method / builddird"),
    );
    report.push(
        Row::new(
            6,
            "install -d -o -g -m 0700 (fork/exec)",
            "us",
            Stats::of(&xa),
        )
        .params(json!({"method": "install -d"}))
        .floor("builddird alloc, same run", da)
        .note("xfloor here = this method / builddird"),
    );
    report.push(Row::new(
        6,
        "builddird alloc+release cycle, c=1 (reference)",
        "us",
        dc.clone(),
    ));
    report.push(
        Row::new(
            6,
            "in place + remove_dir_all (path-based)",
            "us",
            Stats::of(&ic),
        )
        .params(json!({"method": "in-place"}))
        .floor("builddird cycle, same run", dc.clone()),
    );
    report.push(
        Row::new(
            6,
            "install -d + rm -rf (fork/exec each)",
            "us",
            Stats::of(&xc),
        )
        .params(json!({"method": "install -d"}))
        .floor("builddird cycle, same run", dc),
    );
    Ok(())
}
