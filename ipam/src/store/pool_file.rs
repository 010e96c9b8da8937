//! The pool file's format, and [`PoolFile`]: a pool file as read, indexed, and edited in place.
//!
//! ```text
//! weft-ipam pool v2
//! 10.1.0.2 <network> <containerID> <ifname>
//! 10.1.0.3 - <containerID> <ifname>
//! end 2
//! ```
//! One reservation per line in address order, between a header and a trailer carrying the line
//! count ([`super::text`]), so a truncated file is detected instead of silently losing
//! reservations. `<network>` is the owning CNI network's `name`; `-` marks a legacy reservation
//! (no network name starts with `-`). Pools written by earlier releases (`weft-ipam pool v1`,
//! lines `<address> <containerID> <ifname>`) are read as legacy reservations and written back
//! as v2.
//!
//! Two readers:
//! - [`parse`] builds the whole [`Pool`], checking every line and building an [`Owner`] per line:
//!   GC, `weft inspect`, tests, and files not in address order.
//! - [`PoolFile::read`] checks the structure (header, trailer count, an address at the start of
//!   every line, address order, so no address twice) and keeps each line's address and where the
//!   line sits in the text. Owners stay text: compared as text, checked and built only when a
//!   verb needs one ([`Reservations::holder`]). A verb's edits splice new lines in between the
//!   untouched ones, which are copied back verbatim. Every ADD, DEL and CHECK goes through it:
//!   building an owner (three strings, three checks) per reservation was most of a verb's cost
//!   at 1,000 reservations (`weft-bench ipam-scale`, ipam/README.md). A line whose owner is
//!   broken never answers to a valid owner, so its address stays taken until GC (which parses
//!   strictly) reports it.

use super::{text, Owner, Pool, Reservations};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub(crate) const HEADER: &str = "weft-ipam pool v2";
/// What releases before network scoping wrote: no network per reservation.
const HEADER_V1: &str = "weft-ipam pool v1";
/// The network field of a legacy reservation.
const NO_NETWORK: &str = "-";

/// One line of a pool file, checked: the address and the owner's fields (`network` is `None`
/// for a legacy reservation).
struct Fields<'a> {
    ip: IpAddr,
    network: Option<&'a str>,
    container_id: &'a str,
    ifname: &'a str,
}

