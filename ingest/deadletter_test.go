package ingest

import (
	"bytes"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// TestDeadLettersReadBackAsWritten: what walletguard dlq reads of a dead
// letter is what the pipeline wrote — reason, field, detail, where the
// record came from, when — and a record cut to the bound still says how
// large it was.
func TestDeadLettersReadBackAsWritten(t *testing.T) {
	at := time.Date(2026, 12, 3, 10, 0, 0, 123, time.UTC)
	big := append([]byte(`{"event_id":"e","x":"`), bytes.Repeat([]byte("a"), 300<<10)...)
	cases := []struct {
		name         string
		rec          Record
		field        string
		wantTrunc    bool
		wantKeySize  int
		wantValueLen int
	}{
		{"whole", Record{Topic: "wallet.events", Partition: 3, Offset: 77, Key: []byte("acc-1"), Value: []byte(`{"amount":"1"}`), Arrived: at}, "amount", false, 5, 14},
		{"cut", Record{Topic: "payments.v2", Partition: 0, Offset: 5, Key: []byte(strings.Repeat("k", 2000)), Value: big, Arrived: at}, "", true, 2000, maxDeadLetterValue},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := DeadLetter("walletguard.dlq", &c.rec, "wrong_type", c.field, "field \"amount\": string is not int64")
			km := kafka.Message{Topic: m.Topic, Partition: 2, Offset: 9, Key: m.Key, Value: m.Value}
			for _, h := range m.Headers {
				km.Headers = append(km.Headers, kafka.Header{Key: h.Key, Value: h.Value})
			}
			r := ReadRejected(&km)
			if r.Reason != "wrong_type" || r.Field != c.field || !strings.Contains(r.Detail, "amount") {
				t.Errorf("reason %q field %q detail %q", r.Reason, r.Field, r.Detail)
			}
			if r.At != "walletguard.dlq/2/9" || r.SourceTopic != c.rec.Topic || !strings.HasPrefix(r.Source, c.rec.Topic+"/") ||
				!strings.HasSuffix(r.Source, "/"+strconv.FormatInt(c.rec.Offset, 10)) {
				t.Errorf("at %q source %q topic %q", r.At, r.Source, r.SourceTopic)
			}
			if !r.RejectedAt.Equal(at) {
				t.Errorf("rejected at %v, want %v", r.RejectedAt, at)
			}
			if r.Truncated() != c.wantTrunc || r.KeySize != c.wantKeySize || r.ValueSize != len(c.rec.Value) || len(r.Value) != c.wantValueLen {
				t.Errorf("truncated %v, key %d of %d, value %d of %d", r.Truncated(), len(r.Key), r.KeySize, len(r.Value), r.ValueSize)
			}
		})
	}
}

// TestDeadLettersSinceBeginWhereTheBrokerSays: asked for the dead letters
// since a time, the read begins where the broker's time index puts it —
// last week's are not read at all — and the topic's whole count still
// comes back; a time after every dead letter reads none.
func TestDeadLettersSinceBeginWhereTheBrokerSays(t *testing.T) {
	const topic = "walletguard.dlq"
	ctx, brokers, p := stateBroker(t, topic)
	now := time.Now()
	letters := func(n int, at time.Time, key string) []Message {
		var out []Message
		for i := range n {
			rec := Record{Topic: "wallet.events", Offset: int64(i), Key: []byte(key), Value: []byte("{"), Arrived: at}
			m := DeadLetter(topic, &rec, "malformed_json", "", "unexpected end of JSON input")
			m.Time = at
			out = append(out, m)
		}
		return out
	}
	// The broker keeps the times of a partition's records in order, as
	// a producer writes them.
	for _, batch := range [][]Message{letters(300, now.Add(-7*24*time.Hour), "old"), letters(40, now, "new")} {
		if err := p.Write(ctx, "test", batch); err != nil {
			t.Fatal(err)
		}
	}
	read := func(since time.Time) (map[string]int, int64) {
		t.Helper()
		keys := map[string]int{}
		held, err := ReadDeadLetters(ctx, brokers, topic, since, slog.New(slog.DiscardHandler), func(batch []Rejected) error {
			for _, r := range batch {
				keys[string(r.Key)]++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return keys, held
	}
	if keys, held := read(time.Time{}); keys["old"] != 300 || keys["new"] != 40 || held != 340 {
		t.Errorf("all of them: read %v of %d held", keys, held)
	}
	if keys, held := read(now.Add(-time.Hour)); keys["old"] != 0 || keys["new"] != 40 || held != 340 {
		t.Errorf("since an hour ago: read %v of %d held, want only the 40 new of 340", keys, held)
	}
	if keys, held := read(now.Add(time.Hour)); len(keys) != 0 || held != 340 {
		t.Errorf("since an hour from now: read %v of %d held, want none", keys, held)
	}
}
