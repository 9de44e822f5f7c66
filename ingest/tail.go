package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// Tail reads every record of topic, all of its partitions from the first
// offset, and hands each to handle (from one goroutine per partition), until
// ctx ends. It is for walletguard's own small topics that every instance
// reads whole, outside the consumer group: the manual actions on accounts
// a standby takes over with. A topic that does not exist yet is looked for
// again every few seconds.
func Tail(ctx context.Context, brokers []string, topic string, log *slog.Logger, handle func(partition int, m kafka.Message)) {
	TailFrom(ctx, brokers, topic, func(int) int64 { return kafka.FirstOffset }, log, handle)
}

// TailFrom is Tail reading each partition from the offset start gives it
// (kafka.FirstOffset: from the first record held).
func TailFrom(ctx context.Context, brokers []string, topic string, start func(partition int) int64, log *slog.Logger, handle func(partition int, m kafka.Message)) {
	var parts []kafka.Partition
	for {
		var err error
		if parts, err = topicPartitions(ctx, brokers[0], topic); err == nil && len(parts) > 0 {
			break
		}
		log.Debug("topic not readable yet; looking again", "topic", topic, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(3 * time.Second):
		}
	}
	var wg sync.WaitGroup
	for _, p := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tailPartition(ctx, brokers, topic, p.ID, start(p.ID), log, handle)
		}()
	}
	wg.Wait()
}

func topicPartitions(ctx context.Context, broker, topic string) ([]kafka.Partition, error) {
	conn, err := dialer().DialContext(ctx, "tcp", broker)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", broker, err)
	}
	defer conn.Close()
	ps, err := conn.ReadPartitions(topic)
	if err != nil {
		return nil, fmt.Errorf("partitions of %s: %w", topic, err)
	}
	return ps, nil
}

func tailPartition(ctx context.Context, brokers []string, topic string, partition int, from int64, log *slog.Logger, handle func(int, kafka.Message)) {
	err := readRange(ctx, brokers, topic, partition, from, math.MaxInt64, log, func(m kafka.Message) error {
		handle(partition, m)
		return nil
	})
	if ctx.Err() == nil {
		log.Error("reading stopped", "topic", topic, "partition", partition, "err", err)
	}
}

// EndOffsets returns, per partition of topic, the offset the next record
// written there will get: a reader that has handed on every record below
// it has read all the topic held when asked.
func EndOffsets(ctx context.Context, brokers []string, topic string) (map[int]int64, error) {
	return offsetsOf(ctx, brokers, topic, kafka.LastOffsetOf)
}

// FirstOffsets returns, per partition of topic, the first offset it still
// holds (retention and compaction move it on).
func FirstOffsets(ctx context.Context, brokers []string, topic string) (map[int]int64, error) {
	return offsetsOf(ctx, brokers, topic, kafka.FirstOffsetOf)
}

// OffsetsAt returns, per partition of topic, the first offset whose record
// was written at or after t; a partition with no such record has no entry.
// A broker finds it in its time index, so a reader can begin there rather
// than at the partition's first record.
func OffsetsAt(ctx context.Context, brokers []string, topic string, t time.Time) (map[int]int64, error) {
	found, err := offsetsOf(ctx, brokers, topic, func(p int) kafka.OffsetRequest { return kafka.TimeOffsetOf(p, t) })
	if err != nil {
		return nil, err
	}
	// A partition without a record that late answers offset -1.
	maps.DeleteFunc(found, func(_ int, o int64) bool { return o < 0 })
	return found, nil
}

func offsetsOf(ctx context.Context, brokers []string, topic string, which func(int) kafka.OffsetRequest) (map[int]int64, error) {
	if len(brokers) == 0 {
		return nil, fmt.Errorf("offsets of %s: no broker", topic)
	}
	parts, err := topicPartitions(ctx, brokers[0], topic)
	if err != nil {
		return nil, err
	}
	ids := make([]int, len(parts))
	for i, p := range parts {
		ids[i] = p.ID
	}
	return listOffsets(ctx, brokers, topic, ids, which)
}

// listOffsets asks the brokers for one offset of each partition: the first
// (kafka.FirstOffsetOf) or the next to be written (kafka.LastOffsetOf).
func listOffsets(ctx context.Context, brokers []string, topic string, partitions []int, which func(int) kafka.OffsetRequest) (map[int]int64, error) {
	req := make([]kafka.OffsetRequest, len(partitions))
	for i, p := range partitions {
		req[i] = which(p)
	}
	c := newClient(brokers, 10*time.Second)
	resp, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: req}})
	if err != nil {
		return nil, fmt.Errorf("offsets of %s: %w", topic, err)
	}
	offsets := make(map[int]int64, len(partitions))
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("offset of %s/%d: %w", topic, p.Partition, p.Error)
		}
		// The one asked for; the others are -1. kafka-go files an offset
		// found by time under the time of its record.
		o := max(p.FirstOffset, p.LastOffset)
		for at := range p.Offsets {
			o = max(o, at)
		}
		offsets[p.Partition] = o
	}
	return offsets, nil
}

// ReadPartition hands handle every record of one partition of topic from
// its first offset up to end (EndOffsets), in order, and returns when the
// record before end is handled, handle fails, or ctx ends.
func ReadPartition(ctx context.Context, brokers []string, topic string, partition int, end int64, log *slog.Logger, handle func(kafka.Message) error) error {
	first, err := listOffsets(ctx, brokers, topic, []int{partition}, kafka.FirstOffsetOf)
	if err != nil {
		return fmt.Errorf("read %s/%d: %w", topic, partition, err)
	}
	return readRange(ctx, brokers, topic, partition, first[partition], end, log, handle)
}

