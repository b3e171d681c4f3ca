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
