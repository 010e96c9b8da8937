//! `weft`: the node agent and operator CLI.
//!
//! - [`chain`] + [`splice`]: find the primary CNI config, put kmesh-cni last in it, take it out
//!   again byte for byte; [`versions`] asks plugins which CNI versions they speak.
//! - [`install`]: binaries + chain, recorded in a [`node::Manifest`] so uninstall undoes exactly
//!   that.
//! - [`watch`]: the DaemonSet agent (inotify + periodic reconcile, [`reattach`], [`http`] with
//!   [`metrics`]).
//! - [`doctor`], [`inspect`], [`gc`], [`smoke`], [`ipam_node`]: the operator commands.
//!
//! `main.rs` only parses arguments and calls [`run`].

pub mod args;
pub mod bpfview;
pub mod chain;
pub mod doctor;
pub mod fsx;
pub mod gc;
pub mod http;
pub mod inspect;
pub mod install;
pub mod ipam_node;
pub mod metrics;
pub mod node;
pub mod reattach;
pub mod smoke;
pub mod splice;
pub mod state;
pub mod versions;
pub mod watch;

use anyhow::Result;
use args::{Cli, Cmd, InstallArgs, IpamCmd};
use chain::{Defaults, Target};
use install::InstallOptions;
use node::{Node, EXTRA_PLUGIN_DIRS};
use std::path::PathBuf;
use std::time::Duration;

fn node_of(cli: &Cli) -> Node {
    let extra: Vec<PathBuf> = if cli.node.plugin_dirs.is_empty() {
        EXTRA_PLUGIN_DIRS.iter().map(PathBuf::from).collect()
    } else {
        cli.node.plugin_dirs.clone()
    };
    Node::new(
        cli.node.bin_dir.clone(),
        cli.node.conf_dir.clone(),
        cli.node
            .state_dir
            .clone()
            .unwrap_or_else(host::fsio::state_dir),
        cli.node.pin_root.clone(),
        &extra,
    )
}

fn install_options(a: &InstallArgs) -> Result<InstallOptions> {
    Ok(InstallOptions {
        source_dir: match &a.source_dir {
            Some(d) => d.clone(),
            None => install::own_dir()?,
        },
        target: if a.chain_into == "auto" {
            Target::Auto {
                default: !a.no_default,
            }
        } else {
            Target::File(PathBuf::from(&a.chain_into))
        },
        defaults: Defaults {
            subnet: a.default_subnet.clone(),
            bridge: a.default_bridge.clone(),
        },
    })
}

/// Runs one command; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let node = node_of(&cli);
    match cli.command {
        Cmd::Install(a) => {
            let opts = install_options(&a)?;
            if a.binaries_only {
                for l in install::install_binaries(&node, &opts)? {
                    println!("{l}");
                }
            } else {
                let (report, _) = install::install(&node, &opts)?;
                for l in report {
                    println!("{l}");
                }
            }
            Ok(0)
        }
        Cmd::Uninstall { force } => {
            for l in install::uninstall(&node, force)? {
                println!("{l}");
            }
            Ok(0)
        }
        Cmd::Watch(w) => {
            // Before any thread exists, so every thread inherits the blocked mask.
            let signals = watch::block_signals()?;
            let opts = watch::WatchOptions {
                install: install_options(&w.install)?,
                resync: Duration::from_secs(w.resync.max(1)),
                listen: w.listen,
                ready_file: w.ready_file,
                uninstall_on_exit: w.uninstall_on_exit,
                once: w.once,
                default_network: w.default_network,
            };
            watch::run(node, opts, signals)?;
            Ok(0)
        }
        Cmd::Doctor { json } => {
            let checks = doctor::run(&node);
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                print!("{}", doctor::render(&checks));
            }
            Ok(if doctor::blocking(&checks) { 1 } else { 0 })
        }
        Cmd::Inspect { json } => {
            let i = inspect::run(&node)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&i.json)?);
            } else {
                print!("{}", i.text);
            }
            Ok(0)
        }
        Cmd::Gc { dry_run } => {
            let (items, ok) = gc::run(&node, dry_run)?;
            if items.is_empty() {
                println!("nothing to reclaim: no kmesh-cni record and no weft-ipam reservation");
            }
            for i in items {
                println!("{i}");
            }
            Ok(if ok { 0 } else { 1 })
        }
        Cmd::Smoke => {
            for l in smoke::run(&node)? {
                println!("{l}");
            }
            Ok(0)
        }
        Cmd::Ipam(IpamCmd::ReleaseNode {
            node: gone,
            config,
            force,
        }) => {
            for l in ipam_node::release_node(&node, &gone, config.as_deref(), force)? {
                println!("{l}");
            }
            Ok(0)
        }
    }
}

/// Logs to stderr at `level` (weft's stdout is for reports).
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
