package app

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/ingest"
	"github.com/walletguard/walletguard/sim"
)

// testConfig is the default config on free ports with fast timings.
func testConfig(t testing.TB, dataDir string) config.Config {
	cfg := config.Default()
	cfg.DataDir = dataDir
	cfg.Kafka.EmbeddedListen = "127.0.0.1:0"
	cfg.Kafka.EmbeddedPartitions = 4
	cfg.Kafka.SessionTimeout = config.Duration(2 * time.Second)
	cfg.Kafka.CommitInterval = config.Duration(200 * time.Millisecond)
	cfg.Detector.CheckpointInterval = config.Duration(200 * time.Millisecond)
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.HTTP.Tokens = []config.Token{{Token: "admin-token", Role: "admin"}, {Token: "viewer-token", Role: "viewer"}, {Token: "gateway-token", Role: "gateway"}}
	return cfg
}

type running struct {
	app    *App
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, cfg config.Config) *running {
	t.Helper()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a, err := New(cfg, log, Options{})
	if err != nil {
		t.Fatalf("start walletguard: %v", err)
	}
	return run(t, a)
}

// stop is SIGTERM for the in-process daemon: it must return cleanly in time.
func (r *running) stop(t *testing.T) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("daemon stopped with error: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("daemon did not stop within 20s of cancel")
	}
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eventBroker starts an embedded broker with the event topic of
// partitions partitions, and topics; it closes when the test's cleanups
// end, after the walletguards started later stop.
func eventBroker(t *testing.T, partitions int, topics ...string) *ingest.EmbeddedBroker {
	t.Helper()
	broker, err := ingest.StartEmbedded(ingest.EmbeddedConfig{Listen: "127.0.0.1:0", Partitions: partitions, Topics: append([]string{"wallet.events"}, topics...)}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(broker.Close)
	return broker
}

// metric reads one sample from /metrics; name may include labels.
func metric(t *testing.T, addr, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` ([0-9.e+-]+)$`)
	m := re.FindSubmatch(b)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

func produce(t *testing.T, broker, topic string, msgs ...kafka.Message) {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("produce to %s: %v", topic, err)
	}
}

// readAll reads a topic from the beginning until n messages arrived.
func readAll(t *testing.T, broker, topic string, n int, within time.Duration) []kafka.Message {
	t.Helper()
	conn, err := kafka.Dial("tcp", broker)
	if err != nil {
		t.Fatal(err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		t.Fatalf("partitions of %s: %v", topic, err)
	}
	ch := make(chan kafka.Message, 1024)
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for _, p := range parts {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: p.ID, MaxWait: ingest.FetchMaxWait})
		go func() {
			defer r.Close()
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					return
				}
				ch <- m
			}
		}()
	}
	var out []kafka.Message
	for len(out) < n {
		select {
		case m := <-ch:
			out = append(out, m)
		case <-ctx.Done():
			t.Fatalf("read %d of %d messages from %s within %s", len(out), n, topic, within)
		}
	}
	// Anything beyond n that is already there is a duplicate the caller should see.
	extra := time.After(500 * time.Millisecond)
	for {
		select {
		case m := <-ch:
			out = append(out, m)
		case <-extra:
			return out
		}
	}
}

