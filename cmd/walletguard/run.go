package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/walletguard/walletguard/app"
	"github.com/walletguard/walletguard/config"
)

func cmdRun(args []string) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file (default: built-in defaults)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "walletguard: %v\n", err)
		return 2
	}
	format := cfg.Log.Format
	if format == "" {
		format = "json"
	}
	log, level := newLoggerVar(format, cfg.Log.Level)
	a, err := app.New(cfg, log, app.Options{LogLevel: level, Version: version})
	if err != nil {
		log.Error("start failed", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go reloadOnHUP(ctx, a)
	if err := a.Run(ctx); err != nil {
		log.Error("stopped with error", "err", err)
		return 1
	}
	return 0
}

// reloadOnHUP reloads rules on SIGHUP.
func reloadOnHUP(ctx context.Context, a *app.App) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			a.ReloadRules() // logs and keeps the old set on error
		}
	}
}

func cmdConfig(args []string) int {
	if len(args) != 2 || args[0] != "check" {
		fmt.Fprintln(os.Stderr, "usage: walletguard config check FILE")
		return 2
	}
	if _, err := config.Load(args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "%v\n", err)
		return 1
	}
	fmt.Printf("%s: ok\n", args[1])
	return 0
}

var version = "dev" // set with -ldflags "-X main.version=…"

func cmdVersion() int {
	fmt.Printf("walletguard %s\n", version)
	if bi, ok := debug.ReadBuildInfo(); ok {
		fmt.Printf("  go %s\n", bi.GoVersion)
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision", "vcs.time", "vcs.modified", "GOOS", "GOARCH":
				fmt.Printf("  %s %s\n", s.Key, s.Value)
			}
		}
	}
	return 0
}
