//! Who may connect, who is an operator, and who may ask for directories
//! owned by someone else (SPEC §5). Built once from the configuration;
//! decisions use only the kernel's view of the peer (`SO_PEERCRED` and the
//! peer's groups at connect time).

use std::collections::HashSet;
use std::ops::RangeInclusive;

use crate::config::{Config, ConfigError, OwnerGrant};
use crate::identity::{Accounts, Peer};

/// One resolved owner grant.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    pub to_uids: HashSet<u32>,
    pub to_gids: HashSet<u32>,
    pub owner_uids: Vec<RangeInclusive<u32>>,
    pub owner_gids: Vec<RangeInclusive<u32>>,
}

/// The resolved policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allow_everyone: bool,
    pub allowed_uids: HashSet<u32>,
    pub allowed_gids: HashSet<u32>,
    pub operator_gid: Option<u32>,
    pub grants: Vec<Grant>,
}

/// Parses an id or an inclusive range of ids (`"30001-30032"`).
pub(crate) fn id_range(key: &str, text: &str) -> Result<RangeInclusive<u32>, ConfigError> {
    let bad = || {
        ConfigError::Value(format!(
            "{key}: {text:?} is not an id or a range like \"30001-30032\""
        ))
    };
    let (lo, hi) = match text.split_once('-') {
        Some((lo, hi)) => (
            lo.trim().parse().map_err(|_| bad())?,
            hi.trim().parse().map_err(|_| bad())?,
        ),
        None => {
            let v = text.trim().parse().map_err(|_| bad())?;
            (v, v)
        }
    };
    if lo > hi {
        return Err(bad());
    }
    Ok(lo..=hi)
}

impl Policy {
    /// Resolves names in `config` against `accounts`; unknown names are
    /// errors naming the key.
    pub fn from_config(config: &Config, accounts: &Accounts) -> Result<Policy, ConfigError> {
        let user = |key: &str, name: &str| {
            accounts.uid(name).ok_or_else(|| {
                ConfigError::Value(format!("{key}: no user {name:?} in /etc/passwd"))
            })
        };
        let group = |key: &str, name: &str| {
            accounts.gid(name).ok_or_else(|| {
                ConfigError::Value(format!("{key}: no group {name:?} in /etc/group"))
            })
        };
        let mut p = Policy::default();
        for u in &config.allowed_users {
            if u == "*" {
                p.allow_everyone = true;
            } else {
                p.allowed_uids.insert(user("allowed_users", u)?);
            }
        }
        for g in &config.allowed_groups {
            p.allowed_gids.insert(group("allowed_groups", g)?);
        }
        if !config.operator_group.is_empty() {
            p.operator_gid = Some(group("operator_group", &config.operator_group)?);
        }
        for (
            i,
            OwnerGrant {
                users,
                groups,
                uids,
                gids,
            },
        ) in config.owner_grants.iter().enumerate()
        {
            let key = format!("owner_grants[{i}]");
            let mut g = Grant::default();
            for u in users {
                g.to_uids.insert(user(&key, u)?);
            }
            for n in groups {
                g.to_gids.insert(group(&key, n)?);
            }
            for r in uids {
                g.owner_uids.push(id_range(&format!("{key}.uids"), r)?);
            }
            for r in gids {
                g.owner_gids.push(id_range(&format!("{key}.gids"), r)?);
            }
            if g.to_uids.is_empty() && g.to_gids.is_empty() {
                return Err(ConfigError::Value(format!(
                    "{key}: names no users or groups to grant to"
                )));
            }
            p.grants.push(g);
        }
        Ok(p)
    }

    /// Returns true if and only if a decision can depend on the peer's
    /// groups (so they must be looked up at connect time).
    pub fn uses_groups(&self) -> bool {
        self.operator_gid.is_some()
            || !self.allowed_gids.is_empty()
            || self.grants.iter().any(|g| !g.to_gids.is_empty())
    }

    /// Returns true if and only if `peer` is root or in the operator group.
    pub fn is_operator(&self, peer: &Peer) -> bool {
        peer.uid == 0 || self.operator_gid.is_some_and(|g| peer.in_group(g))
    }

    /// Returns true if and only if `peer` may use the daemon at all.
    pub fn may_connect(&self, peer: &Peer) -> bool {
        self.allow_everyone
            || self.is_operator(peer)
            || self.allowed_uids.contains(&peer.uid)
            || self.allowed_gids.iter().any(|&g| peer.in_group(g))
    }

    /// Returns true if and only if `peer` may ask for a directory owned by
    /// `uid:gid` (its own ids need no grant; root needs none).
    pub fn may_assign(&self, peer: &Peer, uid: u32, gid: u32) -> bool {
        if peer.uid == 0 || (uid == peer.uid && gid == peer.gid) {
            return true;
        }
        self.grants.iter().any(|g| {
            let applies =
                g.to_uids.contains(&peer.uid) || g.to_gids.iter().any(|&x| peer.in_group(x));
            applies
                && g.owner_uids.iter().any(|r| r.contains(&uid))
                && g.owner_gids.iter().any(|r| r.contains(&gid))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: 1,
            command: String::new(),
            groups: groups.to_vec(),
        }
    }

    fn policy(toml_text: &str) -> Result<Policy, ConfigError> {
        let c = Config::parse(toml_text, std::path::Path::new("t.toml"))?;
        let a = Accounts::parse(
            "nix:x:999:999::/:/bin/false\n",
            "nixbld:x:30000:\nops:x:500:\nbuilders:x:600:\n",
        );
        Policy::from_config(&c, &a)
    }

    #[test]
    fn allow_lists_and_operators() {
        let p = policy("allowed_users = [\"nix\"]\nallowed_groups = [\"builders\"]\noperator_group = \"ops\"\n").unwrap();
        assert!(p.may_connect(&peer(999, 999, &[])));
        assert!(p.may_connect(&peer(1000, 1000, &[600])));
        assert!(p.may_connect(&peer(0, 0, &[])));
        assert!(
            p.may_connect(&peer(1001, 1001, &[500])),
            "operators always allowed"
        );
        assert!(!p.may_connect(&peer(1002, 1002, &[])));
        assert!(p.is_operator(&peer(1001, 1001, &[500])));
        assert!(!p.is_operator(&peer(999, 999, &[])));
    }

    #[test]
    fn owner_grants_cover_only_their_ranges() {
        let p = policy(
            "[[owner_grants]]\nusers = [\"nix\"]\nuids = [\"30001-30032\"]\ngids = [\"nixbld\"]\n",
        );
        // gids take ids or ranges, not names: a name is a config error.
        assert!(p.is_err());
        let p = policy(
            "[[owner_grants]]\nusers = [\"nix\"]\nuids = [\"30001-30032\"]\ngids = [\"30000\"]\n",
        )
        .unwrap();
        let nix = peer(999, 999, &[]);
        assert!(p.may_assign(&nix, 30001, 30000));
        assert!(p.may_assign(&nix, 30032, 30000));
        assert!(!p.may_assign(&nix, 30033, 30000));
        assert!(!p.may_assign(&nix, 30001, 0));
        assert!(!p.may_assign(&peer(1000, 1000, &[]), 30001, 30000));
        assert!(p.may_assign(&peer(1000, 1000, &[]), 1000, 1000));
    }

    #[test]
    fn unknown_names_are_errors_naming_the_key() {
        let e = policy("allowed_users = [\"ghost\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("allowed_users") && e.contains("ghost"), "{e}");
        let e = policy("operator_group = \"ghosts\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("operator_group"), "{e}");
    }
}
