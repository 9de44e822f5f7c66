package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/sim"
)

// startDaemon runs `walletguard run --config cfgPath` with its output in
// logs; stopDaemon ends it and, if the test failed, shows the log lines
// holding any of words.
func startDaemon(t *testing.T, bin, cfgPath string, logs *syncBuffer) *exec.Cmd {
	t.Helper()
	d := exec.Command(bin, "run", "--config", cfgPath)
	d.Stdout, d.Stderr = logs, logs
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	return d
}

func stopDaemon(t *testing.T, d *exec.Cmd, logs *syncBuffer, words ...string) {
	d.Process.Signal(syscall.SIGTERM)
	d.Wait()
	if t.Failed() {
		t.Logf("daemon log:\n%s", lastLines(grepLines(logs.String(), words...), 40))
	}
}

// produceEvents writes msgs to wallet.events, keyed as producers do
// (murmur2, like Java clients), in batches of up to 16 MB.
func produceEvents(t *testing.T, broker string, msgs []kafka.Message) {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: "wallet.events", Balancer: &kafka.Murmur2Balancer{}, BatchSize: 2000,
		BatchBytes: 16 << 20, BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

// simMessages is the sim's whole stream as Kafka messages keyed by account.
func simMessages(scfg sim.Config) []kafka.Message {
	g := sim.New(scfg)
	var msgs []kafka.Message
	for {
		it, ok := g.Next()
		if !ok {
			return msgs
		}
		b, _ := event.Marshal(&it.Event)
		msgs = append(msgs, kafka.Message{Key: []byte(it.Event.AccountID), Value: b})
	}
}

// callAPI calls a daemon's API with the default admin token, decodes the
// JSON answer into out and returns the status.
func callAPI(t *testing.T, addr, method, path, body string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer change-me")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	json.NewDecoder(resp.Body).Decode(out)
	return resp.StatusCode
}

// heldAlert is what the process tests read of an alert.
type heldAlert struct {
	AlertID        string `json:"alert_id"`
	Status         string `json:"status"`
	AcknowledgedBy string `json:"acknowledged_by"`
}

// heldAlerts lists the alerts a daemon holds with status (open, all, …),
// newest first.
func heldAlerts(t *testing.T, addr, status string) []heldAlert {
	t.Helper()
	var list struct {
		Alerts []heldAlert `json:"alerts"`
	}
	callAPI(t, addr, "GET", "/v1/alerts?status="+status, "", &list)
	return list.Alerts
}

// waitUntil polls ok until it holds, failing the test after within.
func waitUntil(t *testing.T, what string, within time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s (%s)", what, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
