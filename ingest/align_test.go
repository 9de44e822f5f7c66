package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A backlog spread over the partitions is handed on in event time: no
// record comes more than the skew after a newer one, though each partition
// is fetched a megabyte (hours of events) at a time. Unaligned, the same
// backlog goes back hours — a merchant's ten-minute windows read out of
// order. An event dated ahead of when it was produced stands where it was
// produced: otherwise its partition would wait for all the others to
// catch up, hours behind them from then on.
func TestBacklogIsHandedOnInEventTimeOrder(t *testing.T) {
	ctx, brokers := eventsBroker(t, 90*time.Second)
	p := NewProducer(brokers, NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	defer p.Close()
	const n = 40_000
	base := time.Now().Add(-13 * time.Hour).UTC()
	var msgs []Message
	for i := range n {
		// Produced as they happened (the record's time), the backlog of a
		// consumer that was away; a few events come dated most of a day
		// ahead of their clock, as event.MaxFutureSkew allows.
		ts := base.Add(time.Duration(i) * 12 * time.Hour / n)
		id, at := fmt.Sprintf("e-%d", i), ts
		if i%8000 == 4000 {
			id, at = fmt.Sprintf("ahead-%d", i), ts.Add(20*time.Hour)
		}
		msgs = append(msgs, Message{Topic: "events", Key: fmt.Appendf(nil, "acc-%d", i%977), Time: ts, Value: fmt.Appendf(nil,
			`{"event_id":%q,"type":"login","ts":%q,"account_id":"acc-%d","result":"success","method":"password","device_id":"d-%d","ip":"10.0.%d.%d"}`,
			id, at.Format(time.RFC3339Nano), i%977, i%977, i%200, i%250)})
	}
	if err := p.Write(ctx, "test", msgs); err != nil {
		t.Fatal(err)
	}

	reachBack := func(group string, skew time.Duration) (back time.Duration, waits, overdue float64) {
		m := NewMetrics(prometheus.NewRegistry())
		src := NewSource(SourceConfig{Brokers: brokers, Topics: []string{"events"}, GroupID: group,
			SessionTimeout: 6 * time.Second, CommitInterval: time.Second, Skew: skew}, m, slog.New(slog.DiscardHandler))
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() { _ = src.Run(rctx) }()
		var newest time.Time
		next := map[int]int64{}
		for got := 0; got < n; got++ {
			var r Record
			select {
			case r = <-src.Records():
			case <-ctx.Done():
				t.Fatalf("%s: %d of %d records handed on", group, got, n)
			}
			if r.Err != nil {
				t.Fatalf("%s: record %d/%d rejected: %v", group, r.Partition, r.Offset, r.Err)
			}
			if r.Offset != next[r.Partition] {
				t.Fatalf("%s: partition %d handed on offset %d, want %d", group, r.Partition, r.Offset, next[r.Partition])
			}
			next[r.Partition]++
			if strings.HasPrefix(r.Event.EventID, "ahead-") {
				continue
			}
			if r.Event.TS.After(newest) {
				newest = r.Event.TS
			}
			back = max(back, newest.Sub(r.Event.TS))
		}
		cancel()
		for range src.Records() {
		}
		return back, testutil.ToFloat64(m.AlignWaits), testutil.ToFloat64(m.AlignOverdue)
	}

	back, waits, overdue := reachBack("aligned", 0)
	if back > DefaultSkew {
		t.Errorf("aligned: a record came %v after a newer one, want at most %v", back, DefaultSkew)
	}
	if waits == 0 {
		t.Errorf("aligned: no record was held back (walletguard_partition_align_waits_total 0)")
	}
	if overdue != 0 {
		t.Errorf("aligned: %v records waited out the 5 s for a partition that did not move; the events dated ahead held their partitions back", overdue)
	}
	unaligned, _, _ := reachBack("unaligned", -1)
	if unaligned <= DefaultSkew {
		t.Errorf("unaligned: records came at most %v after a newer one; the backlog does not show what aligning is for", unaligned)
	}
	t.Logf("reach back: aligned %v (%v records held), unaligned %v", back, waits, unaligned)
}

// The oldest lane never waits; a newer one waits for it to come within the
// skew or run out of records, and one that does not move at all holds the
// others back once, for maxHold.
func TestLanesWaitForTheOldestPartition(t *testing.T) {
	waits, overdue := prometheus.NewCounter(prometheus.CounterOpts{Name: "w"}), prometheus.NewCounter(prometheus.CounterOpts{Name: "o"})
	a := newAligner(time.Minute, waits, overdue)
	a.maxHold = time.Hour
	ctx := context.Background()
	t0 := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)

	old, young := a.join(), a.join()
	a.handed(old, true)
	a.handed(young, true)
	passed := make(chan time.Time, 1)
	go func() {
		a.hold(ctx, young, t0.Add(2*time.Minute))
		passed <- time.Now()
	}()
	for young.at.Load() == unknownAt {
		time.Sleep(time.Millisecond)
	}
	oldest := make(chan bool)
	go func() { oldest <- a.hold(ctx, old, t0) }()
	select {
	case <-oldest:
	case <-time.After(5 * time.Second):
		t.Fatal("the oldest lane was held")
	}
	a.handed(old, true)
	select {
	case <-passed:
		t.Fatal("a record two minutes ahead of a partition with records to hand on was not held")
	case <-time.After(100 * time.Millisecond):
	}
	a.hold(ctx, old, t0.Add(30*time.Second)) // still more than a minute behind
	a.handed(old, true)
	select {
	case <-passed:
		t.Fatal("handed on while the other partition was still 90 s behind")
	case <-time.After(100 * time.Millisecond):
	}
	a.hold(ctx, old, t0.Add(61*time.Second))
	a.handed(old, true)
	select {
	case <-passed:
	case <-time.After(5 * time.Second):
		t.Fatal("still held with the other partition within the skew")
	}

	// A partition that runs out of records holds none back.
	go func() {
		a.hold(ctx, young, t0.Add(time.Hour))
		passed <- time.Now()
	}()
	for a.waiting.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	a.handed(old, false)
	select {
	case <-passed:
	case <-time.After(5 * time.Second):
		t.Fatal("held by a partition with nothing more to hand on")
	}
	a.handed(young, true)

	// One that never fetches (its leader away) delays the others once.
	a.maxHold = 50 * time.Millisecond
	stuck := a.join()
	start := time.Now()
	a.hold(ctx, young, t0.Add(2*time.Hour))
	a.handed(young, true)
	if waited := time.Since(start); waited < a.maxHold {
		t.Errorf("a lane that never started held the others %v, want %v", waited, a.maxHold)
	}
	start = time.Now()
	a.hold(ctx, young, t0.Add(3*time.Hour))
	if waited := time.Since(start); waited >= a.maxHold {
		t.Errorf("held again (%v) by a lane that was given up on", waited)
	}
	if got := testutil.ToFloat64(overdue); got != 1 {
		t.Errorf("walletguard_partition_align_overdue_total %v, want 1", got)
	}
	a.leave(stuck)
	if got := testutil.ToFloat64(waits); got != 3 {
		t.Errorf("walletguard_partition_align_waits_total %v, want 3 (the held records)", got)
	}
}

