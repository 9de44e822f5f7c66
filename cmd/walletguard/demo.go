package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/walletguard/walletguard/app"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/rules"
	"github.com/walletguard/walletguard/scratch"
	"github.com/walletguard/walletguard/sim"
)

func cmdDemo(args []string) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	accounts := fs.Int("accounts", 3000, "accounts in the generated population")
	days := fs.Float64("days", 1, "days of labelled traffic (after a week of history)")
	rate := fs.Int("rate", 20000, "events per second to produce (0: as fast as possible)")
	seed := fs.Uint64("seed", 7, "traffic seed")
	dataDir := fs.String("data-dir", "", "state directory (default: a fresh temporary one)")
	cfgPath := fs.String("config", "", "config file (default: built-in defaults)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 2
	}
	if *dataDir == "" {
		dir, err := scratch.Make("walletguard-demo-", slog.Default())
		if err != nil {
			fmt.Fprintf(os.Stderr, "demo: %v\n", err)
			return 1
		}
		defer dir.Remove()
		*dataDir = dir.Path
	}
	cfg.DataDir = *dataDir
	if key, _ := enforce.LoadKey(cfg.Enforce.TOTP.KeyFile, cfg.Enforce.TOTP.KeyEnv); key == nil {
		// The demo seals TOTP secrets with a key of its own, kept beside its state.
		keyFile := filepath.Join(cfg.DataDir, "totp-demo.key")
		if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
			fmt.Fprintf(os.Stderr, "demo: %v\n", err)
			return 1
		}
		if _, err := os.Stat(keyFile); err != nil {
			if err := os.WriteFile(keyFile, []byte(enforce.NewKey()+"\n"), 0o600); err != nil {
				fmt.Fprintf(os.Stderr, "demo: %v\n", err)
				return 1
			}
		}
		cfg.Enforce.TOTP.KeyFile = keyFile
	}
	log := newLogger("text", orDefault(cfg.Log.Level, "error")) // the progress lines say what matters; rejects are counted there

	var mu sync.Mutex
	var notes []string
	a, err := app.New(cfg, log, app.Options{Observer: func(o app.Outputs) {
		mu.Lock()
		defer mu.Unlock()
		notes = appendDemoNotes(notes, &o)
	}})
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()

	dlq := "walletguard dlq"
	if *cfgPath != "" {
		dlq += " --config " + *cfgPath
	}
	fmt.Printf("walletguard demo\n  support console: http://%s/console/  (sign in with token %q)\n  Kafka (embedded, for development: data not yet flushed is lost if the process dies): %s   topics: %s\n  API: http://%s  metrics: http://%s/metrics\n  rejected events, by fault: %s\n  state: %s\n  Ctrl-C to stop.\n\n",
		a.HTTPAddr(), firstToken(cfg), a.BrokerAddr(), strings.Join(cfg.Kafka.Topics, ","), a.HTTPAddr(), a.HTTPAddr(), dlq, cfg.DataDir)

	scfg := sim.DefaultConfig(*accounts)
	scfg.Seed, scfg.Duration, scfg.InvalidRate = *seed, time.Duration(*days*24*float64(time.Hour)), 0.0005
	// Incidents may run a few hours past the period (a thief waits for a
	// top-up): start early enough that the traffic ends about now.
	scfg.Start = time.Now().UTC().Add(-scfg.Duration - 6*time.Hour).Truncate(time.Hour)
	gen := sim.New(scfg)
	produced := make(chan int, 1)
	go func() { produced <- produce(ctx, a.BrokerAddr(), cfg.Kafka.Topics[0], gen, *rate) }()

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	start := time.Now()
	var last app.Snapshot
	total := -1
	idle := 0
	for {
		select {
		case err := <-runErr:
			return finish(err, a, last, gen, start)
		case n := <-produced:
			total = n
		case <-tick.C:
			s := a.Snapshot()
			mu.Lock()
			for i, n := range notes {
				if i == 12 {
					fmt.Printf("  … and %d more\n", len(notes)-i)
					break
				}
				fmt.Println(n)
			}
			notes = notes[:0]
			mu.Unlock()
			fmt.Printf("t+%3ds  consumed %8.0f (%6.0f/s)  rejected %4.0f  lag %6.0f  decisions: review %4.0f step_up %3.0f freeze %3.0f  alerts %4.0f\n",
				int(time.Since(start).Seconds()), s.Consumed+s.Rejected, s.Consumed+s.Rejected-last.Consumed-last.Rejected,
				s.Rejected, s.Lag, s.Decisions["review"], s.Decisions["step_up"], s.Decisions["freeze"], s.Alerts)
			if total >= 0 && s.Consumed+s.Rejected >= float64(total) {
				idle++
				if idle == 3 { // everything produced has been handled
					fmt.Println("\nall generated traffic handled; the daemon keeps running — Ctrl-C to stop")
				}
			}
			last = s
		}
	}
}

