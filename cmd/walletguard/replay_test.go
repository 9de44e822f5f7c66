package main

import (
	"bytes"
	"context"
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
}
