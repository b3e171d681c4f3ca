//! OpenMetrics text for `builddir-ctl metrics` (node_exporter's textfile
//! collector or any scraper reads it).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::lease::table::{Daemon, ERROR_KINDS};

/// Renders every metric, ending with `# EOF`.
pub fn render(daemon: &Daemon) -> String {
    let c = &daemon.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "# HELP {name} {help}");
        for (labels, value) in samples {
            let suffix = if kind == "counter" { "_total" } else { "" };
            let _ = writeln!(out, "{name}{suffix}{labels} {value}");
        }
    };
    let [live, kept, reaping, quarantined, detaching] = daemon.table.state_counts();
    family(
        "builddird_leases",
        "gauge",
        "Leases by state.",
        &[
            ("{state=\"live\"}".into(), live),
            ("{state=\"kept\"}".into(), kept),
            ("{state=\"reaping\"}".into(), reaping),
            ("{state=\"quarantined\"}".into(), quarantined),
            ("{state=\"detaching\"}".into(), detaching),
        ],
    );
    family(
        "builddird_allocations",
        "counter",
        "Build directories allocated.",
        &[(String::new(), load(&c.allocations))],
    );
    family(
        "builddird_releases",
        "counter",
        "Leases released or kept.",
        &[(String::new(), load(&c.releases))],
    );
    let refusals: Vec<(String, u64)> = ERROR_KINDS
        .iter()
        .zip(&c.refusals_by_kind)
        .map(|(k, n)| (format!("{{reason=\"{}\"}}", k.as_str()), load(n)))
        .collect();
    family(
        "builddird_refusals",
        "counter",
        "Requests and connections refused, by reason.",
        &refusals,
    );
    family(
        "builddird_connections_accepted",
        "counter",
        "Connections accepted.",
        &[(String::new(), load(&c.connections))],
    );
    family(
        "builddird_connections",
        "gauge",
        "Connections open now.",
        &[(String::new(), daemon.connection_count())],
    );
    family(
        "builddird_hand_overs_running",
        "gauge",
        "Kept trees being handed over now (at most hand_over_concurrency).",
        &[(String::new(), daemon.hand_overs.running())],
    );
    family(
        "builddird_reaped_trees",
        "counter",
        "Trees fully deleted.",
        &[(String::new(), load(&c.reaped_trees))],
    );
    family(
        "builddird_reaped_entries",
        "counter",
        "Names removed by the reaper.",
        &[(String::new(), load(&c.reaped_entries))],
    );
    family(
        "builddird_reaped_bytes",
        "counter",
        "Bytes freed by the reaper (statvfs before and after each tree).",
        &[(String::new(), load(&c.reaped_bytes))],
    );
    family(
        "builddird_reap_errors",
        "counter",
        "Reaper operations that failed.",
        &[(String::new(), load(&c.reap_errors))],
    );
    let secs = load(&c.reap_micros) as f64 / 1e6;
    let _ = writeln!(out, "# TYPE builddird_reap_duration_seconds summary");
    let _ = writeln!(
        out,
        "# HELP builddird_reap_duration_seconds Time spent deleting trees."
    );
    let _ = writeln!(out, "builddird_reap_duration_seconds_sum {secs}");
    let _ = writeln!(
        out,
        "builddird_reap_duration_seconds_count {}",
        load(&c.reaped_trees) + load(&c.reap_quarantined)
    );
    let vfs = rustix::fs::fstatvfs(&daemon.layout.root.fd).ok();
    let mut family = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "{name} {value}");
    };
    family(
        "builddird_free_bytes",
        "Bytes available on the root mount.",
        vfs.as_ref().map_or(0, |v| v.f_bavail * v.f_frsize),
    );
    family(
        "builddird_free_inodes",
        "Inodes available on the root mount.",
        vfs.as_ref().map_or(0, |v| v.f_favail),
    );
    family(
        "builddird_uptime_seconds",
        "Seconds since the daemon started.",
        daemon.started.elapsed().as_secs(),
    );
    out.push_str("# EOF\n");
    out
}
