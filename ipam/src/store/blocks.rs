//! Per-node address blocks: the part of the etcd store that needs no etcd (so it is built and
//! tested with or without the `etcd` feature).
//!
//! A node serves addresses only from blocks it holds in etcd (see [`super::etcd`]); its list of
//! held blocks lives next to its pool file, `<local dir>/blocks`, written atomically under the
//! pool lock:
//! ```text
//! weft-ipam blocks v1
//! 10.40.0.0/26
//! fd40::/122
//! end 2
//! ```
//! [`plan`] decides one ADD against the local pool and that list: an address from this node's
//! blocks (lowest block first, lowest free address in it), or what the node has to get from
//! etcd first ([`Need`]).

use super::{text, Claim, Owner, Plan, Reservations};
use crate::error::Result;
use crate::range::{from_u128, Block, Family};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// File name of the block list in the node-local store directory.
pub const BLOCKS_FILE: &str = "blocks";
const HEADER: &str = "weft-ipam blocks v1";

/// Claim `claim` of an ADD cannot be served from this node's blocks: it needs a new block
/// (`want == None`) or the block that holds the requested static address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub claim: usize,
    pub want: Option<IpAddr>,
}

/// The outcome of [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// Every claim is served locally (addresses new to the pool are in `new`).
    Done(Plan),
    /// At least one claim needs a block from etcd first; nothing was decided.
    Need(Vec<Need>),
}

/// The addresses of `pool` inside `block`.
pub fn used_in(pool: &impl Reservations, block: &Block) -> usize {
    let (lo, hi) = block.span();
    let family = Family::of(block.start);
    pool.held_in(from_u128(family, lo), from_u128(family, hi))
        .count()
}

