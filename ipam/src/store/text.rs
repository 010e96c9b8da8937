//! The text format of every node-local store file: a header line naming the format and its
//! version, one entry per line, and an `end <count>` trailer, so a truncated file is detected
//! instead of silently losing entries.
//! ```text
//! weft-ipam pool v2
//! 10.1.0.2 pods c1 eth0
//! end 1
//! ```

/// The file for `header` and `lines`.
pub fn render<S: AsRef<str>>(header: &str, lines: impl ExactSizeIterator<Item = S>) -> String {
    let count = lines.len();
    render_with(header, count, 32 + count * 48, |s| {
        for line in lines {
            s.push_str(line.as_ref());
            s.push('\n');
        }
    })
}

/// The file for `header` and `count` entry lines that `body` appends (each ending in `\n`),
/// in a string of `capacity` bytes.
pub fn render_with(
    header: &str,
    count: usize,
    capacity: usize,
    body: impl FnOnce(&mut String),
) -> String {
    let mut s = String::with_capacity(capacity + header.len() + 32);
    s.push_str(header);
    s.push('\n');
    body(&mut s);
    s.push_str(&format!("end {count}\n"));
    s
}

/// A parsed file: which of the accepted headers it starts with (its index), and its entry lines
/// with their line numbers (1-based, for messages).
pub type Parsed<'a> = (usize, Vec<(usize, &'a str)>);

/// Parses a file starting with one of `headers`. Errors: another header, a missing or wrong
/// trailer.
pub fn parse<'a>(text: &'a str, headers: &[&str]) -> Result<Parsed<'a>, String> {
    let mut entries = Vec::new();
    let version = parse_each(text, headers, |n, line| {
        entries.push((n, line));
        Ok(())
    })?;
    Ok((version, entries))
}

/// [`parse`], handing each entry line to `entry` (with its 1-based line number) instead of
/// collecting them; an error from `entry` ends the parse. Returns the header's index.
pub fn parse_each<'a>(
    text: &'a str,
    headers: &[&str],
    mut entry: impl FnMut(usize, &'a str) -> Result<(), String>,
) -> Result<usize, String> {
    let mut lines = lines(text);
    let first = lines.next().unwrap_or_default();
    let version = headers
        .iter()
        .position(|h| *h == first)
        .ok_or_else(|| format!("first line is not {:?}", headers[0]))?;
    // `count` entries precede this line, which is line `count + 2` (the header is line 1).
    for (count, line) in lines.enumerate() {
        if let Some(trailer) = line.strip_prefix("end ") {
            if trailer.parse::<usize>() != Ok(count) {
                return Err(format!("trailer says {trailer} entries, found {count}"));
            }
            return Ok(version);
        }
        entry(count + 2, line)?;
    }
    Err("no trailer (truncated file)".into())
}

/// [`str::lines`], searching newlines with a SIMD searcher built once (std's per-line search
/// set-up was a measurable part of reading a pool of thousands of lines).
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let newline = newline_finder();
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= text.len() {
            return None;
        }
        Some(match newline.find(&text.as_bytes()[start..]) {
            // A line ending is "\n" or "\r\n"; a "\r" without "\n" is part of the line.
            Some(offset) => {
                let end = start + offset;
                let line = &text[start..end];
                start = end + 1;
                line.strip_suffix('\r').unwrap_or(line)
            }
            None => {
                let line = &text[start..];
                start = text.len();
                line
            }
        })
    })
}

/// The newline search: memchr's SSE2 searcher on x86_64 (SSE2 is part of its baseline, so
/// nothing is detected at run time), its portable one elsewhere. Not `memchr::memchr_iter`:
/// its first call runs std's CPU feature detection to pick AVX2, a dozen CPUID instructions,
/// each a VM exit on a virtual machine: ~4% of a whole weft-ipam exec here (`perf record`).
#[cfg(target_arch = "x86_64")]
fn newline_finder() -> memchr::arch::x86_64::sse2::memchr::One {
    memchr::arch::x86_64::sse2::memchr::One::new(b'\n')
        .expect("SSE2 is part of the x86_64 baseline")
}

#[cfg(not(target_arch = "x86_64"))]
fn newline_finder() -> memchr::arch::all::memchr::One {
    memchr::arch::all::memchr::One::new(b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_like_str_lines() {
        for t in [
            "", "a", "a\n", "a\r\n", "a\r", "\r", "\r\n", "\n\n", "a\rb\n", "a\n\r\nb", "a\r\r\n",
            "x\ny\r",
        ] {
            assert_eq!(
                lines(t).collect::<Vec<_>>(),
                t.lines().collect::<Vec<_>>(),
                "{t:?}"
            );
        }
    }

    #[test]
    fn round_trip_and_every_way_to_be_broken() {
        let text = render("h v2", ["a", "b"].iter());
        assert_eq!(text, "h v2\na\nb\nend 2\n");
        assert_eq!(
            parse(&text, &["h v2", "h v1"]).unwrap(),
            (0, vec![(2, "a"), (3, "b")])
        );
        assert_eq!(parse("h v1\nend 0\n", &["h v2", "h v1"]).unwrap().0, 1);
        assert!(parse("h v3\nend 0\n", &["h v2"]).is_err(), "unknown header");
        assert!(parse("h v2\na\nend 2\n", &["h v2"]).is_err(), "wrong count");
        assert!(parse("h v2\na\n", &["h v2"]).is_err(), "truncated");
        assert!(parse("", &["h v2"]).is_err(), "empty");
    }
}
