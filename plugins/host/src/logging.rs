//! Plugin logging: stderr or an appended log file, never stdout (stdout carries the CNI result).
//! Initialised once per process from the plugin's config (`logLevel`/`logFile` or the
//! whereabouts-style `log_level`/`log_file`), so even a verb that fails early can log.

use std::path::Path;
use std::sync::Once;
use tracing::level_filters::LevelFilter;

static INIT: Once = Once::new();

/// `level`: trace, debug, info (or verbose), warn (default), error (or panic), off.
/// `file`: appended to, created 0600; if it cannot be opened, logs go to stderr.
pub fn init(level: Option<&str>, file: Option<&Path>) {
    INIT.call_once(|| {
        let level = match level.unwrap_or("warn") {
            "trace" => LevelFilter::TRACE,
            "debug" => LevelFilter::DEBUG,
            "info" | "verbose" => LevelFilter::INFO,
            "error" | "panic" => LevelFilter::ERROR,
            "off" => LevelFilter::OFF,
            _ => LevelFilter::WARN,
        };
        let builder = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false);
        let file = file.and_then(|p| {
            use std::os::unix::fs::OpenOptionsExt;
            // Never through a link planted at the log's name (it would make us append to any
            // file); a log that cannot be opened falls back to stderr.
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
                .open(p)
                .ok()
        });
        // A subscriber may already be installed (unit tests); that is fine.
        let _ = match file {
            Some(f) => builder.with_writer(std::sync::Mutex::new(f)).try_init(),
            None => builder.with_writer(std::io::stderr).try_init(),
        };
    });
}
