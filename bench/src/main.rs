//! `builddir-bench`: measures builddird against its floors (SPEC §8,
//! issue 7). See `docs/benchmarks.md` for what each figure and floor is.
//!
//! ```text
//! cargo build --release --bins && cargo run --release -p builddir-bench -- all
//! target/release/builddir-bench --smoke            # seconds, for CI
//! target/release/builddir-bench alloc --concurrency 1,64 --alloc-ops 20000
//! ```
//!
//! Runs as root: it starts the real `builddird` (found next to this
//! executable) on a scratch root under `/var/tmp/builddir-bench/<pid>`,
//! and removes everything (daemons, mounts, files) however the run ends.

mod alloc;
mod daemon;
mod env;
mod floor;
mod memory;
mod open_conn;
mod ready;
mod report;
mod today;
mod trees;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::json;

use crate::daemon::{Daemon, DaemonOpts, BENCH_CONFIG};
use crate::report::Report;
use crate::trees::Shape;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// Every part below.
    All,
    /// 1. Allocation round trip and rate vs the floor, at each concurrency.
    Alloc,
    /// 2. Release latency vs tree size.
    Release,
    /// 3. Reap time vs `rm -rf` of an identical tree.
    Reap,
    /// 4. Daemon RSS and fds: idle, with live leases, over many cycles.
    Memory,
    /// 5. exec -> READY=1, with orphans to reap.
    Ready,
    /// 6. What orchestrators do today: mkdir+chown in place, install -d.
    Today,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backing {
    Bind,
    Tmpfs,
}

/// Benchmark harness for builddird (SPEC §8). Needs root.
///
/// Every figure is printed as a table row while the run goes, and as JSON
/// (one object per line) at the end. Defaults are the full set (under 5
/// minutes on 2 cores); --smoke shrinks every size to run in seconds.
#[derive(Debug, Parser)]
#[command(name = "builddir-bench", version)]
struct Args {
    /// Parts to run.
    #[arg(value_enum, default_value = "all")]
    parts: Vec<Part>,
    /// Tiny sizes (a few seconds): for CI, so the harness never rots.
    #[arg(long)]
    smoke: bool,
    /// [1] Concurrent clients, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "N,..")]
    concurrency: Option<Vec<usize>>,
    /// [1] Operations per concurrency level, per system (builddird, floor).
    #[arg(long, value_name = "N")]
    alloc_ops: Option<usize>,
    /// [1,6] Alternating blocks the operations are split into.
    #[arg(long, value_name = "N")]
    blocks: Option<usize>,
    /// [2,3] Tree sizes in entries, comma-separated (an empty tree always runs).
    #[arg(long, value_delimiter = ',', value_name = "N,..")]
    tree_sizes: Option<Vec<usize>>,
    /// [2,3] Tree shapes.
    #[arg(long, value_delimiter = ',', value_enum, value_name = "SHAPE,..")]
    shapes: Option<Vec<Shape>>,
    /// [2,3] Samples per sized tree (default: 15 up to 10 000 entries, else 9).
    #[arg(long, value_name = "N")]
    tree_samples: Option<usize>,
    /// [2,3] Samples of the empty tree.
    #[arg(long, value_name = "N")]
    empty_samples: Option<usize>,
    /// [4] Live-lease levels, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "N,..")]
    leases: Option<Vec<usize>>,
    /// [4] Allocate/release cycles for the growth check.
    #[arg(long, value_name = "N")]
    cycles: Option<usize>,
    /// [5] Orphan leases pre-created before each restart.
    #[arg(long, value_name = "N")]
    orphans: Option<usize>,
    /// [5] Restarts measured (each with and without orphans).
    #[arg(long, value_name = "N")]
    ready_samples: Option<usize>,
    /// [6] In-place operations (and builddird reference operations).
    #[arg(long, value_name = "N")]
    today_ops: Option<usize>,
    /// [6] install -d fork/execs.
    #[arg(long, value_name = "N")]
    install_ops: Option<usize>,
    /// How builddird provides its mount. tmpfs by default: see
    /// docs/benchmarks.md for why, and for a bind run.
    #[arg(long, value_enum, default_value = "tmpfs")]
    backing: Backing,
    /// Base of the scratch directories (a root-owned path without symlinks).
    #[arg(long, default_value = "/var/tmp/builddir-bench", value_name = "DIR")]
    scratch: PathBuf,
    /// The builddird binary (default: next to this executable).
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
    /// builddird --log-level (it logs every allocation and release at info).
    #[arg(long, default_value = "info", value_name = "FILTER")]
    daemon_log_level: String,
    /// [1] Skip the c=1 variants: a daemon logging at warn, one run under a
    /// NOTIFY_SOCKET (so its default fd store is active), one with
    /// `lease_backend = "tmpfs"` (a tmpfs mounted per lease).
    #[arg(long)]
    no_variants: bool,
    /// Also write all figures as one JSON document here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Keep the scratch directory (daemon logs) for inspection.
    #[arg(long)]
    keep_scratch: bool,
    /// Exit with status 3 if any target is missed.
    #[arg(long)]
    fail_on_miss: bool,
}