func header(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

var ts = time.Now().UTC().Add(-time.Hour).Format(time.RFC3339)

var validEvents = []string{
	`{"event_id":"v1","type":"login","ts":"` + ts + `","account_id":"acc-1","device_id":"d1","ip":"36.72.1.2","result":"success","method":"password"}`,
	`{"event_id":"v2","type":"transaction","ts":"` + ts + `","account_id":"acc-1","tx_id":"t1","kind":"payment","amount":500000,"currency":"IDR","status":"success","merchant_id":"m1"}`,
	`{"event_id":"v3","type":"payment_attempt","ts":"` + ts + `","account_id":"acc-2","payment_id":"p1","attempt":1,"status":"retrying","error_code":"NETWORK_TIMEOUT","merchant_id":"m1"}`,
}

var invalidEvents = []string{
	`{"event_id":"bad1","type":"login","ts":"` + ts + `","account_id":"acc-3"`,                                                                                     // truncated JSON
	`{"event_id":"bad2","type":"transaction","ts":"` + ts + `","account_id":"acc-3","tx_id":"t","kind":"payment","amount":-5,"currency":"IDR","status":"success"}`, // negative amount
}

func TestConsumesValidAndDeadLettersInvalid(t *testing.T) {
	r := start(t, testConfig(t, t.TempDir()))
	var msgs []kafka.Message
	for _, v := range append(append([]string{}, validEvents...), invalidEvents...) {
		msgs = append(msgs, kafka.Message{Key: []byte("k"), Value: []byte(v)})
	}
	produce(t, r.app.BrokerAddr(), "wallet.events", msgs...)

	addr := r.app.HTTPAddr()
	waitFor(t, 20*time.Second, "5 events handled", func() bool {
		return metric(t, addr, `walletguard_events_dead_lettered_total`) == 2 &&
			metric(t, addr, `walletguard_events_consumed_total{type="login"}`)+
				metric(t, addr, `walletguard_events_consumed_total{type="transaction"}`)+
				metric(t, addr, `walletguard_events_consumed_total{type="payment_attempt"}`) == 3
	})
	if got := metric(t, addr, `walletguard_events_rejected_total{reason="invalid_json"}`); got != 1 {
		t.Errorf("rejected invalid_json = %v, want 1", got)
	}
	if got := metric(t, addr, `walletguard_events_rejected_total{reason="negative_amount"}`); got != 1 {
		t.Errorf("rejected negative_amount = %v, want 1", got)
	}

	dlq := readAll(t, r.app.BrokerAddr(), "walletguard.dlq", 2, 20*time.Second)
	if len(dlq) != 2 {
		t.Fatalf("dead-letter topic has %d messages, want 2", len(dlq))
	}
	reasons := map[string]string{}
	for _, m := range dlq {
		reasons[header(m, "walletguard-reject-reason")] = string(m.Value)
	}
	if reasons["invalid_json"] != invalidEvents[0] || reasons["negative_amount"] != invalidEvents[1] {
		t.Errorf("dead letters do not carry the original bytes under their reasons: %v", reasons)
	}

	decisions := readAll(t, r.app.BrokerAddr(), "walletguard.decisions", 3, 20*time.Second)
	if len(decisions) != 3 {
		t.Fatalf("%d decisions for 3 valid events", len(decisions))
	}
	for _, d := range decisions {
		if !strings.Contains(string(d.Value), `"action":"allow"`) || !strings.Contains(string(d.Value), `"ruleset_version"`) {
			t.Errorf("unexpected decision %s", d.Value)
		}
	}
	// Redelivery of an event already handled is recognised, not counted twice.
	produce(t, r.app.BrokerAddr(), "wallet.events", kafka.Message{Key: []byte("k"), Value: []byte(validEvents[0])})
	waitFor(t, 10*time.Second, "duplicate recognised", func() bool {
		return metric(t, addr, `walletguard_events_duplicate_total`) == 1
	})
	r.stop(t)
}

// simMessages renders n generated events as Kafka messages.
func simMessages(t *testing.T, accounts int, seed uint64, n int) ([]kafka.Message, []event.Event) {
	t.Helper()
	cfg := sim.DefaultConfig(accounts)
	cfg.Seed = seed
	cfg.Start = time.Now().UTC().Add(-48 * time.Hour)
	g := sim.New(cfg)
	var msgs []kafka.Message
	var evs []event.Event
	for len(msgs) < n {
		it, ok := g.Next()
		if !ok {
			break
		}
		b, err := event.Marshal(&it.Event)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, kafka.Message{Key: []byte(it.Event.AccountID), Value: b})
		evs = append(evs, it.Event)
	}
	return msgs, evs
}

