package store

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/ingest"
	"github.com/walletguard/walletguard/internal/testcert"
	"github.com/walletguard/walletguard/store/chserver"
)

func eventRows(from, n int) Batch {
	var b Batch
	now := time.Now()
	for i := from; i < from+n; i++ {
		ev := event.Event{EventID: fmt.Sprintf("ev-%d", i), Type: event.TypeTransaction, TS: time.Date(2026, 11, 20, 10, 0, i%60, 0, time.UTC),
			AccountID: fmt.Sprintf("acc-%d", i%50), Kind: "payment", Amount: int64(i * 100), Currency: "IDR", Status: "success", BalanceAfter: -1}
		b.Events = append(b.Events, NewEventRow(&ev, []byte(`{"event_id":"`+ev.EventID+`"}`), now))
		d := detector.Decision{DecisionID: fmt.Sprintf("dec-%d", i), EventID: ev.EventID, AccountID: ev.AccountID, TS: ev.TS, Score: i % 100,
			Action: "allow", Trigger: "event", Rules: []detector.Hit{{ID: "r1", Score: 10, Reason: "because"}}}
		b.Decisions = append(b.Decisions, NewDecisionRow(&d, now))
	}
	return b
}

func counts(t *testing.T, s *chserver.Server) string {
	t.Helper()
	out, err := s.Query(context.Background(), `SELECT count(), uniqExact(event_id) FROM walletguard.events FINAL;
SELECT count(), uniqExact(decision_id) FROM walletguard.decisions FINAL`)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(strings.Fields(out), " ")
}

