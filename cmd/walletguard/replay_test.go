package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walletguard/walletguard/sim"
	"github.com/walletguard/walletguard/store/chserver"
)

// TestABacktestWritesToClickHouseOnlyWhenAsked: a replay run with a config
// that names a ClickHouse — production's, for its thresholds — writes
// nothing there, since its decisions would replace the live ones of the
// same events; with --clickhouse it lands every decision.
func TestABacktestWritesToClickHouseOnlyWhenAsked(t *testing.T) {
	s := chserver.Start(t)
	dir := t.TempDir()
	scfg := sim.DefaultConfig(300)
	scfg.Seed, scfg.Duration, scfg.HistoryDays = 4, 12*time.Hour, 1
	var traffic bytes.Buffer
	if _, err := sim.New(scfg).WriteNDJSON(&traffic); err != nil {
		t.Fatal(err)
	}
	events := filepath.Join(dir, "events.ndjson")
	cfg := filepath.Join(dir, "prod.yaml")
	if err := os.WriteFile(events, traffic.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte("clickhouse: {addr: \""+s.Addr+"\"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	held := func() string {
		t.Helper()
		out, err := s.Query(context.Background(), "SELECT count() FROM system.tables WHERE database = 'walletguard' AND name = 'decisions'")
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out) == "0" {
			return "no table"
		}
		if out, err = s.Query(context.Background(), "SELECT count() FROM walletguard.decisions FINAL"); err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	if code := cmdReplay([]string{events, "--out", filepath.Join(dir, "bt"), "--config", cfg}); code != 0 {
		t.Fatalf("replay exited %d", code)
	}
	if got := held(); got != "no table" && got != "0" {
		t.Errorf("a replay without --clickhouse wrote %s decisions to the configured ClickHouse", got)
	}
	if code := cmdReplay([]string{events, "--out", filepath.Join(dir, "ch"), "--config", cfg, "--clickhouse"}); code != 0 {
		t.Fatalf("replay --clickhouse exited %d", code)
	}
	decided, err := os.ReadFile(filepath.Join(dir, "ch", "decisions.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := held(), strconv.Itoa(strings.Count(string(decided), "\n")); got != want {
		t.Errorf("replay --clickhouse: ClickHouse holds %s decisions, the replay made %s", got, want)
	}

	// The events stored there are a backtest's input in turn: read back in
	// event time, they decide as the file did.
	if code := cmdReplay([]string{"--from-clickhouse", "2000-01-01T00:00:00Z", "--out", filepath.Join(dir, "back"), "--config", cfg}); code != 0 {
		t.Fatalf("replay --from-clickhouse exited %d", code)
	}
	for _, f := range []string{"decisions.ndjson", "alerts.ndjson", "commands.ndjson"} {
		a, _ := os.ReadFile(filepath.Join(dir, "ch", f))
		b, _ := os.ReadFile(filepath.Join(dir, "back", f))
		if len(a) == 0 && f != "commands.ndjson" || string(a) != string(b) {
			t.Errorf("%s: %d bytes from the file, %d from ClickHouse's events; want the same", f, len(a), len(b))
		}
	}

	// An incident's window: only the events from --from-clickhouse to
	// --until are decided.
	var times []time.Time
	for _, line := range strings.Split(strings.TrimSpace(traffic.String()), "\n") {
		var ev struct {
			TS time.Time `json:"ts"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatal(err)
		}
		times = append(times, ev.TS)
	}
	from, until := times[len(times)/4].Truncate(time.Second), times[len(times)/2].Truncate(time.Second)
	inWindow := 0
	for _, ts := range times {
		if !ts.Before(from) && ts.Before(until) {
			inWindow++
		}
	}
	if code := cmdReplay([]string{"--from-clickhouse", from.Format(time.RFC3339), "--until", until.Format(time.RFC3339),
		"--out", filepath.Join(dir, "window"), "--config", cfg}); code != 0 {
		t.Fatalf("replay --from-clickhouse --until exited %d", code)
	}
	window, _ := os.ReadFile(filepath.Join(dir, "window", "decisions.ndjson"))
	if got := strings.Count(string(window), `"trigger":"event"`); got != inWindow || inWindow == 0 {
		t.Errorf("replay of %s to %s decided %d events; %d lie in that window", from, until, got, inWindow)
	}

	// Reading the live tables and writing back into them would replace
	// the live decisions: refused.
	if code := cmdReplay([]string{"--from-clickhouse", "24h", "--out", filepath.Join(dir, "x"), "--config", cfg, "--clickhouse"}); code != 2 {
		t.Errorf("replay --from-clickhouse --clickhouse exited %d, want 2", code)
	}
}
