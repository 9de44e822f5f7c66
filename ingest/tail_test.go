package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// TestReadPartitionsHandsOnATopicUpToItsEnd: a topic created compacted
// (again, harmlessly) is read whole up to the ends asked for, each
// partition's records in order and none after its end, and an error from
// the handler stops the read and comes back.
func TestReadPartitionsHandsOnATopicUpToItsEnd(t *testing.T) {
	const parts = 3
	ctx, brokers, p := stateBroker(t)
	for range 2 {
		if err := CreateCompacted(ctx, brokers, "state", parts, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	var msgs []Message
	for i := range 5000 {
		msgs = append(msgs, Message{Topic: "state", Key: fmt.Appendf(nil, "k%d", i%50), Value: strconv.AppendInt(nil, int64(i), 10)})
	}
	if err := p.Write(ctx, "test", msgs); err != nil {
		t.Fatal(err)
	}
	ends, err := EndOffsets(ctx, brokers, "state")
	if err != nil {
		t.Fatal(err)
	}
	if len(ends) != parts {
		t.Fatalf("topic has %d partitions, created with %d", len(ends), parts)
	}
	// Written after the ends were taken: not read.
	if err := p.Write(ctx, "test", msgs[:10]); err != nil {
		t.Fatal(err)
	}

	last := map[string]int{} // key → last value read
	read := 0
	err = ReadPartitions(ctx, brokers, "state", ends, slog.New(slog.DiscardHandler), func(partition int, batch []kafka.Message) error {
		for _, m := range batch {
			if m.Partition != partition || m.Offset >= ends[partition] {
				return fmt.Errorf("record %d/%d handed on as partition %d, end %d", m.Partition, m.Offset, partition, ends[partition])
			}
			v, _ := strconv.Atoi(string(m.Value))
			if prev, ok := last[string(m.Key)]; ok && v <= prev {
				return fmt.Errorf("key %s: %d after %d", m.Key, v, prev)
			}
			last[string(m.Key)] = v
			read++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if read != len(msgs) {
		t.Fatalf("read %d records up to the ends, %d were there", read, len(msgs))
	}

	stop := errors.New("enough")
	calls := 0
	err = ReadPartitions(ctx, brokers, "state", ends, slog.New(slog.DiscardHandler), func(int, []kafka.Message) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("handler failed: ReadPartitions returned %v after %d calls, want its error after 1", err, calls)
	}
}

// TestLastMatchingFindsTheLatestRecordOfAKey: in a partition of 20,000
// records, the last "marker" below an end is found whether it lies near
// the end or far back, and nothing is found for a key never written.
func TestLastMatchingFindsTheLatestRecordOfAKey(t *testing.T) {
	ctx, brokers, p := stateBroker(t, "state")
	markers := map[int]bool{10: true, 7000: true, 19990: true}
	var msgs []Message
	for i := range 20000 {
		key := fmt.Appendf(nil, "k%d", i%50)
		if markers[i] {
			key = []byte("marker")
		}
		msgs = append(msgs, Message{Topic: "state", Key: key, Value: strconv.AppendInt(nil, int64(i), 10)})
	}
	if err := p.Write(ctx, "test", msgs); err != nil {
		t.Fatal(err)
	}
	isMarker := func(m *kafka.Message) bool { return string(m.Key) == "marker" }
	for _, c := range []struct {
		end  int64
		want string
	}{{20000, "19990"}, {19990, "7000"}, {7001, "7000"}, {7000, "10"}, {10, ""}} {
		m, err := LastMatching(ctx, brokers, "state", 0, c.end, slog.New(slog.DiscardHandler), isMarker)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if m != nil {
			got = string(m.Value)
		}
		if got != c.want {
			t.Errorf("last marker below %d: %q, want %q", c.end, got, c.want)
		}
	}
	if m, err := LastMatching(ctx, brokers, "state", 0, 20000, slog.New(slog.DiscardHandler), func(m *kafka.Message) bool { return string(m.Key) == "none" }); err != nil || m != nil {
		t.Errorf("a key never written: %v, %v", m, err)
	}
}

// stateBroker starts a broker with topics (of one partition), and returns
// a context bounding the test, the broker's address and a producer to it.
func stateBroker(t *testing.T, topics ...string) (context.Context, []string, *Producer) {
	t.Helper()
	b, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", Partitions: 1, Topics: topics}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	brokers := []string{b.Addr()}
	p := NewProducer(brokers, NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	t.Cleanup(func() { p.Close() })
	return ctx, brokers, p
}