// TestRestartMidStreamHandlesEachEventOnce stops the daemon while it is
// consuming a backlog from a broker that stays up, starts it again on the same
// data directory, and checks that every event got exactly one decision.
func TestRestartMidStreamHandlesEachEventOnce(t *testing.T) {
	broker := eventBroker(t, 4)
	cfg := testConfig(t, t.TempDir())
	cfg.Kafka.Brokers = []string{broker.Addr()}
	msgs, evs := simMessages(t, 2000, 3, 40000)
	produce(t, broker.Addr(), "wallet.events", msgs...)

	r := start(t, cfg)
	waitFor(t, 30*time.Second, "some events consumed", func() bool { return r.app.Snapshot().Consumed > 2000 })
	r.stop(t)
	first := r.app.Snapshot().Consumed
	if first >= float64(len(msgs)) {
		t.Fatalf("the first run consumed all %v events before it was stopped: not a mid-stream stop", first)
	}
	r2 := start(t, cfg)
	waitFor(t, 90*time.Second, "all events consumed after restart", func() bool {
		return first+r2.app.Snapshot().Consumed >= float64(len(msgs))
	})
	r2.stop(t)
	if got := first + r2.app.Snapshot().Consumed; got != float64(len(msgs)) {
		t.Errorf("consumed %v events over two runs, produced %d", got, len(msgs))
	}
	// After a clean stop the group's committed offsets cover every event.
	if committed := committedOffsets(t, broker.Addr()); committed != int64(len(msgs)) {
		t.Errorf("committed offsets add up to %d after a clean stop, want %d", committed, len(msgs))
	}
	decisions := readAll(t, broker.Addr(), "walletguard.decisions", len(msgs), 60*time.Second)
	byEvent := eventDecisions(t, decisions)
	for _, ev := range evs {
		if byEvent[ev.EventID] != 1 {
			t.Fatalf("event %s has %d decisions, want exactly 1 (first run consumed %v)", ev.EventID, byEvent[ev.EventID], first)
		}
	}
	t.Logf("first run handled %v events, the second %v", first, r2.app.Snapshot().Consumed)
}

// TestPipelineBusyTellsWorkFromWaiting: walletguard_pipeline_busy_seconds_total
// is what an SRE reads to tell a saturated instance from one waiting for
// events. Working off a backlog it grows with the time spent, as does the
// time waiting for outputs beside it, the two never more than the time
// passed; idle, it stays still.
func TestPipelineBusyTellsWorkFromWaiting(t *testing.T) {
	broker := eventBroker(t, 4)
	cfg := testConfig(t, t.TempDir())
	cfg.Kafka.Brokers = []string{broker.Addr()}
	msgs, _ := simMessages(t, 2000, 5, 30000)
	produce(t, broker.Addr(), "wallet.events", msgs...)

	started := time.Now()
	r := start(t, cfg)
	busy := func() float64 { return metric(t, r.app.HTTPAddr(), "walletguard_pipeline_busy_seconds_total") }
	waited := func() float64 { return metric(t, r.app.HTTPAddr(), "walletguard_pipeline_output_wait_seconds_total") }
	waitFor(t, 60*time.Second, "the backlog worked off", func() bool { return r.app.Snapshot().Consumed >= float64(len(msgs)) })
	elapsed := time.Since(started).Seconds()
	time.Sleep(200 * time.Millisecond) // the last batch's outputs, and the pipeline back to waiting
	worked, wait := busy(), waited()
	if worked <= 0 || worked+wait > elapsed {
		t.Fatalf("pipeline busy %.3fs and waiting for outputs %.3fs while %d events were decided in %.3fs since the start", worked, wait, len(msgs), elapsed)
	}

	time.Sleep(2 * time.Second)
	if idle := busy() - worked; idle > 0.2 {
		t.Errorf("pipeline busy %.3fs of 2s with no event to decide", idle)
	}
	// One more event: the time spent on it counts, however short.
	produce(t, broker.Addr(), "wallet.events", kafka.Message{Key: []byte("acc-1"), Value: []byte(validEvents[0])})
	waitFor(t, 10*time.Second, "one more event", func() bool { return r.app.Snapshot().Consumed > float64(len(msgs)) })
	waitFor(t, 10*time.Second, "its time counted", func() bool { return busy() > worked })
	time.Sleep(200 * time.Millisecond)
	if one := busy() - worked; one > 1 {
		t.Errorf("pipeline busy %.3fs more for one event after 2s of waiting: the wait was counted", one)
	}
	t.Logf("busy %.3fs, waiting for outputs %.3fs, of %.3fs working off %d events", worked, wait, elapsed, len(msgs))
	r.stop(t)
}

