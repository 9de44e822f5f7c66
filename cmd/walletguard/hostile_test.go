package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// TestHostileInputThroughKafka sends what a broken or malicious producer
// could: truncated and invalid JSON, a 10 MB message, deep nesting, invalid
// UTF-8, NaN and numbers past int64, timestamps from 1970 and 2100, then a
// burst of a million distinct accounts. Every bad record must reach the
// dead-letter topic with the right reason, the daemon must go on deciding,
// and its memory must stay under a bound set by detector.max_accounts.
func TestHostileInputThroughKafka(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	addr := freePort(t)
	// The broker takes records up to 16 MB, as a cluster configured for
	// large messages would: the 10 MB one must reach walletguard.
	broker := runBroker(t, bin, addr, 4, "", "--max-message-bytes", "16777216")
	defer func() { broker.Process.Signal(syscall.SIGTERM); broker.Wait() }()

	httpAddr := freePort(t)
	cfgPath := filepath.Join(dir, "wg.yaml")
	writeFile(t, cfgPath, fmt.Sprintf("data_dir: %s\nkafka: {brokers: [%s], session_timeout: 2s, commit_interval: 200ms}\nhttp: {listen: %s}\ndetector: {max_accounts: 100000}\n",
		filepath.Join(dir, "data"), addr, httpAddr))
	var logs syncBuffer
	daemon := startDaemon(t, bin, cfgPath, &logs)
	defer func() { stopDaemon(t, daemon, &logs, "ERROR", "WARN", "panic") }()

	now := time.Now().UTC()
	ts := now.Format(time.RFC3339)
	login := func(id, acc, tsv, extra string) string {
		return `{"event_id":"` + id + `","type":"login","ts":"` + tsv + `","account_id":"` + acc + `","result":"success"` + extra + `}`
	}
	tx := func(id, amount string) string {
		return `{"event_id":"` + id + `","type":"transaction","ts":"` + ts + `","account_id":"h","tx_id":"t","kind":"payment","currency":"IDR","status":"success","amount":` + amount + `}`
	}
	hostile := []struct {
		value, reason string
	}{
		{`{"event_id":"h1","type":"login","ts":"2026-`, "invalid_json"},
		{`{"event_id":"h2","type":"login","x":"` + strings.Repeat("A", 10<<20) + `"}`, "oversize"},
		{login("h3", "h", ts, `,"x":`+strings.Repeat("[", 20000)+strings.Repeat("]", 20000)), "invalid_json"},
		{login("h4", "h", ts, `,"user_agent":"`+"\xff\xfe"+`"`), "invalid_json"},
		{tx("h5", "NaN"), "invalid_json"},
		{tx("h6", "1e400"), "wrong_type"},
		{tx("h7", "123456789012345678901234567890"), "wrong_type"},
		{login("h8", "h", "1970-01-01T00:00:00Z", ""), "invalid_value"},
		{login("h9", "h", "2100-01-01T00:00:00Z", ""), "future_ts"},
		{`null`, "invalid_json"},
		{``, "invalid_json"},
		{`[{"event_id":"h12"}]`, "invalid_json"},
		{login("h13", strings.Repeat("x", 5000), ts, ""), "invalid_value"},
	}
	var msgs []kafka.Message
	for i, h := range hostile {
		msgs = append(msgs, kafka.Message{Key: []byte("hostile-" + strconv.Itoa(i)), Value: []byte(h.value)})
	}
	const burst = 1_000_000
	for i := 0; i < burst; i++ {
		id := "burst-" + strconv.Itoa(i)
		msgs = append(msgs, kafka.Message{Key: []byte(id), Value: []byte(login(id+"-e", id, ts, `,"device_id":"d-`+id+`","ip":"198.51.100.7"`))})
	}
	produceEvents(t, addr, msgs)

	deadline := time.Now().Add(3 * time.Minute)
	for consumed(httpAddr)+metricSum(httpAddr, "walletguard_events_dead_lettered_total") < float64(len(msgs)) {
		if time.Now().After(deadline) {
			t.Fatalf("handled %v events and %v dead letters of %d within 3 minutes", consumed(httpAddr),
				metricSum(httpAddr, "walletguard_events_dead_lettered_total"), len(msgs))
		}
		if daemon.ProcessState != nil {
			t.Fatal("the daemon exited")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := consumed(httpAddr); got != burst {
		t.Errorf("consumed %v valid events, want the %d of the burst", got, burst)
	}
	if code, body := readyz(httpAddr); code != 200 {
		t.Errorf("/readyz %d after the hostile input: %s", code, body)
	}
	if d := decisionsByTrigger(t, httpAddr, "event"); d != burst {
		t.Errorf("%v decisions for %d valid events", d, burst)
	}

	// Memory stayed bounded: the state holds at most max_accounts, and the
	// process never grew past what that allows.
	time.Sleep(time.Second) // a checkpoint updates the state gauges
	for _, kind := range []string{"account", "device", "timer"} {
		if n := metricSum(httpAddr, `walletguard_state_entries{kind="`+kind+`"}`); n < 50000 || n > 100001 {
			t.Errorf("%v %s entries held after a burst of %d with max_accounts 100000", n, kind, burst)
		}
	}
	if n := metricSum(httpAddr, "walletguard_state_evicted_total"); n < burst-100000 {
		t.Errorf("walletguard_state_evicted_total = %v, want ≥ %d", n, burst-100000)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", daemon.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	var hwmKB int64
	for _, l := range strings.Split(string(status), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			hwmKB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	t.Logf("peak resident memory of the daemon: %d MB", hwmKB>>10)
	// A million accounts held would take ~1.7 GB of state alone; 100,000 of
	// them, Kafka's fetch buffers and the garbage collector's headroom fit
	// well under that.
	if hwmKB == 0 || hwmKB > 1600<<10 {
		t.Errorf("peak resident memory %d MB, want under 1600 MB with max_accounts 100000", hwmKB>>10)
	}

	// Every hostile record is in the dead-letter topic with its reason.
	dlq := readTopic(t, addr, "walletguard.dlq")
	got := map[string]kafka.Message{}
	for _, m := range dlq {
		got[string(m.Key)] = m
	}
	for i, h := range hostile {
		m, ok := got["hostile-"+strconv.Itoa(i)]
		if !ok {
			t.Errorf("hostile record %d (%s) not dead-lettered", i, h.reason)
			continue
		}
		hdr := map[string]string{}
		for _, x := range m.Headers {
			hdr[x.Key] = string(x.Value)
		}
		if hdr["walletguard-reject-reason"] != h.reason {
			t.Errorf("hostile record %d: reason %q (%s), want %q", i, hdr["walletguard-reject-reason"], hdr["walletguard-reject-detail"], h.reason)
		}
		if len(h.value) > 256<<10 {
			if len(m.Value) != 256<<10 || hdr["walletguard-truncated-value"] != strconv.Itoa(len(h.value)) ||
				!bytes.HasPrefix([]byte(h.value), m.Value) {
				t.Errorf("the %d-byte record's dead letter: %d bytes, truncated-value header %q", len(h.value), len(m.Value), hdr["walletguard-truncated-value"])
			}
		}
	}
	if len(dlq) != len(hostile) {
		t.Errorf("%d dead letters for %d hostile records", len(dlq), len(hostile))
	}

	// walletguard dlq reads them all back: every byte of what was kept,
	// invalid UTF-8 included, and the original size of what was cut.
	out, err := exec.Command(bin, "dlq", "--config", cfgPath, "--export", "-").Output()
	if err != nil {
		t.Fatalf("walletguard dlq --export -: %v", err)
	}
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	if len(lines) != len(hostile) {
		t.Fatalf("walletguard dlq exported %d dead letters, want %d", len(lines), len(hostile))
	}
	for _, l := range lines {
		var x struct {
			Key, Reason string
			Value       *string
			ValueBase64 []byte `json:"value_base64"`
			Truncated   bool
			ValueSize   int `json:"value_size"`
		}
		if err := json.Unmarshal(l, &x); err != nil {
			t.Fatalf("export line %.200s: %v", l, err)
		}
		i, _ := strconv.Atoi(strings.TrimPrefix(x.Key, "hostile-"))
		h := hostile[i]
		kept := x.ValueBase64
		if x.Value != nil {
			kept = []byte(*x.Value)
		}
		if x.Reason != h.reason || x.ValueSize != len(h.value) || x.Truncated != (len(h.value) > 256<<10) ||
			!bytes.HasPrefix([]byte(h.value), kept) || (!x.Truncated && len(kept) != len(h.value)) {
			t.Errorf("exported %s: reason %s, %d bytes kept of %d (truncated %v)", x.Key, x.Reason, len(kept), x.ValueSize, x.Truncated)
		}
	}
}
