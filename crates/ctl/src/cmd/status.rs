use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use builddir_client::Client;
use serde_json::json;

use crate::output;

pub async fn status(socket: &Path, as_json: bool) -> Result<ExitCode> {
    let mut client = Client::connect(socket).await?;
    let s = client.status().await?;
    let flags = format!(
        "{},{},{}",
        if s.nosuid { "nosuid" } else { "suid(!)" },
        if s.nodev { "nodev" } else { "dev(!)" },
        if s.noexec { "noexec(!)" } else { "exec" }
    );
    if as_json {
        output::json(&json!({
            "version": s.server_version,
            "protocol_version": s.protocol_version,
            "uptime_secs": s.uptime_secs,
            "root": s.root,
            "backing": s.backing,
            "mount": { "nosuid": s.nosuid, "nodev": s.nodev, "noexec": s.noexec },
            "free_bytes": s.free_bytes,
            "total_bytes": s.total_bytes,
            "free_inodes": s.free_inodes,
            "connections": s.connections,
            "leases": {
                "live": s.live,
                "kept": s.kept,
                "reaping": s.reaping,
                "quarantined": s.quarantined,
                "detaching": s.detaching,
            },
            "reaped_total": s.reaped_total,
            "reap_errors": s.reap_errors,
            "last_reap_error": s.last_reap_error,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows = vec![
        vec![
            "version".into(),
            format!("{} (protocol {})", s.server_version, s.protocol_version),
        ],
        vec!["uptime".into(), output::age(s.uptime_secs)],
        vec!["root".into(), s.root.clone()],
        vec!["backing".into(), s.backing.clone()],
        vec!["mount".into(), flags],
        vec![
            "free".into(),
            format!(
                "{} of {}, {} inodes",
                output::bytes(s.free_bytes),
                output::bytes(s.total_bytes),
                s.free_inodes
            ),
        ],
        vec!["connections".into(), s.connections.to_string()],
        vec![
            "leases".into(),
            format!(
                "{} live, {} kept, {} reaping, {} quarantined, {} detaching",
                s.live, s.kept, s.reaping, s.quarantined, s.detaching
            ),
        ],
        vec![
            "reaped".into(),
            format!("{} trees, {} errors", s.reaped_total, s.reap_errors),
        ],
        vec![
            "last reap error".into(),
            s.last_reap_error.clone().unwrap_or_else(|| "-".into()),
        ],
    ];
    output::table(&["FIELD", "VALUE"], &rows)?;
    Ok(ExitCode::SUCCESS)
}
