// Package cli implements the flowtrace command line: the agent, the
// observer client commands and the lab.
package cli

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flowtrace/flowtrace/pkg/client"
)

// DefaultSocket is where the agent listens and the CLI connects by default.
const DefaultSocket = "/var/run/flowtrace/flowtrace.sock"

// UsageError marks errors caused by bad flags or arguments; main exits 2 on them.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// usageErrorf returns a *UsageError with a message a person can act on.
func usageErrorf(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// IsUsageError reports whether err came from bad command line input.
func IsUsageError(err error) bool {
	var u *UsageError
	// cobra reports an unknown subcommand of a command without Args as a
	// plain error from its command lookup, before any hook of ours runs.
	return errors.As(err, &u) || strings.HasPrefix(err.Error(), "unknown command ")
}

// usageArgs makes every positional-argument error of the tree a usage error.
func usageArgs(c *cobra.Command) {
	if orig := c.Args; orig != nil {
		c.Args = func(cmd *cobra.Command, args []string) error {
			if err := orig(cmd, args); err != nil {
				return &UsageError{Err: fmt.Errorf("%w\nSee '%s --help'.", err, cmd.CommandPath())}
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		usageArgs(sub)
	}
}

// globalOpts are the flags every client command shares.
type globalOpts struct {
	server  string            // unix socket path, or unix:///path, or host:port
	timeout time.Duration     // dial and unary call timeout
	tls     client.TLSOptions // TLS to a TCP server (status.go: addClientTLSFlags)
}

// NewRootCmd builds the flowtrace command tree.
func NewRootCmd(version string) *cobra.Command {
	g := &globalOpts{}
	root := &cobra.Command{
		Use:           "flowtrace",
		Short:         "eBPF dataplane tracer and drop observer for Kubernetes nodes",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.PersistentFlags().StringVar(&g.server, "server", DefaultSocket, "agent or relay address: a unix socket path (or unix:///path), or host:port (TCP needs --tls)")
	root.PersistentFlags().DurationVar(&g.timeout, "timeout", 5*time.Second, "timeout for connecting to the agent")
	addClientTLSFlags(root, g)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &UsageError{Err: fmt.Errorf("%w\nSee '%s --help'.", err, c.CommandPath())}
	})
	root.AddCommand(
		newAgentCmd(version),
		newObserveCmd(g),
		newStatusCmd(g),
		newRelayCmd(g),
		newLabCmd(),
		newVersionCmd(version),
	)
	usageArgs(root)
	return root
}

func newVersionCmd(version string) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the flowtrace version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "flowtrace %s\n", version)
			return err
		},
	}
}
