package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/walletguard/walletguard/sim"
)

// TestBrokerRestartMidStream: the broker goes away in the middle of a
// stream and comes back on the same address and log; walletguard resumes
// consuming by itself, and every event is decided once.
func TestBrokerRestartMidStream(t *testing.T) {
	bin := buildBinary(t)
	addr, dir := freePort(t), t.TempDir()
	startB := func() *exec.Cmd { return runBroker(t, bin, addr, 4, filepath.Join(dir, "broker")) }
	broker := startB()
	defer func() { broker.Process.Signal(syscall.SIGTERM); broker.Wait() }()

	scfg := sim.DefaultConfig(1000)
	scfg.Seed, scfg.HistoryDays, scfg.Duration = 17, 1, 12*time.Hour
	msgs := simMessages(scfg)
	half := len(msgs) / 2
	produceEvents(t, addr, msgs[:half])

	httpAddr := freePort(t)
	cfgPath := filepath.Join(dir, "wg.yaml")
	writeFile(t, cfgPath, fmt.Sprintf("data_dir: %s\nkafka: {brokers: [%s], session_timeout: 2s, commit_interval: 200ms}\nhttp: {listen: %s}\ndetector: {checkpoint_interval: 300ms}\n",
		filepath.Join(dir, "data"), addr, httpAddr))
	var logs syncBuffer
	daemon := startDaemon(t, bin, cfgPath, &logs)
	defer func() { stopDaemon(t, daemon, &logs, "error", "ERROR", "WARN", "broker", "partition") }()
	waitConsumed := func(n int, within time.Duration) {
		deadline := time.Now().Add(within)
		for consumed(httpAddr) < float64(n) {
			if time.Now().After(deadline) {
				t.Fatalf("consumed %v of %d within %s", consumed(httpAddr), n, within)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitConsumed(half, 60*time.Second)

	// The broker goes away for a few seconds.
	broker.Process.Signal(syscall.SIGTERM)
	broker.Wait()
	time.Sleep(3 * time.Second)
	broker = startB()
	produceEvents(t, addr, msgs[half:])
	waitConsumed(len(msgs), 120*time.Second)
	// Every event decided once: no event counted twice across the outage.
	time.Sleep(time.Second)
	if got := consumed(httpAddr); got != float64(len(msgs)) {
		t.Errorf("consumed %v events, produced %d", got, len(msgs))
	}
	if d := decisionsByTrigger(t, httpAddr, "event"); d != float64(len(msgs)) {
		t.Errorf("%v event decisions for %d events", d, len(msgs))
	}
}

func decisionsByTrigger(t *testing.T, httpAddr, trigger string) float64 {
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	total := 0.0
	re := regexp.MustCompile(`(?m)^walletguard_decisions_total\{action="[a-z_]+",trigger="` + trigger + `"\} ([0-9.e+]+)$`)
	for _, m := range re.FindAllStringSubmatch(buf.String(), -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		total += v
	}
	return total
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