impl<'a> Fields<'a> {
    /// Splits and checks line `n` (1-based, for messages): the address parses, and the owner's
    /// fields pass the same checks as [`Owner::new`], without building it.
    fn of(line: &'a str, v1: bool, n: usize) -> Result<Fields<'a>, String> {
        let (ip_text, network, container_id, ifname) = match (v1, split_spaces(line)) {
            (true, Some(([ip, cid, ifname, _], 3))) => (ip, NO_NETWORK, cid, ifname),
            (false, Some(([ip, net, cid, ifname], 4))) => (ip, net, cid, ifname),
            _ => {
                return Err(format!(
                    "line {n}: expected \"<address> {}<containerID> <ifname>\"",
                    if v1 { "" } else { "<network> " }
                ))
            }
        };
        let ip: IpAddr = ip_text
            .parse()
            .map_err(|_| format!("line {n}: bad address {ip_text:?}"))?;
        let network = (network != NO_NETWORK).then_some(network);
        let checked = network
            .map_or(Ok(()), conf::env::validate_network_name)
            .and_then(|()| conf::env::validate_container_id(container_id))
            .and_then(|()| conf::env::validate_ifname(ifname));
        checked.map_err(|e| format!("line {n}: {e}"))?;
        Ok(Fields {
            ip,
            network,
            container_id,
            ifname,
        })
    }

    fn owner(&self) -> Owner {
        let built = match self.network {
            Some(net) => Owner::new(net, self.container_id, self.ifname),
            None => Owner::legacy(self.container_id, self.ifname),
        };
        built.expect("fields were checked as Owner::new checks them")
    }
}

/// A line's fields as `str::split(' ')` yields them, and how many: up to four; `None` for more.
/// (`str::split` sets up a search per field, a measurable cost over thousands of lines.)
fn split_spaces(line: &str) -> Option<([&str; 4], usize)> {
    let mut out = [""; 4];
    let mut k = 0;
    let mut start = 0;
    for (i, b) in line.bytes().enumerate() {
        if b == b' ' {
            *out.get_mut(k)? = &line[start..i];
            k += 1;
            start = i + 1;
        }
    }
    *out.get_mut(k)? = &line[start..];
    Some((out, k + 1))
}

/// `text` as an address, exactly as `IpAddr::from_str` reads it. Dotted quads, what nearly every
/// line holds, are read directly: the general parser (IPv4, then IPv6) was a fifth of reading a
/// pool.
fn parse_addr(text: &str) -> Option<IpAddr> {
    ipv4(text.as_bytes())
        .map(IpAddr::V4)
        .or_else(|| text.parse().ok())
}

/// Four decimal octets of 1–3 digits, no leading zero, each at most 255 (std's rules); `None`
/// for anything else (which the general parser then judges). One pass, no splitting: it runs
/// for every line of a pool.
fn ipv4(text: &[u8]) -> Option<std::net::Ipv4Addr> {
    let mut octets = [0u8; 4];
    // The octet being read: its index, value, digit count, and whether it began with '0'.
    let (mut k, mut value, mut digits, mut zero) = (0, 0u16, 0, false);
    for &b in text {
        if b.is_ascii_digit() {
            if digits == 3 || zero {
                return None;
            }
            zero = digits == 0 && b == b'0';
            value = value * 10 + u16::from(b - b'0');
            digits += 1;
        } else if b == b'.' && digits > 0 && k < 3 {
            octets[k] = u8::try_from(value).ok()?;
            (k, value, digits, zero) = (k + 1, 0, 0, false);
        } else {
            return None;
        }
    }
    if digits == 0 || k != 3 {
        return None;
    }
    octets[3] = u8::try_from(value).ok()?;
    Some(octets.into())
}

/// The owner's fields as a v2 line writes them.
fn owner_text(o: &Owner) -> String {
    let network = o.network().unwrap_or(NO_NETWORK);
    format!("{network} {} {}", o.container_id(), o.ifname())
}

/// The pool file for `pool` (public for the fuzz targets: `render(parse(x))` parses back to the
/// same pool).
pub fn render(pool: &Pool) -> String {
    let lines = pool
        .map
        .iter()
        .map(|(ip, o)| format!("{ip} {}", owner_text(o)));
    text::render(HEADER, lines)
}

/// Inverse of [`render`]; also reads `weft-ipam pool v1` files (as legacy reservations). Lines
/// need not be in address order; an address listed twice is an error.
pub fn parse(text: &str) -> Result<Pool, String> {
    let (version, lines) = text::parse(text, &[HEADER, HEADER_V1])?;
    let mut pool = Pool::default();
    for (n, line) in lines {
        let f = Fields::of(line, version == 1, n)?;
        if pool.map.insert(f.ip, f.owner()).is_some() {
            return Err(format!("line {n}: {} listed twice", f.ip));
        }
    }
    Ok(pool)
}

/// A pool file as read: its text, and per reservation (in address order) the address and
/// where its line is. Edited in place and written back with [`PoolFile::render`].
#[derive(Debug, Clone, Default)]
pub struct PoolFile {
    text: String,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    ip: IpAddr,
    line: Line,
}

#[derive(Debug, Clone)]
enum Line {
    /// A line of the text as read: bytes `start..end`, the owner's fields from `owner` on.
    Read {
        start: usize,
        owner: usize,
        end: usize,
    },
    /// An owner set by this verb, as [`owner_text`] writes it.
    New(String),
}

impl PoolFile {
    /// Reads a pool file (see the module docs for what is checked). v1 files, and files not in
    /// address order (edited by hand), are read through [`parse`] and come out sorted v2.
    pub fn read(text: String) -> Result<PoolFile, String> {
        let base = text.as_ptr() as usize;
        // Lines are 30–100 bytes: reserve for the short ones rather than regrow.
        let mut entries: Vec<Entry> = Vec::with_capacity(text.len() / 32);
        let mut sorted = true;
        let version = text::parse_each(&text, &[HEADER, HEADER_V1], |n, line| {
            // "\r\n" ends a line; a "\r" left before it belongs to no valid line (parse refuses
            // the owner), and rendering the line would turn it into the next line ending.
            if line.ends_with('\r') {
                return Err(format!("line {n}: stray carriage return"));
            }
            // The address is short: a plain scan beats a memchr set-up per line.
            let ip_text = &line[..line.bytes().position(|b| b == b' ').unwrap_or(line.len())];
            let ip =
                parse_addr(ip_text).ok_or_else(|| format!("line {n}: bad address {ip_text:?}"))?;
            sorted &= entries.last().is_none_or(|last| last.ip < ip);
            let start = line.as_ptr() as usize - base;
            entries.push(Entry {
                ip,
                line: Line::Read {
                    start,
                    owner: (start + ip_text.len() + 1).min(start + line.len()),
                    end: start + line.len(),
                },
            });
            Ok(())
        })?;
        if version == 1 || !sorted {
            return parse(&text).map(|pool| PoolFile::from_pool(&pool));
        }
        Ok(PoolFile { text, entries })
    }

