//! The lease registry on disk: one small root-only file per lease,
//! `<outer>/lease.json`, written before the lease's directory is renamed into
//! place and moved with it by every later rename.
//!
//! So the registry is exactly as atomic as the lease's own appearance (one
//! `renameat2`), a lease's state is where its directory is (`b/` live,
//! `kept/`, `trash/`), nothing needs compaction, and `builddir-ctl list
//! --offline` can read it while the daemon is down. The file sits in the
//! root-owned outer directory (0710: the build user has search permission
//! only) with mode 0600, so the build cannot read or replace it.
//!
//! No fsync: the registry has to survive the daemon dying (its page cache
//! does), not the machine — after a power loss no build is running to
//! reclaim anything.

use std::os::fd::BorrowedFd;

use rustix::fs::{openat, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

/// Name of the record inside each outer directory.
pub const META: &str = "lease.json";

/// Largest record read back (names are ≤ 255 bytes; this is generous).
const MAX_META: usize = 16 * 1024;

/// What the registry records about a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseMeta {
    pub id: String,
    pub name: String,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub peer_uid: u32,
    pub peer_gid: u32,
    pub peer_pid: u32,
    pub peer_command: String,
    pub created_unix: u64,
    /// The reclaim secret (hex). Only root can read this file.
    pub secret: String,
    /// The build's size limit (sized leases).
    #[serde(default)]
    pub limit_bytes: Option<u64>,
    /// The build's project id (`project-quota` leases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<u32>,
    /// When the tree was kept (retention counts its age from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_unix: Option<u64>,
    /// A keep whose hand-over is not finished: written before the tree
    /// moves to the kept area, cleared once every entry is the requester's.
    /// Found at start, the hand-over is finished before the tree is listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hand_over: Option<PendingHandOver>,
    /// In trash, its tree deleted, its tmpfs still held and kept mounted
    /// beside this record: written before the lease is listed as
    /// detaching, so a restarted daemon lists and counts it the same way.
    #[serde(default, skip_serializing_if = "is_false")]
    pub detaching: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Who a kept tree is being handed from and to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingHandOver {
    /// The build's owner, whose entries change hands.
    pub from_uid: u32,
    pub to_uid: u32,
    pub to_gid: u32,
}

/// Writes `meta` as `outer/lease.json` (must not exist yet).
pub fn write(outer: BorrowedFd<'_>, meta: &LeaseMeta) -> Result<(), Errno> {
    let bytes = serde_json::to_vec(meta).map_err(|_| Errno::INVAL)?;
    let fd = openat(
        outer,
        META,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::RUSR | Mode::WUSR,
    )?;
    let mut written = 0;
    while written < bytes.len() {
        written += rustix::io::write(&fd, &bytes[written..])?;
    }
    Ok(())
}

/// Bytes of storage a spare record file holds ready ([`spare`]): more than
/// any record needs.
const SPARE_BYTES: u64 = 4096;

/// A record file made ahead of time: unnamed (`O_TMPFILE` on the
/// filesystem of `dir`, root-only 0600, gone with its descriptor if it is
/// never used) with its storage already allocated (`fallocate`, size still
/// 0). [`write_spare`] fills it and gives it its name: the costly steps of
/// making a file, a new inode and its first page, are off the allocation's
/// path.
pub fn spare(dir: BorrowedFd<'_>) -> Result<std::os::fd::OwnedFd, Errno> {
    let fd = openat(
        dir,
        ".",
        OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )?;
    rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::KEEP_SIZE, 0, SPARE_BYTES)?;
    Ok(fd)
}

