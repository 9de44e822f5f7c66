package ingest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// follow runs a standby's readers: every partition of the topics, from
// where this process's state is, handed on only up to the offsets the
// group has committed. The owner commits an offset once the outputs of the
// records before it are durable, so the standby learns only from records
// that have been decided, and stays about the owner's checkpoint interval
// and a commit interval behind it. It returns when ctx ends (the
// generation does).
func (s *Source) follow(ctx context.Context) {
	parts, err := s.partitions(ctx)
	if err != nil {
		return // ctx ended
	}
	limits := &committedOffsets{at: map[topicPartition]int64{}, changed: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(s.cfg.CommitInterval)
		defer tick.Stop()
		for {
			if err := limits.poll(ctx, s.cfg.Brokers, s.cfg.GroupID, parts); err != nil && ctx.Err() == nil {
				s.log.Debug("standby: committed offsets not read; retrying", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	s.log.Info("standby follows the owner's committed offsets", "group", s.cfg.GroupID, "partitions", len(parts))
	for _, tp := range parts {
		s.mu.Lock()
		start, ok := s.fetched[tp]
		s.mu.Unlock()
		if !ok {
			start = kafka.FirstOffset
			if s.cfg.StartOffset != nil {
				start = s.cfg.StartOffset(tp.topic, tp.partition, kafka.FirstOffset)
			}
			// The state holds exactly the events before start: a takeover
			// before the first record is followed continues from there,
			// not from the committed offset with the events between unseen.
			s.mu.Lock()
			s.fetched[tp], s.followed[tp] = start, true
			s.mu.Unlock()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.fetchPartition(ctx, tp.topic, tp.partition, start, fetchPlan{limits: limits, followBelow: -1, observeBelow: -1, seenBelow: -1}, nil)
		}()
	}
	wg.Wait()
	s.metrics.FollowLag.Reset() // not following any more
}

// partitions lists the partitions of the source's topics, retrying until
// the broker answers or ctx ends.
func (s *Source) partitions(ctx context.Context) ([]topicPartition, error) {
	for {
		parts, err := s.readPartitions(ctx)
		if err == nil {
			return parts, nil
		}
		s.log.Debug("standby: partitions not read; retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func (s *Source) readPartitions(ctx context.Context) ([]topicPartition, error) {
	var out []topicPartition
	for _, t := range s.cfg.Topics {
		ps, err := topicPartitions(ctx, s.cfg.Brokers[0], t)
		if err != nil {
			return nil, err
		}
		for _, p := range ps {
			out = append(out, topicPartition{p.Topic, p.ID})
		}
	}
	return out, nil
}

// committedOffsets are the group's committed offsets as a standby last
// read them; readers wait on them.
type committedOffsets struct {
	mu      sync.Mutex
	at      map[topicPartition]int64
	changed chan struct{} // closed and replaced whenever at changes
}

// CommittedOffsets returns the offsets group has committed of the
// partitions asked for, by topic; a partition with none is left out.
func CommittedOffsets(ctx context.Context, brokers []string, group string, partitions map[string][]int) (map[string]map[int]int64, error) {
	client := newClient(brokers, 10*time.Second)
	resp, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: partitions})
	if err == nil {
		err = resp.Error
	}
	if err != nil {
		return nil, fmt.Errorf("committed offsets of group %s: %w", group, err)
	}
	out := map[string]map[int]int64{}
	for topic, ps := range resp.Topics {
		for _, p := range ps {
			if p.Error == nil && p.CommittedOffset >= 0 {
				if out[topic] == nil {
					out[topic] = map[int]int64{}
				}
				out[topic][p.Partition] = p.CommittedOffset
			}
		}
	}
	return out, nil
}

// poll reads the group's committed offsets of parts.
func (c *committedOffsets) poll(ctx context.Context, brokers []string, group string, parts []topicPartition) error {
	req := map[string][]int{}
	for _, tp := range parts {
		req[tp.topic] = append(req[tp.topic], tp.partition)
	}
	at, err := CommittedOffsets(ctx, brokers, group, req)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	moved := false
	for topic, ps := range at {
		for p, o := range ps {
			tp := topicPartition{topic, p}
			if o > c.at[tp] {
				c.at[tp], moved = o, true
			}
		}
	}
	if moved {
		close(c.changed)
		c.changed = make(chan struct{})
	}
	return nil
}

// wait blocks until the group has committed past offset on tp, and reports
// false if ctx ended first. lag is set to how many committed records
// follow the one at offset.
func (c *committedOffsets) wait(ctx context.Context, tp topicPartition, offset int64, lag prometheus.Gauge) bool {
	for {
		c.mu.Lock()
		at, changed := c.at[tp], c.changed
		c.mu.Unlock()
		lag.Set(float64(max(0, at-offset-1)))
		if at > offset {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-changed:
		}
	}
}
