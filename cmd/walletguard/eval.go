package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/quality"
	"github.com/walletguard/walletguard/rules"
	"github.com/walletguard/walletguard/sim"
)

// cmdEval measures detection quality on labelled generated traffic.
func cmdEval(args []string) int {
	fs := flag.NewFlagSet("eval", flag.ContinueOnError)
	accounts := fs.Int("accounts", 5000, "accounts in the population")
	days := fs.Float64("days", 3, "days of traffic")
	seeds := fs.String("seeds", "1,2,3", "comma-separated seeds; the table adds them up")
	cfgPath := fs.String("config", "", "config file (thresholds, allow-list, rule paths)")
	verbose := fs.Bool("v", false, "also print every seed's own table")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "eval: %v\n", err)
		return 2
	}
	set, err := rules.Load(cfg.Rules.Paths)
	if err != nil {
		fmt.Fprintf(os.Stderr, "eval: rules:\n%v\n", err)
		return 2
	}
	var total quality.Report
	for _, s := range strings.Split(*seeds, ",") {
		seed, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "eval: --seeds: %q is not a number\n", s)
			return 2
		}
		sc := sim.DefaultConfig(*accounts)
		sc.Seed, sc.Duration = seed, time.Duration(*days*24*float64(time.Hour))
		rep, err := quality.Run(sc, cfg, set, nil)
		if err != nil {
			fmt.Fprintf(os.Stderr, "eval: seed %d: %v\n", seed, err)
			return 1
		}
		if *verbose {
			fmt.Printf("== seed %d\n", seed)
			rep.Print(os.Stdout)
			fmt.Println()
		}
		total.Merge(rep)
	}
	fmt.Printf("seeds %s\n", *seeds)
	total.Print(os.Stdout)
	return 0
}