func finish(err error, a *app.App, s app.Snapshot, gen *sim.Generator, start time.Time) int {
	s = a.Snapshot()
	// Consumed counts records, as the ticker does: the decided events and
	// the rejected ones together.
	fmt.Printf("\nsummary after %s: %0.f records consumed — %0.f events decided, %0.f rejected to the dead-letter topic; %0.f duplicates dropped\n",
		time.Since(start).Round(time.Second), s.Consumed+s.Rejected, s.Consumed, s.Rejected, s.Duplicates)
	fmt.Printf("  decisions (on events, and on event-time timers that fired): allow %0.f, review %0.f, step_up %0.f, freeze %0.f; commands: freeze %0.f, require_2fa %0.f; alert records %0.f\n",
		s.Decisions["allow"], s.Decisions["review"], s.Decisions["step_up"], s.Decisions["freeze"], s.Commands["freeze"], s.Commands["require_2fa"], s.Alerts)
	kinds := map[string]int{}
	for _, l := range gen.Labels() {
		kinds[l.Kind]++
	}
	var list []string
	for _, k := range slices.Sorted(maps.Keys(kinds)) {
		list = append(list, fmt.Sprintf("%s %d", k, kinds[k]))
	}
	fmt.Printf("  incidents in the traffic: %s\n", strings.Join(list, ", "))
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	return 0
}

// produce writes the generated traffic to the broker at about rate events/s.
func produce(ctx context.Context, broker, topic string, gen *sim.Generator, rate int) int {
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, Balancer: &kafka.Murmur2Balancer{},
		BatchSize: 2000, BatchTimeout: 5 * time.Millisecond, RequiredAcks: kafka.RequireAll, AllowAutoTopicCreation: true}
	defer w.Close()
	n := 0
	batch := make([]kafka.Message, 0, 2000)
	start := time.Now()
	send := func() bool {
		for len(batch) > 0 {
			if err := w.WriteMessages(ctx, batch...); err == nil {
				break
			} else if ctx.Err() != nil {
				return false
			}
			time.Sleep(200 * time.Millisecond)
		}
		batch = batch[:0]
		if rate > 0 {
			if ahead := time.Duration(float64(n)/float64(rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
				select {
				case <-time.After(ahead):
				case <-ctx.Done():
					return false
				}
			}
		}
		return true
	}
	for {
		it, ok := gen.Next()
		if !ok {
			break
		}
		v, err := it.Value()
		if err != nil {
			continue
		}
		batch = append(batch, kafka.Message{Key: []byte(it.Event.AccountID), Value: v})
		n++
		if len(batch) == cap(batch) && !send() {
			return n
		}
	}
	send()
	return n
}

func firstToken(cfg config.Config) string {
	if len(cfg.HTTP.Tokens) > 0 {
		return cfg.HTTP.Tokens[0].Token
	}
	return ""
}

func orDefault(v, d string) string {
	if v == "" {
		return d
	}
	return v
}

// appendDemoNotes appends the lines the demo prints for one batch of
// outputs: every command, and the alerts support would look at first.
func appendDemoNotes(notes []string, o *app.Outputs) []string {
	for _, c := range o.Commands {
		notes = append(notes, fmt.Sprintf("  %-11s %s — %s", strings.ToUpper(c.Command), c.AccountID, clipText(c.Reason, 150)))
	}
	for _, al := range o.Alerts {
		if rules.SeverityRank(al.Severity) >= 3 || al.Category == "stuck_retry" || al.Category == "merchant_outage" {
			// An alert grows as its incident does: the same alert again,
			// with more attempts or accounts, not a new one.
			what := "ALERT  "
			if al.UpdatedAt.After(al.CreatedAt) {
				what = "UPDATED"
			}
			notes = append(notes, fmt.Sprintf("  %s %-8s %s: %s", what, al.Severity, al.Title, clipText(al.Summary, 150)))
		}
	}
	return notes
}