// LastMatching returns the last record of one partition of topic below end
// for which match is true, or nil. It reads back from end a window at a
// time, growing, so that finding a recent record costs a read of what came
// after it, not of the whole partition.
func LastMatching(ctx context.Context, brokers []string, topic string, partition int, end int64, log *slog.Logger, match func(*kafka.Message) bool) (*kafka.Message, error) {
	first, err := listOffsets(ctx, brokers, topic, []int{partition}, kafka.FirstOffsetOf)
	if err != nil {
		return nil, fmt.Errorf("read %s/%d: %w", topic, partition, err)
	}
	window := int64(1024)
	for hi := end; hi > first[partition]; window *= 8 {
		from := max(first[partition], hi-window)
		var found *kafka.Message
		if err := readRange(ctx, brokers, topic, partition, from, hi, log, func(m kafka.Message) error {
			if match(&m) {
				found = &m
			}
			return nil
		}); err != nil {
			return nil, err
		}
		if found != nil {
			return found, nil
		}
		hi = from
	}
	return nil, nil
}

// ReadBack hands handle, in order, the last n records of one partition of
// topic below end (fewer if the partition holds fewer), and returns when
// the record before end is handled, handle fails, or ctx ends.
func ReadBack(ctx context.Context, brokers []string, topic string, partition int, end, n int64, log *slog.Logger, handle func(kafka.Message) error) error {
	first, err := listOffsets(ctx, brokers, topic, []int{partition}, kafka.FirstOffsetOf)
	if err != nil {
		return fmt.Errorf("read %s/%d: %w", topic, partition, err)
	}
	return readRange(ctx, brokers, topic, partition, max(first[partition], end-n), end, log, handle)
}

// readRange hands handle the records of one partition from offset from (or
// kafka.FirstOffset) up to end, in order.
func readRange(ctx context.Context, brokers []string, topic string, partition int, from, end int64, log *slog.Logger, handle func(kafka.Message) error) error {
	if from >= end {
		return nil // nothing below end, or no longer
	}
	r := PartitionReader(brokers, topic, partition, log)
	// Close waits for the reader's fetch in flight to give up, half a
	// second; a restore reading many partitions one after the other need
	// not wait for each.
	defer func() { go r.Close() }()
	if err := r.SetOffset(from); err != nil {
		return fmt.Errorf("read %s/%d: %w", topic, partition, err)
	}
	for {
		m, ok := nextMessage(ctx, r, log)
		if !ok {
			return fmt.Errorf("read %s/%d up to %d: %w", topic, partition, end, context.Cause(ctx))
		}
		if m.Offset >= end {
			return nil // compaction took the records before end away
		}
		if err := handle(m); err != nil {
			return err
		}
		if m.Offset+1 >= end {
			return nil
		}
	}
}

// CreateCompacted creates topic with partitions partitions, compacted by
// key, keeping every record at least minLag before compaction may replace
// it. A topic that exists is left as it is.
func CreateCompacted(ctx context.Context, brokers []string, topic string, partitions int, minLag time.Duration) error {
	c := newClient(brokers, 10*time.Second)
	resp, err := c.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: partitions, ReplicationFactor: -1,
		ConfigEntries: []kafka.ConfigEntry{
			{ConfigName: "cleanup.policy", ConfigValue: "compact"},
			{ConfigName: "min.compaction.lag.ms", ConfigValue: fmt.Sprint(minLag.Milliseconds())},
		},
	}}})
	if err != nil {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	if err := resp.Errors[topic]; err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	return nil
}

// ReadPartitions reads every partition of topic up to its end in ends
// (EndOffsets), all at once, and hands the records to handle in batches,
// one call at a time from the caller's goroutine: a partition's records in
// order, different partitions' interleaved. It returns when all are
// handled, or at the first error.
func ReadPartitions(ctx context.Context, brokers []string, topic string, ends map[int]int64, log *slog.Logger, handle func(partition int, batch []kafka.Message) error) error {
	return ReadPartitionsFrom(ctx, brokers, topic, nil, ends, log, handle)
}

// ReadPartitionsFrom is ReadPartitions beginning each partition at its
// offset in from (OffsetsAt); a partition not in from is read from its
// first record.
func ReadPartitionsFrom(ctx context.Context, brokers []string, topic string, from, ends map[int]int64, log *slog.Logger, handle func(partition int, batch []kafka.Message) error) error {
	const batchLen = 1024
	type batch struct {
		partition int
		msgs      []kafka.Message
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	batches := make(chan batch, 2*len(ends))
	var wg sync.WaitGroup
	for p, end := range ends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var msgs []kafka.Message
			send := func() error {
				select {
				case batches <- batch{p, msgs}:
					msgs = nil
					return nil
				case <-ctx.Done():
					return context.Cause(ctx)
				}
			}
			add := func(m kafka.Message) error {
				if msgs = append(msgs, m); len(msgs) == batchLen {
					return send()
				}
				return nil
			}
			var err error
			if first, ok := from[p]; ok {
				err = readRange(ctx, brokers, topic, p, first, end, log, add)
			} else {
				err = ReadPartition(ctx, brokers, topic, p, end, log, add)
			}
			if err == nil && len(msgs) > 0 {
				err = send()
			}
			if err != nil {
				cancel(err)
			}
		}()
	}
	go func() { wg.Wait(); close(batches) }()
	for b := range batches {
		if err := handle(b.partition, b.msgs); err != nil {
			cancel(err)
			for range batches { // let the readers see the cancel and end
			}
			return err
		}
	}
	return context.Cause(ctx)
}
