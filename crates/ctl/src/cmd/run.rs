//! `builddir-ctl run -- CMD`: the whole lease lifecycle around one command.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use builddir_client::{Client, Owner, SizeLimit};

/// What `run` asks the daemon for, besides the command.
#[derive(Debug)]
pub struct RunRequest {
    /// Shown in listings; `None`: the command's first word.
    pub name: Option<String>,
    /// Someone else to own the directory (`--owner`).
    pub owner: Option<Owner>,
    pub limit: Option<SizeLimit>,
    pub keep_failed: bool,
    pub set_tmpdir: bool,
}

pub async fn run(socket: &Path, request: RunRequest, command: Vec<OsString>) -> Result<ExitCode> {
    let name = request
        .name
        .unwrap_or_else(|| command[0].to_string_lossy().into_owned());
    let me = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    let root = me.0 == 0;
    // With --owner someone else, only root can enter the directory (and
    // switch to its owner); anyone else with a grant leaves that to CMD.
    let foreign = request.owner.is_some_and(|o| (o.uid, o.gid) != me && !root);
    let client = Client::connect(socket).await?;
    let lease = client
        .allocate_with(&name, request.owner, request.limit)
        .await?;
    // The daemon handed us the directory by fd; make sure the path we give
    // the command is that very directory before trusting it. (A directory
    // for another owner is not ours to stat; CMD, as that owner, reaches it
    // by path only after switching to that owner.)
    if !foreign && !lease.path_matches_dir() {
        bail!(
            "lease path {} does not match the directory received; refusing to run",
            lease.path().display()
        );
    }
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env("BUILDDIR_LEASE", lease.id())
        .env("BUILDDIR_PATH", lease.path());
    if !foreign {
        cmd.current_dir(lease.path());
    }
    if let (Some(owner), true) = (request.owner, root) {
        // std drops the supplementary groups when root sets a uid.
        cmd.uid(owner.uid).gid(owner.gid);
    }
    if request.set_tmpdir {
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
    if !status.success() && request.keep_failed {
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
