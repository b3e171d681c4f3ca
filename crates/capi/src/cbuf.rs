//! Reading C strings from and writing them to caller memory: the only
//! place (with `api`) that touches raw pointers.
//!
//! Every read is bounded: a string without a NUL within its limit is an
//! error, never a read past it.

// Raw pointers from C are the whole point of this module; each access
// carries a SAFETY comment stating what the C contract guarantees.
#![allow(unsafe_code)]

use std::ffi::c_char;

use crate::failure::Failure;

/// Reads the NUL-terminated string at `p`, at most `max` bytes before the
/// NUL, as UTF-8. `what` names the argument in errors.
///
/// # Safety
/// `p` is non-null and points to readable memory up to its NUL or `max + 1`
/// bytes, whichever comes first (what a C caller promises for a string).
pub unsafe fn read_str(p: *const c_char, max: usize, what: &str) -> Result<String, Failure> {
    let mut bytes = Vec::new();
    for i in 0..=max {
        // SAFETY: by the contract above, byte i exists while no NUL was
        // seen before it and i <= max.
        let b = unsafe { *p.add(i) } as u8;
        if b == 0 {
            return String::from_utf8(bytes).map_err(|e| {
                Failure::invalid(format!(
                    "{what} is not valid UTF-8 (bad byte at offset {}); pass UTF-8 text",
                    e.utf8_error().valid_up_to()
                ))
            });
        }
        bytes.push(b);
    }
    Err(Failure::invalid(format!(
        "{what} is longer than {max} bytes (or not NUL-terminated); pass a shorter string"
    )))
}

/// Copies `s` and a NUL into `buf` if they fit; `Err` (buffer untouched but
/// for a leading NUL) if not.
pub fn write_str(buf: &mut [c_char], s: &str) -> Result<(), ()> {
    if s.len() >= buf.len() || s.as_bytes().contains(&0) {
        if let Some(first) = buf.first_mut() {
            *first = 0;
        }
        return Err(());
    }
    for (dst, &src) in buf.iter_mut().zip(s.as_bytes()) {
        *dst = src as c_char;
    }
    buf[s.len()] = 0;
    Ok(())
}

/// Reads a fixed buffer as a NUL-terminated UTF-8 string (a lease id the
/// caller hands back).
pub fn read_buf(buf: &[c_char], what: &str) -> Result<String, Failure> {
    let len = buf.iter().position(|&c| c == 0).ok_or_else(|| {
        Failure::invalid(format!(
            "{what} is not NUL-terminated; pass the lease builddir_allocate filled in"
        ))
    })?;
    let bytes: Vec<u8> = buf[..len].iter().map(|&c| c as u8).collect();
    String::from_utf8(bytes).map_err(|_| {
        Failure::invalid(format!(
            "{what} is not valid UTF-8; pass the lease builddir_allocate filled in"
        ))
    })
}

/// Writes `msg` as a NUL-terminated line into `err[..errlen]`, truncated
/// (at a character boundary) to fit. `err` NULL or `errlen` 0: nothing.
///
/// # Safety
/// If `err` is non-null, it points to `errlen` writable bytes.
pub unsafe fn write_err(err: *mut c_char, errlen: usize, msg: &str) {
    if err.is_null() || errlen == 0 {
        return;
    }
    // One line, whatever the message held.
    let line: String = msg
        .chars()
        .map(|c| {
            if c == '\n' || c == '\r' || c == '\0' {
                ' '
            } else {
                c
            }
        })
        .collect();
    let mut n = line.len().min(errlen - 1);
    while !line.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: `err` holds `errlen` bytes; n + 1 <= errlen, and `line` is
    // our own string, which does not overlap the caller's buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(line.as_ptr(), err.cast::<u8>(), n);
        *err.add(n) = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_bounded_and_checked() {
        let ok = c"hello";
        // SAFETY: a valid C string literal.
        assert_eq!(
            unsafe { read_str(ok.as_ptr(), 5, "name") }.unwrap(),
            "hello"
        );
        // SAFETY: as above; the limit stops the read before the NUL.
        let long = unsafe { read_str(ok.as_ptr(), 4, "name") }.unwrap_err();
        assert!(long.message.contains("longer than 4"), "{}", long.message);
        let bad = [0xffu8 as c_char, 0];
        // SAFETY: a NUL-terminated array.
        let bad = unsafe { read_str(bad.as_ptr(), 10, "name") }.unwrap_err();
        assert!(bad.message.contains("UTF-8"));
    }

    #[test]
    fn err_is_truncated_at_a_char_boundary_and_terminated() {
        let mut buf = [1 as c_char; 5];
        // SAFETY: buf has 5 bytes.
        unsafe { write_err(buf.as_mut_ptr(), buf.len(), "ab\u{e9}cd") };
        // "ab" + "é" (2 bytes) fits in 4; then NUL.
        assert_eq!(buf[4], 0);
        let mut tiny = [1 as c_char; 1];
        // SAFETY: tiny has 1 byte.
        unsafe { write_err(tiny.as_mut_ptr(), 1, "anything") };
        assert_eq!(tiny[0], 0);
    }

    #[test]
    fn write_str_refuses_what_does_not_fit() {
        let mut buf = [1 as c_char; 4];
        assert!(write_str(&mut buf, "abc").is_ok());
        assert_eq!(buf[3], 0);
        assert!(write_str(&mut buf, "abcd").is_err());
        assert_eq!(buf[0], 0);
    }
}
