package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol/metadata"
)

// Message is one record to produce; Topic must be set.
type Message = kafka.Message

// Header is a Kafka record header.
type Header = kafka.Header

// Producer writes walletguard's own records (decisions, account commands,
// dead letters). Writes are synchronous and retried until they succeed or the
// context ends, so a caller that marks offsets after Write never marks an
// event whose outputs are not in Kafka.
//
// It sends each write at once, one produce request per partition, rather
// than through kafka-go's Writer: the Writer waits for its batch timeout
// before sending a batch that is not full, and allocates every batch's whole
// capacity up front (BatchSize messages, per partition and write). Callers
// batch already — the pipeline hands over what it decided while the last
// write was in flight — so both cost without helping: at 16k events/s the
// Writer's batches were half of what the whole process allocated, a
// garbage collection every two seconds, and its timer 2 ms of every write.
type Producer struct {
	client    *kafka.Client
	transport *kafka.Transport
	// Murmur2 places keys on the same partitions as Java clients do, so
	// an account's commands stay ordered for any consumer.
	balancer kafka.Murmur2Balancer
	codec    kafka.Compression // of every batch; 0: none
	log      *slog.Logger
	metrics  *Metrics
}

// compressions are the codecs kafka.compression names, as Kafka's
// compression.type does.
var compressions = map[string]kafka.Compression{
	"none": 0, "gzip": kafka.Gzip, "snappy": kafka.Snappy, "lz4": kafka.Lz4, "zstd": kafka.Zstd,
}

// Compress makes the producer compress every batch it sends with the codec
// compressions names; call it before the first Write. Consumers of any
// Kafka client decompress on their own; brokers store the batches as sent.
func (p *Producer) Compress(name string) error {
	c, ok := compressions[name]
	if !ok {
		return fmt.Errorf("unknown compression %q (none, gzip, snappy, lz4 or zstd)", name)
	}
	p.codec = c
	return nil
}

// Limits of one produce request. Kafka's default message.max.bytes is 1 MB
// and a larger batch is refused whole.
const (
	maxRequestBytes = 1_000_000
	// Per record, Kafka's record framing (lengths, deltas, attributes) at
	// most; a bound, so a request never grows past the limit.
	recordOverhead = 32
	produceTimeout = 10 * time.Second
)

// NewProducer makes a producer for the brokers.
func NewProducer(brokers []string, m *Metrics, log *slog.Logger) *Producer {
	t := newTransport() // its own: Close drops its connections
	return &Producer{
		client:    &kafka.Client{Addr: kafka.TCP(brokers...), Transport: t, Timeout: produceTimeout},
		transport: t,
		log:       log, metrics: m,
	}
}

