//! `sd_notify`: READY, STATUS, WATCHDOG, STOPPING. Every call is a no-op
//! when `NOTIFY_SOCKET` is unset (run by hand).

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Tells the service manager we serve (call only after the mount is
/// verified), with `status` for `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Sends `WATCHDOG=1` at half the interval if the manager asked for it, and
/// refreshes `STATUS=` (what `status_line` says) when it changes. The
/// watchdog ping runs on the async workers, so a wedged runtime stops it —
/// which is the point.
pub fn spawn_heartbeat(status_line: impl Fn() -> String + Send + 'static) {
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog.map_or(Duration::from_secs(2), |w| {
        (w / 2).min(Duration::from_secs(2))
    });
    tokio::spawn(async move {
        let mut last = String::new();
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let status = status_line();
            let mut states = Vec::with_capacity(2);
            if watchdog.is_some() {
                states.push(NotifyState::Watchdog);
            }
            if status != last {
                states.push(NotifyState::Status(&status));
            }
            if !states.is_empty() {
                // Blocking datagram send: off the async workers.
                let owned: Vec<String> = states.iter().map(|s| s.to_string()).collect();
                let _ = tokio::task::spawn_blocking(move || {
                    let custom: Vec<NotifyState<'_>> =
                        owned.iter().map(|s| NotifyState::Custom(s)).collect();
                    send(&custom);
                })
                .await;
            }
            last = status;
        }
    });
}
