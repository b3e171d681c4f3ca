//! Parses metrics text with the reference parser of the Prometheus project
//! for the format the daemon prints, OpenMetrics
//! (`prometheus_client.openmetrics.parser`, from Debian's
//! python3-prometheus-client). It is strict: `# EOF`, one `TYPE` per
//! family, `_total` on counter samples, summary `_sum`/`_count`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// What the parser made of a metrics text.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// Every family name, as the parser groups samples.
    pub families: Vec<String>,
    /// `name{label=value,...}` (labels sorted) → value.
    pub samples: BTreeMap<String, f64>,
}

impl Parsed {
    /// The sample `key`; panics naming it when absent.
    pub fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in {:?}", self.samples))
    }
}

/// Debian's own interpreter when present: the distribution's
/// python3-prometheus-client is installed for it (a `python3` earlier on
/// PATH, e.g. from pyenv, may not have it).
pub fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

const SCRIPT: &str = r#"import sys, json
from prometheus_client.openmetrics.parser import text_string_to_metric_families
fams, out = [], {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    fams.append(fam.name)
    for s in fam.samples:
        key = s.name + ''.join(sorted('{%s=%s}' % kv for kv in s.labels.items()))
        out[key] = s.value
print(json.dumps({"families": fams, "samples": out}))
"#;

/// Parses `text`; panics with the parser's complaint if it rejects it.
pub fn parse(text: &str) -> Parsed {
    let mut child = Command::new(python())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (apt-get install python3)", python()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected the metrics (or is missing: apt-get install python3-prometheus-client): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Parsed {
        families: v["families"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_owned())
            .collect(),
        samples: v["samples"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
            .collect(),
    }
}
