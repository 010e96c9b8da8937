//! The command line (clap). Every command's `--help` ends with examples.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

const ABOUT: &str =
    "weft's node agent and operator CLI: puts kmesh-cni into the node's CNI chain and \
keeps it there, reports what the host supports, shows and reclaims the plugins' state.";

const EXAMPLES: &str = "\
Examples:
  weft install                      copy the plugins into /opt/cni/bin, chain kmesh-cni into the primary CNI config
  weft doctor                       what this kernel supports and whether the node is consistent
  weft inspect                      every attachment, reservation and BPF entry in one table
  weft gc --dry-run                 what weft gc would reclaim
  weft watch --listen 0.0.0.0:9965  the DaemonSet's agent: keep the chain, re-attach pods, serve metrics
  weft uninstall                    undo exactly what install did

Paths default to a real node (/opt/cni/bin, /etc/cni/net.d, /var/lib/cni, /sys/fs/bpf/weft);
every command takes --bin-dir, --conf-dir, --state-dir and --pin-root to work elsewhere.";

#[derive(Debug, Parser)]
#[command(name = "weft", version, about = ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Log level for weft's own diagnostics on stderr (error, warn, info, debug).
    #[arg(long, global = true, default_value = "warn")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Args, Clone)]
pub struct NodeArgs {
    /// The CNI bin dir the runtime execs plugins from.
    #[arg(long, global = true, default_value = crate::node::DEFAULT_BIN_DIR)]
    pub bin_dir: PathBuf,
    /// The CNI conf dir the runtime reads networks from.
    #[arg(long, global = true, default_value = crate::node::DEFAULT_CONF_DIR)]
    pub conf_dir: PathBuf,
    /// Parent of the plugins' state (kmesh-cni records, weft-ipam pools, weft's install
    /// manifest). Default: $WEFT_STATE_DIR (as the plugins read it), else /var/lib/cni.
    #[arg(long, global = true)]
    pub state_dir: Option<PathBuf>,
    /// kmesh-cni's bpffs pin root (put into the chained entry when not the default).
    #[arg(long, global = true, default_value = crate::node::DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    /// More directories to find plugins in (to ask their VERSION, and for `weft smoke`), after
    /// the bin dir. Default: /usr/lib/cni and /usr/libexec/cni, where podman and distributions
    /// keep the reference plugins.
    #[arg(long = "plugin-dir", global = true)]
    pub plugin_dirs: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Copy the plugin binaries into the bin dir and chain kmesh-cni into the primary network.
    #[command(after_help = "\
The primary network is the lexically first *.conf, *.conflist or *.json in the conf dir, as
libcni and containerd pick it. kmesh-cni (with the io.kubernetes.cri.pod-annotations capability)
becomes its last plugin; only the entry's bytes are added. A .conf/.json (one plugin) is upgraded
to <stem>.conflist and the original kept as <name>.weft_bak. With no config at all weft writes
99-weft.conflist (bridge + weft-ipam + kmesh-cni), declaring only CNI versions every plugin in it
answers to. An unparsable or truncated primary is never written: install says why and exits 1.
Running it again changes no byte.

Examples:
  weft install
  weft install --chain-into 10-calico.conflist
  weft install --bin-dir /tmp/bin --conf-dir /tmp/net.d --state-dir /tmp/state
  weft install --binaries-only          (the DaemonSet's init container)")]
    Install(InstallArgs),
    /// Undo exactly what install did: the chained entry, upgraded files, binaries, pins, state.
    #[command(after_help = "\
The primary's file gets back the bytes it had before install (or that the primary CNI wrote
since, minus weft's entry). A binary that pods still need for their DEL stays until they are
gone (run uninstall again), unless --force.

Examples:
  weft uninstall
  weft uninstall --force")]
    Uninstall {
        /// Remove binaries even while attachments still use them.
        #[arg(long)]
        force: bool,
    },
    /// The DaemonSet's agent: install, re-attach existing pods, keep the chain in place.
    #[command(after_help = "\
Re-chains within milliseconds when the primary CNI rewrites, replaces, or deletes and recreates
its file (inotify, plus a periodic reconcile). Ready (/readyz 200, --ready-file present) only
while the chain is in place. On start, re-attaches the fast path of pods whose records exist but
whose attachment is gone (bpffs remounted, upgrade): no pod needs a restart. SIGTERM leaves the
chain in place unless --uninstall-on-exit.

Endpoints on --listen: /metrics (Prometheus text), /readyz, /healthz.

Examples:
  weft watch --listen 0.0.0.0:9965
  weft watch --once                      (one reconcile pass, exit 0 when chained)
  weft watch --ready-file /run/weft/ready --resync 10")]
    Watch(WatchArgs),
    /// What this host supports and what weft will use; exit 1 on a blocking problem.
    #[command(after_help = "\
Each line is one verdict: ok, warn, info, or FAIL (blocking). Kernel features are probed by
trying them (a throwaway netns and program), never read from a version string.

Examples:
  weft doctor
  weft doctor --json")]
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Every weft attachment, IPAM reservation and BPF entry on the node, in one table.
    #[command(after_help = "\
Examples:
  weft inspect
  weft inspect --json | jq '.kmesh_cni[] | select(.problems != [])'")]
    Inspect {
        #[arg(long)]
        json: bool,
    },
    /// Reclaim what no live pod owns, across weft's plugins, reporting every item.
    #[command(after_help = "\
kmesh-cni records whose netns or host veth is gone are undone like a DEL. A weft-ipam reservation
is freed only when the kmesh-cni record of the same attachment proved its pod gone; every other
one is reported and kept (the runtime's CNI GC frees those per network).

Examples:
  weft gc --dry-run
  weft gc")]
    Gc {
        /// Report what would be reclaimed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Network two throwaway pods through the installed primary config, ping, CHECK, DEL.
    #[command(after_help = "\
Execs each plugin of the primary conflist from the bin dir (and --plugin-dir) as a runtime does,
with the previous result as prevResult; everything it creates (netns, bridge, state dirs) is
removed afterwards. install.sh ends with it.

Examples:
  weft smoke
  weft smoke --plugin-dir /usr/lib/cni")]
    Smoke,
    /// weft-ipam cluster operations.
    #[command(subcommand)]
    Ipam(IpamCmd),
}

#[derive(Debug, Subcommand)]
pub enum IpamCmd {
    /// Free the etcd blocks of a node gone for good (every etcd-backed weft-ipam network).
    #[command(after_help = "\
Only block keys whose value names NODE are deleted, each only if unchanged since read. The
networks come from the conf dir's configs, or from --config.

Examples:
  weft ipam release-node worker-7
  weft ipam release-node worker-7 --config /etc/cni/net.d/10-pods.conflist")]
    ReleaseNode {
        node: String,
        /// A conflist or config whose weft-ipam section names the etcd store.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Allow releasing this very node's blocks.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args, Clone)]
pub struct InstallArgs {
    /// `auto` (the primary network) or a config file (relative to the conf dir) to chain into.
    #[arg(long, default_value = "auto")]
    pub chain_into: String,
    /// Where the plugin binaries to install are. Default: the directory of this weft binary.
    #[arg(long)]
    pub source_dir: Option<PathBuf>,
    /// Fail instead of writing weft's default conflist when there is no primary.
    #[arg(long)]
    pub no_default: bool,
    /// Copy the binaries only; leave the conf dir alone.
    #[arg(long)]
    pub binaries_only: bool,
    /// Pod subnet of weft's default conflist.
    #[arg(long, default_value = "10.85.0.0/16")]
    pub default_subnet: String,
    /// Bridge of weft's default conflist.
    #[arg(long, default_value = "weft0")]
    pub default_bridge: String,
}

#[derive(Debug, Args, Clone)]
pub struct WatchArgs {
    #[command(flatten)]
    pub install: InstallArgs,
    /// Serve /metrics, /readyz and /healthz here (e.g. 0.0.0.0:9965).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Create this file while ready, remove it otherwise.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Seconds between periodic reconciles (inotify reacts at once in between).
    #[arg(long, default_value_t = 10)]
    pub resync: u64,
    /// Uninstall on SIGTERM/SIGINT (default: leave the chain in place).
    #[arg(long)]
    pub uninstall_on_exit: bool,
    /// One reconcile pass, then exit (0 when the chain is in place).
    #[arg(long)]
    pub once: bool,
    /// Write weft's default conflist when there is no primary (default: wait for the primary).
    #[arg(long)]
    pub default_network: bool,
}