// Write produces msgs, retrying failed ones with backoff until all are
// acknowledged or ctx is done. stream names the kind of record for metrics
// ("decisions", "commands", "dlq").
func (p *Producer) Write(ctx context.Context, stream string, msgs []Message) error {
	backoff := 100 * time.Millisecond
	var lastErr string
	for len(msgs) > 0 {
		err := p.send(ctx, msgs)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("write %s: %w", stream, ctx.Err())
		}
		p.metrics.ProduceErrs.WithLabelValues(stream).Inc()
		var werrs kafka.WriteErrors
		if errors.As(err, &werrs) && len(werrs) == len(msgs) {
			failed := msgs[:0:0]
			var first error
			for i, e := range werrs {
				if e != nil {
					failed = append(failed, msgs[i])
					if first == nil {
						first = e
					}
				}
			}
			msgs = failed
			err = fmt.Errorf("%d of %d records failed, first: %w", len(failed), len(werrs), first)
		}
		if s := err.Error(); s != lastErr { // log when the error changes, not on every try
			p.log.Warn("produce failed; retrying", "stream", stream, "pending", len(msgs), "err", err)
			lastErr = s
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("write %s: %w", stream, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
	return nil
}

// request is the records of one produce request: some of a write's
// messages, all for one partition, in the order they were given.
type request struct {
	topic     string
	partition int
	idx       []int // into the write's messages
	bytes     int
	err       error
}

// send produces msgs once. It returns nil, kafka.WriteErrors with one entry
// per message when some requests failed, or another error when none could
// be sent.
func (p *Producer) send(ctx context.Context, msgs []Message) error {
	numbers := make(map[string][]int, 1) // partition numbers by topic
	for i := range msgs {
		t := msgs[i].Topic
		if _, ok := numbers[t]; ok {
			continue
		}
		n, err := p.partitions(ctx, t)
		if err != nil {
			return fmt.Errorf("partitions of %s: %w", t, err)
		}
		numbers[t] = partitionNumbers(n)
	}
	// Each partition's requests, the last one being filled.
	perPartition := make(map[topicPartition][]*request, 8)
	for i := range msgs {
		m := &msgs[i]
		tp := topicPartition{m.Topic, p.balancer.Balance(*m, numbers[m.Topic]...)}
		size := len(m.Key) + len(m.Value) + recordOverhead
		for _, h := range m.Headers {
			size += len(h.Key) + len(h.Value) + recordOverhead
		}
		reqs := perPartition[tp]
		if len(reqs) == 0 || reqs[len(reqs)-1].bytes+size > maxRequestBytes {
			reqs = append(reqs, &request{topic: tp.topic, partition: tp.partition})
			perPartition[tp] = reqs
		}
		r := reqs[len(reqs)-1]
		r.idx = append(r.idx, i)
		r.bytes += size
	}
	// Partitions are written side by side, the requests of one partition
	// one after the other, so that its records keep their order (an
	// account's commands). A failed request fails those after it: they
	// wait for the retry rather than overtake it.
	now := time.Now()
	var wg sync.WaitGroup
	for _, reqs := range perPartition {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			for _, r := range reqs {
				if err == nil {
					err = p.produce(ctx, msgs, r, now)
				}
				r.err = err
			}
		}()
	}
	wg.Wait()
	var werrs kafka.WriteErrors
	for _, reqs := range perPartition {
		for _, r := range reqs {
			if r.err == nil {
				continue
			}
			if werrs == nil {
				werrs = make(kafka.WriteErrors, len(msgs))
			}
			for _, j := range r.idx {
				werrs[j] = r.err
			}
		}
	}
	if werrs != nil {
		return werrs
	}
	return nil
}

// produce sends one request and waits for the brokers' acknowledgement.
func (p *Producer) produce(ctx context.Context, msgs []Message, r *request, now time.Time) error {
	res, err := p.client.Produce(ctx, &kafka.ProduceRequest{
		Topic: r.topic, Partition: r.partition, RequiredAcks: kafka.RequireAll, Compression: p.codec,
		Records: &records{msgs: msgs, idx: r.idx, now: now},
	})
	switch {
	case err != nil:
		return fmt.Errorf("produce to %s/%d: %w", r.topic, r.partition, err)
	case res.Error != nil:
		return fmt.Errorf("produce to %s/%d: %w", r.topic, r.partition, res.Error)
	}
	for _, e := range res.RecordErrors {
		return fmt.Errorf("produce to %s/%d: record refused: %w", r.topic, r.partition, e)
	}
	return nil
}

// KeyPartition is the partition of a topic with n partitions that the
// Producer writes a record with key to.
func KeyPartition(key []byte, n int) int {
	return kafka.Murmur2Balancer{}.Balance(kafka.Message{Key: key}, partitionNumbers(n)...)
}

// partitionNumbers is 0 … n-1, as a balancer takes them.
func partitionNumbers(n int) []int {
	ps := make([]int, n)
	for i := range ps {
		ps[i] = i
	}
	return ps
}

// partitions returns how many partitions topic has, creating it if the
// brokers allow (kafka-go's Transport caches the answer).
func (p *Producer) partitions(ctx context.Context, topic string) (int, error) {
	res, err := p.transport.RoundTrip(ctx, p.client.Addr, &metadata.Request{
		TopicNames: []string{topic}, AllowAutoTopicCreation: true,
	})
	if err != nil {
		return 0, err
	}
	for _, t := range res.(*metadata.Response).Topics {
		if t.Name != topic {
			continue
		}
		if t.ErrorCode != 0 {
			return 0, kafka.Error(t.ErrorCode)
		}
		if len(t.Partitions) == 0 {
			return 0, kafka.UnknownTopicOrPartition
		}
		return len(t.Partitions), nil
	}
	return 0, kafka.UnknownTopicOrPartition
}

// records reads one request's messages as Kafka records, without copying
// them: the key and value readers are reused from record to record, as
// kafka-go reads each record whole before asking for the next.
type records struct {
	msgs       []Message
	idx        []int
	now        time.Time // for messages without a time
	next       int
	rec        kafka.Record
	key, value bytesReader
}

func (r *records) ReadRecord() (*kafka.Record, error) {
	if r.next >= len(r.idx) {
		return nil, io.EOF
	}
	m := &r.msgs[r.idx[r.next]]
	r.next++
	r.rec = kafka.Record{Time: m.Time, Headers: m.Headers}
	if r.rec.Time.IsZero() {
		r.rec.Time = r.now
	}
	if m.Key != nil {
		r.key.Reset(m.Key)
		r.rec.Key = &r.key
	}
	if m.Value != nil {
		r.value.Reset(m.Value)
		r.rec.Value = &r.value
	}
	return &r.rec, nil
}

type bytesReader struct{ bytes.Reader }

func (*bytesReader) Close() error { return nil }

// Close closes the producer's connections.
func (p *Producer) Close() error {
	p.transport.CloseIdleConnections()
	return nil
}
