package ingest

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/segmentio/kafka-go"
)

// TestProducerKeepsEachKeysOrderOnItsPartition: a write larger than one
// produce request lands every record once, on the partition a Java client
// (murmur2) would choose for its key, in the order written — what consumers
// of an account's commands rely on — and a topic not there yet is created.
func TestProducerKeepsEachKeysOrderOnItsPartition(t *testing.T) {
	const parts = 4
	b, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", Partitions: parts, Topics: []string{"orders"}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := NewProducer([]string{b.Addr()}, NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	defer p.Close()

	// 6 keys × 1,000 records of 1 kB: about 1.5 MB per partition, more
	// than one request holds.
	const keys, per = 6, 1000
	pad := strings.Repeat("x", 1000)
	var msgs []Message
	for i := range per {
		for k := range keys {
			msgs = append(msgs, Message{Topic: "orders", Key: fmt.Appendf(nil, "acct-%d", k), Value: fmt.Appendf(nil, "%d %s", i, pad)})
		}
	}
	msgs = append(msgs, Message{Topic: "created-on-first-use", Key: []byte("k"), Value: []byte("v")})
	if err := p.Write(ctx, "test", msgs); err != nil {
		t.Fatal(err)
	}

	want := make(map[string]int) // key → partition murmur2 gives it
	for k := range keys {
		key := fmt.Sprintf("acct-%d", k)
		want[key] = (&kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte(key)}, 0, 1, 2, 3)
	}
	next := make(map[string]int) // key → next sequence number expected
	total := 0
	for part := range parts {
		conn, err := kafka.DialLeader(ctx, "tcp", b.Addr(), "orders", part)
		if err != nil {
			t.Fatal(err)
		}
		end, err := conn.ReadLastOffset()
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{b.Addr()}, Topic: "orders", Partition: part, MaxWait: 100 * time.Millisecond})
		for range end {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatalf("partition %d: %v", part, err)
			}
			key := string(m.Key)
			if want[key] != part {
				t.Errorf("%s on partition %d; murmur2 puts it on %d", key, part, want[key])
			}
			seq, _ := strconv.Atoi(strings.Fields(string(m.Value))[0])
			if seq != next[key] {
				t.Fatalf("%s: record %d after %d: out of order or doubled", key, seq, next[key]-1)
			}
			next[key]++
			total++
		}
		r.Close()
	}
	if total != keys*per {
		t.Errorf("read %d records back; wrote %d", total, keys*per)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{b.Addr()}, Topic: "created-on-first-use", Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	if m, err := r.ReadMessage(ctx); err != nil || string(m.Value) != "v" {
		t.Errorf("new topic: read %q, %v; want v", m.Value, err)
	}
}

// TestProducerRetriesUntilTheBrokerIsBack: a write to a broker that is down
// is retried, counted as a produce error, and lands once the broker is back
// on the same address.
func TestProducerRetriesUntilTheBrokerIsBack(t *testing.T) {
	dir := t.TempDir()
	cfg := EmbeddedConfig{Listen: "127.0.0.1:0", Dir: dir, Partitions: 1, Topics: []string{"t"}}
	b, err := StartEmbedded(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	addr := b.Addr()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m := NewMetrics(prometheus.NewRegistry())
	p := NewProducer([]string{addr}, m, slog.New(slog.DiscardHandler))
	defer p.Close()
	if err := p.Write(ctx, "test", []Message{{Topic: "t", Value: []byte("before")}}); err != nil {
		t.Fatal(err)
	}
	b.Close()

	done := make(chan error, 1)
	go func() { done <- p.Write(ctx, "test", []Message{{Topic: "t", Value: []byte("after")}}) }()
	failures := func() float64 {
		var c dto.Metric
		m.ProduceErrs.WithLabelValues("test").Write(&c)
		return c.GetCounter().GetValue()
	}
	for failures() == 0 {
		select {
		case err := <-done:
			t.Fatalf("write to a stopped broker returned %v; want it retried", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	cfg.Listen = addr
	b, err = StartEmbedded(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := <-done; err != nil {
		t.Fatalf("write after the broker came back: %v", err)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: "t", Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	for _, want := range []string{"before", "after"} {
		got, err := r.ReadMessage(ctx)
		if err != nil || string(got.Value) != want {
			t.Fatalf("read %q, %v; want %q", got.Value, err, want)
		}
	}
}

// Each codec kafka.compression names gives batches that a consumer reads
// back byte for byte and that take less of the broker's disk: decisions
// are JSON, much alike from one to the next.
func TestCompressedOutputsReadBackAndTakeLessDisk(t *testing.T) {
	dir := t.TempDir()
	codecs := []string{"none", "gzip", "snappy", "lz4", "zstd"}
	var topics []string
	for _, c := range codecs {
		topics = append(topics, "out-"+c)
	}
	log := slog.New(slog.DiscardHandler)
	b, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", Dir: dir, Partitions: 1, Topics: topics}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 3000
	sizes := map[string]int64{}
	for i, c := range codecs {
		p := NewProducer([]string{b.Addr()}, NewMetrics(prometheus.NewRegistry()), log)
		if err := p.Compress(c); err != nil {
			t.Fatal(err)
		}
		var msgs []Message
		for k := range n {
			msgs = append(msgs, Message{Topic: topics[i], Key: fmt.Appendf(nil, "acc-%d", k%97), Value: fmt.Appendf(nil,
				`{"decision_id":"d-%08d","event_id":"e-%08d","account_id":"acc-%d","score":%d,"action":"allow","rules":[{"id":"new_device_login","score":%d}]}`,
				k, k, k%97, k%100, k%40)})
		}
		// In writes of 100, as the pipeline hands its outputs over.
		for k := 0; k < n; k += 100 {
			if err := p.Write(ctx, "test", msgs[k:k+100]); err != nil {
				t.Fatalf("%s: %v", c, err)
			}
		}
		p.Close()
		r := PartitionReader([]string{b.Addr()}, topics[i], 0, log)
		for k := range n {
			m, ok := nextMessage(ctx, r, log)
			if !ok {
				t.Fatalf("%s: read %d of %d records back", c, k, n)
			}
			if !bytes.Equal(m.Value, msgs[k].Value) || !bytes.Equal(m.Key, msgs[k].Key) {
				t.Fatalf("%s: record %d read back as %s / %s, written %s / %s", c, k, m.Key, m.Value, msgs[k].Key, msgs[k].Value)
			}
		}
		r.Close()
		filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && strings.Contains(path, topics[i]) {
				if fi, err := d.Info(); err == nil {
					sizes[c] += fi.Size()
				}
			}
			return nil
		})
	}
	t.Logf("broker's files for %d records: %v bytes", n, sizes)
	for _, c := range codecs[1:] {
		if sizes[c] == 0 || sizes[c]*2 > sizes["none"] {
			t.Errorf("%s: the broker holds %d bytes of the records, uncompressed %d: want under half", c, sizes[c], sizes["none"])
		}
	}
	if err := NewProducer(nil, NewMetrics(prometheus.NewRegistry()), log).Compress("brotli"); err == nil {
		t.Error("an unknown codec was taken")
	}
}