/// Writes `meta` into `spare` (from [`spare`], unused) and links it as
/// `outer/lease.json` (which must not exist yet): the same file as
/// [`write`] makes. Linking an unnamed file by its descriptor
/// (`AT_EMPTY_PATH`) takes `CAP_DAC_READ_SEARCH`; without it this fails and
/// the caller writes the record with [`write`].
pub fn write_spare(
    spare: BorrowedFd<'_>,
    outer: BorrowedFd<'_>,
    meta: &LeaseMeta,
) -> Result<(), Errno> {
    let bytes = serde_json::to_vec(meta).map_err(|_| Errno::INVAL)?;
    let mut written = 0;
    while written < bytes.len() {
        written += rustix::io::pwrite(spare, &bytes[written..], written as u64)?;
    }
    rustix::fs::linkat(spare, "", outer, META, rustix::fs::AtFlags::EMPTY_PATH)
}

/// Name of the next record while it is written.
const META_NEW: &str = "lease.json.new";

/// Replaces `outer/lease.json` with `meta` atomically: the next version is
/// written beside it and renamed over it, so a crash leaves one or the
/// other, never a torn record.
pub fn rewrite(outer: BorrowedFd<'_>, meta: &LeaseMeta) -> Result<(), Errno> {
    let bytes = serde_json::to_vec(meta).map_err(|_| Errno::INVAL)?;
    let fd = openat(
        outer,
        META_NEW,
        OFlags::CREATE | OFlags::TRUNC | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::RUSR | Mode::WUSR,
    )?;
    let mut written = 0;
    while written < bytes.len() {
        written += rustix::io::write(&fd, &bytes[written..])?;
    }
    drop(fd);
    rustix::fs::renameat(outer, META_NEW, outer, META)
}

/// Reads `outer/lease.json`; `None` if missing or unreadable as a record.
pub fn read(outer: BorrowedFd<'_>) -> Option<LeaseMeta> {
    read_written_by(outer, 0)
}

/// Reads `outer/lease.json` if user `writer` (the daemon: root, or the
/// test's own user in-process) wrote it.
pub fn read_written_by(outer: BorrowedFd<'_>, writer: u32) -> Option<LeaseMeta> {
    let fd = openat(
        outer,
        META,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    // Only a regular file that the daemon wrote counts.
    if st.st_uid != writer
        || rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile
    {
        return None;
    }
    let mut buf = vec![0u8; MAX_META];
    let mut len = 0;
    loop {
        let n = rustix::io::read(&fd, &mut buf[len..]).ok()?;
        if n == 0 {
            break;
        }
        len += n;
        if len == buf.len() {
            return None;
        }
    }
    serde_json::from_slice(&buf[..len]).ok()
}

/// Every recorded lease under `root`, by where its directory is, without a
/// daemon (for `builddir-ctl list --offline`). Secrets are blanked.
pub fn scan(
    root: &std::path::Path,
) -> std::io::Result<Vec<(builddir_proto::LeaseState, LeaseMeta)>> {
    use builddir_proto::LeaseState;
    use std::os::fd::AsFd;
    let open = |p: &std::path::Path| rustix::fs::open(p, crate::paths::DIR_OPEN, Mode::empty());
    let mut out = Vec::new();
    for (area, state) in [
        (crate::paths::LEASES, LeaseState::Live),
        (crate::paths::KEPT, LeaseState::Kept),
        (crate::paths::TRASH, LeaseState::Reaping),
    ] {
        let dir = open(&root.join(area))?;
        let mut entries = rustix::fs::Dir::read_from(&dir)?;
        while let Some(Ok(entry)) = entries.read() {
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let Ok(outer) = openat(dir.as_fd(), name, crate::paths::DIR_OPEN, Mode::empty()) else {
                continue;
            };
            if let Some(mut meta) = read(outer.as_fd()) {
                meta.secret.clear();
                let state = if meta.detaching {
                    LeaseState::Detaching
                } else {
                    state
                };
                out.push((state, meta));
            }
        }
    }
    Ok(out)
}

/// A fresh reclaim secret: 128 random bits in hex.
pub fn new_secret() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    crate::id::fill_random(&mut bytes)?;
    Ok(secret_from_random(&bytes))
}

