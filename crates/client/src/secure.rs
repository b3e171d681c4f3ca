//! Whether this process runs in secure-execution mode (`AT_SECURE`: a
//! setuid/setgid program, file capabilities, an LSM transition), where the
//! environment belongs to a less privileged caller and must not choose
//! which socket the process talks to, the way glibc's `secure_getenv`
//! treats it.

/// `AT_SECURE` in the auxiliary vector (`<elf.h>`).
const AT_SECURE: usize = 23;

/// Returns true if the process is in secure-execution mode. Read from
/// `/proc/self/auxv`; without it, a process whose real and effective ids
/// differ counts as secure (fail closed for setuid/setgid programs).
pub fn secure_execution() -> bool {
    match std::fs::read("/proc/self/auxv") {
        Ok(auxv) => at_secure(&auxv).unwrap_or(true),
        Err(_) => {
            use rustix::process::{getegid, geteuid, getgid, getuid};
            getuid() != geteuid() || getgid() != getegid()
        }
    }
}

/// `AT_SECURE`'s value in an auxiliary vector (native-endian word pairs),
/// if it is there.
fn at_secure(auxv: &[u8]) -> Option<bool> {
    const W: usize = std::mem::size_of::<usize>();
    let word = |b: &[u8]| usize::from_ne_bytes(b.try_into().unwrap_or([0; W]));
    auxv.chunks_exact(2 * W)
        .map(|pair| (word(&pair[..W]), word(&pair[W..])))
        .take_while(|&(key, _)| key != 0)
        .find(|&(key, _)| key == AT_SECURE)
        .map(|(_, value)| value != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auxv(pairs: &[(usize, usize)]) -> Vec<u8> {
        pairs
            .iter()
            .flat_map(|&(k, v)| [k.to_ne_bytes(), v.to_ne_bytes()])
            .flatten()
            .collect()
    }

    #[test]
    fn at_secure_is_read_from_the_auxiliary_vector() {
        assert_eq!(
            at_secure(&auxv(&[(6, 4096), (AT_SECURE, 1), (0, 0)])),
            Some(true)
        );
        assert_eq!(at_secure(&auxv(&[(AT_SECURE, 0), (0, 0)])), Some(false));
        assert_eq!(at_secure(&auxv(&[(6, 4096), (0, 0), (AT_SECURE, 1)])), None);
    }

    #[test]
    fn a_test_process_is_not_in_secure_execution_mode() {
        assert!(!secure_execution());
    }
}
