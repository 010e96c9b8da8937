//! Running child processes: capture stdout/stderr/exit status and, for benchmarks, the child's
//! wall time and peak RSS. One implementation serves both so a test and a bench run a plugin
//! the same way.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
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

/// Spawn `cmd`, feed it `stdin`, capture everything and reap it with `wait4` so we also get its
/// peak RSS. The stdin writer and the output readers run on their own threads: a child that
/// prints before it has read all of its input cannot deadlock us.
pub fn run(cmd: &mut Command, stdin: &[u8]) -> std::io::Result<(Output, Usage)> {
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
    let mut out_pipe = child.stdout.take().expect("stdout is piped");
    let reader_out = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let mut err_pipe = child.stderr.take().expect("stderr is piped");
    let reader_err = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });

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
    let wall = start.elapsed();
    // The child is reaped by wait4; std's Child must not wait again (dropping it does not).
    drop(child);

    let _ = writer.join();
    let stdout = reader_out.join().unwrap_or_default();
    let stderr = reader_err.join().unwrap_or_default();
    Ok((
        Output {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            status: ExitStatus::from_raw(status),
        },
        Usage {
            wall,
            max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        },
    ))
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