    /// The file for a whole pool (after GC, which works on the [`Pool`]).
    pub fn from_pool(pool: &Pool) -> PoolFile {
        let entries = pool
            .map
            .iter()
            .map(|(ip, o)| Entry {
                ip: *ip,
                line: Line::New(owner_text(o)),
            })
            .collect();
        PoolFile {
            text: String::new(),
            entries,
        }
    }

    /// Every reservation, owners checked and built (GC, inspection).
    pub fn to_pool(&self) -> Result<Pool, String> {
        let mut map = BTreeMap::new();
        for e in &self.entries {
            map.insert(e.ip, self.owner(e)?);
        }
        Ok(Pool { map })
    }

    /// The v2 file. Untouched lines are copied as they were read, runs of them at once.
    pub fn render(&self) -> String {
        let new_lines = self.entries.len() - self.text_lines();
        let capacity = self.text.len() + new_lines * 64;
        text::render_with(HEADER, self.entries.len(), capacity, |out| {
            // A line of `text` ending at `end` is followed by "\n" (not "\r\n", not the end).
            let ends_in_newline = |end: usize| self.text.as_bytes().get(end) == Some(&b'\n');
            // The run of lines of `text` copied next: `text[run.0..run.1]`, newlines included.
            let mut run: Option<(usize, usize)> = None;
            for e in &self.entries {
                match (&e.line, &mut run) {
                    (Line::Read { start, end, .. }, Some((_, run_end)))
                        if *start == *run_end && ends_in_newline(*end) =>
                    {
                        *run_end = end + 1;
                    }
                    (Line::Read { start, end, .. }, _) => {
                        if let Some((a, b)) = run.take() {
                            out.push_str(&self.text[a..b]);
                        }
                        if ends_in_newline(*end) {
                            run = Some((*start, end + 1));
                        } else {
                            out.push_str(&self.text[*start..*end]);
                            out.push('\n');
                        }
                    }
                    (Line::New(owner), _) => {
                        if let Some((a, b)) = run.take() {
                            out.push_str(&self.text[a..b]);
                        }
                        out.push_str(&format!("{} {owner}\n", e.ip));
                    }
                }
            }
            if let Some((a, b)) = run {
                out.push_str(&self.text[a..b]);
            }
        })
    }

