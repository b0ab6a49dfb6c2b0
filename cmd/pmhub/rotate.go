package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// rotateFlags are pmhub serve's flags for long-lived sessions: rotation into segments and the
// retention of closed segments (hub/segments.go, docs/hub.md "Long-lived sessions"). 0 is off.
func rotateFlags() []cli.Flag {
	return []cli.Flag{
		&cli.DurationFlag{Name: "rotate-every", EnvVars: []string{"PROFILEMATE_ROTATE_EVERY"}, Usage: "start a new segment of a session once its live one is this old, e.g. 1h (0: never)"},
		&cli.Int64Flag{Name: "rotate-bytes", EnvVars: []string{"PROFILEMATE_ROTATE_BYTES"}, Usage: "start a new segment of a session once its live one holds this many CSV bytes (0: never)"},
		&cli.DurationFlag{Name: "segments-max-age", EnvVars: []string{"PROFILEMATE_SEGMENTS_MAX_AGE"}, Usage: "remove a session's closed segments that closed longer ago than this (0: only --retention)"},
		&cli.Int64Flag{Name: "segments-max-bytes", EnvVars: []string{"PROFILEMATE_SEGMENTS_MAX_BYTES"}, Usage: "remove a session's oldest closed segments while all its segments hold more bytes than this (0: no limit)"},
	}
}

// rotateLimits refuses negative rotation and segment limits, naming the flag.
func rotateLimits(c *cli.Context) error {
	for _, d := range []string{"rotate-every", "segments-max-age"} {
		if v := c.Duration(d); v < 0 {
			return fmt.Errorf("--%s %v: must be positive, or 0 for off", d, v)
		}
	}
	for _, n := range []string{"rotate-bytes", "segments-max-bytes"} {
		if v := c.Int64(n); v < 0 {
			return fmt.Errorf("--%s %d: must be positive, or 0 for off", n, v)
		}
	}
	return nil
}
