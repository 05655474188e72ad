package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	mgmtv1 "github.com/nexstor/nexstor/api/mgmt/v1"
	"github.com/nexstor/nexstor/internal/cli/output"
	"github.com/nexstor/nexstor/internal/fault"
	"github.com/nexstor/nexstor/internal/mgmt/mgmtclient"
)

const (
	// defaultWait bounds a --wait when --timeout is not given: a full
	// rebuild of a large replica takes a while.
	defaultWait = 30 * time.Minute
	// waitPoll is how often a --wait reads the state again.
	waitPoll = time.Second
	// pollCallLimit bounds one read of a --wait or --watch, so that a
	// service that stops answering is asked again rather than waited on
	// for the whole wait.
	pollCallLimit = 30 * time.Second
)

// waitLimit is how long a --wait or --watch of cmd may last: --timeout
// when it was given, else def (0: no bound).
func (a *app) waitLimit(cmd *cobra.Command, def time.Duration) time.Duration {
	if cmd.Flags().Changed("timeout") {
		return a.timeout
	}
	return def
}

// progressOut is where a --wait prints its progress lines: stdout for the
// table format, stderr for json and yaml, whose stdout holds only the
// result for scripts.
func (a *app) progressOut(cmd *cobra.Command) io.Writer {
	if a.outFormat() == output.Table {
		return a.out
	}
	return cmd.ErrOrStderr()
}

// stamp is the time of a progress line, local, to the second.
func stamp(t time.Time) string { return t.Local().Format("15:04:05") }

// transient reports an error of one read that the next read may not have:
// the service unreachable, between leaders, or slow to answer once. ctx is
// the whole wait's: when it ended, nothing is transient any more.
func transient(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	switch fault.KindOf(err) {
	case fault.Unavailable, fault.DeadlineExceeded, fault.Canceled:
		return true
	}
	return errors.Is(err, context.DeadlineExceeded)
}

// pollUntil reads the state with fetch every interval (the first time at
// once) and gives it to check, until check reports done or fails, fetch
// fails with an error that is not transient, or ctx ends. Transient errors
// are reported on progress once per outage and the reads go on. It returns
// the last state read (the zero T when none was) and: nil when done,
// check's or fetch's error, or ctx's error when ctx ended first (the caller
// says what was still awaited).
func pollUntil[T any](ctx context.Context, c *mgmtclient.Client, interval time.Duration, progress io.Writer,
	fetch func(ctx context.Context, cl mgmtv1.VolumeServiceClient) (T, error), check func(T) (bool, error)) (T, error) {
	var last T
	var outage error
	for {
		cctx, cancel := context.WithTimeout(ctx, pollCallLimit)
		var got T
		err := c.DoVolume(cctx, func(ctx context.Context, cl mgmtv1.VolumeServiceClient) error {
			var err error
			got, err = fetch(ctx, cl)
			return err
		})
		cancel()
		switch {
		case err == nil:
			if outage != nil {
				fmt.Fprintf(progress, "%s  the management service answers again\n", stamp(time.Now()))
				outage = nil
			}
			last = got
			done, err := check(got)
			if err != nil || done {
				return last, err
			}
		case ctx.Err() != nil:
			return last, ctx.Err()
		case transient(ctx, err):
			if outage == nil {
				fmt.Fprintf(progress, "%s  the management service does not answer (%s); still waiting\n",
					stamp(time.Now()), fault.Message(err))
			}
			outage = err
		default:
			return last, err
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(interval):
		}
	}
}

// waitTimedOut is the error of a --wait that ended at its bound: what was
// still awaited (state), after how long, and that the work goes on.
func waitTimedOut(limit time.Duration, state, resolution string) error {
	return fault.New(fault.DeadlineExceeded, "cli.wait_timeout",
		fmt.Sprintf("gave up waiting after %v: %s", limit, state), resolution)
}

// waitEnded is the error of a --wait whose end can no longer come: someone
// changed what was awaited.
func waitEnded(what, resolution string) error {
	return fault.New(fault.FailedPrecondition, "cli.wait_ended", what, resolution)
}
