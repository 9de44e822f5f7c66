package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	gojson "github.com/goccy/go-json"

	"github.com/walletguard/walletguard/sim"
)

// cmdSim writes generated traffic as NDJSON, and its labels.
func cmdSim(args []string) int {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	accounts := fs.Int("accounts", 10000, "accounts in the population")
	days := fs.Float64("days", 1, "days of traffic")
	seed := fs.Uint64("seed", 1, "random seed (the same seed gives the same traffic)")
	out := fs.String("out", "-", "events file (- for stdout)")
	labels := fs.String("labels", "", "write incident labels (NDJSON) to this file")
	invalid := fs.Float64("invalid-rate", 0, "share of messages emitted malformed")
	start := fs.String("start", "2026-11-20T00:00:00Z", "event time of the first event (RFC 3339)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg := sim.DefaultConfig(*accounts)
	cfg.Seed, cfg.Duration, cfg.InvalidRate = *seed, time.Duration(*days*24*float64(time.Hour)), *invalid
	t, err := time.Parse(time.RFC3339, *start)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sim: --start: %v\n", err)
		return 2
	}
	cfg.Start = t
	w := os.Stdout
	if *out != "-" {
		f, err := os.Create(*out)
		if err != nil {
			fmt.Fprintf(os.Stderr, "sim: %v\n", err)
			return 1
		}
		defer f.Close()
		w = f
	}
	g := sim.New(cfg)
	n, err := g.WriteNDJSON(w)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sim: %v\n", err)
		return 1
	}
	if *labels != "" {
		f, err := os.Create(*labels)
		if err != nil {
			fmt.Fprintf(os.Stderr, "sim: %v\n", err)
			return 1
		}
		for _, l := range g.Labels() {
			b, _ := gojson.Marshal(l)
			f.Write(append(b, '\n'))
		}
		f.Close()
	}
	fmt.Fprintf(os.Stderr, "sim: %d events, %d incidents\n", n, len(g.Labels()))
	return 0
}