// TestWriterSurvivesAClickHouseOutage: rows written while ClickHouse is
// stopped spool locally and land once it is back; nothing lost, nothing twice.
func TestWriterSurvivesAClickHouseOutage(t *testing.T) {
	s := chserver.Start(t)
	w, err := Open(Config{Addr: s.Addr, Database: "walletguard", Username: "default", SpoolDir: t.TempDir(), BatchRows: 500,
		FlushEvery: 100 * time.Millisecond, WriteTimeout: 3 * time.Second}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	w.Add(eventRows(0, 1000))
	if err := w.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := counts(t, s); got != "1000 1000 1000 1000" {
		t.Fatalf("after the first batch: %s", got)
	}
	s.Stop()
	w.Add(eventRows(1000, 1000))
	if err := w.Sync(ctx); err != nil {
		t.Fatalf("with ClickHouse down, rows must spool, not fail: %v", err)
	}
	if w.SpoolBytes() == 0 || w.LastError() == "" {
		t.Fatalf("spool %d bytes, last error %q", w.SpoolBytes(), w.LastError())
	}
	w.Add(eventRows(1500, 1000)) // overlaps: 500 rows written twice
	// Rejected records keep their bytes through the spool, invalid UTF-8
	// included: an analyst sees what the producer sent.
	bad := []ingest.Record{
		{Topic: "wallet.events", Offset: 1, Key: []byte("acc-\xff"), Value: []byte("{\"note\":\"\xc3\x28\"}"), Arrived: time.Now()},
		{Topic: "wallet.events", Offset: 2, Key: []byte("acc-é"), Value: []byte(`{"amount":"1"}`), Arrived: time.Now()},
	}
	for i := range bad {
		w.Add(Batch{Rejected: []RejectedRow{NewRejectedRow(&bad[i], "invalid_json", "", "value is not valid UTF-8", time.Now())}})
	}
	w.Sync(ctx)
	s.Restart()
	deadline := time.Now().Add(30 * time.Second)
	for w.SpoolBytes() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("spool not drained 30s after ClickHouse came back: %d bytes, %s", w.SpoolBytes(), w.LastError())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := counts(t, s); got != "2500 2500 2500 2500" {
		t.Errorf("after the outage: %s, want 2500 distinct events and decisions, each once", got)
	}
	got, err := s.Query(ctx, "SELECT hex(record_key), hex(value) FROM walletguard.rejected FINAL ORDER BY source_offset")
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, r := range bad {
		fmt.Fprintf(&want, "%X\t%X\n", r.Key, r.Value)
	}
	if got != want.String() {
		t.Errorf("rejected records after the spool, hex:\n%s\nwant the bytes sent:\n%s", got, want.String())
	}
	if err := w.Close(ctx); err != nil {
		t.Error(err)
	}
}

func TestMigrateIsIdempotentAndVersioned(t *testing.T) {
	s := chserver.Start(t)
	w, err := Open(Config{Addr: s.Addr, Database: "wg2", Username: "default", SpoolDir: t.TempDir()}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	w.Add(eventRows(0, 1))
	if err := w.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	applied, err := Migrate(ctx, w.conn, "wg2")
	if err != nil || len(applied) != 0 {
		t.Errorf("second migration applied %v, %v; want nothing", applied, err)
	}
	out, _ := s.Query(ctx, "SELECT version, name FROM wg2.schema_migrations ORDER BY version; SHOW TABLES FROM wg2")
	for _, want := range []string{"1\tevents, decisions, actions, alerts", "2\trejected", "actions", "alerts", "decisions", "events", "rejected"} {
		if !strings.Contains(out, want) {
			t.Errorf("schema lacks %q:\n%s", want, out)
		}
	}
	w.Close(ctx)
}

// TestWriterOverTLS: a managed ClickHouse serves its native protocol only
// over TLS. Rows written with clickhouse.tls land there; without TLS, or
// trusting another authority, nothing is written and the rows wait in the
// spool instead of being lost.
func TestWriterOverTLS(t *testing.T) {
	certs := testcert.New(t, t.TempDir())
	s := chserver.StartTLS(t, certs.CertFile, certs.KeyFile)
	open := func(tlsCfg config.TLS) *Writer {
		c, err := tlsCfg.Client()
		if err != nil {
			t.Fatal(err)
		}
		w, err := Open(Config{Addr: s.Secure, Database: "walletguard", Username: "default", TLS: c, SpoolDir: t.TempDir(),
			FlushEvery: 100 * time.Millisecond, WriteTimeout: 3 * time.Second}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	ctx := context.Background()
	w := open(config.TLS{Enabled: true, CAFile: certs.CAFile})
	w.Add(eventRows(0, 300))
	if err := w.Sync(ctx); err != nil || w.SpoolBytes() != 0 || w.LastError() != "" {
		t.Fatalf("over TLS: %v, spool %d bytes, last error %q", err, w.SpoolBytes(), w.LastError())
	}
	if got := counts(t, s); got != "300 300 300 300" {
		t.Errorf("over TLS ClickHouse holds %s, want 300 events and decisions", got)
	}
	w.Close(ctx)

	other := testcert.New(t, t.TempDir())
	for name, c := range map[string]config.TLS{"plaintext": {}, "another authority": {Enabled: true, CAFile: other.CAFile}} {
		w := open(c)
		w.Add(eventRows(1000, 10))
		w.Sync(ctx)
		if w.SpoolBytes() == 0 || w.LastError() == "" {
			t.Errorf("%s to the TLS port: spool %d bytes, last error %q; want the rows spooled", name, w.SpoolBytes(), w.LastError())
		}
		w.Close(ctx)
	}
	if got := counts(t, s); got != "300 300 300 300" {
		t.Errorf("after the refused writers ClickHouse holds %s", got)
	}
}

// TestRetentionDropsOnlyWhatIsPastIt: with clickhouse.retention of 30 days,
// the days of events and the months of rejected records wholly older than
// it go, a day's margin kept for the server's time zone, and the rest stay;
// the audit trail, without a retention of its own, is kept whole.
func TestRetentionDropsOnlyWhatIsPastIt(t *testing.T) {
	s := chserver.Start(t)
	w, err := Open(Config{Addr: s.Addr, Database: "walletguard", Username: "default", SpoolDir: t.TempDir(),
		FlushEvery: 100 * time.Millisecond, Retention: 30 * 24 * time.Hour}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(context.Background())
	now := time.Now()
	var b Batch
	for _, age := range []int{100, 40, 10, 0} { // days
		at := now.AddDate(0, 0, -age)
		ev := event.Event{EventID: fmt.Sprintf("ev-%d", age), Type: event.TypeLogin, TS: at, AccountID: "acc-1", Result: "success", BalanceAfter: -1}
		b.Events = append(b.Events, NewEventRow(&ev, []byte(`{}`), now))
		e := enforce.AuditEntry{At: at, Action: "freeze", Origin: "manual", Actor: "desk", AccountID: "acc-1", Reason: fmt.Sprint(age)}
		b.Actions = append(b.Actions, NewActionRow(&e, now))
		rec := ingest.Record{Topic: "wallet.events", Offset: int64(age), Value: []byte("{"), Arrived: at}
		b.Rejected = append(b.Rejected, NewRejectedRow(&rec, "invalid_json", "", "unexpected end of JSON input", now))
	}
	w.Add(b)
	if err := w.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	count := func() string {
		out, err := s.Query(context.Background(), `SELECT arraySort(groupArray(event_id)) FROM walletguard.events;
SELECT count() FROM walletguard.actions; SELECT arraySort(groupArray(source_offset)) FROM walletguard.rejected`)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(strings.Fields(out), " ")
	}
	const want = "['ev-0','ev-10'] 4 [0,10]"
	deadline := time.Now().Add(20 * time.Second)
	for got := count(); got != want; got = count() {
		if time.Now().After(deadline) {
			t.Fatalf("after the retention pass: events, actions, rejected offsets %s; want %s", got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := testutil.ToFloat64(w.m.dropped.WithLabelValues(TableEvents)); n != 2 {
		t.Errorf("walletguard_clickhouse_partitions_dropped_total{table=events} = %v, want 2", n)
	}
}

// TestPartitionEnds: the schema's partition values read as the day or
// month they cover; anything else is left alone.
func TestPartitionEnds(t *testing.T) {
	for p, want := range map[string]string{"20261203": "2026-12-04", "202612": "2027-01-01", "20240229": "2024-03-01"} {
		if end, ok := partitionEnd(p); !ok || end.Format(time.DateOnly) != want {
			t.Errorf("partition %s ends %v (%v), want %s", p, end, ok, want)
		}
	}
	for _, p := range []string{"", "tuple()", "2026120", "20261340", "'20261203'", "-20261203"} {
		if _, ok := partitionEnd(p); ok {
			t.Errorf("partition %q read as a date", p)
		}
	}
}

// countingRelay passes TCP connections on to addr, counting the bytes
// clients send: what the writer puts on the network.
func countingRelay(t *testing.T, addr string) (string, *atomic.Int64) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var sent atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			go func() {
				io.Copy(countingWriter{s, &sent}, c)
				s.Close()
			}()
			go func() {
				io.Copy(c, s)
				c.Close()
			}()
		}
	}()
	return l.Addr().String(), &sent
}

// countingWriter counts what it has passed on: once the server answers a
// write, its bytes are counted.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// Rows go to ClickHouse compressed: 5,000 events with their raw JSON
// (about 330 bytes each) and their decisions cross the network in a
// fraction of the raw JSON's bytes alone.
func TestRowsTravelCompressed(t *testing.T) {
	s := chserver.Start(t)
	relay, sent := countingRelay(t, s.Addr)
	w, err := Open(Config{Addr: relay, Database: "walletguard", Username: "default", SpoolDir: t.TempDir(), BatchRows: 1000,
		FlushEvery: 100 * time.Millisecond, WriteTimeout: 10 * time.Second}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	const n = 5000
	var b Batch
	var rawBytes int
	now := time.Now()
	for i := range n {
		ev := event.Event{EventID: fmt.Sprintf("ev-%08d", i), Type: event.TypeTransaction, TS: time.Date(2026, 11, 20, 10, 0, i%60, 0, time.UTC),
			AccountID: fmt.Sprintf("acc-%d", i%500), DeviceID: fmt.Sprintf("dev-%d", i%700), IP: fmt.Sprintf("10.1.%d.%d", i%7, i%250),
			Kind: "payment", Amount: int64(i%97) * 1500, Currency: "IDR", Status: "success", MerchantID: fmt.Sprintf("m-%d", i%40), BalanceAfter: -1}
		raw := fmt.Appendf(nil, `{"event_id":%q,"type":"transaction","ts":%q,"account_id":%q,"device_id":%q,"ip":%q,"kind":"payment","amount":%d,"currency":"IDR","status":"success","merchant_id":%q,"channel":"app","app_version":"5.12.0","country":"ID"}`,
			ev.EventID, ev.TS.Format(time.RFC3339Nano), ev.AccountID, ev.DeviceID, ev.IP, ev.Amount, ev.MerchantID)
		rawBytes += len(raw)
		b.Events = append(b.Events, NewEventRow(&ev, raw, now))
		d := detector.Decision{DecisionID: fmt.Sprintf("dec-%08d", i), EventID: ev.EventID, AccountID: ev.AccountID, TS: ev.TS, Score: i % 100,
			Action: "allow", Trigger: "event", Rules: []detector.Hit{{ID: "amount_far_above_habit", Score: 30, Reason: "amount 12x the account's median"}}}
		b.Decisions = append(b.Decisions, NewDecisionRow(&d, now))
	}
	ctx := context.Background()
	w.Add(b)
	if err := w.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := counts(t, s); got != "5000 5000 5000 5000" {
		t.Fatalf("rows written: %s", got)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d events (%d bytes of raw JSON) and their decisions: %d bytes sent", n, rawBytes, sent.Load())
	if got := sent.Load(); got == 0 || got*2 > int64(rawBytes) {
		t.Errorf("the writer sent %d bytes for rows whose raw JSON alone is %d: want under half", got, rawBytes)
	}
}
