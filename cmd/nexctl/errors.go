package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/fault/faultgrpc"
)

// Exit statuses.
const (
	exitFailed = 1 // the operation failed
	exitUsage  = 2 // the command line is wrong
)

// usageError is an error in how nexctl was called.
type usageError struct{ err error }

func (u *usageError) Error() string { return u.err.Error() }
func (u *usageError) Unwrap() error { return u.err }

// runError is an error of a command's operation (its RunE).
type runError struct{ err error }

func (r *runError) Error() string { return r.err.Error() }
func (r *runError) Unwrap() error { return r.err }

// usage makes err a usage error of cmd: a fault of code cli.usage that
// points at cmd's help, unless err already says what to do.
func usage(cmd *cobra.Command, err error) error {
	var u *usageError
	if errors.As(err, &u) {
		return err
	}
	res := ""
	if fault.ResolutionOf(err) == "" {
		res = fmt.Sprintf("see `%s --help`", cmd.CommandPath())
	}
	return &usageError{fault.Wrap(err, fault.InvalidArgument, "cli.usage", "", res)}
}

// classify returns the error to print for err, returned by cmd, and the
// exit status. Errors of a command's operation are failures; everything
// else cobra returns (unknown commands and flags, arguments, required
// flags) is a usage error.
func classify(cmd *cobra.Command, err error) (error, int) {
	var u *usageError
	if errors.As(err, &u) {
		return u.err, exitUsage
	}
	var r *runError
	if errors.As(err, &r) {
		// A context's end is not a fault: give it the code of its status.
		var f *fault.Fault
		if !errors.As(r.err, &f) && (errors.Is(r.err, context.DeadlineExceeded) || errors.Is(r.err, context.Canceled)) {
			return faultgrpc.FromError(r.err), exitFailed
		}
		return r.err, exitFailed
	}
	if cmd == nil {
		return err, exitUsage
	}
	return usage(cmd, err).(*usageError).err, exitUsage
}

// strict makes the command tree refuse what it does not know, with a
// suggestion, as usage errors: unknown subcommands of every command group,
// unknown flags, wrong argument counts; and marks the errors of every
// command's operation as failures.
func strict(root *cobra.Command) {
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		// "nexctl replica craete x --size 1GiB": pflag stops at --size,
		// but what is wrong is the subcommand.
		if isGroup(cmd) && len(cmd.Flags().Args()) > 0 {
			return unknownCommand(cmd, cmd.Flags().Args()[0])
		}
		return usage(cmd, flagError(cmd, err))
	})
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
			if c.Annotations == nil {
				c.Annotations = map[string]string{}
			}
			c.Annotations["group"] = "yes"
			c.Args = cobra.ArbitraryArgs
			c.RunE = func(cmd *cobra.Command, args []string) error {
				if len(args) == 0 {
					return cmd.Help()
				}
				return unknownCommand(cmd, args[0])
			}
		} else {
			if args := c.Args; args != nil {
				c.Args = func(cmd *cobra.Command, a []string) error {
					if err := args(cmd, a); err != nil {
						return usage(cmd, fmt.Errorf("%s: %v (usage: %s)", cmd.CommandPath(), err, cmd.UseLine()))
					}
					return nil
				}
			}
			if runE := c.RunE; runE != nil {
				c.RunE = func(cmd *cobra.Command, a []string) error {
					err := runE(cmd, a)
					var u *usageError
					if err == nil || errors.As(err, &u) {
						return err
					}
					return &runError{err}
				}
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// isGroup reports whether c only groups subcommands (strict marked it).
func isGroup(c *cobra.Command) bool { return c.Annotations["group"] == "yes" }

// unknownCommand is the usage error of an unknown subcommand of cmd.
func unknownCommand(cmd *cobra.Command, name string) error {
	res := fmt.Sprintf("see `%s --help` for its commands", cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's default, which it sets only for its own message
	}
	// The closest of cobra's suggestions, all of them when they tie.
	var best []string
	bestD := -1
	for _, s := range cmd.SuggestionsFor(name) {
		switch d := distance(name, s); {
		case bestD < 0 || d < bestD:
			best, bestD = []string{s}, d
		case d == bestD:
			best = append(best, s)
		}
	}
	if len(best) > 0 {
		for i, b := range best {
			best[i] = "`" + cmd.CommandPath() + " " + b + "`"
		}
		res = fmt.Sprintf("did you mean %s? See `%s --help` for its commands", strings.Join(best, " or "), cmd.CommandPath())
	}
	return &usageError{fault.New(fault.InvalidArgument, "cli.usage",
		fmt.Sprintf("unknown command %q for %q", name, cmd.CommandPath()), res)}
}

// flagError explains a flag parsing error, suggesting the flag meant when
// an unknown one is close to a known one.
func flagError(cmd *cobra.Command, err error) error {
	msg := err.Error()
	name, ok := strings.CutPrefix(msg, "unknown flag: --")
	if !ok {
		return err
	}
	var names []string
	seen := map[string]bool{}
	add := func(f *pflag.Flag) {
		if !f.Hidden && !seen[f.Name] {
			seen[f.Name] = true
			names = append(names, f.Name)
		}
	}
	cmd.Flags().VisitAll(add)
	cmd.InheritedFlags().VisitAll(add)
	sort.Strings(names)
	best, bestD := "", 3
	for _, n := range names {
		d := distance(name, n)
		if strings.HasPrefix(n, name) && len(name) >= 2 {
			d = min(d, 1)
		}
		if d < bestD {
			best, bestD = n, d
		}
	}
	if best == "" {
		return fault.New(fault.InvalidArgument, "cli.usage", fmt.Sprintf("unknown flag --%s for %q", name, cmd.CommandPath()),
			fmt.Sprintf("see `%s --help` for its flags", cmd.CommandPath()))
	}
	return fault.New(fault.InvalidArgument, "cli.usage", fmt.Sprintf("unknown flag --%s for %q", name, cmd.CommandPath()),
		fmt.Sprintf("did you mean --%s? See `%s --help` for its flags", best, cmd.CommandPath()))
}

// distance is the Levenshtein distance of a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
