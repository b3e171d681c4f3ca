//! One function per subcommand; each returns the process exit code.

mod check;
mod list;
mod run;
mod status;

pub use check::check;
pub use list::{list, list_offline};
pub use run::{run, RunRequest};
pub use status::status;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use builddir_client::Client;
use serde::Serialize;

use crate::output;

/// How `release` ends its lease.
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    Delete,
    Keep,
    KeepFor(builddir_client::Owner),
}

pub async fn release(socket: &Path, json: bool, id: &str, ending: Ending) -> Result<ExitCode> {
    let mut client = Client::connect(socket).await?;
    let released = match ending {
        Ending::Delete => client.release(id, false).await?,
        Ending::Keep => client.release(id, true).await?,
        Ending::KeepFor(owner) => client.keep_for(id, owner).await?,
    };
    #[derive(Serialize)]
    struct Out<'a> {
        id: &'a str,
        kept_path: Option<&'a str>,
        limit_reached: bool,
    }
    if json {
        output::json(&Out {
            id: &released.id,
            kept_path: released.kept_path.as_deref(),
            limit_reached: released.limit_reached,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    if released.limit_reached {
        println!(
            "lease {} had filled its size limit",
            output::text(&released.id)
        );
    }
    if let Some(path) = &released.kept_path {
        println!(
            "kept {} at {}",
            output::text(&released.id),
            output::text(path)
        );
    } else {
        println!("released {}", output::text(&released.id));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn remove(socket: &Path, json: bool, id: &str) -> Result<ExitCode> {
    let mut client = Client::connect(socket).await?;
    client.remove(id).await?;
    if json {
        output::json(&serde_json::json!({ "id": id, "removed": true }))?;
    } else {
        println!("removed {}", output::text(id));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn gc(socket: &Path, json: bool, older_than_secs: u64) -> Result<ExitCode> {
    let mut client = Client::connect(socket).await?;
    let ids = client.gc(older_than_secs).await?;
    if json {
        output::json(&serde_json::json!({ "removed": ids }))?;
    } else {
        for id in &ids {
            println!("removed {}", output::text(id));
        }
        println!("{} kept tree(s) removed", ids.len());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn metrics(socket: &Path) -> Result<ExitCode> {
    let mut client = Client::connect(socket).await?;
    let text = client.metrics().await?;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
