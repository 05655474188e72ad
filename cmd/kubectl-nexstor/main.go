// Command kubectl-nexstor is the kubectl plugin `kubectl nexstor`: nexctl
// against the Nexstor system that the Helm chart installed in a namespace
// (see internal/kubeplugin).
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nexstor/nexstor/internal/kubeplugin"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	o, rest, err := kubeplugin.SplitArgs(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubectl nexstor: %v\n\n%s", err, kubeplugin.Usage)
		return 2
	}
	if len(rest) == 0 || rest[0] == "help" || rest[0] == "-h" || rest[0] == "--help" {
		fmt.Print(kubeplugin.Usage)
		return 0
	}
	nexctlArgs, err := kubeplugin.Translate(rest)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubectl nexstor: %v\n", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sys, err := kubeplugin.Discover(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubectl nexstor: %v\n", err)
		return 1
	}
	if rest[0] == "config" {
		sys.Describe(os.Stdout)
		return 0
	}
	nexctl, err := kubeplugin.FindNexctl()
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubectl nexstor: %v\n", err)
		return 1
	}
	code, err := sys.Run(nexctl, nexctlArgs, os.Stdin, os.Stdout, os.Stderr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubectl nexstor: %v\n", err)
	}
	return code
}
