package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/sim"
)

// TestStandbyTakesOverAfterKill9 runs two daemons as separate processes in
// one consumer group against a broker in a third. The second stands by while
// the first owns every partition; the first is killed with SIGKILL in the
// middle of a stream (no leave-group: the group notices when its session
// times out); the standby takes every partition over and every event gets
// its decision. The first, restarted on its data directory with the state
// of its checkpoint, takes the partitions back.
func TestStandbyTakesOverAfterKill9(t *testing.T) {
	bin := buildBinary(t)
	brokerAddr := freePort(t)
	broker := runBroker(t, bin, brokerAddr, 4, "")
	t.Cleanup(func() { broker.Process.Signal(syscall.SIGTERM); broker.Wait() })

	scfg := sim.DefaultConfig(1500)
	scfg.Seed, scfg.Duration = 5, 24*time.Hour
	gen := sim.New(scfg)
	var msgs []kafka.Message
	var ids []string // by position in msgs
	for {
		it, ok := gen.Next()
		if !ok {
			break
		}
		b, _ := event.Marshal(&it.Event)
		msgs = append(msgs, kafka.Message{Key: []byte(it.Event.AccountID), Value: b})
		ids = append(ids, it.Event.EventID)
	}
	w := &kafka.Writer{Addr: kafka.TCP(brokerAddr), Topic: "wallet.events", Balancer: &kafka.Murmur2Balancer{},
		BatchSize: 5000, BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll}
	defer w.Close()
	produceAll := func(ms []kafka.Message) {
		if err := w.WriteMessages(context.Background(), ms...); err != nil {
			t.Fatal(err)
		}
	}

	type daemon struct {
		cmd  *exec.Cmd
		http string
		logs *bytes.Buffer
	}
	cfgFor := func(name string) (string, string) {
		dir := filepath.Join(t.TempDir(), name)
		os.MkdirAll(dir, 0o755)
		httpAddr := freePort(t)
		path := filepath.Join(dir, "walletguard.yaml")
		os.WriteFile(path, []byte(fmt.Sprintf(`data_dir: %s
kafka:
  brokers: [%s]
  session_timeout: 2s
  commit_interval: 200ms
http:
  listen: %s
detector:
  checkpoint_interval: 300ms
log:
  level: info
`, filepath.Join(dir, "data"), brokerAddr, httpAddr)), 0o600)
		return path, httpAddr
	}
	start := func(cfg, httpAddr string) *daemon {
		d := &daemon{cmd: exec.Command(bin, "run", "--config", cfg), http: httpAddr, logs: &bytes.Buffer{}}
		d.cmd.Stderr, d.cmd.Stdout = d.logs, d.logs
		if err := d.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if d.cmd.ProcessState == nil {
				d.cmd.Process.Kill()
				d.cmd.Wait()
			}
			if t.Failed() {
				t.Logf("daemon %s log:\n%s", httpAddr, grepLines(d.logs.String(), "partition", "standing by", "restored", "error", "failed", "WARN"))
			}
		})
		return d
	}
	ready := func(d *daemon) (int, string) {
		resp, err := http.Get("http://" + d.http + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	wait := func(within time.Duration, what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(within); !ok(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out after %s waiting for %s", within, what)
			}
		}
	}
	owns := func(d *daemon) func() bool {
		return func() bool {
			code, _ := ready(d)
			return code == http.StatusOK && metricSum(d.http, "walletguard_partitions_assigned") == 4
		}
	}
	standsBy := func(d *daemon) func() bool {
		return func() bool {
			code, body := ready(d)
			return code == http.StatusServiceUnavailable && strings.Contains(body, "standing by")
		}
	}

	// The first daemon alone, then with the second standing by; killed;
	// the standby alone for the second part; the first back for the third.
	cut := []int{0, len(msgs) * 97 / 100, len(msgs) * 98 / 100, len(msgs)}
	produceAll(msgs[:cut[1]])
	cfgA, httpA := cfgFor("a")
	cfgB, httpB := cfgFor("b")
	a := start(cfgA, httpA)
	wait(60*time.Second, "the first daemon to own every partition", owns(a))
	wait(60*time.Second, "the first daemon to consume the first part", func() bool { return consumed(httpA) == float64(cut[1]) })
	b := start(cfgB, httpB)
	wait(60*time.Second, "the second daemon to stand by", standsBy(b))

	// Killed once its offsets are committed (a kill before that, as the
	// crash test shows, only makes the next owner decide the same events
	// again): the standby then builds state from the second part alone.
	wait(60*time.Second, "the first daemon to commit the first part", func() bool { return committed(t, brokerAddr) == int64(cut[1]) })
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	a.cmd.Wait()
	produceAll(msgs[cut[1]:cut[2]])
	wait(60*time.Second, "the standby to take every partition over", owns(b))

	decided := func() map[string]int {
		n := map[string]int{}
		for _, m := range readTopic(t, brokerAddr, "walletguard.decisions") {
			var d struct {
				EventID string `json:"event_id"`
				Trigger string `json:"trigger"`
			}
			if err := json.Unmarshal(m.Value, &d); err != nil {
				t.Fatalf("bad decision %s: %v", m.Value, err)
			}
			if d.Trigger == "event" {
				n[d.EventID]++
			}
		}
		return n
	}
	var got map[string]int
	decidedUpTo := func(n int) func() bool {
		return func() bool {
			got = decided()
			for _, id := range ids[:n] {
				if got[id] == 0 {
					return false
				}
			}
			return true
		}
	}
	wait(2*time.Minute, "the standby to decide the rest of the second part", decidedUpTo(cut[2]))
	if n := consumed(httpB); n < float64(cut[2]-cut[1]) {
		t.Fatalf("the standby consumed %v events, want at least the %d of the second part", n, cut[2]-cut[1])
	}

	// The first comes back with its checkpoint and takes the partitions
	// back from the standby, which built only a little state meanwhile.
	a2 := start(cfgA, httpA)
	wait(60*time.Second, "the restarted first daemon to take the partitions back", owns(a2))
	wait(30*time.Second, "the second daemon to stand by again", standsBy(b))
	produceAll(msgs[cut[2]:])
	wait(2*time.Minute, "a decision for every event", decidedUpTo(len(ids)))
	// Each owner started from the offsets the one before it committed.
	for i, id := range ids {
		if got[id] > 1 {
			t.Fatalf("event %d (%s) decided %d times", i, id, got[id])
		}
	}
	t.Logf("%d events: the first daemon decided %d, the standby %v, the first again %d", len(ids), cut[1], consumed(httpB), len(ids)-cut[2])

}

// committed adds up the group's committed offsets on wallet.events.
func committed(t *testing.T, broker string) int64 {
	t.Helper()
	client := &kafka.Client{Addr: kafka.TCP(broker)}
	resp, err := client.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{
		GroupID: "walletguard", Topics: map[string][]int{"wallet.events": {0, 1, 2, 3}}})
	if err != nil {
		return -1
	}
	var n int64
	for _, p := range resp.Topics["wallet.events"] {
		n += max(p.CommittedOffset, 0)
	}
	return n
}