// backlog runs lanes fetchers of per records each through a, every lane
// at its own random pace in event time (records 0 to step apart), into one
// reader, as a Source's fetchers hand a backlog on; it returns the records'
// times in the order the reader took them.
func backlog(ctx context.Context, a *aligner, lanes, per int, step time.Duration) []int64 {
	out := make(chan int64, 1024)
	t0 := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC).UnixNano()
	ls := make([]*lane, lanes)
	for i := range ls {
		ls[i] = a.join()
	}
	var wg sync.WaitGroup
	for i, l := range ls {
		wg.Go(func() {
			defer a.leave(l)
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			at := t0
			for k := range per {
				at += rng.Int64N(int64(step))
				if !a.hold(ctx, l, time.Unix(0, at)) {
					return
				}
				out <- at
				a.handed(l, k < per-1)
			}
		})
	}
	go func() { wg.Wait(); close(out) }()
	got := make([]int64, 0, lanes*per)
	for at := range out {
		got = append(got, at)
	}
	return got
}

// Lanes racing through a backlog are never left waiting by a wakeup lost
// between them: with maxHold at an hour, one lost would stall the run past
// the test's deadline. And the backlog still comes out aligned.
func TestRacingLanesAreWokenAndAligned(t *testing.T) {
	waits, overdue := prometheus.NewCounter(prometheus.CounterOpts{Name: "w"}), prometheus.NewCounter(prometheus.CounterOpts{Name: "o"})
	a := newAligner(time.Minute, waits, overdue)
	a.maxHold = time.Hour
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const lanes, per = 8, 20_000
	// A minute every 3,000 records on average, lanes drifting apart by
	// more than that.
	got := backlog(ctx, a, lanes, per, 40*time.Millisecond)
	if ctx.Err() != nil || len(got) != lanes*per {
		t.Fatalf("%d of %d records handed on before the deadline: a waiting lane was not woken", len(got), lanes*per)
	}
	if testutil.ToFloat64(waits) == 0 {
		t.Fatal("no lane ever waited: the test does not exercise the wakeups")
	}
	// A record is handed on once every lane behind is within the skew of
	// it; a lane's records rise, so none handed on later can be more than
	// the skew (and the race of the last steps) older than the newest so far.
	var newest int64
	for i, at := range got {
		if back := time.Duration(newest - at); back > time.Minute+time.Second {
			t.Fatalf("record %d is %v older than one handed on before it", i, back)
		}
		newest = max(newest, at)
	}
}

func BenchmarkAlignBacklog(b *testing.B) {
	counter := func() prometheus.Counter { return prometheus.NewCounter(prometheus.CounterOpts{Name: "c"}) }
	waits := counter()
	a := newAligner(time.Minute, waits, counter())
	const lanes = 8
	// A minute every 300 records: a megabyte's fetch holds a few minutes
	// of a day's traffic, so lanes wait on each other's fetches.
	backlog(context.Background(), a, lanes, b.N/lanes+1, 400*time.Millisecond)
	b.ReportMetric(testutil.ToFloat64(waits)/float64(b.N), "waits/op")
}
