//! Daemon configuration: a TOML file, every key overridable by a flag.
//!
//! Unknown keys and bad values are errors that name the key and the line
//! (`toml`'s spans), so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default configuration file; a missing default file means "all defaults".
pub const DEFAULT_CONFIG: &str = "/etc/builddird/config.toml";
/// Default root of the dedicated mount.
pub const DEFAULT_ROOT: &str = "/var/lib/builddird";

/// How the root mount is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backing {
    /// Bind `root` onto itself, then remount `nosuid,nodev` and exec.
    Bind,
    /// Mount a fresh tmpfs (`tmpfs_size`) on `root`.
    Tmpfs,
    /// The operator mounts `root` (fstab, a `.mount` unit); the daemon only
    /// verifies it and refuses to start if it is wrong.
    External,
}

impl Backing {
    pub fn as_str(self) -> &'static str {
        match self {
            Backing::Bind => "bind",
            Backing::Tmpfs => "tmpfs",
            Backing::External => "external",
        }
    }
}

/// Where each lease's directory lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseBackend {
    /// A directory on the root mount; no per-build size limit.
    Dir,
    /// Each lease is its own tmpfs (`size=`, `nr_inodes=`): a build that
    /// fills it gets ENOSPC in its own tree only, and reaping is a detach.
    /// Lives in memory and swap.
    Tmpfs,
    /// A directory on the root mount with a project quota of its own
    /// (ext4 `-O quota,project` or XFS, mounted `prjquota`): a build that
    /// fills it gets EDQUOT/ENOSPC in its own tree only. The daemon refuses
    /// to start if the root filesystem does not enforce project quotas.
    #[serde(rename = "project-quota")]
    ProjectQuota,
}

impl LeaseBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseBackend::Dir => "dir",
            LeaseBackend::Tmpfs => "tmpfs",
            LeaseBackend::ProjectQuota => "project-quota",
        }
    }
}

/// The largest `lease_size_max` / `lease_inodes_max` (2^62).
pub const MAX_LEASE_SIZE: u64 = 1 << 62;

/// The validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory that becomes the dedicated mount.
    pub root: PathBuf,
    /// Socket bound when not socket-activated.
    pub socket: PathBuf,
    pub backing: Backing,
    /// tmpfs `size=` option (bytes, or with a k/m/g suffix, or a percentage).
    pub tmpfs_size: String,
    /// Seconds a client has to complete the handshake.
    pub handshake_timeout_secs: u64,
    /// Connections served at once, all users together.
    pub max_connections: usize,
    /// Connections served at once for one uid.
    pub max_connections_per_uid: usize,
    /// Live leases, all users together.
    pub max_leases: usize,
    /// Live leases of one requesting uid.
    pub max_leases_per_uid: usize,
    /// Trees deleted in parallel in the background.
    pub reap_concurrency: usize,
    /// Kept trees handed over (walked and chowned) at once, all requesters
    /// together; each requester's own keeps go one at a time.
    pub hand_over_concurrency: usize,
    /// Users (names or uids) allowed to connect; `"*"` means everyone.
    /// Root and operators are always allowed.
    pub allowed_users: Vec<String>,
    /// Groups (names or gids) whose members may connect.
    pub allowed_groups: Vec<String>,
    /// Members of this group (name or gid) may list and remove every lease.
    pub operator_group: String,
    /// Grants to ask for directories owned by other uids/gids.
    pub owner_grants: Vec<OwnerGrant>,
    /// Allocation fails with `no-space` below this many free bytes on root.
    pub min_free_bytes: u64,
    /// Allocation fails with `no-space` below this many free inodes on root.
    pub min_free_inodes: u64,
    /// Kept trees retained at most per owner (oldest deleted first; 0 = no
    /// limit).
    pub kept_max_count: usize,
    /// Bytes of kept trees retained at most per owner (0 = no limit).
    pub kept_max_bytes: u64,
    /// Kept trees retained at most in total, all owners (0 = no limit).
    pub kept_total_max_count: usize,
    /// Bytes of kept trees retained at most in total (0 = no limit).
    pub kept_total_max_bytes: u64,
    /// Kept trees older than this are deleted (0 = no limit).
    pub kept_max_age_secs: u64,
    /// Mode of a socket bound by hand (octal text).
    pub socket_mode: String,
    /// Group (name or gid) of a socket bound by hand; empty keeps root's.
    pub socket_group: String,
    /// After a restart, leases whose clients have not reclaimed them (and
    /// whose connections did not survive in systemd's fd store) are
    /// released after this many seconds.
    pub reclaim_grace_secs: u64,
    /// Keep lease connections in systemd's file descriptor store (when
    /// `NOTIFY_SOCKET` is set), so a restart does not drop them.
    pub fd_store: bool,
    /// Where leases live: `"dir"`, or with per-build size limits
    /// `"tmpfs"` or `"project-quota"`.
    pub lease_backend: LeaseBackend,
    /// Sized leases: size when the client asks for none (bytes).
    pub lease_size_default: u64,
    /// Sized leases: the largest size a client may ask for (bytes).
    pub lease_size_max: u64,
    /// Sized leases: inodes when the client asks for none.
    pub lease_inodes_default: u64,
    /// Sized leases: the most inodes a client may ask for.
    pub lease_inodes_max: u64,
    /// `tmpfs` leases: the most bytes all of them together may be sized at
    /// (their memory), kept trees and trees not yet deleted included. 0:
    /// half of the host's RAM.
    pub tmpfs_leases_max_total: u64,
    /// `project-quota` leases: the project ids the daemon owns on the root
    /// filesystem ("first-last"); nothing else may use them.
    pub project_ids: String,
}

