use std::path::Path;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use anyhow::Result;
use builddir_client::{Client, LeaseEntry, LeaseState};
use serde::Serialize;

use crate::output;
use crate::users::Users;

/// One lease in `list --json` (exact strings; the table escapes them) (documented in docs/cli.md; fields are only
/// ever added).
#[derive(Debug, Serialize)]
pub struct LeaseJson<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub state: &'a str,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub owner: String,
    pub client_uid: u32,
    pub client_pid: u32,
    pub client_command: &'a str,
    pub created_unix: u64,
    pub age_secs: u64,
    pub path: &'a str,
    pub size_bytes: Option<u64>,
    /// The build's size limit (tmpfs leases), else null.
    pub limit_bytes: Option<u64>,
}

pub async fn list(socket: &Path, json: bool, all: bool, size: bool) -> Result<ExitCode> {
    let mut client = Client::connect(socket).await?;
    let rows = client.list(all, size).await?;
    show(rows, json, size)
}

/// `list --offline`: the registry on disk, while the daemon is down.
pub fn list_offline(json: bool, config_path: &Path) -> Result<ExitCode> {
    let config = builddir_host::config::Config::load(config_path, false)?;
    let root = &config.root;
    let found = builddir_host::registry::scan(root).with_context(|| {
        format!(
            "cannot read the registry under {} (needs root)",
            root.display()
        )
    })?;
    let rows = found
        .into_iter()
        .map(|(state, m)| {
            let path = match state {
                LeaseState::Live => root.join("b").join(&m.id).join("build"),
                LeaseState::Kept => root.join("kept").join(&m.id).join("build"),
                _ => root.join("trash").join(&m.id),
            };
            LeaseEntry {
                id: m.id,
                name: m.name,
                state,
                owner_uid: m.owner_uid,
                owner_gid: m.owner_gid,
                peer_uid: m.peer_uid,
                peer_pid: m.peer_pid,
                peer_command: m.peer_command,
                created_unix: m.created_unix,
                path: path.display().to_string(),
                size_bytes: None,
                limit_bytes: m.limit_bytes,
            }
        })
        .collect();
    show(rows, json, false)
}

fn show(mut rows: Vec<LeaseEntry>, json: bool, size: bool) -> Result<ExitCode> {
    rows.sort_by(|a, b| {
        a.created_unix
            .cmp(&b.created_unix)
            .then_with(|| a.id.cmp(&b.id))
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut users = Users::default();
    let view: Vec<LeaseJson<'_>> = rows.iter().map(|r| to_json(r, now, &mut users)).collect();
    if json {
        output::json(&view)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut header = vec!["ID", "OWNER", "PID", "COMMAND", "NAME", "AGE", "STATE"];
    if size {
        header.push("SIZE");
    }
    header.push("PATH");
    let table: Vec<Vec<String>> = view
        .iter()
        .map(|r| {
            let mut row = vec![
                r.id.to_owned(),
                r.owner.clone(),
                if r.client_pid == 0 {
                    "-".into()
                } else {
                    r.client_pid.to_string()
                },
                if r.client_command.is_empty() {
                    "-".into()
                } else {
                    r.client_command.to_owned()
                },
                if r.name.is_empty() {
                    "-".into()
                } else {
                    r.name.to_owned()
                },
                output::age(r.age_secs),
                r.state.to_owned(),
            ];
            if size {
                let used = r.size_bytes.map_or("-".into(), output::bytes);
                row.push(match r.limit_bytes {
                    Some(limit) => format!("{used}/{}", output::bytes(limit)),
                    None => used,
                });
            }
            row.push(r.path.to_owned());
            row
        })
        .collect();
    output::table(&header, &table)?;
    Ok(ExitCode::SUCCESS)
}

fn to_json<'a>(r: &'a LeaseEntry, now: u64, users: &mut Users) -> LeaseJson<'a> {
    LeaseJson {
        id: &r.id,
        name: &r.name,
        state: r.state.as_str(),
        owner_uid: r.owner_uid,
        owner_gid: r.owner_gid,
        owner: users.name(r.owner_uid),
        client_uid: r.peer_uid,
        client_pid: r.peer_pid,
        client_command: &r.peer_command,
        created_unix: r.created_unix,
        age_secs: now.saturating_sub(r.created_unix),
        path: &r.path,
        size_bytes: r.size_bytes,
        limit_bytes: r.limit_bytes,
    }
}