    /// How many entries are lines of the text as read.
    fn text_lines(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.line, Line::Read { .. }))
            .count()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reserves `ip` for `owner` (replacing a holder, as a map insert would: callers decide
    /// with [`Reservations::decide`] first).
    pub fn insert(&mut self, ip: IpAddr, owner: &Owner) {
        let entry = Entry {
            ip,
            line: Line::New(owner_text(owner)),
        };
        match self.entries.binary_search_by(|e| e.ip.cmp(&ip)) {
            Ok(i) => self.entries[i] = entry,
            Err(i) => self.entries.insert(i, entry),
        }
    }

    /// The addresses held by `owner` (its own reservations and legacy ones of its interface).
    pub fn owned_by(&self, owner: &Owner) -> Vec<IpAddr> {
        self.entries
            .iter()
            .filter(|e| self.answers(e, owner))
            .map(|e| e.ip)
            .collect()
    }

    /// Frees every address `owner` holds; returns them.
    pub fn release(&mut self, owner: &Owner) -> Vec<IpAddr> {
        let mine = self.owned_by(owner);
        if !mine.is_empty() {
            self.entries.retain(|e| !mine.contains(&e.ip));
        }
        mine
    }

    /// Stamps `owner` on the legacy reservations of `addrs` that answer to it; whether any did.
    pub fn adopt(&mut self, owner: &Owner, addrs: &[IpAddr]) -> bool {
        let mut changed = false;
        for ip in addrs {
            let Ok(i) = self.entries.binary_search_by(|e| e.ip.cmp(ip)) else {
                continue;
            };
            let e = &self.entries[i];
            if self.owner_part(e).starts_with("- ") && self.answers(e, owner) {
                self.entries[i].line = Line::New(owner_text(owner));
                changed = true;
            }
        }
        changed
    }

    /// The owner's fields of `e` as text: `<network> <containerID> <ifname>`.
    fn owner_part<'s>(&'s self, e: &'s Entry) -> &'s str {
        match &e.line {
            Line::Read { owner, end, .. } => &self.text[*owner..*end],
            Line::New(owner) => owner,
        }
    }

    /// The owner of `e`, checked as [`parse`] checks it.
    fn owner(&self, e: &Entry) -> Result<Owner, String> {
        let text = format!("{} {}", e.ip, self.owner_part(e));
        Fields::of(&text, false, 0).map(|f| f.owner())
    }

    /// [`conf::AttachmentKey::answers_to`] on the fields as text: `[<network> ]<cid> <ifname>`,
    /// matched from the end (fields never hold a space), so most lines fail at the first compare.
    fn answers(&self, e: &Entry, owner: &Owner) -> bool {
        let part = self.owner_part(e).as_bytes();
        let (cid, ifname) = (owner.container_id().as_bytes(), owner.ifname().as_bytes());
        // `part` ends in " <cid> <ifname>": reject on the container ID's first byte before
        // comparing whole fields (called for every reservation of the range on each ADD).
        let Some(at) = part.len().checked_sub(cid.len() + 1 + ifname.len()) else {
            return false;
        };
        if part[at] != cid[0] || !part.ends_with(ifname) || part[at + cid.len()] != b' ' {
            return false;
        }
        if &part[at..at + cid.len()] != cid {
            return false;
        }
        match part[..at].strip_suffix(b" ") {
            Some(b"-") => true,
            Some(net) => Some(net) == owner.network().map(str::as_bytes),
            None => false,
        }
    }

    /// The entries with addresses in `[lo, hi]`.
    fn span(&self, lo: IpAddr, hi: IpAddr) -> &[Entry] {
        let from = self.entries.partition_point(|e| e.ip < lo);
        let to = self.entries.partition_point(|e| e.ip <= hi);
        &self.entries[from..to.max(from)]
    }
}

impl Reservations for PoolFile {
    fn held_in(&self, lo: IpAddr, hi: IpAddr) -> impl Iterator<Item = IpAddr> + '_ {
        self.span(lo, hi).iter().map(|e| e.ip)
    }

    fn held_by(&self, owner: &Owner, lo: IpAddr, hi: IpAddr) -> Option<IpAddr> {
        self.span(lo, hi)
            .iter()
            .find(|e| self.answers(e, owner))
            .map(|e| e.ip)
    }

