package ingest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/segmentio/kafka-go"
)

// The headers of a dead letter: why its record was rejected and where it
// came from, readable with kcat -f '%h'.
const (
	HeaderRejectReason   = "walletguard-reject-reason" // a fixed code: event.Reason
	HeaderRejectField    = "walletguard-reject-field"  // the field at fault; absent when the whole value is
	HeaderRejectDetail   = "walletguard-reject-detail" // which field, which value, in words
	HeaderSource         = "walletguard-source"        // topic/partition/offset of the rejected record
	HeaderRejectedAt     = "walletguard-rejected-at"   // when it arrived, RFC 3339
	HeaderTruncatedValue = "walletguard-truncated-value"
	HeaderTruncatedKey   = "walletguard-truncated-key"
)

// Dead letters carry at most this much of the original key and value. A
// record far past the event size limit (a 10 MB message) cannot be replayed
// anyway, and in full it would exceed what the producer and the broker accept
// in one batch: the write would fail on every retry and stall the pipeline.
const maxDeadLetterValue = 256 << 10

// MaxDeadLetterKey bounds the key kept of a rejected record, in a dead
// letter and in analytics: an account id is at most 128 characters.
const MaxDeadLetterKey = 1 << 10

// Place names where a record is in Kafka, as dead letters and analysts
// see it: topic/partition/offset.
func Place(topic string, partition int, offset int64) string {
	return topic + "/" + strconv.Itoa(partition) + "/" + strconv.FormatInt(offset, 10)
}

// DeadLetter builds the dead-letter record for a rejected record: the original
// key and bytes (cut to a bound, with the original size in a header), and
// why, in headers a human can read with kcat.
func DeadLetter(topic string, r *Record, reason, field, detail string) Message {
	m := Message{
		Topic: topic,
		Key:   r.Key,
		Value: r.Value,
		Headers: []Header{
			{Key: HeaderRejectReason, Value: []byte(reason)},
			{Key: HeaderRejectDetail, Value: []byte(detail)},
			{Key: HeaderSource, Value: []byte(Place(r.Topic, r.Partition, r.Offset))},
			{Key: HeaderRejectedAt, Value: []byte(r.Arrived.UTC().Format(time.RFC3339Nano))},
		},
	}
	if field != "" {
		m.Headers = append(m.Headers, Header{Key: HeaderRejectField, Value: []byte(field)})
	}
	if len(m.Value) > maxDeadLetterValue {
		m.Value = m.Value[:maxDeadLetterValue]
		m.Headers = append(m.Headers, Header{Key: HeaderTruncatedValue, Value: fmt.Appendf(nil, "%d", len(r.Value))})
	}
	if len(m.Key) > MaxDeadLetterKey {
		m.Key = m.Key[:MaxDeadLetterKey]
		m.Headers = append(m.Headers, Header{Key: HeaderTruncatedKey, Value: fmt.Appendf(nil, "%d", len(r.Key))})
	}
	return m
}

// Rejected is a dead letter read back: the rejected record and why.
type Rejected struct {
	At          string    // the dead letter's own place: topic/partition/offset
	Source      string    // the rejected record's place: topic/partition/offset
	SourceTopic string    // the topic of Source
	RejectedAt  time.Time // zero if the header is missing or unreadable
	Reason      string
	Field       string
	Detail      string
	Key, Value  []byte
	// KeySize and ValueSize are the original sizes: larger than the key and
	// value held when the dead letter carries only their beginning.
	KeySize, ValueSize int
}

// Truncated reports whether the dead letter holds only the beginning of the
// rejected record.
func (r *Rejected) Truncated() bool { return r.ValueSize > len(r.Value) || r.KeySize > len(r.Key) }

// exportedRejected is one line of an export. Value is the rejected record
// as it was sent when that is valid UTF-8 (a JSON string, so that jq can
// read it with fromjson), otherwise ValueBase64; Key likewise.
type exportedRejected struct {
	DeadLetter  string    `json:"dead_letter,omitempty"`
	Source      string    `json:"source"`
	RejectedAt  time.Time `json:"rejected_at,omitzero"`
	Reason      string    `json:"reason"`
	Field       string    `json:"field,omitempty"`
	Detail      string    `json:"detail"`
	Key         string    `json:"key"`
	KeyBase64   string    `json:"key_base64,omitempty"`
	Value       *string   `json:"value,omitempty"`
	ValueBase64 string    `json:"value_base64,omitempty"`
	// Truncated: the dead letter holds only the first bytes of a record
	// of ValueSize bytes.
	Truncated bool `json:"truncated,omitempty"`
	ValueSize int  `json:"value_size"`
}

