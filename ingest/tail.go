package ingest

import (
	"context"
	"fmt"
	"log/slog"
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
			tailPartition(ctx, brokers, topic, p.ID, log, handle)
		}()
	}
	wg.Wait()
}

func topicPartitions(ctx context.Context, broker, topic string) ([]kafka.Partition, error) {
	var d kafka.Dialer
	conn, err := d.DialContext(ctx, "tcp", broker)
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

func tailPartition(ctx context.Context, brokers []string, topic string, partition int, log *slog.Logger, handle func(int, kafka.Message)) {
	r := PartitionReader(brokers, topic, partition, log)
	defer r.Close()
	if err := r.SetOffset(kafka.FirstOffset); err != nil {
		log.Error("set start offset", "topic", topic, "partition", partition, "err", err)
		return
	}
	for {
		m, ok := nextMessage(ctx, r, log)
		if !ok {
			return
		}
		handle(partition, m)
	}
}

// EndOffsets returns, per partition of topic, the offset the next record
// written there will get: a reader that has handed on every record below
// it has read all the topic held when asked.
func EndOffsets(ctx context.Context, brokers []string, topic string) (map[int]int64, error) {
	if len(brokers) == 0 {
		return nil, fmt.Errorf("end offsets of %s: no broker", topic)
	}
	parts, err := topicPartitions(ctx, brokers[0], topic)
	if err != nil {
		return nil, err
	}
	req := make([]kafka.OffsetRequest, len(parts))
	for i, p := range parts {
		req[i] = kafka.LastOffsetOf(p.ID)
	}
	c := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	resp, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: req}})
	if err != nil {
		return nil, fmt.Errorf("end offsets of %s: %w", topic, err)
	}
	ends := make(map[int]int64, len(parts))
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("end offset of %s/%d: %w", topic, p.Partition, p.Error)
		}
		ends[p.Partition] = p.LastOffset
	}
	return ends, nil
}