/// The reclaim secret made of 128 random bits the caller took from the
/// kernel's random source: lower-case hex.
pub fn secret_from_random(bits: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bits.len());
    for b in bits {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// Compares secrets in time independent of where they differ.
pub fn secrets_match(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn meta() -> LeaseMeta {
        LeaseMeta {
            id: "0123456789abcdef".into(),
            name: "build".into(),
            owner_uid: 61105,
            owner_gid: 61100,
            peer_uid: 1000,
            peer_gid: 1000,
            peer_pid: 7,
            peer_command: "nix-daemon".into(),
            created_unix: 1_700_000_000,
            secret: "s".into(),
            limit_bytes: None,
            project_id: None,
            kept_unix: None,
            hand_over: None,
            detaching: false,
        }
    }

    fn spare_becomes_the_record(
        dir: &std::path::Path,
        outer: BorrowedFd<'_>,
        m: &LeaseMeta,
        me: u32,
    ) {
        let other = dir.join("other");
        std::fs::create_dir(&other).unwrap();
        let other = rustix::fs::open(&other, crate::paths::DIR_OPEN, Mode::empty()).unwrap();
        let s = spare(outer).unwrap();
        write_spare(s.as_fd(), other.as_fd(), m).unwrap();
        assert_eq!(read_written_by(other.as_fd(), me).as_ref(), Some(m));
        let st = rustix::fs::fstat(&s).unwrap();
        assert_eq!((st.st_mode & 0o7777, st.st_nlink), (0o600, 1));
        let s = spare(outer).unwrap();
        assert!(write_spare(s.as_fd(), other.as_fd(), m).is_err());
    }

    #[test]
    fn a_record_is_replaced_whole_and_read_back_only_from_its_writer() {
        let dir = std::env::temp_dir().join(format!("bd-registry-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let outer = rustix::fs::open(&dir, crate::paths::DIR_OPEN, Mode::empty()).unwrap();
        let me = rustix::process::geteuid().as_raw();
        let mut m = meta();
        write(outer.as_fd(), &m).unwrap();
        assert!(write(outer.as_fd(), &m).is_err(), "write never replaces");
        m.hand_over = Some(PendingHandOver {
            from_uid: 61105,
            to_uid: 1000,
            to_gid: 1000,
        });
        rewrite(outer.as_fd(), &m).unwrap();
        assert_eq!(read_written_by(outer.as_fd(), me), Some(m.clone()));
        m.hand_over = None;
        m.owner_uid = 1000;
        m.kept_unix = Some(1_700_000_100);
        rewrite(outer.as_fd(), &m).unwrap();
        assert_eq!(read_written_by(outer.as_fd(), me), Some(m.clone()));
        assert!(!dir.join(META_NEW).exists(), "no half-written record left");
        // A spare record file becomes the same record, and never replaces
        // one (linking it by fd takes CAP_DAC_READ_SEARCH: root only).
        if rustix::process::geteuid().is_root() {
            spare_becomes_the_record(&dir, outer.as_fd(), &m, me);
        }
        assert_eq!(read_written_by(outer.as_fd(), me.wrapping_add(1)), None);
        // A record from before these fields existed still reads.
        let old = r#"{"id":"0123456789abcdef","name":"n","owner_uid":1,"owner_gid":1,"peer_uid":1,"peer_gid":1,"peer_pid":1,"peer_command":"","created_unix":5,"secret":""}"#;
        let parsed: LeaseMeta = serde_json::from_str(old).unwrap();
        assert_eq!(
            (parsed.kept_unix, parsed.hand_over, parsed.detaching),
            (None, None, false)
        );
        m.detaching = true;
        rewrite(outer.as_fd(), &m).unwrap();
        assert!(read_written_by(outer.as_fd(), me).unwrap().detaching);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_are_long_random_and_compared_exactly() {
        assert_eq!(
            secret_from_random(&[
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 0, 0, 0, 0, 0, 0xf0, 0x0f
            ]),
            "0123456789abcdef000000000000f00f"
        );
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(secrets_match(&a, &a.clone()));
        assert!(!secrets_match(&a, &b));
        assert!(!secrets_match(&a, &a[..31]));
    }
}
