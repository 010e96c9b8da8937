//! Running child processes: capture stdout/stderr/exit status, the child's wall time and peak
//! RSS, optionally bounded in time. One runner serves every test and bench, so a test and a
//! bench run a plugin the same way.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// What a child process printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub status: ExitStatus,
}

/// Resource usage of one child, from `wait4(2)`.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub wall: Duration,
    /// `ru_maxrss`: peak resident set size in KiB (Linux reports kilobytes).
    pub max_rss_kib: u64,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// A one-line-per-stream description for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status={:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status.code(),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// The exit code; -1 when a signal ended the process.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// Panics with the full output unless the process exited 0.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        self.assert_success("plugin")
    }

    /// Asserts a CNI error with `code` (JSON on stdout, non-zero exit, every field the spec
    /// wants) and returns its message.
    #[track_caller]
    pub fn err(&self, code: u64) -> String {
        if let Err(e) = crate::cni::check_cni_error(self, code, "plugin") {
            panic!("{e}");
        }
        self.json()["msg"].as_str().unwrap_or_default().to_owned()
    }

    /// Panics with the full output unless the process exited 0.
    #[track_caller]
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(self.success(), "{what} failed:\n{}", self.describe());
        self
    }

    /// stdout parsed as JSON; panics with the full output when it is not JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.describe()))
    }
}

/// How one bounded run ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub output: Output,
    pub usage: Usage,
    /// When the child exited (or was killed): for phases of many concurrent runs.
    pub ended: Instant,
    /// Killed by us: past its time limit, or the process was asked to stop (Ctrl-C).
    pub killed: bool,
}

/// Spawn `cmd`, feed it `stdin`, capture everything and reap it with `wait4` so we also get its
/// peak RSS. The stdin writer and the output readers run on their own threads: a child that
/// prints before it has read all of its input cannot deadlock us.
pub fn run(cmd: &mut Command, stdin: &[u8]) -> std::io::Result<(Output, Usage)> {
    run_bounded(cmd, stdin, None).map(|f| (f.output, f.usage))
}

/// [`run`], killing the child (our own, unreaped, by PID) once `limit` has passed or a stop
/// was requested ([`request_stop`]). The one process runner of the tests and benches.
pub fn run_bounded(
    cmd: &mut Command,
    stdin: &[u8],
    limit: Option<Duration>,
) -> std::io::Result<Finished> {
    // ru_maxrss is the peak over the child's whole life, and that life starts as a copy of us:
    // exec records the pre-exec address space's peak too. Left alone, our own RSS (a few MiB)
    // would be the floor of every measurement and hide the plugin's. So: fork rather than
    // vfork/posix_spawn (a pre_exec hook forces that; with vfork the pre-exec mm IS ours), and
    // in the forked child reset the peak to its current RSS ("5" to clear_refs, see proc(5))
    // right before exec. A fork shares only our anonymous pages, not our binary's file pages,
    // so the remaining floor is the harness's anonymous memory: keep the bench process small.
    // SAFETY: the hook only makes raw open/write/close syscalls, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let fd = libc::open(
                c"/proc/self/clear_refs".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                let _ = libc::write(fd, b"5".as_ptr().cast(), 1);
                libc::close(fd);
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id() as libc::pid_t;

    let mut stdin_pipe = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_vec();
    // A child may exit without reading stdin (EPIPE): that is its business, not an error here.
    let writer = thread::spawn(move || {
        let _ = stdin_pipe.write_all(&input);
    });
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let reader_out = drain(Box::new(child.stdout.take().expect("stdout is piped")));
    let reader_err = drain(Box::new(child.stderr.take().expect("stderr is piped")));

    let exited = wait_exit(pid, limit.map(|l| start + l))?;
    let ended = Instant::now();
    if !exited {
        // Our own child, not reaped yet: its PID is still its own.
        let _ = child.kill();
    }
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; zero is a valid value for every field.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own child, status and usage point to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    // The child is reaped by wait4; std's Child must not wait again (dropping it does not).
    drop(child);

    let _ = writer.join();
    let stdout = reader_out.join().unwrap_or_default();
    let stderr = reader_err.join().unwrap_or_default();
    Ok(Finished {
        output: Output {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            status: ExitStatus::from_raw(status),
        },
        usage: Usage {
            wall: ended - start,
            max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        },
        ended,
        killed: !exited,
    })
}

/// Waits until child `pid` exits (true), the deadline passes or a stop is requested (false),
/// without reaping it: poll(2) on a pidfd wakes at the exit itself, so the wall time has no
/// polling tick in it.
fn wait_exit(pid: libc::pid_t, deadline: Option<Instant>) -> std::io::Result<bool> {
    // SAFETY: pidfd_open on our own child, which is not reaped yet (so its PID is still its
    // own); the returned descriptor is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    loop {
        if stop_requested() {
            return Ok(false);
        }
        // Wake at least every 100 ms to notice a stop request.
        let mut wait = Duration::from_millis(100);
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            wait = wait.min(left);
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut pfd, 1, timeout) } {
            0 => continue,
            r if r > 0 => return Ok(true),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// Turn SIGINT and SIGTERM into a stop request (see [`stop_requested`]) instead of an immediate
/// exit that would skip every Drop guard (iptables rules, sysctls, BPF pins): running children
/// are killed, and callers turn the request into an error so the stack unwinds.
pub fn install_stop_on_signal() {
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_signal),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    for sig in [nix::sys::signal::SIGINT, nix::sys::signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        if let Err(e) = unsafe { nix::sys::signal::sigaction(sig, &action) } {
            eprintln!("warning: cannot handle {sig}: {e}");
        }
    }
}

/// Ask every bounded run to end (as a signal does).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// A `Command` for a helper program: a bare name (`ip`, `bpftool`, ...) must be in
/// prerequisites.list and runs from the path listed there, so a test cannot depend on a tool
/// that run-tests.sh does not install.
#[track_caller]
pub fn command(program: &str) -> Command {
    if program.contains('/') {
        Command::new(program)
    } else {
        Command::new(crate::prereq::program(program))
    }
}

/// Run a helper command (ip, ...) with no stdin; panics if it cannot be spawned.
#[track_caller]
pub fn cmd(program: &str, args: &[&str]) -> Output {
    run(command(program).args(args), b"")
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
        .0
}

/// Run a helper command that must succeed.
#[track_caller]
pub fn must(program: &str, args: &[&str]) -> Output {
    let out = cmd(program, args);
    out.assert_success(&format!("{program} {}", args.join(" ")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let (out, _) = run(
            Command::new("sh").args(["-c", "cat; echo err >&2; exit 3"]),
            b"in",
        )
        .unwrap();
        assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("in", "err\n"));
        assert_eq!(out.status.code(), Some(3));
    }
}
