// cnitool: the real CNI client for weft's integration tests and benchmarks.
//
// It is the upstream cnitool (containernetworking/cni/cnitool) rebuilt over
// Debian's libcni 1.1.2, so what our plugins see is exactly what a libcni-based
// runtime sends them: the conflist injected with name/cniVersion/prevResult/
// runtimeConfig, the CNI_* environment, and libcni's result caching between
// ADD, CHECK and DEL.
//
// Interface (same as upstream):
//
//	cnitool add|check|del <net> <netns-path>
//	cnitool version <plugin-type>
//
// Environment: NETCONFPATH (default /etc/cni/net.d), CNI_PATH, CNI_IFNAME
// (default eth0), CNI_ARGS (K=V;K=V), CAP_ARGS (JSON object of capability
// args for runtimeConfig). Extensions over upstream, both optional:
// CNI_CONTAINERID overrides the container ID (default: derived from the netns
// path like upstream) and CNI_CACHE_DIR overrides libcni's result cache
// (default /var/lib/cni) so tests can keep their state in a temp dir.
//
// Result versions: libcni 1.1.2 does not convert results. Each plugin's stdout
// is parsed in the version it declares (or the config's version if it declares
// none), handed unchanged as prevResult to the next plugin, and the last
// plugin's result is printed here in its own version.
package main

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

const (
	envCNIPath        = "CNI_PATH"
	envNetDir         = "NETCONFPATH"
	envCapabilityArgs = "CAP_ARGS"
	envCNIArgs        = "CNI_ARGS"
	envCNIIfname      = "CNI_IFNAME"
	envContainerID    = "CNI_CONTAINERID"
	envCacheDir       = "CNI_CACHE_DIR"

	defaultNetDir = "/etc/cni/net.d"
)

func usage() {
	exe := filepath.Base(os.Args[0])
	fmt.Fprintf(os.Stderr, "%s: Add, check, or remove network interfaces from a network namespace\n", exe)
	fmt.Fprintf(os.Stderr, "  %s add   <net> <netns>\n", exe)
	fmt.Fprintf(os.Stderr, "  %s check <net> <netns>\n", exe)
	fmt.Fprintf(os.Stderr, "  %s del   <net> <netns>\n", exe)
	fmt.Fprintf(os.Stderr, "  %s version <plugin-type>\n", exe)
	os.Exit(1)
}

func exit(err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// parseArgs splits CNI_ARGS exactly like upstream cnitool: every pair must be K=V
// with both sides non-empty.
func parseArgs(args string) ([][2]string, error) {
	var result [][2]string
	for _, pair := range strings.Split(args, ";") {
		kv := strings.Split(pair, "=")
		if len(kv) != 2 || kv[0] == "" || kv[1] == "" {
			return nil, fmt.Errorf("invalid CNI_ARGS pair %q", pair)
		}
		result = append(result, [2]string{kv[0], kv[1]})
	}
	return result, nil
}

func newCNIConfig() *libcni.CNIConfig {
	path := filepath.SplitList(os.Getenv(envCNIPath))
	if dir := os.Getenv(envCacheDir); dir != "" {
		return libcni.NewCNIConfigWithCacheDir(path, dir, nil)
	}
	return libcni.NewCNIConfig(path, nil)
}

func version(pluginType string) {
	info, err := newCNIConfig().GetVersionInfo(context.TODO(), pluginType)
	if err != nil {
		exit(err)
	}
	out, err := json.Marshal(map[string]interface{}{
		"supportedVersions": info.SupportedVersions(),
	})
	if err != nil {
		exit(err)
	}
	fmt.Println(string(out))
	exit(nil)
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "version" {
		version(os.Args[2])
	}
	if len(os.Args) < 4 {
		usage()
	}

	netdir := os.Getenv(envNetDir)
	if netdir == "" {
		netdir = defaultNetDir
	}
	// LoadConfList also falls back to a single .conf of that name and upconverts it.
	netconf, err := libcni.LoadConfList(netdir, os.Args[2])
	if err != nil {
		exit(err)
	}

	var capabilityArgs map[string]interface{}
	if v := os.Getenv(envCapabilityArgs); len(v) > 0 {
		if err = json.Unmarshal([]byte(v), &capabilityArgs); err != nil {
			exit(fmt.Errorf("CAP_ARGS: %w", err))
		}
	}

	var cniArgs [][2]string
	if v := os.Getenv(envCNIArgs); len(v) > 0 {
		if cniArgs, err = parseArgs(v); err != nil {
			exit(err)
		}
	}

	ifName, ok := os.LookupEnv(envCNIIfname)
	if !ok {
		ifName = "eth0"
	}

	netns, err := filepath.Abs(os.Args[3])
	if err != nil {
		exit(err)
	}

	containerID := os.Getenv(envContainerID)
	if containerID == "" {
		// Upstream derives the container ID from the netns path.
		s := sha512.Sum512([]byte(netns))
		containerID = fmt.Sprintf("cnitool-%x", s[:10])
	}

	cninet := newCNIConfig()
	rt := &libcni.RuntimeConf{
		ContainerID:    containerID,
		NetNS:          netns,
		IfName:         ifName,
		Args:           cniArgs,
		CapabilityArgs: capabilityArgs,
	}

	ctx := context.TODO()
	switch os.Args[1] {
	case "add":
		result, err := cninet.AddNetworkList(ctx, netconf, rt)
		if result != nil {
			_ = result.Print()
		}
		exit(err)
	case "check":
		exit(cninet.CheckNetworkList(ctx, netconf, rt))
	case "del":
		exit(cninet.DelNetworkList(ctx, netconf, rt))
	default:
		usage()
	}
}