var decisionRE = regexp.MustCompile(`"event_id":"([^"]+)".*"trigger":"([a-z]+)"`)

// eventDecisions counts event-triggered decisions per event id.
func eventDecisions(t *testing.T, ms []kafka.Message) map[string]int {
	t.Helper()
	by := map[string]int{}
	for _, d := range ms {
		m := decisionRE.FindSubmatch(d.Value)
		if m == nil {
			t.Fatalf("decision without event_id: %s", d.Value)
		}
		if string(m[2]) == "event" {
			by[string(m[1])]++
		}
	}
	return by
}

// TestEmbeddedBrokerKeepsDataAcrossRestart: the embedded broker keeps its log
// in data_dir, so a restarted daemon neither loses nor re-handles events.
func TestEmbeddedBrokerKeepsDataAcrossRestart(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	r := start(t, cfg)
	var msgs []kafka.Message
	for _, v := range validEvents {
		msgs = append(msgs, kafka.Message{Key: []byte("k"), Value: []byte(v)})
	}
	produce(t, r.app.BrokerAddr(), "wallet.events", msgs...)
	waitFor(t, 20*time.Second, "3 events consumed", func() bool { return r.app.Snapshot().Consumed == 3 })
	r.stop(t)

	r2 := start(t, cfg)
	produce(t, r2.app.BrokerAddr(), "wallet.events", kafka.Message{Key: []byte("k"), Value: []byte(
		`{"event_id":"v4","type":"login","ts":"` + ts + `","account_id":"acc-9","result":"failure","failure_reason":"bad_password"}`)})
	waitFor(t, 20*time.Second, "the new event consumed", func() bool { return r2.app.Snapshot().Consumed == 1 })
	byEvent := eventDecisions(t, readAll(t, r2.app.BrokerAddr(), "walletguard.decisions", 4, 20*time.Second))
	for _, id := range []string{"v1", "v2", "v3", "v4"} {
		if byEvent[id] != 1 {
			t.Errorf("event %s has %d decisions after restart, want 1", id, byEvent[id])
		}
	}
}

// TestStopIsBoundedWhenTheBrokerIsGone: the broker dies under a working
// daemon; SIGTERM still ends it within the shutdown timeout (outputs not yet
// written are not checkpointed, so nothing is lost: it is redone next start).
func TestStopIsBoundedWhenTheBrokerIsGone(t *testing.T) {
	broker := eventBroker(t, 2)
	cfg := testConfig(t, t.TempDir())
	cfg.Kafka.Brokers = []string{broker.Addr()}
	cfg.Kafka.ShutdownTimeout = config.Duration(2 * time.Second)
	msgs, _ := simMessages(t, 300, 5, 3000)
	produce(t, broker.Addr(), "wallet.events", msgs...)
	r := start(t, cfg)
	waitFor(t, 30*time.Second, "some events consumed", func() bool { return r.app.Snapshot().Consumed > 0 })
	broker.Close()
	time.Sleep(500 * time.Millisecond)
	began := time.Now()
	r.cancel()
	r.cancel = nil
	select {
	case <-r.done:
	case <-time.After(15 * time.Second):
		t.Fatal("daemon did not stop within 15s of SIGTERM with the broker gone")
	}
	t.Logf("stopped %s after SIGTERM with the broker gone", time.Since(began).Round(time.Millisecond))
}
