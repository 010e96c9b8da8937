//! Where a verb's time goes: the duration of each step of one ADD or DEL, logged at debug level
//! when the verb ends (`logLevel: debug`), e.g.
//! `time per step verb="ADD" steps=config=48 features=22 discover=190 ...` (µs).
//!
//! A slow pod start on one node is then answered from its log (a slow disk shows in the record
//! steps, a busy netlink in discover), and `weft-bench chain` prints the medians beside the
//! kernel floor. The clock starts when the verb does, after stdin was read and parsed. One
//! verb runs per process, so the steps live in a thread-local instead of being passed through
//! every function; marking costs a clock read and a push, whatever the log level.

use std::cell::RefCell;
use std::fmt::Write;
use std::time::{Duration, Instant};

struct Clock {
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

thread_local! {
    static CLOCK: RefCell<Option<Clock>> = const { RefCell::new(None) };
}

/// Runs `verb`'s body `f` with a fresh clock, then logs its steps.
pub fn timed<T>(verb: &str, f: impl FnOnce() -> T) -> T {
    CLOCK.with_borrow_mut(|c| {
        *c = Some(Clock {
            last: Instant::now(),
            steps: Vec::with_capacity(16),
        })
    });
    let out = f();
    if let Some(clock) = CLOCK.with_borrow_mut(Option::take) {
        tracing::debug!(verb, steps = %render(&clock.steps), "time per step");
    }
    out
}

/// Ends the step called `name` (started where the previous one ended). Outside [`timed`]
/// (unit tests calling a helper directly) nothing is recorded.
pub fn mark(name: &'static str) {
    CLOCK.with_borrow_mut(|c| {
        if let Some(c) = c {
            let now = Instant::now();
            c.steps.push((name, now - c.last));
            c.last = now;
        }
    });
}

/// `name=µs` pairs in the order the steps ran.
fn render(steps: &[(&'static str, Duration)]) -> String {
    let mut out = String::new();
    for (name, d) in steps {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(out, "{name}={}", d.as_micros());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_recorded_in_order_inside_a_verb_only() {
        mark("outside");
        let seen = timed("ADD", || {
            mark("first");
            std::thread::sleep(Duration::from_millis(2));
            mark("second");
            CLOCK.with_borrow(|c| {
                c.as_ref()
                    .unwrap()
                    .steps
                    .iter()
                    .map(|(n, d)| (*n, *d))
                    .collect::<Vec<_>>()
            })
        });
        let names: Vec<_> = seen.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["first", "second"]);
        assert!(seen[1].1 >= Duration::from_millis(2), "{seen:?}");
        assert!(
            CLOCK.with_borrow(Option::is_none),
            "the clock ends with the verb"
        );
        assert_eq!(
            render(&[
                ("a", Duration::from_micros(5)),
                ("b-c", Duration::from_micros(1200))
            ]),
            "a=5 b-c=1200"
        );
    }
}
