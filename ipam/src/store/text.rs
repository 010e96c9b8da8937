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
    let mut s = String::with_capacity(32 + count * 48);
    s.push_str(header);
    s.push('\n');
    for line in lines {
        s.push_str(line.as_ref());
        s.push('\n');
    }
    s.push_str(&format!("end {count}\n"));
    s
}

/// A parsed file: which of the accepted headers it starts with (its index), and its entry lines
/// with their line numbers (1-based, for messages).
pub type Parsed<'a> = (usize, Vec<(usize, &'a str)>);

/// Parses a file starting with one of `headers`. Errors: another header, a missing or wrong
/// trailer.
pub fn parse<'a>(text: &'a str, headers: &[&str]) -> Result<Parsed<'a>, String> {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let version = headers
        .iter()
        .position(|h| *h == first)
        .ok_or_else(|| format!("first line is not {:?}", headers[0]))?;
    let mut entries = Vec::new();
    for (n, line) in lines.enumerate() {
        if let Some(count) = line.strip_prefix("end ") {
            if count.parse::<usize>() != Ok(entries.len()) {
                return Err(format!(
                    "trailer says {count} entries, found {}",
                    entries.len()
                ));
            }
            return Ok((version, entries));
        }
        entries.push((n + 2, line));
    }
    Err("no trailer (truncated file)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

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
