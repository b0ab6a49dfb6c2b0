package main

import (
	"fmt"
	"os"
	"sort"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/export"
)

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "write a session as a Perfetto trace, a Chrome trace-event JSON file, or Parquet files",
		ArgsUsage: "SESSION",
		Description: "SESSION is a session id under --data or a session folder; a rotated session is read across all its\n" +
			"segments, --since/--until narrow it to a time range.\n" +
			"  --format perfetto     Perfetto protobuf trace (open in ui.perfetto.dev or trace_processor): a process track per\n" +
			"                        host/proc, engine steps, forward passes and CPU operations as slices, preemptions and\n" +
			"                        CUDA graph captures as instants, KV usage and GPU utilisation as counters, on the aligned clock\n" +
			"  --format chrome-json  the same timeline in the Chrome trace-event JSON format (chrome://tracing, Perfetto)\n" +
			"  --format parquet      one <table>.parquet per table, columns typed from proto/tables, into the -o folder",
		Flags: []cli.Flag{
			dataFlag(),
			&cli.StringFlag{Name: "format", Value: "perfetto", EnvVars: []string{"PROFILEMATE_EXPORT_FORMAT"}, Usage: "perfetto, chrome-json or parquet"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, EnvVars: []string{"PROFILEMATE_EXPORT_OUTPUT"}, Usage: "file (folder for parquet) to write (default: named after the session)"},
			windowFlags()[0], windowFlags()[1],
		},
		Action: runExport,
	}
}

func runExport(c *cli.Context) error {
	arg, err := sessionArg(c)
	if err != nil {
		return err
	}
	format := c.String("format")
	switch format {
	case "perfetto", "chrome-json", "parquet":
	default:
		return cli.Exit(fmt.Sprintf("pmhub export: unknown --format %q (perfetto, chrome-json, parquet)", format), 2)
	}
	w, err := window(c)
	if err != nil {
		return cli.Exit("pmhub export: "+err.Error(), 2)
	}
	view, err := openViewOfLinked(c, arg, w, true)
	if err != nil {
		return err
	}
	defer view.Close()
	dir := view.Dir
	out := c.String("output")
	if format == "parquet" {
		if out == "" {
			out = arg + "-parquet"
			if st, err := os.Stat(view.Home); err == nil {
				out = st.Name() + "-parquet"
			}
		}
		files, err := export.WriteParquet(dir, out)
		view.Close()
		if err != nil {
			return cli.Exit("pmhub export: "+err.Error(), 1)
		}
		var names []string
		for f := range files {
			names = append(names, f)
		}
		sort.Strings(names)
		for _, f := range names {
			fmt.Fprintf(c.App.Writer, "%s\t%d rows\n", f, files[f])
		}
		return nil
	}
	tl, err := export.Build(dir)
	view.Close()
	if err != nil {
		return cli.Exit("pmhub export: "+err.Error(), 1)
	}
	if out == "" {
		out = tl.Session + ".pftrace"
		if format == "chrome-json" {
			out = tl.Session + ".trace.json"
		}
	}
	f, err := os.Create(out)
	if err != nil {
		return cli.Exit("pmhub export: "+err.Error(), 1)
	}
	if format == "perfetto" {
		err = tl.WritePerfetto(f)
	} else {
		err = tl.WriteChromeJSON(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out)
		return cli.Exit("pmhub export: "+err.Error(), 1)
	}
	fmt.Fprintf(c.App.Writer, "%s\t%d slices, %d instants, %d counter values\n", out,
		total(tl.Counts[export.Slice]), total(tl.Counts[export.Instant]), total(tl.Counts[export.Counter]))
	return nil
}

func total(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
