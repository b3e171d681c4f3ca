//! `builddir-ctl check`: diagnose a host without changing it. One line per
//! finding; every problem names its fix; exit 1 if any problem.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use builddir_server::host::config::{Backing, Config};
use builddir_server::host::identity::Accounts;
use builddir_server::host::mount;
use builddir_server::host::policy::Policy;
use serde::Serialize;

use crate::output;

#[derive(Debug, Serialize)]
struct Finding {
    check: &'static str,
    ok: bool,
    detail: String,
    fix: Option<String>,
}

fn ok(check: &'static str, detail: String) -> Finding {
    Finding {
        check,
        ok: true,
        detail,
        fix: None,
    }
}

fn problem(check: &'static str, detail: String, fix: String) -> Finding {
    Finding {
        check,
        ok: false,
        detail,
        fix: Some(fix),
    }
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
            match Policy::from_config(&c, &Accounts::load()) {
                Ok(_) => findings.push(ok(
                    "policy",
                    "users and groups in the config resolve".into(),
                )),
                Err(e) => findings.push(problem(
                    "policy",
                    e.to_string(),
                    format!("fix the names in {}", config_path.display()),
                )),
            }
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
    check_root(&config, &mut findings);
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
            match &f.fix {
                None => println!("ok    {:<8} {}", f.check, output::text(&f.detail)),
                Some(fix) => println!(
                    "FAIL  {:<8} {} — fix: {}",
                    f.check,
                    output::text(&f.detail),
                    output::text(fix)
                ),
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check_root(config: &Config, findings: &mut Vec<Finding>) {
    let root = &config.root;
    let shown = root.display();
    if let Err(e) = mount::check_no_symlinks(root) {
        findings.push(problem(
            "root",
            e.to_string(),
            "set root to the real path in the config".into(),
        ));
        return;
    }
    let meta = match std::fs::metadata(root) {
        Ok(m) => m,
        Err(e) => {
            findings.push(problem(
                "root",
                format!("{shown}: {e}"),
                "start builddird once (it creates and mounts root), or create it: mkdir -m 0755"
                    .into(),
            ));
            return;
        }
    };
    if !meta.is_dir() {
        findings.push(problem(
            "root",
            format!("{shown} is not a directory"),
            "point root at a directory".into(),
        ));
        return;
    }
    if meta.uid() != 0 {
        findings.push(problem(
            "root",
            format!("{shown} is owned by uid {}", meta.uid()),
            format!("chown root:root {shown}"),
        ));
    } else if meta.mode() & 0o022 != 0 {
        findings.push(problem(
            "root",
            format!(
                "{shown} has mode {:04o} (group/world-writable)",
                meta.mode() & 0o7777
            ),
            format!("chmod go-w {shown}"),
        ));
    } else {
        findings.push(ok(
            "root",
            format!(
                "{shown} is a root-owned directory, mode {:04o}",
                meta.mode() & 0o7777
            ),
        ));
    }
    match mount::is_mount_point(root) {
        Ok(false) if config.backing != Backing::External => {
            findings.push(problem(
                "mount",
                format!("{shown} is not mounted yet"),
                "start builddird (it mounts root), or check its log: journalctl -u builddird"
                    .into(),
            ));
            return;
        }
        Ok(false) => {
            findings.push(problem(
                "mount",
                format!("{shown} is not a mount point (backing = \"external\")"),
                "mount it nosuid,nodev,exec (fstab or a .mount unit)".into(),
            ));
            return;
        }
        Ok(true) => {}
        Err(e) => {
            findings.push(problem("mount", e.to_string(), "check the path".into()));
            return;
        }
    }
    let flags = std::fs::File::open(root).and_then(mount::flags_of);
    match flags {
        Ok(f) if f.noexec => findings.push(problem(
            "mount",
            format!("{shown} is mounted noexec: builds cannot run what they build"),
            format!("mount -o remount,exec {shown} (or restart builddird with backing = \"bind\")"),
        )),
        Ok(f) if !f.nosuid || !f.nodev => findings.push(problem(
            "mount",
            format!(
                "{shown} lacks {}",
                if f.nosuid { "nodev" } else { "nosuid" }
            ),
            format!("mount -o remount,nosuid,nodev {shown}"),
        )),
        Ok(_) => findings.push(ok("mount", format!("{shown} is mounted nosuid,nodev,exec"))),
        Err(e) => findings.push(problem(
            "mount",
            format!("cannot statvfs {shown}: {e}"),
            "run check as root".into(),
        )),
    }
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
