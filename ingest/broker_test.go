package ingest

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// TestEmbeddedBrokerWithoutDirLeavesNothing: a broker not given a directory
// keeps its log in one it made, serves what was produced from it, and
// removes it on Close.
func TestEmbeddedBrokerWithoutDirLeavesNothing(t *testing.T) {
	b, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", Partitions: 1, Topics: []string{"t"}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if b.tmp == nil {
		t.Fatal("no directory made for the log")
	}
	dir := b.tmp.Path
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	w := &kafka.Writer{Addr: kafka.TCP(b.Addr()), Topic: "t", RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	if err := w.WriteMessages(ctx, kafka.Message{Value: []byte("hello")}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{b.Addr()}, Topic: "t", Partition: 0, MaxWait: 100 * time.Millisecond})
	m, err := r.ReadMessage(ctx)
	r.Close()
	if err != nil || string(m.Value) != "hello" {
		t.Fatalf("read back %q, %v; want hello", m.Value, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) == 0 {
		t.Fatalf("log directory %s: %d entries, %v; want the topic's log there", dir, len(entries), err)
	}
	b.Close()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("log directory %s still there after Close (%v)", dir, err)
	}
}
