package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/walletguard/walletguard/app"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/rules"
	"github.com/walletguard/walletguard/store"
)

func cmdReplay(args []string) int {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	out := fs.String("out", "", "output directory for decisions.ndjson, alerts.ndjson, commands.ndjson and rejected.ndjson (required)")
	cfgPath := fs.String("config", "", "config file (thresholds, allow-list, rules.paths)")
	rulePaths := fs.String("rules", "", "comma-separated rule files or directories to use instead of the configured ones")
	compare := fs.String("compare", "", "a previous replay's --out directory (the baseline): report what this rule set decides differently, into DIR/changes.ndjson")
	fromCH := fs.String("from-clickhouse", "", "read the events from the events table of clickhouse.addr of --config instead of a file: "+
		"those since then, a duration back from now (168h) or an RFC 3339 time")
	until := fs.String("until", "", "with --from-clickhouse: only the events before then, a duration back from now or an RFC 3339 time (default: now) — an incident's window")
	toCH := fs.Bool("clickhouse", false, "also write the events, decisions, actions, alerts and rejected lines to clickhouse.addr of --config: "+
		"a scratch server or database, never the one the daemon writes to (a backtest's decisions carry the ids of the live decisions of the same events, and replace them)")
	// Accept the file before or after the flags: "replay FILE --out DIR".
	var file string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		file, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if file == "" && fs.NArg() > 0 {
		file = fs.Arg(0)
	}
	if (file == "") == (*fromCH == "") || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: walletguard replay FILE|-|--from-clickhouse SINCE [--until UNTIL] --out DIR [--rules PATHS] [--config FILE] [--compare BASELINE_DIR] [--clickhouse]")
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "replay: %v\n", err)
		return 2
	}
	var events *clickHouseEvents
	if *until != "" && *fromCH == "" {
		fmt.Fprintln(os.Stderr, "replay: --until goes with --from-clickhouse")
		return 2
	}
	if *fromCH != "" {
		if events, err = newClickHouseEvents(cfg, *fromCH, *until, *toCH); err != nil {
			fmt.Fprintf(os.Stderr, "replay: --from-clickhouse: %v\n", err)
			return 2
		}
	}
	// A backtest is often run with the production config, for its
	// thresholds and allow-list: its ClickHouse is the live one.
	if !*toCH && cfg.ClickHouse.Addr != "" {
		fmt.Fprintf(os.Stderr, "replay: not writing to ClickHouse %s (--clickhouse to write there)\n", cfg.ClickHouse.Addr)
		cfg.ClickHouse.Addr = ""
	} else if *toCH && cfg.ClickHouse.Addr == "" {
		fmt.Fprintln(os.Stderr, "replay: --clickhouse needs clickhouse.addr in --config")
		return 2
	}
	paths := cfg.Rules.Paths
	if *rulePaths != "" {
		paths = strings.Split(*rulePaths, ",")
	}
	set, err := rules.Load(paths)
	if err != nil {
		fmt.Fprintf(os.Stderr, "replay: rules:\n%v\n", err)
		return 2
	}
	var in io.Reader = os.Stdin
	name := "stdin"
	if events != nil {
		in, name = events.start(), events.name
		defer events.stop()
	} else if file != "-" {
		name = file
		f, err := os.Open(file)
		if err != nil {
			fmt.Fprintf(os.Stderr, "replay: %v\n", err)
			return 1
		}
		defer f.Close()
		in = f
	}
	sum, err := app.Replay(cfg, set, in, name, *out, newLogger("text", "warn"))
	if err == nil && events != nil {
		err = events.stop()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "replay: %v\n", err)
		return 1
	}
	sum.Print(os.Stdout)
	fmt.Printf("wrote %s/decisions.ndjson, alerts.ndjson, commands.ndjson, rejected.ndjson\n", strings.TrimRight(*out, "/"))
	if *compare != "" {
		c, err := app.CompareDecisions(*compare, *out)
		if err != nil {
			fmt.Fprintf(os.Stderr, "replay: compare with %s: %v\n", *compare, err)
			return 1
		}
		c.Print(os.Stdout)
		fmt.Printf("wrote %s/changes.ndjson\n", strings.TrimRight(*out, "/"))
	}
	return 0
}

// clickHouseEvents streams the events the daemon stored in ClickHouse into
// a replay, a day at a time.
type clickHouseEvents struct {
	cfg      store.Config
	from, to time.Time
	name     string
	done     chan error
	pr       *io.PipeReader
}

func newClickHouseEvents(cfg config.Config, since, until string, writeBack bool) (*clickHouseEvents, error) {
	if cfg.ClickHouse.Addr == "" {
		return nil, fmt.Errorf("needs clickhouse.addr in --config")
	}
	if writeBack {
		return nil, fmt.Errorf("with --clickhouse, the backtest's decisions would replace the live ones it read: write it to another server's config")
	}
	now := time.Now()
	from, err := parseSince(since, now)
	if err != nil {
		return nil, err
	}
	to := now
	if until != "" {
		if to, err = parseSince(until, now); err != nil {
			return nil, fmt.Errorf("--until: %w", err)
		}
		if !to.After(from) {
			return nil, fmt.Errorf("--until %s is not after the start, %s", to.UTC().Format(time.RFC3339), from.UTC().Format(time.RFC3339))
		}
	}
	scfg, err := app.StoreConfig(cfg.ClickHouse)
	if err != nil {
		return nil, err
	}
	return &clickHouseEvents{cfg: scfg, from: from, to: to,
		name: fmt.Sprintf("clickhouse %s/%s.events from %s to %s", scfg.Addr, scfg.Database, from.UTC().Format(time.RFC3339), to.UTC().Format(time.RFC3339))}, nil
}

// start begins reading and returns the events as NDJSON.
func (c *clickHouseEvents) start() io.Reader {
	pr, pw := io.Pipe()
	c.pr, c.done = pr, make(chan error, 1)
	go func() {
		_, err := store.ReadEvents(context.Background(), c.cfg, c.from, c.to, pw)
		pw.CloseWithError(err)
		c.done <- err
	}()
	return pr
}

// stop ends the read, if the replay stopped first, and says whether it
// failed.
func (c *clickHouseEvents) stop() error {
	if c.done == nil {
		return nil
	}
	c.pr.Close()
	err := <-c.done
	c.done = nil
	if err != nil && !errors.Is(err, io.ErrClosedPipe) {
		return err
	}
	return nil
}
