//! `builddird`: parse flags, prepare and verify the mount, serve.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;

use builddir_server::backend::Backend;
use builddir_server::conn::listener::Listener;
use builddir_server::conn::session;
use builddir_server::host::config::{Backing, Config, DEFAULT_CONFIG};
use builddir_server::host::identity::Accounts;
use builddir_server::host::layout::Layout;
use builddir_server::host::mount;
use builddir_server::host::policy::Policy;
use builddir_server::lease::{recover, table::Daemon};
use builddir_server::logging;
use builddir_server::shutdown;
use builddir_server::systemd::notify;

/// The builddird daemon. Every flag overrides the same key of the config file.
#[derive(Debug, Parser)]
// The binary's name, not the package's (`builddird --version` prints
// `builddird X.Y.Z`).
#[command(name = "builddird", version, about)]
struct Args {
    /// Configuration file (TOML). A missing default file means defaults.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Directory that becomes the dedicated build-dir mount.
    #[arg(long, value_name = "PATH")]
    root: Option<PathBuf>,
    /// Socket to bind when not socket-activated by systemd.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// How the mount is provided.
    #[arg(long, value_enum)]
    backing: Option<Backing>,
    /// tmpfs size (with --backing tmpfs), e.g. 8g or 50%.
    #[arg(long, value_name = "SIZE")]
    tmpfs_size: Option<String>,
    /// Validate the configuration and the mount, then exit without serving.
    #[arg(long)]
    check: bool,
    /// Log filter (RUST_LOG overrides it).
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log_level: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let journald = logging::init(&args.log_level);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = logging::one_line(&e);
            if journald {
                tracing::error!("{line}");
            } else {
                eprintln!("builddird: {line}");
            }
            ExitCode::FAILURE
        }
    }
}

fn load_config(args: &Args) -> Result<Config> {
    let (path, required) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let mut config = Config::load(&path, required)?;
    if let Some(root) = &args.root {
        config.root = root.clone();
    }
    if let Some(socket) = &args.socket {
        config.socket = socket.clone();
    }
    if let Some(backing) = args.backing {
        config.backing = backing;
    }
    if let Some(size) = &args.tmpfs_size {
        config.tmpfs_size = size.clone();
    }
    config.validate()?;
    Ok(config)
}

fn run(args: Args) -> Result<()> {
    let config = load_config(&args)?;
    if args.check {
        let path = args
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        return check(&config, &path);
    }
    // The socket first: a second daemon must fail here, before it touches
    // the mount or anything under it.
    let mut listener = Listener::acquire(&config)?;
    let result = serve(config, &mut listener);
    listener.remove_path();
    result
}

/// The same host check as `builddir-ctl check`, in the same words, for a
/// daemon about to start: an unmounted root is fine (it is mounted at
/// start). Exit 1 with the first problem if there is any.
fn check(config: &Config, config_path: &std::path::Path) -> Result<()> {
    use builddir_host::check::{self, When};
    let mut findings = vec![check::policy(config, config_path)];
    findings.extend(check::root(config, When::BeforeStart));
    for f in &findings {
        println!("{}", f.line());
    }
    match findings.iter().find(|f| !f.ok) {
        None => Ok(()),
        Some(f) => anyhow::bail!(
            "check failed: {} — fix: {}",
            f.detail,
            f.fix.as_deref().unwrap_or("see above")
        ),
    }
}

