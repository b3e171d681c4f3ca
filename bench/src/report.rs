//! Figures: statistics, rows, the table and the JSON.
//!
//! Every figure is one [`Row`]: its samples summarised as min / median /
//! p99 (nearest rank), optionally the floor it is compared with (measured
//! in the same run), and optionally a target (docs/benchmarks.md). A row is printed
//! as a table line as soon as it is measured; at the end every row is
//! printed again as one JSON object per line (and written to `--json`).

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

/// Which statistic a ratio or a target is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stat {
    Median,
    P99,
}

impl Stat {
    fn label(self) -> &'static str {
        match self {
            Stat::Median => "p50",
            Stat::P99 => "p99",
        }
    }
}

/// A summary of samples (nearest-rank percentiles).
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub p99: f64,
    pub mean: f64,
    pub max: f64,
}

impl Stats {
    /// Summarises `samples` (at least one).
    pub fn of(samples: &[f64]) -> Stats {
        assert!(!samples.is_empty(), "a figure needs at least one sample");
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let len = s.len();
        let rank = |p: f64| {
            let k = (p * len as f64).ceil() as usize;
            s[k.clamp(1, len) - 1]
        };
        Stats {
            n: len,
            min: s[0],
            median: rank(0.5),
            p99: rank(0.99),
            mean: s.iter().sum::<f64>() / len as f64,
            max: s[len - 1],
        }
    }

    /// A figure that is a single reading.
    pub fn one(v: f64) -> Stats {
        Stats::of(&[v])
    }

    pub fn get(&self, stat: Stat) -> f64 {
        match stat {
            Stat::Median => self.median,
            Stat::P99 => self.p99,
        }
    }
}

/// The comparison a figure is held against, measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    pub name: String,
    #[serde(flatten)]
    pub stats: Stats,
}

/// A performance target (docs/benchmarks.md).
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// As the spec says it, e.g. "p50 <= 1.5x floor".
    pub text: String,
    pub stat: Stat,
    /// The largest allowed value: a ratio to the floor, or an absolute value
    /// in the row's unit.
    pub limit: f64,
    pub relative_to_floor: bool,
}

/// One figure.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub part: u8,
    pub part_name: &'static str,
    pub figure: String,
    pub params: Value,
    pub unit: &'static str,
    #[serde(flatten)]
    pub stats: Stats,
    pub floor: Option<Floor>,
    /// measured / floor, for `vs_floor_stat` (median unless a target says
    /// otherwise).
    pub vs_floor: Option<f64>,
    pub vs_floor_stat: Option<Stat>,
    /// measured median / floor median and measured p99 / floor p99.
    pub vs_floor_median: Option<f64>,
    pub vs_floor_p99: Option<f64>,
    pub target: Option<Target>,
    /// measured / allowed: at most 1.0 meets the target.
    pub vs_target: Option<f64>,
    pub pass: Option<bool>,
    pub note: Option<String>,
}

impl Row {
    pub fn new(part: u8, figure: impl Into<String>, unit: &'static str, stats: Stats) -> Row {
        Row {
            part,
            part_name: part_name(part),
            figure: figure.into(),
            params: Value::Null,
            unit,
            stats,
            floor: None,
            vs_floor: None,
            vs_floor_stat: None,
            vs_floor_median: None,
            vs_floor_p99: None,
            target: None,
            vs_target: None,
            pass: None,
            note: None,
        }
    }

    pub fn params(mut self, params: Value) -> Row {
        self.params = params;
        self
    }

    pub fn floor(mut self, name: impl Into<String>, stats: Stats) -> Row {
        self.floor = Some(Floor {
            name: name.into(),
            stats,
        });
        self
    }

    /// Target: `stat` of this figure at most `limit` times the floor's.
    pub fn target_vs_floor(mut self, stat: Stat, limit: f64) -> Row {
        self.target = Some(Target {
            text: format!("{} <= {limit}x floor {}", stat.label(), stat.label()),
            stat,
            limit,
            relative_to_floor: true,
        });
        self
    }

    /// Target: `stat` of this figure at most `limit` (in the row's unit).
    pub fn target_max(mut self, stat: Stat, limit: f64) -> Row {
        self.target = Some(Target {
            text: format!("{} <= {} {}", stat.label(), fmt_num(limit), self.unit),
            stat,
            limit,
            relative_to_floor: false,
        });
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = Some(note.into());
        self
    }

    fn finish(&mut self) {
        let stat = self.target.as_ref().map_or(Stat::Median, |t| t.stat);
        if let Some(f) = &self.floor {
            let ratio = |s: Stat| {
                let b = f.stats.get(s);
                (b > 0.0).then(|| self.stats.get(s) / b)
            };
            self.vs_floor_median = ratio(Stat::Median);
            self.vs_floor_p99 = ratio(Stat::P99);
            let base = f.stats.get(stat);
            if base > 0.0 {
                self.vs_floor = Some(self.stats.get(stat) / base);
                self.vs_floor_stat = Some(stat);
            }
        }
        if let Some(t) = &self.target {
            let measured = if t.relative_to_floor {
                self.vs_floor
            } else {
                Some(self.stats.get(t.stat))
            };
            if let Some(m) = measured {
                self.pass = Some(m <= t.limit);
                self.vs_target = (t.limit > 0.0).then(|| m / t.limit);
            }
        }
    }
}

