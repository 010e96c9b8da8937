//! weft-bench: benchmarks that compare weft against the reference plugins (BENCHMARKS.md).
//! One subcommand per suite; each prints a table and ends with `name: ratio=… (A=…, B=…)` lines.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use integration::bench::{self, exec};
use integration::plugins::workspace_root;

#[derive(Parser)]
#[command(about = "weft benchmarks: A (weft) vs B (reference), alternating, ratios of medians")]
struct Cli {
    /// Directory of our built binaries [default: $WEFT_BIN_DIR, else target/release if built,
    /// else target/debug]
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    /// Measured A/B pairs (at least 5)
    #[arg(long, global = true, default_value_t = 20)]
    pairs: usize,
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand)]
enum Suite {
    /// Whole-process cost: VERSION and pass-through ADD, kmesh-cni vs tuning (Go)
    Exec,
}

fn default_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEFT_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let release = workspace_root().join("target/release");
    if release.join("kmesh-cni").is_file() {
        release
    } else {
        workspace_root().join("target/debug")
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin_dir = cli.bin_dir.unwrap_or_else(default_bin_dir);
    eprintln!("weft binaries from {}", bin_dir.display());
    let (title, results) = match cli.suite {
        Suite::Exec => (
            "weft-bench exec",
            exec::run(&exec::ExecOpts {
                bin_dir,
                pairs: cli.pairs,
            })?,
        ),
    };
    print!("{}", bench::render(title, &results));
    Ok(())
}