fn serve(config: Config, listener: &mut Listener) -> Result<()> {
    let policy = Policy::from_config(&config, &Accounts::load())?;
    let root_path = config.root.clone();
    let mut at_stop = shutdown::AtStop {
        activated: listener.bound_path.is_none(),
        made_mount: config.backing != Backing::External
            && !mount::is_mount_point(&config.root).unwrap_or(false),
        backing: config.backing,
        counts: [0; 5],
    };
    mount::prepare(&config.root, config.backing, &config.tmpfs_size)?;
    let root = mount::verify(&config.root)?;
    let layout = Layout::open(root)?;
    recover::lock_root(&layout).map_err(anyhow::Error::msg)?;
    // Every lease's outer directory needs a POSIX ACL: refuse a root that
    // cannot hold one now, rather than fail every allocation later.
    builddir_server::lease::outer::require_acls(&layout)?;
    let backend = Backend::decide(&config, &layout).map_err(anyhow::Error::msg)?;
    let std_listener = listener
        .listener
        .try_clone()
        .context("cannot duplicate the listening socket")?;
    std_listener
        .set_nonblocking(true)
        .context("cannot make the socket non-blocking")?;
    let resumed = std::mem::take(&mut listener.resumed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("builddird")
        .build()
        .context("cannot start the async runtime")?;
    at_stop.counts = runtime.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(std_listener)
            .context("cannot register the socket")?;
        let daemon = Arc::new(Daemon::new(config, layout, policy, backend));
        let found = recover::recover(&daemon, resumed);
        daemon.trimmer.grew(daemon.table.len());
        let mut resumed = 0;
        let mut resumed_leases = 0;
        for (fd, ids) in found.connections {
            let conn_id = daemon.next_conn_id();
            resumed += 1;
            match resumed_stream(fd) {
                Ok(stream) => {
                    resumed_leases += ids.len();
                    tokio::spawn(session::resume(daemon.clone(), stream, conn_id, ids));
                }
                Err(e) => tracing::warn!(error = %e, "cannot resume a stored connection"),
            }
        }
        let detached = found.live.saturating_sub(resumed_leases);
        tracing::info!(
            root = %daemon.layout.root_path().display(),
            backing = daemon.config.backing.as_str(),
            leases = daemon.backend.describe(&daemon.layout.root.fstype, &daemon.config),
            live = found.live,
            resumed,
            awaiting_reclaim = detached,
            orphans = found.orphans,
            kept = found.kept,
            trash = found.trash,
            detaching = found.detaching,
            "mount verified (nosuid,nodev,exec); serving"
        );
        // Always: a stored connection that cannot be served again leaves
        // its leases detached too.
        if found.live > 0 {
            builddir_server::lease::end::spawn_grace_expiry(daemon.clone());
        }
        // Handlers first: a SIGTERM right after READY=1 must stop us
        // cleanly, not kill us by the default action.
        let shutdown = shutdown_signal().context("cannot install signal handlers")?;
        notify::ready(&daemon.status_line());
        let beat = daemon.clone();
        notify::spawn_heartbeat(move || beat.status_line());
        builddir_server::lease::retention::spawn_periodic(daemon.clone());
        builddir_server::lease::detaching::spawn_periodic(daemon.clone());
        // The accept loop runs as a task on a worker, not on this thread:
        // each new connection's task then starts on the same worker (tokio's
        // LIFO slot) instead of waking another thread for every client.
        if let Err(e) = tokio::spawn(builddir_server::run(daemon.clone(), listener, shutdown)).await
        {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
            anyhow::bail!("the accept loop was cancelled: {e}");
        }
        notify::stopping();
        tracing::info!("stopping");
        Ok::<_, anyhow::Error>(daemon.table.state_counts())
    })?;
    // Blocking work still running (a walk, the reap of a large tree) is not
    // waited for: dropping the runtime would wait for it, past systemd's
    // stop timeout. Cutting it short is safe: trash is rescanned and an
    // interrupted hand-over is finished at the next start. What it still
    // holds open only makes an unmount below report the mount busy.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    shutdown::finish(&root_path, &at_stop);
    Ok(())
}

/// A stored connection as a tokio stream.
fn resumed_stream(fd: std::os::fd::OwnedFd) -> std::io::Result<tokio::net::UnixStream> {
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(std_stream)
}

/// Installs SIGTERM and SIGINT handlers now; the future completes on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