// AppendJSON appends r to b as one line of NDJSON, newline included: the
// shape walletguard dlq --export and a replay's rejected.ndjson share, so
// that one script fixes the records of both.
func (r *Rejected) AppendJSON(b []byte) ([]byte, error) {
	x := exportedRejected{DeadLetter: r.At, Source: r.Source, RejectedAt: r.RejectedAt, Reason: r.Reason, Field: r.Field,
		Detail: r.Detail, Truncated: r.Truncated(), ValueSize: r.ValueSize}
	if utf8.Valid(r.Key) {
		x.Key = string(r.Key)
	} else {
		x.KeyBase64 = base64.StdEncoding.EncodeToString(r.Key)
	}
	if utf8.Valid(r.Value) {
		v := string(r.Value)
		x.Value = &v
	} else {
		x.ValueBase64 = base64.StdEncoding.EncodeToString(r.Value)
	}
	js, err := json.Marshal(&x)
	if err != nil {
		return b, fmt.Errorf("export rejected %s: %w", r.Source, err)
	}
	return append(append(b, js...), '\n'), nil
}

// ReadRejected reads a dead letter written by DeadLetter. A record without
// its headers (written by something else) reads with empty reasons.
func ReadRejected(m *kafka.Message) Rejected {
	r := Rejected{
		At:  Place(m.Topic, m.Partition, m.Offset),
		Key: m.Key, Value: m.Value, KeySize: len(m.Key), ValueSize: len(m.Value),
	}
	for _, h := range m.Headers {
		v := string(h.Value)
		switch h.Key {
		case HeaderRejectReason:
			r.Reason = v
		case HeaderRejectField:
			r.Field = v
		case HeaderRejectDetail:
			r.Detail = v
		case HeaderSource:
			r.Source = v
			if i := strings.LastIndexByte(v, '/'); i > 0 {
				if j := strings.LastIndexByte(v[:i], '/'); j > 0 {
					r.SourceTopic = v[:j]
				}
			}
		case HeaderRejectedAt:
			r.RejectedAt, _ = time.Parse(time.RFC3339Nano, v)
		case HeaderTruncatedValue:
			if n, err := strconv.Atoi(v); err == nil && n > r.ValueSize {
				r.ValueSize = n
			}
		case HeaderTruncatedKey:
			if n, err := strconv.Atoi(v); err == nil && n > r.KeySize {
				r.KeySize = n
			}
		}
	}
	return r
}

// sinceSlack is how much earlier than asked ReadDeadLetters begins: a dead
// letter is written after its record was rejected, but a broker stamping
// records with its own clock (LogAppendTime) may run behind walletguard's.
const sinceSlack = 5 * time.Minute

// ReadDeadLetters hands handle, in batches, the dead letters topic holds up
// to its end when called — all of them, or with since set, those written
// from a little before since on (the broker's time index finds where they
// begin in each partition, so asking for the last hour of a large topic
// reads about an hour of it; the caller filters on RejectedAt). One
// partition's come in order (one account's records keep their order, as the topic is
// keyed by account), partitions interleaved. It returns how many records
// the topic held; a topic that does not exist holds none.
func ReadDeadLetters(ctx context.Context, brokers []string, topic string, since time.Time, log *slog.Logger, handle func([]Rejected) error) (int64, error) {
	ends, err := EndOffsets(ctx, brokers, topic)
	if errors.Is(err, kafka.UnknownTopicOrPartition) || (err == nil && len(ends) == 0) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	firsts, err := FirstOffsets(ctx, brokers, topic)
	if err != nil {
		return 0, err
	}
	var held int64
	for p, end := range ends {
		held += end - firsts[p]
	}
	from := firsts
	if !since.IsZero() {
		if from, err = OffsetsAt(ctx, brokers, topic, since.Add(-sinceSlack)); err != nil {
			return held, err
		}
		for p, end := range ends {
			if _, ok := from[p]; !ok {
				from[p] = end // nothing written that late
			}
		}
	}
	var out []Rejected
	err = ReadPartitionsFrom(ctx, brokers, topic, from, ends, log, func(_ int, batch []kafka.Message) error {
		out = out[:0]
		for i := range batch {
			out = append(out, ReadRejected(&batch[i]))
		}
		return handle(out)
	})
	if err != nil {
		return held, fmt.Errorf("read %s: %w", topic, err)
	}
	return held, nil
}