/// Lets `users`/`groups` ask for directories owned by `uids`:`gids`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OwnerGrant {
    /// Peers (names or uids) this grant applies to.
    pub users: Vec<String>,
    /// Peers in these groups (names or gids) get the grant.
    pub groups: Vec<String>,
    /// Owner uids that may be asked for: ids or ranges like "30001-30032".
    pub uids: Vec<String>,
    /// Owner gids that may be asked for: ids or ranges.
    pub gids: Vec<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            root: PathBuf::from(DEFAULT_ROOT),
            socket: PathBuf::from(builddir_proto::DEFAULT_SOCKET),
            backing: Backing::Bind,
            tmpfs_size: "50%".to_owned(),
            handshake_timeout_secs: 5,
            max_connections: 4096,
            max_connections_per_uid: 512,
            max_leases: 16384,
            max_leases_per_uid: 1024,
            reap_concurrency: 2,
            hand_over_concurrency: 4,
            allowed_users: vec!["*".to_owned()],
            allowed_groups: Vec::new(),
            operator_group: String::new(),
            owner_grants: Vec::new(),
            min_free_bytes: 0,
            min_free_inodes: 0,
            kept_max_count: 64,
            kept_max_bytes: 0,
            kept_total_max_count: 0,
            kept_total_max_bytes: 0,
            kept_max_age_secs: 7 * 24 * 3600,
            socket_mode: "0666".to_owned(),
            socket_group: String::new(),
            reclaim_grace_secs: 60,
            fd_store: true,
            lease_backend: LeaseBackend::Dir,
            lease_size_default: 4 << 30,
            lease_size_max: 64 << 30,
            tmpfs_leases_max_total: 0,
            lease_inodes_default: 1_000_000,
            lease_inodes_max: 10_000_000,
            project_ids: "1000000-1999999".to_owned(),
        }
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Value(String),
}

