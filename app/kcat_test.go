package app

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKcatProducesAndReadsDeadLetters drives the daemon from librdkafka, an
// outside Kafka client: kcat produces 3 valid and 2 invalid events to the
// embedded broker, and reads the 2 dead letters back with their reasons —
// and the decisions, all written compressed (kafka.compression: zstd).
func TestKcatProducesAndReadsDeadLetters(t *testing.T) {
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatal("kcat is required (Debian package kcat; the test script installs it)")
	}
	cfg := testConfig(t, t.TempDir())
	cfg.Kafka.Compression = "zstd"
	r := start(t, cfg)
	broker := r.app.BrokerAddr()
	var in bytes.Buffer
	for _, v := range append(append([]string{}, validEvents...), invalidEvents...) {
		in.WriteString(v + "\n")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, kcat, "-P", "-b", broker, "-t", "wallet.events")
	cmd.Stdin = &in
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kcat -P: %v: %s", err, out)
	}
	addr := r.app.HTTPAddr()
	// kcat spreads unkeyed messages over the partitions, which are read
	// independently: wait for all five.
	waitFor(t, 20*time.Second, "kcat's 3 valid events decided and 2 invalid ones dead-lettered", func() bool {
		return metric(t, addr, "walletguard_events_dead_lettered_total") == 2 && r.app.Snapshot().Consumed == 3
	})
	var lines []string
	waitFor(t, 20*time.Second, "kcat to read 2 dead letters", func() bool {
		out, err := exec.CommandContext(ctx, kcat, "-C", "-b", broker, "-t", "walletguard.dlq", "-o", "beginning", "-e", "-q",
			"-f", "%h\t%s\n").Output()
		if err != nil {
			return false
		}
		lines = strings.Split(strings.TrimSpace(string(out)), "\n")
		return len(lines) == 2 && lines[0] != ""
	})
	joined := strings.Join(lines, "\n")
	for _, want := range []string{"walletguard-reject-reason=invalid_json", "walletguard-reject-reason=negative_amount", invalidEvents[1]} {
		if !strings.Contains(joined, want) {
			t.Errorf("kcat's view of the dead-letter topic lacks %q:\n%s", want, joined)
		}
	}
	// And the decisions topic is readable by an outside client too.
	out, err := exec.CommandContext(ctx, kcat, "-C", "-b", broker, "-t", "walletguard.decisions", "-o", "beginning", "-e", "-q").Output()
	if err != nil || strings.Count(string(out), `"decision_id"`) != 3 {
		t.Errorf("kcat read decisions: %v\n%s", err, out)
	}
	// On the broker's disk they are compressed: no decision in plain text.
	var stored int
	filepath.WalkDir(filepath.Join(cfg.DataDir, "broker"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.Contains(path, cfg.Kafka.DecisionsTopic) {
			return nil
		}
		b, err := os.ReadFile(path)
		if err == nil && bytes.Contains(b, []byte(`"decision_id"`)) {
			t.Errorf("%s holds decisions uncompressed", path)
		}
		stored += len(b)
		return nil
	})
	if stored == 0 {
		t.Error("no file of the decisions topic on the embedded broker's disk")
	}
}
