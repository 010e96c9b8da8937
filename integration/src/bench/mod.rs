//! The benchmark engine (see shared/design/BENCHMARKS.md): A and B alternate (A B A B …) after
//! one unmeasured warm-up run each, ≥ 5 pairs, and every figure is a ratio of medians measured in
//! the same run, printed with min–max. Absolute times drift on shared VMs; ratios do not.
//!
//! A suite (`suites/*`) only describes its workload: what A and B run and which figures one run
//! yields (a process's wall time and peak RSS are two figures of one table). `weft-bench` maps one
//! subcommand to each suite and prints the report with [`render`]; each report ends with one
//! `name-key: ratio=… (A=…, B=…)` line per figure.
//!
//! Suites hold host state (iptables rules, sysctls, BPF pins) whose Drop guards must run on
//! Ctrl-C: `weft-bench` turns SIGINT/SIGTERM into a stop request (`proc::install_stop_on_signal`)
//! that kills running children and that [`check_stop`] turns into an error between runs.

pub mod suites;

use std::path::PathBuf;

use anyhow::{bail, ensure, Result};

use crate::proc::Usage;

/// The fewest pairs a published figure may rest on.
pub const MIN_PAIRS: usize = 5;

/// What every suite is given.
#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// Directory holding our built binaries (prefer target/release: that is what ships).
    pub bin_dir: PathBuf,
    /// Measured A/B pairs (at least [`MIN_PAIRS`]).
    pub pairs: usize,
}

/// Median, min and max of one metric over all runs of one side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(values: &[f64]) -> Stats {
        assert!(!values.is_empty(), "no samples");
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Stats {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

/// Wall time of one process, in ms.
pub const WALL: Figure = Figure {
    key: "time",
    title: "wall time",
    unit: "ms",
};

/// Peak RSS of one process, in MiB.
pub const RSS: Figure = Figure {
    key: "rss",
    title: "peak RSS",
    unit: "MiB",
};

/// [`WALL`] and [`RSS`] of one process run, in that order.
pub fn wall_and_rss(u: &Usage) -> Vec<f64> {
    vec![u.wall.as_secs_f64() * 1e3, u.max_rss_kib as f64 / 1024.0]
}

/// Every regular file in `dirs` and every one of `files` (the binaries either side execs) is
/// synced and dropped from the page cache, so each is read back by its first exec (the warm-up
/// run), as after a reboot, and both sides start from the same state. How a file last came
/// into the page cache (written by the linker, by `cp`, by `weft install`, or read back by an
/// exec) changes how much of it an exec maps per fault: on one weft-ipam build the peak RSS of
/// an ADD was 1172 KiB freshly linked, 1496 KiB as `weft install` had just copied it (before
/// install dropped its pages too) and 1172 KiB read back; a build of another commit gave 1684
/// KiB linked and 2004 KiB copied. Returns how many files were dropped.
pub fn settle_page_cache(dirs: &[&std::path::Path], files: &[&std::path::Path]) -> usize {
    let mut paths: Vec<std::path::PathBuf> = files.iter().map(|p| p.to_path_buf()).collect();
    for dir in dirs {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                paths.push(e.path());
            }
        }
    }
    let advice = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED;
    paths
        .iter()
        .filter(|p| {
            std::fs::File::open(p).is_ok_and(|f| {
                f.sync_all().is_ok() && nix::fcntl::posix_fadvise(&f, 0, 0, advice).is_ok()
            })
        })
        .count()
}

/// An error once a stop was requested (Ctrl-C), so `?` unwinds through the guards.
pub fn check_stop() -> Result<()> {
    if crate::proc::stop_requested() {
        bail!("interrupted by a signal");
    }
    Ok(())
}

/// One number measured in every run of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figure {
    /// Suffix of the summary line: `<comparison>-<key>: ratio=…`.
    pub key: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
}

/// A against B: `a[i][f]` is figure `f` of A's i-th measured run.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub a_label: String,
    pub b_label: String,
    pub figures: Vec<Figure>,
    pub a: Vec<Vec<f64>>,
    pub b: Vec<Vec<f64>>,
    /// Free-form lines printed under the figures (how it was measured, sanity counters).
    pub notes: Vec<String>,
}

impl Table {
    /// Stats of figure `f` for A and for B.
    pub fn stats(&self, f: usize) -> (Stats, Stats) {
        let column = |runs: &[Vec<f64>]| runs.iter().map(|r| r[f]).collect::<Vec<_>>();
        (Stats::of(&column(&self.a)), Stats::of(&column(&self.b)))
    }

    /// median(A) / median(B) of figure `f`.
    pub fn ratio(&self, f: usize) -> f64 {
        let (a, b) = self.stats(f);
        a.median / b.median
    }
}

