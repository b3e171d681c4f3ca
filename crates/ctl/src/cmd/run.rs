//! `builddir-ctl run -- CMD`: the whole lease lifecycle around one command.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use builddir_client::{Client, SizeLimit};

pub async fn run(
    socket: &Path,
    name: &str,
    keep_failed: bool,
    set_tmpdir: bool,
    limit: Option<SizeLimit>,
    command: Vec<OsString>,
) -> Result<ExitCode> {
    let name = if name.is_empty() {
        command[0].to_string_lossy().into_owned()
    } else {
        name.to_owned()
    };
    let client = Client::connect(socket).await?;
    let lease = match limit {
        Some(limit) => client.allocate_limited(&name, limit).await?,
        None => client.allocate(&name).await?,
    };
    // The daemon handed us the directory by fd; make sure the path we give
    // the command is that very directory before trusting it.
    if !lease.path_matches_dir() {
        bail!(
            "lease path {} does not match the directory received; refusing to run",
            lease.path().display()
        );
    }
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .current_dir(lease.path())
        .env("BUILDDIR_LEASE", lease.id())
        .env("BUILDDIR_PATH", lease.path());
    if set_tmpdir {
        cmd.env("TMPDIR", lease.path());
    }
    let status = match cmd.status().await {
        Ok(status) => status,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            eprintln!(
                "builddir-ctl: cannot run {}: {e}",
                crate::output::text(&command[0].to_string_lossy())
            );
            lease.release().await.context("releasing the lease")?;
            return Ok(ExitCode::from(code));
        }
    };
    let code: u8 = match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + (sig & 0x7f)).unwrap_or(1),
        (None, None) => 1,
    };
    if !status.success() && keep_failed {
        let kept = lease.keep().await.context("keeping the build directory")?;
        eprintln!(
            "builddir-ctl: command failed ({status}); build directory kept at {}",
            crate::output::text(&kept.display().to_string())
        );
    } else {
        lease.release().await.context("releasing the lease")?;
    }
    Ok(ExitCode::from(code))
}