fn part_name(part: u8) -> &'static str {
    match part {
        1 => "alloc",
        2 => "release",
        3 => "reap",
        4 => "memory",
        5 => "ready",
        6 => "today",
        _ => "other",
    }
}

/// Formats a number with about three significant digits.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Collects rows, prints them as they come and as JSON at the end.
#[derive(Debug)]
pub struct Report {
    rows: Vec<Row>,
    json_file: Option<PathBuf>,
    started: std::time::Instant,
}

const RULE: &str = "--------------------------------------------------------------------------------------------------------------------------------------------------";

impl Report {
    pub fn new(json_file: Option<PathBuf>) -> Report {
        Report {
            rows: Vec::new(),
            json_file,
            started: std::time::Instant::now(),
        }
    }

    pub fn header(&self) {
        println!(
            "{:<2} {:<50} {:>6} {:>9} {:>9} {:>9} {:<6} {:>9} {:>9} {:>7}  {:<24} {:>6} ok",
            "#",
            "figure",
            "n",
            "min",
            "p50",
            "p99",
            "unit",
            "floor50",
            "floor99",
            "xfloor",
            "target",
            "vs tgt",
        );
        println!("{RULE}");
    }

    /// Prints and keeps one row.
    pub fn push(&mut self, mut row: Row) {
        row.finish();
        let dash = || "-".to_owned();
        let (f50, f99) = row.floor.as_ref().map_or((dash(), dash()), |f| {
            (fmt_num(f.stats.median), fmt_num(f.stats.p99))
        });
        let single = row.stats.n == 1;
        println!(
            "{:<2} {:<50} {:>6} {:>9} {:>9} {:>9} {:<6} {:>9} {:>9} {:>7}  {:<24} {:>6} {}",
            row.part,
            truncate(&row.figure, 50),
            row.stats.n,
            if single {
                dash()
            } else {
                fmt_num(row.stats.min)
            },
            fmt_num(row.stats.median),
            if single {
                dash()
            } else {
                fmt_num(row.stats.p99)
            },
            row.unit,
            f50,
            f99,
            row.vs_floor
                .map_or_else(dash, |r| format!("{}x", fmt_num(r))),
            row.target
                .as_ref()
                .map_or_else(dash, |t| truncate(&t.text, 24)),
            row.vs_target.map_or_else(dash, fmt_num),
            match row.pass {
                Some(true) => "PASS",
                Some(false) => "MISS",
                None => "info",
            }
        );
        let _ = std::io::stdout().flush();
        self.rows.push(row);
    }

    /// Prints a section heading in the table.
    pub fn section(&self, title: &str) {
        println!(
            "== {title}  [t={:.1}s]",
            self.started.elapsed().as_secs_f64()
        );
        let _ = std::io::stdout().flush();
    }

    /// Rows that missed their target.
    pub fn misses(&self) -> usize {
        self.rows.iter().filter(|r| r.pass == Some(false)).count()
    }

    /// Prints every row as JSON (one object per line) and writes the whole
    /// document to the `--json` file if one was given.
    pub fn finish(&self, meta: Value) -> anyhow::Result<()> {
        println!("{RULE}");
        println!("JSON (one figure per line; --json FILE writes the whole document):");
        for row in &self.rows {
            println!("{}", serde_json::to_string(row)?);
        }
        if let Some(path) = &self.json_file {
            let doc = serde_json::json!({ "meta": meta, "rows": self.rows });
            std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
            println!("wrote {}", path.display());
        }
        Ok(())
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::of(&v);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.median, 50.0);
        assert_eq!(s.p99, 99.0);
        assert_eq!(s.max, 100.0);
        let s = Stats::of(&[3.0]);
        assert_eq!((s.min, s.median, s.p99), (3.0, 3.0, 3.0));
    }

    #[test]
    fn targets_are_judged() {
        let mut r = Row::new(1, "x", "us", Stats::of(&[10.0, 20.0, 30.0]))
            .floor("f", Stats::of(&[10.0, 10.0, 10.0]))
            .target_vs_floor(Stat::Median, 1.5);
        r.finish();
        assert_eq!(r.vs_floor, Some(2.0));
        assert_eq!(r.pass, Some(false));
        let mut r = Row::new(4, "rss", "MiB", Stats::one(8.0)).target_max(Stat::Median, 16.0);
        r.finish();
        assert_eq!(r.vs_target, Some(0.5));
        assert_eq!(r.pass, Some(true));
    }
}
