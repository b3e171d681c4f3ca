//! The accept loop. Tests inject the listener and the shutdown signal.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UnixListener;

use crate::conn::session;
use crate::lease::table::Daemon;

/// Serves `listener` until `shutdown` completes.
///
/// Running out of descriptors (`EMFILE`/`ENFILE`) or memory in `accept`
/// backs off briefly and retries: pending clients wait in the backlog
/// instead of the loop spinning, and service resumes by itself when load
/// drops.
pub async fn run(listener: UnixListener, daemon: Arc<Daemon>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut last_warning: Option<Instant> = None;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let conn_id = daemon.next_conn_id();
                    tokio::spawn(session::serve(daemon.clone(), stream, conn_id));
                }
                Err(e) => {
                    let exhausted = is_exhaustion(&e);
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %e, exhausted, "accept failed; backing off");
                        last_warning = Some(Instant::now());
                    }
                    let pause = if exhausted { 100 } else { 10 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            },
        }
    }
}

fn is_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

mod libc_errno {
    pub const EMFILE: i32 = rustix::io::Errno::MFILE.raw_os_error();
    pub const ENFILE: i32 = rustix::io::Errno::NFILE.raw_os_error();
    pub const ENOBUFS: i32 = rustix::io::Errno::NOBUFS.raw_os_error();
    pub const ENOMEM: i32 = rustix::io::Errno::NOMEM.raw_os_error();
}