impl Config {
    /// Loads `path`. With `required == false` a missing file yields the
    /// defaults (the default path need not exist).
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Config::parse(&text, path)
    }

    /// Parses TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(text, &e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.root.is_absolute() {
            return Err(ConfigError::Value(format!(
                "root = {:?} must be an absolute path",
                self.root
            )));
        }
        if !self.socket.is_absolute() {
            return Err(ConfigError::Value(format!(
                "socket = {:?} must be an absolute path",
                self.socket
            )));
        }
        for (key, value) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_uid", self.max_connections_per_uid),
            ("max_leases", self.max_leases),
            ("max_leases_per_uid", self.max_leases_per_uid),
            ("reap_concurrency", self.reap_concurrency),
            ("hand_over_concurrency", self.hand_over_concurrency),
        ] {
            if value == 0 {
                return Err(ConfigError::Value(format!("{key} = 0: must be at least 1")));
            }
        }
        if self.handshake_timeout_secs == 0 {
            return Err(ConfigError::Value(
                "handshake_timeout_secs = 0: must be at least 1".into(),
            ));
        }
        if self.tmpfs_size.is_empty()
            || !self
                .tmpfs_size
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '%')
        {
            return Err(ConfigError::Value(format!(
                "tmpfs_size = {:?}: expected a size like \"8g\", \"512m\" or \"50%\"",
                self.tmpfs_size
            )));
        }
        self.socket_mode_bits()?;
        if self.lease_size_default > self.lease_size_max {
            return Err(ConfigError::Value(format!(
                "lease_size_default = {} is above lease_size_max = {}",
                self.lease_size_default, self.lease_size_max
            )));
        }
        if self.lease_inodes_default > self.lease_inodes_max {
            return Err(ConfigError::Value(format!(
                "lease_inodes_default = {} is above lease_inodes_max = {}",
                self.lease_inodes_default, self.lease_inodes_max
            )));
        }
        if self.lease_backend != LeaseBackend::Dir {
            // 0 means "no limit" to tmpfs and to the quota calls alike.
            for (key, value) in [
                ("lease_size_default", self.lease_size_default),
                ("lease_inodes_default", self.lease_inodes_default),
            ] {
                if value == 0 {
                    return Err(ConfigError::Value(format!(
                        "{key} = 0 would mean no limit for lease_backend = \"{}\": set a size",
                        self.lease_backend.as_str()
                    )));
                }
            }
        }
        // Beyond this, sizes wrap in the kernel's quota arithmetic (a
        // limit that wraps to 0 is no limit).
        for (key, value) in [
            ("lease_size_max", self.lease_size_max),
            ("lease_inodes_max", self.lease_inodes_max),
        ] {
            if value > MAX_LEASE_SIZE {
                return Err(ConfigError::Value(format!(
                    "{key} = {value} is above {MAX_LEASE_SIZE} (2^62), the largest limit the kernel keeps exactly"
                )));
            }
        }
        self.project_id_range()?;
        Ok(())
    }

    /// `project_ids` as a range of ids (never project 0, the default).
    pub fn project_id_range(&self) -> Result<std::ops::RangeInclusive<u32>, ConfigError> {
        let range = crate::policy::id_range("project_ids", &self.project_ids)?;
        if *range.start() == 0 || *range.end() == u32::MAX || range.is_empty() {
            return Err(ConfigError::Value(format!(
                "project_ids = {:?}: must be a non-empty range that excludes 0 and 4294967295, like \"1000000-1999999\"",
                self.project_ids
            )));
        }
        Ok(range)
    }

    /// `socket_mode` as permission bits.
    pub fn socket_mode_bits(&self) -> Result<u32, ConfigError> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                ConfigError::Value(format!(
                    "socket_mode = {:?}: expected octal like \"0660\"",
                    self.socket_mode
                ))
            })
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
}

/// One line: the message, the key (toml names it) and the line number.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_owned();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(c.backing, Backing::Bind);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("root = \"/x\"\nmax_conections = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_conections"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_value_names_key_and_line() {
        let err = parse("\n\nbacking = \"nfs\"\n").unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("nfs"), "{err}");
        let err = parse("max_leases = 0").unwrap_err().to_string();
        assert!(err.contains("max_leases"), "{err}");
        let err = parse("root = \"relative\"").unwrap_err().to_string();
        assert!(err.contains("absolute"), "{err}");
    }

    #[test]
    fn sized_backends_refuse_limits_that_mean_no_limit() {
        for backend in ["tmpfs", "project-quota"] {
            let err = parse(&format!(
                "lease_backend = \"{backend}\"\nlease_size_default = 0\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("lease_size_default = 0 would mean no limit"),
                "{err}"
            );
            let err = parse(&format!(
                "lease_backend = \"{backend}\"\nlease_inodes_default = 0\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains("lease_inodes_default = 0"), "{err}");
        }
        assert!(
            parse("lease_size_default = 0\n").is_ok(),
            "dir leases ignore it"
        );
        let err = parse("lease_size_max = 18446744073709551615\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("above 4611686018427387904 (2^62)"), "{err}");
        let err = parse("project_ids = \"5-4294967295\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("excludes 0 and 4294967295"), "{err}");
        assert!(parse("project_ids = \"0-10\"\n").is_err());
        assert!(parse("project_ids = \"10-20\"\n").is_ok());
    }

    #[test]
    fn missing_default_file_is_fine_but_missing_explicit_file_is_not() {
        let p = Path::new("/nonexistent/builddird.toml");
        assert!(Config::load(p, false).is_ok());
        assert!(matches!(
            Config::load(p, true),
            Err(ConfigError::Read { .. })
        ));
    }
}
