package cli

import (
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/flowtrace/flowtrace/pkg/lab"
)

// DefaultLabIdentityFile is where `flowtrace lab up` writes the pods'
// identities for the agent's --identity-file.
const DefaultLabIdentityFile = "/run/flowtrace/lab-identity.json"

func newLabCmd() *cobra.Command {
	cfg := lab.Config{}
	var singleNode bool
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Build or remove a local lab: two node namespaces routing for pod namespaces",
		Long: `The lab needs no cluster: network namespaces <prefix>-node (router and bridge),
<prefix>-frontend, <prefix>-backend(-2) and <prefix>-db, a policy in the node dropping
TCP frontend -> db:5432, kube-proxy-like Services (shop/web 10.96.0.10:80 -> the
backends :8080, shop/ghost without endpoints, NodePort 30080), a second node
<prefix>-node2 with pod api over a VXLAN overlay whose MTU is smaller than the
pods', and an identity file naming pods and Services. --single-node builds only
the first node with frontend, backend and db. Nothing in the lab can reach outside
it. Needs root.`,
	}
	cmd.PersistentFlags().StringVar(&cfg.Prefix, "prefix", lab.DefaultPrefix, "name prefix of the lab's namespaces and links (1-5 characters)")
	cmd.PersistentFlags().StringVar(&cfg.IdentityFile, "identity-file", DefaultLabIdentityFile, "where to write (up) or remove (down) the pods' identity file; empty to skip")

	// Bad flags and arguments are usage errors so that main exits 2.
	check := func(_ *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageErrorf("unexpected arguments %q: lab up and lab down take only flags", args)
		}
		if err := lab.ValidatePrefix(cfg.Prefix); err != nil {
			return usageErrorf("%v", err)
		}
		return nil
	}
	up := &cobra.Command{
		Use:     "up",
		Short:   "Build the lab (replacing a previous one with the same prefix)",
		Args:    cobra.ArbitraryArgs, // checked in PreRunE, to report a usage error
		PreRunE: check,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			cfg.Extended = !singleNode
			l, err := lab.Up(ctx, cfg)
			if err != nil {
				return fmt.Errorf("lab up: %w", err)
			}
			return printLab(cmd.OutOrStdout(), l, cfg)
		},
	}
	down := &cobra.Command{
		Use:     "down",
		Short:   "Remove the lab's namespaces, links and identity file",
		Args:    cobra.ArbitraryArgs, // checked in PreRunE, to report a usage error
		PreRunE: check,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lab.Down(cmd.Context(), cfg); err != nil {
				return fmt.Errorf("lab down: %w", err)
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "lab %q removed\n", cfg.Prefix)
			return err
		},
	}
	up.Flags().BoolVar(&singleNode, "single-node", false, "build only the first node with frontend, backend and db (no Services, overlay or second node)")
	cmd.AddCommand(up, down)
	return cmd
}

func printLab(w io.Writer, l *lab.Lab, cfg lab.Config) error {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("lab %q is up (node %s)\n\n", cfg.Prefix, l.Node)
	p("node netns   %s  bridge %s  %s/24  %s/64\n", l.NodeNetns, l.Bridge, l.GatewayV4, l.GatewayV6)
	p("\n%-16s %-14s %-14s %-13s %-17s %s\n", "POD", "NAMESPACE", "NETNS", "IPV4", "IPV6", "HOST VETH")
	for _, pod := range l.Pods {
		p("%-16s %-14s %-14s %-13s %-17s %s\n", pod.Name, pod.Namespace, pod.Netns, pod.IPv4, pod.IPv6, pod.HostVeth)
	}
	p("\npolicy: nft table inet %s in %s drops TCP frontend -> db:%d\n", lab.TableName, l.NodeNetns, lab.BlockedPort)
	for _, n := range l.Nodes[1:] {
		p("node %s: netns %s, bridge %s, overlay %s (MTU %d) over %s (MTU %d); pods at MTU %d\n",
			n.Name, n.Netns, n.Bridge, n.Overlay, l.OverlayMTU, n.Underlay, l.UnderlayMTU, l.PodMTU)
	}
	for _, svc := range l.Services {
		p("service %s: %v port %d (%s) -> %v :%d\n", svc.Key(), svc.VIPs, svc.Port, svc.PortName, svc.Endpoints, svc.TargetPort)
	}
	if cfg.IdentityFile != "" {
		p("identity file: %s\n", cfg.IdentityFile)
	}
	fe, _ := l.Pod("frontend")
	be, _ := l.Pod("backend")
	db, _ := l.Pod("db")
	id := cfg.IdentityFile
	if id == "" {
		id = "<file>"
	}
	p("\nrun the agent inside the node:\n  ip netns exec %s flowtrace agent --identity-file %s\n", l.NodeNetns, id)
	p("\ntry:\n")
	p("  ip netns exec %s nc -lk %s 8080 &\n", be.Netns, be.IPv4)
	p("  ip netns exec %s nc -z -w 2 %s 8080      # allowed\n", fe.Netns, be.IPv4)
	p("  ip netns exec %s nc -z -w 2 %s %d      # dropped by policy\n", fe.Netns, db.IPv4, lab.BlockedPort)
	_, err := fmt.Fprintf(w, "\nremove it with: flowtrace lab down --prefix %s\n", cfg.Prefix)
	return err
}
