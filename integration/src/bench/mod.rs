//! Benchmark runner (see shared/design/BENCHMARKS.md): A and B alternate (A B A B …) after one
//! unmeasured warm-up run each, ≥ 5 pairs, and every figure is a ratio of medians measured in
//! the same run, printed with min–max. Absolute times drift on shared VMs; ratios do not.
//!
//! A suite is a module with a `run(opts) -> Result<Vec<Comparison>>`; `weft-bench` maps one
//! subcommand to each suite and prints the report.

pub mod chain;
pub mod exec;
pub mod fastpath;
pub mod ipam;
pub mod measure;
pub mod sriov;

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::proc::Usage;

/// The fewest pairs a published figure may rest on.
pub const MIN_PAIRS: usize = 5;

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

/// One measured metric of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    WallTime,
    PeakRss,
}

impl Metric {
    pub const ALL: [Metric; 2] = [Metric::WallTime, Metric::PeakRss];

    fn key(self) -> &'static str {
        match self {
            Metric::WallTime => "time",
            Metric::PeakRss => "rss",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Metric::WallTime => "wall time",
            Metric::PeakRss => "peak RSS",
        }
    }

    /// The value in display units: milliseconds or MiB.
    fn value(self, u: &Usage) -> f64 {
        match self {
            Metric::WallTime => u.wall.as_secs_f64() * 1e3,
            Metric::PeakRss => u.max_rss_kib as f64 / 1024.0,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Metric::WallTime => "ms",
            Metric::PeakRss => "MiB",
        }
    }
}

/// A against B over the same number of alternating runs.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub name: String,
    pub a_label: String,
    pub b_label: String,
    pub a: Vec<Usage>,
    pub b: Vec<Usage>,
}

impl Comparison {
    pub fn stats(&self, metric: Metric) -> (Stats, Stats) {
        let values = |runs: &[Usage]| runs.iter().map(|u| metric.value(u)).collect::<Vec<_>>();
        (Stats::of(&values(&self.a)), Stats::of(&values(&self.b)))
    }

    /// median(A) / median(B).
    pub fn ratio(&self, metric: Metric) -> f64 {
        let (a, b) = self.stats(metric);
        a.median / b.median
    }
}

/// Run `a` and `b` alternately: one warm-up each, then `pairs` measured pairs. Each closure runs
/// the command once (plus any unmeasured setup/teardown it needs) and returns the child's usage;
/// an error aborts the benchmark (a failing command measures nothing).
pub fn alternate<A, B>(
    name: &str,
    a_label: &str,
    b_label: &str,
    pairs: usize,
    mut a: A,
    mut b: B,
) -> Result<Comparison>
where
    A: FnMut() -> Result<Usage>,
    B: FnMut() -> Result<Usage>,
{
    ensure!(
        pairs >= MIN_PAIRS,
        "need at least {MIN_PAIRS} pairs, got {pairs}"
    );
    a()?;
    b()?;
    let mut cmp = Comparison {
        name: name.to_owned(),
        a_label: a_label.to_owned(),
        b_label: b_label.to_owned(),
        a: Vec::with_capacity(pairs),
        b: Vec::with_capacity(pairs),
    };
    for _ in 0..pairs {
        cmp.a.push(a()?);
        cmp.b.push(b()?);
    }
    Ok(cmp)
}

fn fmt_stats(s: Stats, unit: &str) -> String {
    format!("{:.2} {unit} [{:.2}–{:.2}]", s.median, s.min, s.max)
}

/// The table and the summary lines of a report. The summary lines come last, one per comparison
/// and metric, as `name: ratio=… (A=…, B=…)`.
pub fn render(title: &str, comparisons: &[Comparison]) -> String {
    let mut out = format!("{title} (A and B alternating; median [min–max])\n");
    for c in comparisons {
        out.push_str(&format!(
            "\n== {}: A={} B={} ({} pairs)\n",
            c.name,
            c.a_label,
            c.b_label,
            c.a.len()
        ));
        for m in Metric::ALL {
            let (a, b) = c.stats(m);
            out.push_str(&format!(
                "   {:<9}  A {:<28} B {:<28} A/B {:.2}\n",
                m.title(),
                fmt_stats(a, m.unit()),
                fmt_stats(b, m.unit()),
                c.ratio(m)
            ));
        }
    }
    out.push('\n');
    for c in comparisons {
        for m in Metric::ALL {
            let (a, b) = c.stats(m);
            out.push_str(&format!(
                "{}-{}: ratio={:.2} (A={:.2}{u}, B={:.2}{u})\n",
                c.name,
                m.key(),
                c.ratio(m),
                a.median,
                b.median,
                u = m.unit()
            ));
        }
    }
    out
}

/// A `Usage` from a duration and RSS, for callers that measure by other means.
pub fn usage(wall: Duration, max_rss_kib: u64) -> Usage {
    Usage { wall, max_rss_kib }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Stats::of(&[3.0, 1.0, 2.0]).median, 2.0);
        let s = Stats::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
    }

    #[test]
    fn alternate_runs_warmup_then_pairs_in_order() {
        let log = std::cell::RefCell::new(Vec::new());
        let c = alternate(
            "t",
            "a",
            "b",
            5,
            || {
                log.borrow_mut().push('A');
                Ok(usage(Duration::from_millis(2), 1024))
            },
            || {
                log.borrow_mut().push('B');
                Ok(usage(Duration::from_millis(4), 4096))
            },
        )
        .unwrap();
        assert_eq!(log.borrow().iter().collect::<String>(), "AB".repeat(6));
        assert_eq!(c.a.len(), 5);
        assert!((c.ratio(Metric::WallTime) - 0.5).abs() < 1e-9);
        assert!((c.ratio(Metric::PeakRss) - 0.25).abs() < 1e-9);
        let text = render("t", &[c]);
        assert_eq!(
            text.lines().last(),
            Some("t-rss: ratio=0.25 (A=1.00MiB, B=4.00MiB)")
        );
    }

    #[test]
    fn too_few_pairs_is_refused() {
        let r = alternate(
            "t",
            "a",
            "b",
            4,
            || Ok(usage(Duration::ZERO, 0)),
            || Ok(usage(Duration::ZERO, 0)),
        );
        assert!(r.is_err());
    }
}
