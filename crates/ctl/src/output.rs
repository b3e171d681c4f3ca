//! Aligned tables for people, stable JSON for programs.
//!
//! Text output carries strings that came from clients and from build trees
//! (lease names, a client's `/proc/PID/comm`, file names in errors). Every
//! one goes through [`text`] first, so no terminal escape or line break
//! from them reaches the operator's terminal: a command named
//! `\e[2J` or `x\nFAKE ROW` can neither clear the screen nor forge a row.
//! JSON output is exact: the JSON encoder escapes what needs escaping.

use std::borrow::Cow;
use std::io::{self, Write};

/// `s` made safe for a terminal: control characters, Unicode format
/// characters (bidirectional overrides, zero-width) and other non-printable
/// characters are written as Rust escapes (`\n`, `\u{1b}`, `\u{202e}`), and
/// a backslash as `\\`, so an escaped text cannot pass for another one.
/// Printable text (spaces and non-ASCII letters included) is unchanged.
pub fn text(s: &str) -> Cow<'_, str> {
    fn plain(c: char) -> bool {
        // `escape_debug` leaves printable characters alone, except quotes
        // (harmless on a terminal) and the backslash (escaped below).
        c == '"' || c == '\'' || (c != '\\' && c.escape_debug().len() == 1)
    }
    if s.chars().all(plain) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if plain(c) {
            out.push(c);
        } else {
            out.extend(c.escape_debug());
        }
    }
    Cow::Owned(out)
}

/// Prints rows as columns separated by two spaces, the last left unpadded.
/// Every cell is escaped with [`text`].
pub fn table(header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| text(cell)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = io::stdout().lock();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        let cells: Vec<&str> = cells.collect();
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                write!(out, "{cell}")?;
            } else {
                write!(out, "{cell:<width$}  ", width = widths[i])?;
            }
        }
        writeln!(out)
    };
    line(&mut header.iter().copied())?;
    for row in &rows {
        line(&mut row.iter().map(|c| c.as_ref()))?;
    }
    out.flush()
}

/// Prints `value` as pretty JSON followed by a newline.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Returns true if and only if `e` is a closed stdout (`| head`): not an error.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    // A broken pipe on the daemon's socket is a failure, not a closed stdout.
    if e.chain().any(|c| c.is::<builddir_client::Error>()) {
        return false;
    }
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                .is_some_and(|k| k == io::ErrorKind::BrokenPipe)
    })
}

/// An error and its causes on one line, each cause once, escaped with
/// [`text`]: the daemon's messages can quote names that came from clients
/// or trees.
pub fn one_line(e: &anyhow::Error) -> String {
    text(&builddir_host::one_line(e.as_ref())).into_owned()
}

/// `3s`, `5m`, `2h`, `4d`: the largest whole unit.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `512B`, `1.5K`, `20M`, `3.1G`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else if v < 10.0 {
        format!("{v:.1}{}", UNITS[unit])
    } else {
        format!("{v:.0}{}", UNITS[unit])
    }
}

/// `90`, `90s`, `30m`, `12h`, `7d` → seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    scaled(
        text,
        &[("", 1), ("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)],
        "a duration like 90s, 30m, 12h or 7d",
    )
}

/// Parses a size: bytes, or with a binary suffix K, M, G or T in either
/// case ("512M", "8g").
pub fn parse_size(text: &str) -> Result<u64, String> {
    scaled(
        &text.to_ascii_uppercase(),
        &[
            ("", 1),
            ("K", 1 << 10),
            ("M", 1 << 20),
            ("G", 1 << 30),
            ("T", 1 << 40),
        ],
        "a size like 4096, 512M or 8G",
    )
}

/// Digits followed by one of `units` (suffix, scale); `what` names the
/// expected form in errors.
fn scaled(text: &str, units: &[(&str, u64)], what: &str) -> Result<u64, String> {
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not {what}"))?;
    let Some((_, scale)) = units.iter().find(|(u, _)| *u == unit) else {
        let names: Vec<&str> = units
            .iter()
            .map(|(u, _)| *u)
            .filter(|u| !u.is_empty())
            .collect();
        return Err(format!(
            "unknown unit {unit:?} in {text:?}; use {}",
            names.join(", ")
        ));
    };
    n.checked_mul(*scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escapes_what_could_drive_a_terminal_or_forge_a_row() {
        assert_eq!(text("hello-1.0 été"), "hello-1.0 été");
        assert!(matches!(text("plain"), Cow::Borrowed(_)));
        assert_eq!(text("x\nFAKE ROW"), "x\\nFAKE ROW");
        assert_eq!(text("\u{1b}[2J\u{1b}[H"), "\\u{1b}[2J\\u{1b}[H");
        assert_eq!(text("a\tb\r"), "a\\tb\\r");
        assert_eq!(text("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        // A literal backslash-n is not confused with an escaped newline.
        assert_eq!(text("x\\n"), "x\\\\n");
        assert_eq!(text("it's \"q\""), "it's \"q\"");
    }

    #[test]
    fn human_units() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3 * 86_400), "3d");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(bytes(20 * 1024 * 1024), "20M");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert!(parse_size("8X").unwrap_err().contains("use K, M, G, T"));
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn only_our_own_stdout_closing_is_a_quiet_broken_pipe() {
        let stdout = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&stdout));
        // The daemon's socket breaking is a failure to report, as the
        // client reports it (a transport error).
        let socket = anyhow::Error::new(builddir_client::Error::Proto(
            builddir_proto::ProtoError::Io {
                context: "sendmsg on the socket",
                source: io::Error::from(io::ErrorKind::BrokenPipe),
            },
        ));
        assert!(!is_broken_pipe(&socket));
    }
}
