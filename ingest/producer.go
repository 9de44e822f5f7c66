package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/segmentio/kafka-go"
)

// Message is one record to produce; Topic must be set.
type Message = kafka.Message

// Header is a Kafka record header.
type Header = kafka.Header

// Producer writes walletguard's own records (decisions, account commands,
// dead letters). Writes are synchronous and retried until they succeed or the
// context ends, so a caller that marks offsets after Write never marks an
// event whose outputs are not in Kafka.
type Producer struct {
	w       *kafka.Writer
	log     *slog.Logger
	metrics *Metrics
}

// NewProducer makes a producer for the brokers.
func NewProducer(brokers []string, m *Metrics, log *slog.Logger) *Producer {
	return &Producer{
		w: &kafka.Writer{
			Addr: kafka.TCP(brokers...),
			// Murmur2 places keys on the same partitions as Java clients do,
			// so an account's commands stay ordered for any consumer.
			Balancer: &kafka.Murmur2Balancer{},
			// kafka-go allocates a batch's whole capacity up front, per
			// partition and write: at 10,000 that was 1.5 MB zeroed for a
			// batch of a few dozen decisions: about a third of the CPU the
			// daemon spent allocating.
			// BatchBytes bounds a batch anyway (~1,000 decisions).
			BatchSize: 512,
			// Kafka's default message.max.bytes is 1 MB; a larger batch is
			// refused whole.
			BatchBytes:             1_000_000,
			BatchTimeout:           2 * time.Millisecond,
			RequiredAcks:           kafka.RequireAll,
			AllowAutoTopicCreation: true,
			MaxAttempts:            3,
			WriteBackoffMin:        50 * time.Millisecond,
			WriteBackoffMax:        time.Second,
		},
		log: log, metrics: m,
	}
}

// Write produces msgs, retrying failed ones with backoff until all are
// acknowledged or ctx is done. stream names the kind of record for metrics
// ("decisions", "commands", "dlq").
func (p *Producer) Write(ctx context.Context, stream string, msgs []Message) error {
	backoff := 100 * time.Millisecond
	var lastErr string
	for len(msgs) > 0 {
		err := p.w.WriteMessages(ctx, msgs...)
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

// Close flushes and closes the writer.
func (p *Producer) Close() error { return p.w.Close() }

// Dead letters carry at most this much of the original key and value. A
// record far past the event size limit (a 10 MB message) cannot be replayed
// anyway, and in full it would exceed what the producer and the broker accept
// in one batch: the write would fail on every retry and stall the pipeline.
const (
	maxDeadLetterValue = 256 << 10
	maxDeadLetterKey   = 1 << 10
)

// DeadLetter builds the dead-letter record for a rejected record: the original
// key and bytes (cut to a bound, with the original size in a header), and
// why, in headers a human can read with kcat.
func DeadLetter(topic string, r *Record, reason, detail string) Message {
	m := Message{
		Topic: topic,
		Key:   r.Key,
		Value: r.Value,
		Headers: []Header{
			{Key: "walletguard-reject-reason", Value: []byte(reason)},
			{Key: "walletguard-reject-detail", Value: []byte(detail)},
			{Key: "walletguard-source", Value: fmt.Appendf(nil, "%s/%d/%d", r.Topic, r.Partition, r.Offset)},
			{Key: "walletguard-rejected-at", Value: []byte(r.Arrived.UTC().Format(time.RFC3339Nano))},
		},
	}
	if len(m.Value) > maxDeadLetterValue {
		m.Value = m.Value[:maxDeadLetterValue]
		m.Headers = append(m.Headers, Header{Key: "walletguard-truncated-value", Value: fmt.Appendf(nil, "%d", len(r.Value))})
	}
	if len(m.Key) > maxDeadLetterKey {
		m.Key = m.Key[:maxDeadLetterKey]
		m.Headers = append(m.Headers, Header{Key: "walletguard-truncated-key", Value: fmt.Appendf(nil, "%d", len(r.Key))})
	}
	return m
}
