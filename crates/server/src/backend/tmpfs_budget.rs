//! The memory of `tmpfs` leases, capped in total.
//!
//! Each tmpfs lease may fill its size in RAM (and swap). Per-lease sizes
//! and per-uid lease counts alone let one uid ask for 1024 × 4 GiB, so the
//! sum of the sizes of every tmpfs lease that still exists — live, kept,
//! being released or reaped, quarantined — is capped by
//! `tmpfs_leases_max_total` (default: half of the host's RAM), and an
//! allocation past it is refused with `no-space` naming the key.
//!
//! The check and the count are one step: a [`Held`] reservation covers an
//! allocation in flight until its lease is in the table.

use std::sync::Mutex;

use builddir_proto::{ErrorKind, ErrorReply};

/// Bytes of tmpfs leases allowed and reserved.
#[derive(Debug)]
pub struct TmpfsBudget {
    cap: u64,
    /// Sizes of allocations in flight (not in the table yet).
    pending: Mutex<u64>,
}

/// A reservation for one allocation in flight; given back on drop.
#[derive(Debug)]
pub struct Held<'b> {
    budget: &'b TmpfsBudget,
    bytes: u64,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut p = self
            .budget
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *p = p.saturating_sub(self.bytes);
    }
}

impl TmpfsBudget {
    /// `configured` bytes, or half of the RAM if 0.
    pub fn new(configured: u64) -> TmpfsBudget {
        let cap = if configured > 0 {
            configured
        } else {
            let info = rustix::system::sysinfo();
            (info.totalram as u64).saturating_mul(u64::from(info.mem_unit.max(1))) / 2
        };
        TmpfsBudget {
            cap,
            pending: Mutex::new(0),
        }
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Reserves `bytes` more if `in_table()` (the sizes of the tmpfs leases
    /// that exist) plus allocations in flight leave room for them.
    pub fn hold(&self, bytes: u64, in_table: impl FnOnce() -> u64) -> Result<Held<'_>, ErrorReply> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let used = in_table().saturating_add(*pending);
        if used.saturating_add(bytes) > self.cap {
            return Err(ErrorReply::new(
                ErrorKind::NoSpace,
                format!(
                    "tmpfs_leases_max_total = {} reached ({used} bytes of tmpfs leases exist, {bytes} asked for); release or remove leases, ask for a smaller size, or raise tmpfs_leases_max_total",
                    self.cap
                ),
            ));
        }
        *pending += bytes;
        Ok(Held {
            budget: self,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_until_the_cap_and_gives_back_on_drop() {
        let b = TmpfsBudget::new(100);
        let a = b.hold(60, || 0).unwrap();
        let e = b.hold(50, || 0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSpace);
        assert!(
            e.message.contains("tmpfs_leases_max_total = 100"),
            "{}",
            e.message
        );
        assert!(b.hold(40, || 0).is_ok());
        drop(a);
        assert!(b.hold(50, || 40).is_ok());
        assert!(b.hold(61, || 40).is_err(), "what the table holds counts");
        assert!(TmpfsBudget::new(0).cap() > 0, "the default is half the RAM");
    }
}
