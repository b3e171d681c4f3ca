//! uid → user name, from /etc/passwd (no NSS; a number when unknown).

use std::collections::HashMap;

/// A lazily read uid → name table.
#[derive(Debug, Default)]
pub struct Users {
    names: Option<HashMap<u32, String>>,
}

impl Users {
    /// The user name of `uid`, or the number as text.
    pub fn name(&mut self, uid: u32) -> String {
        let names = self.names.get_or_insert_with(|| {
            std::fs::read_to_string("/etc/passwd")
                .unwrap_or_default()
                .lines()
                .filter_map(|line| {
                    let mut f = line.split(':');
                    let name = f.next()?;
                    let uid = f.nth(1)?.parse().ok()?;
                    Some((uid, name.to_owned()))
                })
                .collect()
        });
        names.get(&uid).cloned().unwrap_or_else(|| uid.to_string())
    }
}

/// Parses `--owner USER[:GROUP]` against `/etc/passwd` and `/etc/group`:
/// names or numbers; without GROUP, USER's primary group (a numeric uid with
/// no account then needs an explicit GROUP). The daemon decides whether the
/// caller may have it.
pub fn parse_owner(spec: &str) -> Result<builddir_client::Owner, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    owner_from(spec, &passwd, &group)
}

fn owner_from(spec: &str, passwd: &str, group: &str) -> Result<builddir_client::Owner, String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || grp == Some("") {
        return Err(format!("{spec:?} is not USER[:GROUP]"));
    }
    // (name, uid, primary gid) of every account.
    let accounts = passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some((
            *f.first()?,
            f.get(2)?.parse::<u32>().ok()?,
            f.get(3)?.parse::<u32>().ok()?,
        ))
    });
    let account = match user.parse::<u32>() {
        Ok(uid) => accounts
            .clone()
            .find(|a| a.1 == uid)
            .or(Some(("", uid, u32::MAX))),
        Err(_) => accounts.clone().find(|a| a.0 == user),
    };
    let Some((_, uid, primary)) = account else {
        return Err(format!(
            "no user {user:?} in /etc/passwd; give a uid number instead"
        ));
    };
    let gid = match grp {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.first() == Some(&g)).then(|| f.get(2)?.parse().ok())?
                })
                .ok_or_else(|| {
                    format!("no group {g:?} in /etc/group; give a gid number instead")
                })?,
        },
        None if primary == u32::MAX => {
            return Err(format!(
                "uid {uid} has no account to take a group from; give one: --owner {uid}:GID"
            ))
        }
        None => primary,
    };
    Ok(builddir_client::Owner { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::owner_from;

    const PASSWD: &str = "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nalice:x:1000:\nnixbld:x:30000:\n";

    fn owner(spec: &str) -> Result<(u32, u32), String> {
        owner_from(spec, PASSWD, GROUP).map(|o| (o.uid, o.gid))
    }

    #[test]
    fn names_numbers_and_primary_groups() {
        assert_eq!(owner("alice"), Ok((1000, 1000)));
        assert_eq!(owner("1000"), Ok((1000, 1000)));
        assert_eq!(owner("alice:nixbld"), Ok((1000, 30000)));
        assert_eq!(owner("30001:30000"), Ok((30001, 30000)));
        assert_eq!(owner("30001:nixbld"), Ok((30001, 30000)));
    }

    #[test]
    fn unknown_names_and_bad_forms_say_what_to_give() {
        assert!(owner("bob").unwrap_err().contains("give a uid number"));
        assert!(owner("alice:wheel")
            .unwrap_err()
            .contains("give a gid number"));
        assert!(owner("30001").unwrap_err().contains("--owner 30001:GID"));
        assert!(owner(":1").unwrap_err().contains("USER[:GROUP]"));
        assert!(owner("alice:").unwrap_err().contains("USER[:GROUP]"));
    }
}
