package app

import (
	"errors"
	"log/slog"
	"testing"

	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/ingest"
	"github.com/walletguard/walletguard/rules"
)

// TestRecordsAheadKeepsOrder: records taken through the lookahead come out
// in the order they were sent, dead letters included, and the end of the
// input is reported only after the last one.
func TestRecordsAheadKeepsOrder(t *testing.T) {
	in := make(chan ingest.Record, 8)
	set, err := rules.Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	r := recordsAhead{in: in, engine: detector.New(detector.Config{}, set, nil, slog.New(slog.DiscardHandler))}
	if _, _, got := r.take(); got {
		t.Fatal("took a record from an empty input")
	}
	for i := range 5 {
		rec := ingest.Record{Offset: int64(i)}
		rec.Event.AccountID = "acc"
		if i == 2 {
			rec.Err = errors.New("malformed")
		}
		in <- rec
	}
	close(in)
	var got []int64
	for {
		r.fill()
		rec, ok, took := r.take()
		if !took {
			t.Fatal("records were waiting but none was taken")
		}
		if !ok {
			break
		}
		got = append(got, rec.Offset)
	}
	if len(got) != 5 {
		t.Fatalf("took offsets %v, want 0..4", got)
	}
	for i, o := range got {
		if o != int64(i) {
			t.Fatalf("took offsets %v, want 0..4 in order", got)
		}
	}
}