/// Sizes of one run: full defaults, or --smoke, then per-flag overrides.
#[derive(Debug, serde::Serialize)]
struct Sizes {
    concurrency: Vec<usize>,
    alloc_ops: usize,
    blocks: usize,
    warmup: usize,
    tree_sizes: Vec<usize>,
    shapes: Vec<Shape>,
    tree_samples: Option<usize>,
    empty_samples: usize,
    leases: Vec<usize>,
    cycles: usize,
    latency_samples: usize,
    orphans: usize,
    ready_samples: usize,
    today_ops: usize,
    install_ops: usize,
}

impl Sizes {
    fn from(a: &Args) -> Sizes {
        let s = if a.smoke {
            Sizes {
                concurrency: vec![1, 16, 64],
                alloc_ops: 384,
                blocks: 2,
                warmup: 64,
                tree_sizes: vec![1000],
                shapes: vec![Shape::Wide, Shape::Deep],
                tree_samples: Some(2),
                empty_samples: 5,
                leases: vec![100, 500],
                cycles: 2000,
                latency_samples: 50,
                orphans: 500,
                ready_samples: 2,
                today_ops: 200,
                install_ops: 10,
            }
        } else {
            Sizes {
                concurrency: vec![1, 16, 64],
                alloc_ops: 20_000,
                blocks: 3,
                warmup: 500,
                tree_sizes: vec![10_000, 100_000],
                shapes: vec![Shape::Wide, Shape::Deep],
                tree_samples: None,
                empty_samples: 101,
                leases: vec![1000, 10_000],
                cycles: 100_000,
                latency_samples: 1000,
                orphans: 10_000,
                ready_samples: 10,
                today_ops: 6000,
                install_ops: 600,
            }
        };
        Sizes {
            concurrency: a.concurrency.clone().unwrap_or(s.concurrency),
            alloc_ops: a.alloc_ops.unwrap_or(s.alloc_ops),
            blocks: a.blocks.unwrap_or(s.blocks).max(1),
            tree_sizes: a.tree_sizes.clone().unwrap_or(s.tree_sizes),
            shapes: a.shapes.clone().unwrap_or(s.shapes),
            tree_samples: a.tree_samples.or(s.tree_samples),
            empty_samples: a.empty_samples.unwrap_or(s.empty_samples),
            leases: a.leases.clone().unwrap_or(s.leases),
            cycles: a.cycles.unwrap_or(s.cycles),
            orphans: a.orphans.unwrap_or(s.orphans),
            ready_samples: a.ready_samples.unwrap_or(s.ready_samples),
            today_ops: a.today_ops.unwrap_or(s.today_ops),
            install_ops: a.install_ops.unwrap_or(s.install_ops),
            ..s
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("__floor-helper") {
        return match (argv.get(2), argv.get(3)) {
            (Some(sock), Some(dir)) => match floor::helper_main(Path::new(sock), Path::new(dir)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("floor helper: {e:#}");
                    ExitCode::FAILURE
                }
            },
            _ => ExitCode::from(2),
        };
    }
    if argv.get(1).map(String::as_str) == Some("__hold") {
        let n = argv.get(3).and_then(|n| n.parse().ok());
        return match (argv.get(2), n) {
            (Some(sock), Some(n)) => match memory::hold_main(Path::new(sock), n) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lease holder: {e:#}");
                    ExitCode::FAILURE
                }
            },
            _ => ExitCode::from(2),
        };
    }
    let args = Args::parse();
    let fail_on_miss = args.fail_on_miss;
    match run(args) {
        Ok(misses) if misses > 0 && fail_on_miss => ExitCode::from(3),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("builddir-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn daemon_binary(args: &Args) -> Result<PathBuf> {
    let path = match &args.daemon {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("current_exe")?
            .parent()
            .context("executable has no directory")?
            .join("builddird"),
    };
    if !path.is_file() {
        bail!(
            "{} not found; build it first: cargo build --release --bins (or pass --daemon PATH)",
            path.display()
        );
    }
    warn_if_stale(&path);
    Ok(path)
}

/// Warns if the daemon binary is older than the daemon's sources.
fn warn_if_stale(bin: &Path) {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return;
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut stack = vec![
        repo.join("crates/server/src"),
        repo.join("crates/proto/src"),
    ];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                    newest = Some((t, p));
                }
            }
        }
    }
    if let Some((t, p)) = newest {
        if t > built {
            eprintln!(
                "warning: {} is older than {}; rebuild with cargo build --release --bins",
                bin.display(),
                p.display()
            );
        }
    }
}