/// Run `a` and `b` alternately: one warm-up each, then `pairs` measured pairs. Each closure
/// measures one run and returns one value per figure, in `figures` order.
pub fn alternate<A, B>(
    name: &str,
    (a_label, b_label): (&str, &str),
    figures: &[Figure],
    pairs: usize,
    mut a: A,
    mut b: B,
) -> Result<Table>
where
    A: FnMut() -> Result<Vec<f64>>,
    B: FnMut() -> Result<Vec<f64>>,
{
    ensure!(
        pairs >= MIN_PAIRS,
        "need at least {MIN_PAIRS} pairs, got {pairs}"
    );
    let run = |side: &mut dyn FnMut() -> Result<Vec<f64>>| -> Result<Vec<f64>> {
        check_stop()?;
        let values = side()?;
        ensure!(
            values.len() == figures.len(),
            "{name}: a run returned {} values for {} figures",
            values.len(),
            figures.len()
        );
        Ok(values)
    };
    run(&mut a)?;
    run(&mut b)?;
    let mut table = Table {
        name: name.to_owned(),
        a_label: a_label.to_owned(),
        b_label: b_label.to_owned(),
        figures: figures.to_vec(),
        a: Vec::with_capacity(pairs),
        b: Vec::with_capacity(pairs),
        notes: Vec::new(),
    };
    for _ in 0..pairs {
        table.a.push(run(&mut a)?);
        table.b.push(run(&mut b)?);
    }
    Ok(table)
}

fn fmt_stats(s: Stats, unit: &str) -> String {
    format!("{:.2} {unit} [{:.2}–{:.2}]", s.median, s.min, s.max)
}

/// The tables, then the summary lines (one per table and figure) last.
pub fn render(title: &str, tables: &[Table]) -> String {
    let mut out = format!("{title} (A and B alternating; median [min–max])\n");
    for t in tables {
        out.push_str(&format!(
            "\n== {}: ({} pairs)\n   A = {}\n   B = {}\n",
            t.name,
            t.a.len(),
            t.a_label,
            t.b_label
        ));
        for (f, fig) in t.figures.iter().enumerate() {
            let (a, b) = t.stats(f);
            out.push_str(&format!(
                "   {:<22}  A {:<30} B {:<30} A/B {:.2}\n",
                fig.title,
                fmt_stats(a, fig.unit),
                fmt_stats(b, fig.unit),
                t.ratio(f)
            ));
        }
        for note in &t.notes {
            out.push_str(&format!("   {note}\n"));
        }
    }
    out.push('\n');
    for t in tables {
        for (f, fig) in t.figures.iter().enumerate() {
            let (a, b) = t.stats(f);
            out.push_str(&format!(
                "{}-{}: ratio={:.2} (A={:.2}{u}, B={:.2}{u})\n",
                t.name,
                fig.key,
                t.ratio(f),
                a.median,
                b.median,
                u = fig.unit
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIGS: [Figure; 2] = [
        Figure {
            key: "x",
            title: "x",
            unit: "ms",
        },
        Figure {
            key: "y",
            title: "y",
            unit: "us",
        },
    ];

    #[test]
    fn alternates_and_renders_summary_last() {
        let log = std::cell::RefCell::new(String::new());
        let t = alternate(
            "t",
            ("a", "b"),
            &FIGS,
            5,
            || {
                log.borrow_mut().push('A');
                Ok(vec![1.0, 30.0])
            },
            || {
                log.borrow_mut().push('B');
                Ok(vec![4.0, 10.0])
            },
        )
        .unwrap();
        assert_eq!(*log.borrow(), "AB".repeat(6));
        assert_eq!(t.a.len(), 5);
        assert!((t.ratio(0) - 0.25).abs() < 1e-9);
        let text = render("t", &[t]);
        let last: Vec<_> = text.lines().rev().take(2).collect();
        assert_eq!(
            last,
            [
                "t-y: ratio=3.00 (A=30.00us, B=10.00us)",
                "t-x: ratio=0.25 (A=1.00ms, B=4.00ms)"
            ]
        );
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Stats::of(&[3.0, 1.0, 2.0]).median, 2.0);
        let s = Stats::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
    }

    #[test]
    fn too_few_pairs_is_refused() {
        let r = alternate(
            "t",
            ("a", "b"),
            &FIGS,
            4,
            || Ok(vec![1.0, 1.0]),
            || Ok(vec![1.0, 1.0]),
        );
        assert!(r.is_err());
    }

    #[test]
    fn wall_and_rss_are_two_figures_of_one_run() {
        let u = Usage {
            wall: std::time::Duration::from_millis(2),
            max_rss_kib: 2048,
        };
        assert_eq!(wall_and_rss(&u), vec![2.0, 2.0]);
    }

    #[test]
    fn wrong_number_of_values_is_an_error() {
        let r = alternate(
            "t",
            ("a", "b"),
            &FIGS,
            5,
            || Ok(vec![1.0]),
            || Ok(vec![1.0, 2.0]),
        );
        assert!(r.is_err());
    }
}