    /// A holder whose owner fields are broken is still a holder: shown as the line's text.
    fn holder(&self, ip: IpAddr) -> Option<String> {
        let i = self.entries.binary_search_by(|e| e.ip.cmp(&ip)).ok()?;
        let e = &self.entries[i];
        Some(match self.owner(e) {
            Ok(o) => o.to_string(),
            Err(_) => format!("{:?} (unreadable owner)", self.owner_part(e)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{ip, owner};

    const V2: &str =
        "weft-ipam pool v2\n10.0.0.2 n a eth0\n10.0.0.3 - b eth0\nfd00::2 m c net1\nend 3\n";

    /// What the readers must agree on: the same pool, or both refuse (a broken owner only when
    /// it is looked at: GC's strict read).
    fn same_as_parse(text: &str) {
        match (parse(text), PoolFile::read(text.to_string())) {
            (Ok(pool), Ok(file)) => {
                assert_eq!(file.to_pool().unwrap(), pool, "{text:?}");
                assert_eq!(
                    parse(&file.render())
                        .unwrap_or_else(|e| panic!("{text:?} -> {:?}: {e}", file.render())),
                    pool,
                    "{text:?}"
                );
            }
            (Err(_), Err(_)) => {}
            (Err(_), Ok(file)) => {
                assert!(file.to_pool().is_err(), "{text:?} read as {file:?}");
                assert!(parse(&file.render()).is_err(), "{text:?}");
            }
            (Ok(_), Err(e)) => panic!("{text:?}: parse reads it, PoolFile::read: {e}"),
        }
    }

    #[test]
    fn reads_what_parse_reads() {
        let cases = [
            V2,
            "weft-ipam pool v1\n10.0.0.2 a eth0\n10.0.0.3 b eth0\nend 2\n",
            // Out of order (edited by hand): still read, written back sorted.
            "weft-ipam pool v2\n10.0.0.3 n b eth0\n10.0.0.2 n a eth0\nend 2\n",
            "weft-ipam pool v2\r\n10.0.0.2 n a eth0\r\nend 1\r\n",
            // A "\r" before the "\r\n" (found by fuzz/pool_file: each render dropped one).
            "weft-ipam pool v2\n10.0.0.2 n a eth0\r\r\nend 1\n",
            "weft-ipam pool v2\n10.0.0.2 n a eth0\r\r\r\nend 1\n",
            "weft-ipam pool v2\nend 0\n",
            // Broken ones: every reader refuses.
            "weft-ipam pool v2\n10.0.0.2 n a eth0\n",
            "weft-ipam pool v2\n10.0.0.2 n a eth0\n10.0.0.2 n b eth0\nend 2\n",
            "weft-ipam pool v2\n10.0.0.3 n a eth0\n10.0.0.2 n b eth0\n10.0.0.3 n c eth0\nend 3\n",
            "weft-ipam pool v2\n10.0.0.2 ../n a eth0\nend 1\n",
            "weft-ipam pool v2\n10.0.0.2 n ../a eth0\nend 1\n",
            "weft-ipam pool v2\n10.0.0.2 n a eth0/x\nend 1\n",
            "weft-ipam pool v2\n10.0.0.2 n a 0123456789abcdef\nend 1\n",
            "weft-ipam pool v2\n10.0.0.2 a eth0\nend 1\n",
            "weft-ipam pool v2\n10.0.0.2  n a eth0\nend 1\n",
            "weft-ipam pool v2\n10.0.0.2 n a eth0 \nend 1\n",
            "weft-ipam pool v1\n10.0.0.2 a eth0 \nend 1\n",
            "weft-ipam pool v1\n10.0.0.2 a \nend 1\n",
            "weft-ipam pool v2\n10.0.0.2 n a \nend 1\n",
            "weft-ipam pool v2\n10.0.0.2 n a\nend 1\n",
            "weft-ipam pool v2\n10.0.0.x n a eth0\nend 1\n",
            "weft-ipam pool v1\n10.0.0.2 n a eth0\nend 1\n",
            "weft-ipam pool v3\nend 0\n",
            "",
        ];
        for text in cases {
            same_as_parse(text);
        }
        // Every prefix of a valid file: a truncated file is never a smaller pool.
        for cut in 0..V2.len() {
            same_as_parse(&V2[..cut]);
        }
    }

    #[test]
    fn a_stray_carriage_return_is_refused_not_rewritten() {
        let text = "weft-ipam pool v2\n10.0.0.2 n a eth0\r\r\nend 1\n";
        let err = PoolFile::read(text.to_string()).unwrap_err();
        assert!(err.contains("stray carriage return"), "{err}");
        // A plain CRLF file is still read.
        assert!(PoolFile::read("weft-ipam pool v2\r\nend 0\r\n".to_string()).is_ok());
    }

    #[test]
    fn dotted_quads_read_as_std_reads_them() {
        let mut cases: Vec<String> = (0..1000).map(|i| format!("1.2.3.{i}")).collect();
        cases.extend((0..100).map(|i| format!("1.2.3.{i:02}")));
        cases.extend((0..10).map(|i| format!("1.2.3.{i:03}")));
        cases.extend(
            [
                "",
                ".",
                "1.2.3",
                "1.2.3.4.",
                ".1.2.3.4",
                "1.2.3.4.5",
                "1..3.4",
                "1.2.3.+4",
                "1.2.3.-4",
                "1.2.3. 4",
                "1.2.3.4 ",
                "0.0.0.0",
                "255.255.255.255",
                "256.1.1.1",
                "1.2.3.0x1",
                "1.2.3.٣",
                "::1",
                "::ffff:1.2.3.4",
                "1.2.3.4/24",
                "01.2.3.4",
            ]
            .map(String::from),
        );
        for t in cases {
            let std = t.parse::<std::net::Ipv4Addr>().ok();
            assert_eq!(ipv4(t.as_bytes()), std, "{t:?}");
            assert_eq!(parse_addr(&t), t.parse::<IpAddr>().ok(), "{t:?}");
        }
    }

    #[test]
    fn mutated_files_are_read_alike() {
        let v1 = "weft-ipam pool v1\n10.0.0.2 a eth0\n10.0.0.3 b eth0\nend 2\n";
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let alphabet = b" \n\r-.:/a0f9";
        for base in [V2, v1] {
            for _ in 0..3000 {
                let mut bytes = base.as_bytes().to_vec();
                for _ in 0..1 + next(3) {
                    let at = next(bytes.len());
                    match next(3) {
                        0 => bytes[at] = alphabet[next(alphabet.len())],
                        1 => {
                            bytes.remove(at);
                        }
                        _ => bytes.insert(at, alphabet[next(alphabet.len())]),
                    }
                }
                if let Ok(text) = std::str::from_utf8(&bytes) {
                    same_as_parse(text);
                }
            }
        }
    }

    #[test]
    fn edits_render_like_the_whole_pool_would() {
        let mut file = PoolFile::read(V2.to_string()).unwrap();
        let mut pool = parse(V2).unwrap();
        let new = Owner::new("n", "d", "eth0").unwrap();
        file.insert(ip("10.0.0.5"), &new);
        pool.map.insert(ip("10.0.0.5"), new.clone());
        let b = Owner::new("n", "b", "eth0").unwrap();
        assert!(file.adopt(&b, &[ip("10.0.0.3")]));
        assert!(pool.adopt(&b, &[ip("10.0.0.3")]));
        let a = Owner::new("n", "a", "eth0").unwrap();
        assert_eq!(file.release(&a), pool.release(&a));
        assert_eq!(file.render(), render(&pool));
        assert_eq!(file.len(), 3);
        // Untouched lines are copied as read, not re-rendered.
        let odd = "weft-ipam pool v2\nfd00:0::2 n a eth0\nend 1\n";
        let mut file = PoolFile::read(odd.to_string()).unwrap();
        file.insert(ip("fd00::3"), &owner("b"));
        assert_eq!(
            file.render(),
            "weft-ipam pool v2\nfd00:0::2 n a eth0\nfd00::3 net1 b eth0\nend 2\n"
        );
    }

    #[test]
    fn v1_files_are_written_back_as_v2_with_legacy_owners() {
        let v1 = "weft-ipam pool v1\n10.0.0.2 a eth0\nend 1\n";
        let mut file = PoolFile::read(v1.to_string()).unwrap();
        let a = Owner::new("n", "a", "eth0").unwrap();
        assert_eq!(file.owned_by(&a), vec![ip("10.0.0.2")], "legacy answers");
        assert_eq!(
            file.holder(ip("10.0.0.2")),
            Some(Owner::legacy("a", "eth0").unwrap().to_string())
        );
        file.insert(ip("10.0.0.3"), &owner("b"));
        assert_eq!(
            file.render(),
            "weft-ipam pool v2\n10.0.0.2 - a eth0\n10.0.0.3 net1 b eth0\nend 2\n"
        );
    }

    #[test]
    fn reservations_answer_like_the_pool() {
        let file = PoolFile::read(V2.to_string()).unwrap();
        let pool = parse(V2).unwrap();
        let (lo, hi) = (ip("10.0.0.0"), ip("10.0.0.255"));
        assert!(file.held_in(lo, hi).eq(pool.held_in(lo, hi)));
        for o in [
            Owner::new("n", "a", "eth0").unwrap(),
            Owner::new("x", "a", "eth0").unwrap(),
            Owner::new("x", "b", "eth0").unwrap(),
            Owner::new("m", "c", "net1").unwrap(),
        ] {
            assert_eq!(file.held_by(&o, lo, hi), pool.held_by(&o, lo, hi), "{o}");
            assert_eq!(file.owned_by(&o), pool.owned_by(&o), "{o}");
        }
        for a in ["10.0.0.2", "10.0.0.3", "10.0.0.4", "fd00::2"] {
            assert_eq!(file.holder(ip(a)), pool.holder(ip(a)), "{a}");
        }
    }
}