/// Decides one ADD from the node-local pool and block list, with [`Reservations::decide`]'s rules, over
/// the node's blocks instead of whole ranges. Exhaustion is not decided here: a full node asks for a
/// block ([`Local::Need`]) and etcd says whether one is left.
pub fn plan(
    pool: &impl Reservations,
    blocks: &BTreeSet<Block>,
    owner: &Owner,
    claims: &[Claim<'_>],
) -> Result<Local> {
    let mut out = Plan {
        addrs: Vec::with_capacity(claims.len()),
        new: Vec::new(),
    };
    let mut needs = Vec::new();
    for (i, claim) in claims.iter().enumerate() {
        let r = claim.range;
        let ours: Vec<&Block> = blocks
            .iter()
            .filter(|b| Family::of(b.start) == r.family())
            .collect();
        let decision = pool.decide(
            owner,
            claim,
            |want| ours.iter().any(|b| b.contains(want)),
            || {
                ours.iter().find_map(|b| {
                    let (lo, hi) = b.span();
                    let cut = r.restrict(lo, hi)?;
                    cut.lowest_free(pool.held_in(cut.start, cut.end))
                })
            },
        )?;
        if !out.take(decision) {
            needs.push(Need {
                claim: i,
                want: claim.want,
            });
        }
    }
    Ok(if needs.is_empty() {
        Local::Done(out)
    } else {
        Local::Need(needs)
    })
}

pub fn render(blocks: &BTreeSet<Block>) -> String {
    text::render(HEADER, blocks.iter().map(Block::to_string))
}

/// Inverse of [`render`]; a missing or wrong trailer is an error, never an empty list.
pub fn parse(text: &str) -> std::result::Result<BTreeSet<Block>, String> {
    let (_, lines) = text::parse(text, &[HEADER])?;
    lines
        .into_iter()
        .map(|(n, line)| line.parse().map_err(|e| format!("line {n}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::{Range, RangeSpec};
    use crate::store::test_support::{ip, owner, range_sliced as range};
    use crate::store::Pool;

    fn block(s: &str) -> Block {
        s.parse().unwrap()
    }
    fn any(r: &Range) -> Claim<'_> {
        Claim {
            range: r,
            want: None,
        }
    }

    #[test]
    fn serves_from_own_blocks_lowest_first_then_asks_for_more() {
        let r = range("10.0.0.0/24", Some(30));
        let mut pool = Pool::default();
        // Not the lowest block of the range: a node serves only what it holds.
        let blocks: BTreeSet<Block> = [block("10.0.0.8/30"), block("10.0.0.4/30")].into();
        let mut got = Vec::new();
        for c in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            match plan(&pool, &blocks, &owner(c), &[any(&r)]).unwrap() {
                Local::Done(p) => {
                    assert_eq!(p.new, p.addrs);
                    pool.map.insert(p.addrs[0], owner(c));
                    got.push(p.addrs[0]);
                }
                Local::Need(n) => {
                    assert_eq!(
                        n,
                        vec![Need {
                            claim: 0,
                            want: None
                        }]
                    );
                    break;
                }
            }
        }
        let want: Vec<IpAddr> = (4..12).map(|i| ip(&format!("10.0.0.{i}"))).collect();
        assert_eq!(got, want);
        assert_eq!(used_in(&pool, &block("10.0.0.4/30")), 4);
        // Idempotent: the same owner gets its address again without a block.
        let again = plan(&pool, &blocks, &owner("a"), &[any(&r)]).unwrap();
        assert_eq!(
            again,
            Local::Done(Plan {
                addrs: vec![ip("10.0.0.4")],
                new: vec![]
            })
        );
    }

    #[test]
    fn static_addresses_need_their_block() {
        let r = range("10.0.0.0/24", Some(28));
        let blocks: BTreeSet<Block> = [block("10.0.0.0/28")].into();
        let mut pool = Pool::default();
        let want = |s: &str| Claim {
            range: &r,
            want: Some(ip(s)),
        };
        let p = plan(&pool, &blocks, &owner("a"), &[want("10.0.0.9")]).unwrap();
        assert!(matches!(p, Local::Done(ref p) if p.addrs == [ip("10.0.0.9")]));
        pool.map.insert(ip("10.0.0.9"), owner("a"));
        let e = plan(&pool, &blocks, &owner("b"), &[want("10.0.0.9")]).unwrap_err();
        assert_eq!(e.code(), conf::code::TRY_AGAIN);
        let p = plan(&pool, &blocks, &owner("b"), &[want("10.0.0.77")]).unwrap();
        assert_eq!(
            p,
            Local::Need(vec![Need {
                claim: 0,
                want: Some(ip("10.0.0.77"))
            }])
        );
    }

    #[test]
    fn dual_stack_is_all_or_nothing() {
        let (v4, v6) = (range("10.0.0.0/24", None), range("fd00::/120", None));
        let blocks: BTreeSet<Block> = [block("10.0.0.0/26")].into();
        let p = plan(
            &Pool::default(),
            &blocks,
            &owner("a"),
            &[any(&v4), any(&v6)],
        )
        .unwrap();
        assert_eq!(
            p,
            Local::Need(vec![Need {
                claim: 1,
                want: None
            }])
        );
    }

    #[test]
    fn block_list_roundtrip_and_corruption() {
        let blocks: BTreeSet<Block> = [block("10.0.0.64/26"), block("fd00::40/122")].into();
        assert_eq!(parse(&render(&blocks)).unwrap(), blocks);
        assert!(parse("weft-ipam blocks v1\n10.0.0.64/26\n").is_err());
        assert!(parse("weft-ipam blocks v1\n10.0.0.65/26\nend 1\n").is_err());
        assert!(parse("weft-ipam blocks v1\nend 1\n").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn free_blocks_skip_taken_and_fully_reserved_blocks() {
        let r = Range::new(&RangeSpec {
            range: "fd00::/64".into(),
            exclude: vec!["fd00::/65".into()],
            ..Default::default()
        })
        .unwrap();
        // Half a /64 excluded: the first free block is found in one step, not 2^57.
        let first = r.free_blocks(&BTreeSet::new(), 2);
        assert_eq!(
            first,
            vec![
                block("fd00::8000:0:0:0/122"),
                block("fd00::8000:0:0:40/122")
            ]
        );
        let taken: BTreeSet<IpAddr> = [first[0].start].into();
        assert_eq!(r.free_blocks(&taken, 1), vec![first[1]]);
        // A /30 with the default /26 slice is one block; the network address is its start.
        let tiny = range("10.9.0.0/30", None);
        assert_eq!(tiny.slice, 30);
        assert_eq!(
            tiny.free_blocks(&BTreeSet::new(), 5),
            vec![block("10.9.0.0/30")]
        );
        assert!(tiny.free_blocks(&[ip("10.9.0.0")].into(), 5).is_empty());
    }
}
