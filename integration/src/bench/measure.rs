//! A/B comparisons of arbitrary figures (milliseconds, Gbit/s, µs), for suites whose runs are
//! not one process's wall time and RSS: several numbers per run, derived from tool output or
//! from differences of runs. Same rules as `bench::alternate`: one unmeasured warm-up each, then
//! ≥ `MIN_PAIRS` alternating pairs, medians with min–max, ratios of medians, and summary lines
//! `name-key: ratio=… (A=…, B=…)` at the end.
//!
//! Also the Ctrl-C handling of these suites: they hold host state (iptables rules, sysctls, BPF
//! pins) whose Drop guards must run, so SIGINT/SIGTERM set a flag that the runner turns into an
//! error between runs, and the stack unwinds through the guards.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, ensure, Result};

use super::{Stats, MIN_PAIRS};

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
        check_interrupted()?;
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

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turn SIGINT and SIGTERM into a flag (see `check_interrupted`) instead of an immediate exit
/// that would skip every Drop guard. A second signal still waits for the current run, which is
/// bounded in time.
pub fn install_interrupt_handler() {
    // SAFETY: `on_signal` only stores to an atomic; sigaction with a zeroed mask is valid.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error once SIGINT/SIGTERM arrived, so `?` unwinds through the guards.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted by a signal");
    }
    Ok(())
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
