//! `builddir-ctl check`: diagnose a host without changing it. One line per
//! finding; every problem names its fix; exit 1 if any problem.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use builddir_host::check::{self as host, Finding, When};
use builddir_host::config::Config;

use crate::output;

fn ok(check: &'static str, detail: String) -> Finding {
    Finding::ok(check, detail)
}

fn problem(check: &'static str, detail: String, fix: String) -> Finding {
    Finding::problem(check, detail, fix)
}

pub fn check(
    socket: &Path,
    socket_given: bool,
    json: bool,
    config_path: &Path,
) -> Result<ExitCode> {
    let mut findings = Vec::new();
    let config = match Config::load(config_path, false) {
        Ok(c) => {
            findings.push(ok(
                "config",
                format!("{} is valid (or absent: defaults)", config_path.display()),
            ));
            findings.push(host::policy(&c, config_path));
            c
        }
        Err(e) => {
            findings.push(problem(
                "config",
                e.to_string(),
                format!("fix {}", config_path.display()),
            ));
            Config::default()
        }
    };
    // The same checks, in the same words, as `builddird --check`.
    findings.extend(host::root(&config, When::Serving));
    let socket = if socket_given {
        socket.to_owned()
    } else {
        config.socket.clone()
    };
    check_socket(&socket, &mut findings);

    let failed = findings.iter().filter(|f| !f.ok).count();
    if json {
        output::json(&findings)?;
    } else {
        for f in &findings {
            // Details quote config values and paths: escaped like any text.
            println!("{}", output::text(&f.line()));
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check_socket(socket: &Path, findings: &mut Vec<Finding>) {
    let shown = socket.display();
    match std::fs::symlink_metadata(socket) {
        Err(e) => findings.push(problem(
            "socket",
            format!("{shown}: {e}"),
            "systemctl enable --now builddird.socket (or start builddird)".into(),
        )),
        Ok(m) if !m.file_type().is_socket() => findings.push(problem(
            "socket",
            format!("{shown} is not a socket"),
            format!("remove {shown} and restart builddird.socket"),
        )),
        Ok(m) => match std::os::unix::net::UnixStream::connect(socket) {
            Ok(_) => findings.push(ok(
                "socket",
                format!(
                    "{shown} accepts connections (mode {:04o}, gid {})",
                    m.mode() & 0o7777,
                    m.gid()
                ),
            )),
            Err(e) => findings.push(problem(
                "socket",
                format!("{shown} does not accept connections: {e}"),
                "systemctl restart builddird.socket (a stale socket file is left by a dead daemon)"
                    .into(),
            )),
        },
    }
}
