//! Lease identifiers: 64 random bits as 16 lower-case hex digits.
//!
//! Unguessable (so a lease cannot be named by someone who was not told it),
//! short (handed-out paths must stay well below the 108-byte socket path
//! limit), and strictly validated, because an id is the one piece of client
//! input that the daemon turns into a directory name — and only after
//! looking it up among its own leases.

use std::fmt;

/// Fills `buf` from the kernel's random source (`getrandom`, short reads
/// retried).
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        filled +=
            rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(())
}

/// A lease id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(u64);

impl LeaseId {
    /// A fresh id from the kernel's random source.
    pub fn generate() -> std::io::Result<LeaseId> {
        let mut bytes = [0u8; 8];
        fill_random(&mut bytes)?;
        Ok(LeaseId(u64::from_le_bytes(bytes)))
    }

    /// The id made of 64 bits the caller took from the kernel's random
    /// source (with other random bytes in one `getrandom`).
    pub fn from_random_bits(bits: [u8; 8]) -> LeaseId {
        LeaseId(u64::from_le_bytes(bits))
    }

    /// Parses exactly 16 lower-case hex digits; anything else is `None`.
    pub fn parse(s: &str) -> Option<LeaseId> {
        if s.len() != 16 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(LeaseId)
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_anything_else() {
        let id = LeaseId::generate().unwrap();
        let s = id.to_string();
        assert_eq!(s.len(), 16);
        assert_eq!(LeaseId::parse(&s), Some(id));
        for bad in [
            "",
            "../etc",
            "0123456789ABCDEF",
            "0123456789abcdef0",
            "0123456789abcde/",
            "0123456789abcdeg",
        ] {
            assert_eq!(LeaseId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_differ() {
        assert_ne!(LeaseId::generate().unwrap(), LeaseId::generate().unwrap());
    }
}
