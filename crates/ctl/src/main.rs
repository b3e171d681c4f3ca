//! `builddir-ctl`: operator and user CLI for builddird.
//!
//! Exit codes: 0 ok, 1 failure, 2 usage; `run` passes its command's status.

mod cmd;
mod output;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Talk to builddird: lease build directories, list and manage them.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The daemon's socket.
    #[arg(long, global = true, env = "BUILDDIR_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Machine-readable output (schema in docs/cli.md).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List leases: yours, or everyone's with --all (operators).
    List {
        /// Everyone's leases, not only yours (operators: root and the
        /// operator_group).
        #[arg(long)]
        all: bool,
        /// Also compute each tree's size.
        #[arg(long)]
        size: bool,
        /// Read the on-disk registry instead of asking the daemon (works
        /// while it is down; needs root).
        #[arg(long)]
        offline: bool,
        /// The daemon's configuration file (for --offline: where root is).
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/etc/builddird/config.toml",
            requires = "offline"
        )]
        config: PathBuf,
    },
    /// Show the daemon's status.
    Status,
    /// End a lease (deleted in the background), or keep its tree.
    Release {
        /// The lease's id, as `list` shows it.
        id: String,
        /// Keep the tree instead of deleting it: it moves to the kept area,
        /// becomes yours, loses setuid/setgid bits; its path is printed.
        #[arg(long)]
        keep: bool,
        /// Keep the tree for USER[:GROUP] instead (names or numbers; GROUP
        /// defaults to USER's primary group): it becomes theirs, not
        /// yours. Needs root or an owner_grants entry for that owner.
        #[arg(long, value_name = "USER[:GROUP]", value_parser = users::parse_owner, conflicts_with = "keep")]
        keep_for: Option<builddir_client::Owner>,
    },
    /// Delete any lease or kept tree (operators).
    Remove {
        /// The lease's or kept tree's id, as `list --all` shows it.
        id: String,
    },
    /// Delete kept trees (yours; everyone's for operators).
    Gc {
        /// Only trees kept longer ago than this (e.g. 30m, 12h, 7d).
        #[arg(long, value_name = "DURATION", value_parser = output::parse_duration)]
        older_than: Option<u64>,
    },
    /// Print metrics in the OpenMetrics / Prometheus text format (no
    /// --json: the text format is the machine-readable form).
    Metrics,
    /// Diagnose this host without changing anything: config, mount, socket.
    Check {
        /// The daemon's configuration file.
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/etc/builddird/config.toml"
        )]
        config: PathBuf,
    },
    /// Run a command in a fresh build directory, then release it (no
    /// --json: the output is the command's own).
    Run {
        /// Name shown in listings (e.g. a job or derivation name)
        /// [default: the command, CMD's first word].
        #[arg(long)]
        name: Option<String>,
        /// Make the directory for USER[:GROUP] (names or numbers; GROUP
        /// defaults to USER's primary group). Needs root or an owner_grants
        /// entry. As root, CMD then runs as that user (no supplementary
        /// groups); otherwise CMD runs as you, in your current directory,
        /// and must switch to the owner itself and cd to $BUILDDIR_PATH.
        #[arg(long, value_name = "USER[:GROUP]", value_parser = users::parse_owner)]
        owner: Option<builddir_client::Owner>,
        /// Keep the directory if the command fails, and print its path.
        #[arg(long)]
        keep_failed: bool,
        /// Do not set TMPDIR to the build directory.
        #[arg(long)]
        no_tmpdir: bool,
        /// Limit the build to this many bytes (e.g. 512M, 8G); needs a
        /// daemon with lease_backend = "tmpfs" or "project-quota".
        #[arg(long, value_name = "SIZE", value_parser = output::parse_size)]
        size: Option<u64>,
        /// Limit the build to this many files and directories.
        #[arg(long, value_name = "N")]
        inodes: Option<u64>,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<std::ffi::OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.json {
        refuse_json(&cli.command);
    }
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(builddir_client::default_socket);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("builddir-ctl: cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::List {
                offline: true,
                config,
                ..
            } => cmd::list_offline(cli.json, &config),
            Command::List { all, size, .. } => cmd::list(&socket, cli.json, all, size).await,
            Command::Status => cmd::status(&socket, cli.json).await,
            Command::Release { id, keep, keep_for } => {
                let ending = match (keep_for, keep) {
                    (Some(owner), _) => cmd::Ending::KeepFor(owner),
                    (None, true) => cmd::Ending::Keep,
                    (None, false) => cmd::Ending::Delete,
                };
                cmd::release(&socket, cli.json, &id, ending).await
            }
            Command::Remove { id } => cmd::remove(&socket, cli.json, &id).await,
            Command::Gc { older_than } => cmd::gc(&socket, cli.json, older_than.unwrap_or(0)).await,
            Command::Metrics => cmd::metrics(&socket).await,
            Command::Check { config } => {
                cmd::check(&socket, cli.socket.is_some(), cli.json, &config)
            }
            Command::Run {
                name,
                owner,
                keep_failed,
                no_tmpdir,
                size,
                inodes,
                command,
            } => {
                let limit =
                    (size.is_some() || inodes.is_some()).then(|| builddir_client::SizeLimit {
                        bytes: size.unwrap_or(0),
                        inodes: inodes.unwrap_or(0),
                    });
                let request = cmd::RunRequest {
                    name,
                    owner,
                    limit,
                    keep_failed,
                    set_tmpdir: !no_tmpdir,
                };
                cmd::run(&socket, request, command).await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("builddir-ctl: {}", output::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// `--json` where it would change nothing is a usage error (exit 2), not
/// silently ignored: a script asking for JSON must not get text instead.
fn refuse_json(command: &Command) {
    let why = match command {
        Command::Run { .. } => "`run` prints only what its command prints",
        Command::Metrics => {
            "`metrics` prints the OpenMetrics text format, which is already machine-readable"
        }
        _ => return,
    };
    Cli::command()
        .error(
            clap::error::ErrorKind::ArgumentConflict,
            format!("--json does not apply here: {why}; drop --json"),
        )
        .exit();
}
