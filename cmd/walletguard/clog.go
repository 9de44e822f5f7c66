package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/walletguard/walletguard/app"
	"github.com/walletguard/walletguard/config"
)

// cmdChangelog is `walletguard changelog status`: what the changelog holds,
// before an operator replaces an instance, or its volume, from it.
func cmdChangelog(args []string) int {
	if len(args) < 1 || args[0] != "status" {
		fmt.Fprintln(os.Stderr, "usage: walletguard changelog status [--config FILE] [--records] [--json]")
		return 2
	}
	fs := flag.NewFlagSet("changelog status", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file (default: built-in defaults)")
	records := fs.Bool("records", false, "read the whole changelog, as a restore would, and count what it would bring back")
	asJSON := fs.Bool("json", false, "print the status as one JSON object, for scripts")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	cfg, ok := brokersConfig(*cfgPath)
	if !ok {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	st, err := app.ReadChangelogStatus(ctx, cfg, *records, slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Fprintf(os.Stderr, "walletguard: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			fmt.Fprintf(os.Stderr, "walletguard: %v\n", err)
			return 1
		}
	} else {
		printChangelogStatus(os.Stdout, st, cfg.Kafka.GroupID, time.Now())
	}
	if st.Marker == nil && len(st.PartitionStates) == 0 {
		return 1 // nothing to restore: an instance started without its data_dir starts cold
	}
	return 0
}

func printChangelogStatus(w io.Writer, st *app.ChangelogStatus, group string, now time.Time) {
	parts := "partitions"
	if st.Partitions == 1 {
		parts = "partition"
	}
	fmt.Fprintf(w, "changelog %s: %d %s, %d records held\n", st.Topic, st.Partitions, parts, st.Records)
	for _, p := range slices.Sorted(maps.Keys(st.PartitionStates)) {
		m := st.PartitionStates[p]
		var taken []string
		for _, t := range slices.Sorted(maps.Keys(m.Offsets)) {
			taken = append(taken, fmt.Sprintf("%s:%d", t, m.Offsets[t][p]))
		}
		fmt.Fprintf(w, "partition %d (shared): checkpoint %d of its member's epoch begun %s, published %s (%s ago), taken at %s\n",
			p, m.Seq, m.EpochStarted.Format(time.RFC3339), m.Written.Format(time.RFC3339), now.Sub(m.Written).Round(time.Second), strings.Join(taken, " "))
	}
	m := st.Marker
	if m == nil && len(st.PartitionStates) > 0 {
		return
	}
	if m == nil {
		fmt.Fprintln(w, "no state published yet: an instance started without its data_dir would start with empty state")
		return
	}
	fmt.Fprintf(w, "last state: checkpoint %d of the epoch begun %s, published %s (%s ago)\n",
		m.Seq, m.EpochStarted.Format(time.RFC3339), m.Written.Format(time.RFC3339), now.Sub(m.Written).Round(time.Second))
	for _, t := range slices.Sorted(maps.Keys(st.Ends)) {
		ends := st.Ends[t]
		var taken, committed []string
		after := int64(0)
		for _, p := range slices.Sorted(maps.Keys(ends)) {
			at := m.Offsets[t][p]
			taken = append(taken, fmt.Sprintf("%d:%d", p, at))
			if c, ok := st.Committed[t][p]; ok {
				committed = append(committed, fmt.Sprintf("%d:%d", p, c))
			}
			after += ends[p] - at
		}
		fmt.Fprintf(w, "  %s: state taken at %s; group %s committed %s; %d events after the state (a restore decides them again)\n",
			t, strings.Join(taken, " "), group, strings.Join(committed, " "), after)
	}
	c := st.Restore
	if c == nil {
		return
	}
	var rows []string
	for _, k := range []string{"accounts", "devices", "ips", "payees", "merchants", "payments", "timers"} {
		rows = append(rows, fmt.Sprintf("%d %s", c.Rows[k], k))
	}
	fmt.Fprintf(w, "a restore brings back: %s; %d account security states, %d alerts, %d audit entries, %d dead letters\n",
		strings.Join(rows, ", "), c.AccountStates, c.Alerts, c.Audit, c.DeadLetters)
	if len(c.Outbox) == 0 {
		fmt.Fprintln(w, "  and nothing undelivered")
	} else {
		var owed []string
		for _, d := range slices.Sorted(maps.Keys(c.Outbox)) {
			owed = append(owed, fmt.Sprintf("%s %d", d, c.Outbox[d]))
		}
		fmt.Fprintf(w, "  and what the owner had yet to deliver: %s\n", strings.Join(owed, ", "))
	}
	if c.UnknownRecords > 0 {
		fmt.Fprintf(w, "  %d records of kinds this release does not know (written by a later release?) would be left out\n", c.UnknownRecords)
	}
}

// brokersConfig loads the config of a command that reads the brokers
// outside the daemon, and secures its connections as kafka.tls and
// kafka.sasl say; false: it is not usable, and why was printed.
func brokersConfig(path string) (config.Config, bool) {
	cfg, err := config.Load(path)
	if err == nil {
		err = app.SecureKafka(cfg, newLogger("text", "info"))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "walletguard: %v\n", err)
		return cfg, false
	}
	return cfg, true
}