fn host_meta(args: &Args, sizes: &Sizes, daemon_bin: &Path) -> serde_json::Value {
    let uname = rustix::system::uname();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    json!({
        "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        "cpu": cpu,
        "kernel": uname.release().to_string_lossy(),
        "backing": format!("{:?}", args.backing).to_lowercase(),
        "scratch": args.scratch,
        "scratch_fs": fs_type(&args.scratch),
        "daemon": daemon_bin,
        "daemon_log_level": args.daemon_log_level,
        "commit": commit,
        "smoke": args.smoke,
        "sizes": sizes,
        "unix_time": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    })
}

/// `/proc/loadavg` (other work on the machine skews every figure).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The filesystem type of the mount holding `path` (from mountinfo).
fn fs_type(path: &Path) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.to_string_lossy();
    let mut best = (0usize, String::new());
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(mp) = fields.get(4) else { continue };
        let under = *mp == "/" || p == *mp || p.starts_with(&format!("{mp}/"));
        if under && mp.len() >= best.0 {
            if let Some(sep) = fields.iter().position(|f| *f == "-") {
                best = (mp.len(), fields.get(sep + 1).unwrap_or(&"").to_string());
            }
        }
    }
    best.1
}

fn run(args: Args) -> Result<usize> {
    if !rustix::process::geteuid().is_root() {
        bail!("must run as root: builddird mounts its root and the floor chowns (try sudo)");
    }
    let all = args.parts.contains(&Part::All);
    let want = |p: Part| all || args.parts.contains(&p);
    let sizes = Sizes::from(&args);
    let bin = daemon_binary(&args)?;
    let exe = std::env::current_exe().context("current_exe")?;
    let fd_limit = env::raise_fd_limit(65_536)?;
    env::install_signal_cleanup()?;
    let scratch = env::Scratch::new(&args.scratch, args.keep_scratch)?;
    let opts = DaemonOpts {
        bin: bin.clone(),
        backing: format!("{:?}", args.backing).to_lowercase(),
        log_level: args.daemon_log_level.clone(),
        config: BENCH_CONFIG.to_owned(),
        notify: false,
    };
    let mut meta = host_meta(&args, &sizes, &bin);
    meta["loadavg_start"] = json!(loadavg());
    meta["fd_limit"] = json!(fd_limit);
    println!(
        "builddir-bench: {} cpus, kernel {}, {} backing on {} ({}), scratch {}, loadavg {}{}",
        meta["cpus"],
        meta["kernel"].as_str().unwrap_or("?"),
        opts.backing,
        args.scratch.display(),
        meta["scratch_fs"].as_str().unwrap_or("?"),
        scratch.dir.display(),
        meta["loadavg_start"].as_str().unwrap_or("?"),
        if args.smoke { ", SMOKE sizes" } else { "" }
    );
    let started = Instant::now();
    let mut report = Report::new(args.json.clone());
    report.header();

    if want(Part::Alloc) || want(Part::Today) || want(Part::Release) || want(Part::Reap) {
        let (mut main_daemon, _) = Daemon::start(&opts, scratch.sub("main")?)?;
        if want(Part::Alloc) {
            let mut variants: Vec<(String, Daemon)> = Vec::new();
            if !args.no_variants {
                let candidates = [
                    (
                        "log=warn",
                        "quiet",
                        DaemonOpts {
                            log_level: "warn".into(),
                            ..opts.clone()
                        },
                    ),
                    (
                        "fd store",
                        "notify",
                        DaemonOpts {
                            notify: true,
                            ..opts.clone()
                        },
                    ),
                    (
                        "tmpfs leases",
                        "tmpfs-leases",
                        DaemonOpts {
                            config: format!("{BENCH_CONFIG}lease_backend = \"tmpfs\"\n"),
                            ..opts.clone()
                        },
                    ),
                ];
                for (label, dir, o) in candidates {
                    // A daemon that does not know a variant's setting refuses
                    // to start; the variant is then skipped, not the run.
                    match Daemon::start(&o, scratch.sub(dir)?) {
                        Ok((d, _)) => variants.push((label.into(), d)),
                        Err(e) => println!("note: variant {label:?} skipped: {e:#}"),
                    }
                }
            }
            let cfg = alloc::AllocCfg {
                concurrency: sizes.concurrency.clone(),
                ops: sizes.alloc_ops,
                blocks: sizes.blocks,
                warmup: sizes.warmup,
            };
            alloc::run(
                &mut report,
                &exe,
                &main_daemon,
                &variants
                    .iter()
                    .map(|(l, d)| (l.as_str(), d))
                    .collect::<Vec<_>>(),
                &cfg,
                scratch.dir.join("floor.sock"),
            )?;
            for (_, mut d) in variants {
                d.stop()?;
            }
        }
        if want(Part::Today) {
            let cfg = today::TodayCfg {
                ops: sizes.today_ops,
                install_ops: sizes.install_ops,
                blocks: sizes.blocks,
            };
            today::run(&mut report, &main_daemon, &cfg)?;
        }
        if want(Part::Release) || want(Part::Reap) {
            let cfg = trees::TreeCfg {
                sizes: sizes.tree_sizes.clone(),
                shapes: sizes.shapes.clone(),
                samples: sizes.tree_samples,
                empty_samples: sizes.empty_samples,
                release: want(Part::Release),
                reap: want(Part::Reap),
                cold_samples: if args.smoke { 2 } else { 9 },
                cold_busy: std::time::Duration::from_millis(if args.smoke { 50 } else { 300 }),
                tmpfs_leases: false,
            };
            trees::run(&mut report, &exe, &main_daemon, &cfg)?;
            if want(Part::Reap) && !args.no_variants {
                let o = DaemonOpts {
                    config: format!("{BENCH_CONFIG}lease_backend = \"tmpfs\"\n"),
                    ..opts.clone()
                };
                let (mut d, _) = Daemon::start(&o, scratch.sub("tmpfs-reap")?)?;
                let cfg = trees::TreeCfg {
                    shapes: vec![Shape::Wide],
                    release: false,
                    tmpfs_leases: true,
                    ..cfg
                };
                trees::run(&mut report, &exe, &d, &cfg)?;
                d.stop()?;
            }
        }
        main_daemon.stop()?;
    }
    if want(Part::Memory) {
        let cfg = memory::MemCfg {
            leases: sizes.leases.clone(),
            cycles: sizes.cycles,
            cycle_concurrency: 16,
            latency_samples: sizes.latency_samples,
        };
        memory::run(&mut report, &exe, &opts, scratch.sub("memory")?, &cfg)?;
    }
    if want(Part::Ready) {
        let cfg = ready::ReadyCfg {
            orphans: sizes.orphans,
            samples: sizes.ready_samples,
        };
        let managed = DaemonOpts {
            notify: true,
            ..opts.clone()
        };
        ready::run(&mut report, &managed, scratch.sub("ready")?, &cfg)?;
    }
    let secs = started.elapsed().as_secs_f64();
    meta["seconds"] = json!(secs);
    meta["loadavg_end"] = json!(loadavg());
    report.finish(meta)?;
    let deaths = daemon::SIGTERM_DEATHS.load(std::sync::atomic::Ordering::Relaxed);
    if deaths > 0 {
        println!(
            "note: {deaths} daemon stop(s) ended by SIGTERM's default action: the signal came after READY=1 but before builddird installed its handler"
        );
    }
    let misses = report.misses();
    println!(
        "builddir-bench: done in {secs:.1} s (loadavg {}); {misses} target(s) missed{}",
        loadavg(),
        if args.smoke {
            " (smoke sizes: figures are not meaningful)"
        } else {
            ""
        }
    );
    Ok(misses)
}
