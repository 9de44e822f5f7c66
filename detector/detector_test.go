package detector

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	gojson "github.com/goccy/go-json"

	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/rules"
	"github.com/walletguard/walletguard/sim"
)

func TestSlidingWindowOnEventTime(t *testing.T) {
	var w win
	base := uint32(1_000_000 - 1_000_000%min10)
	for i := 0; i < 6; i++ {
		w.add(base+uint32(i*60), min10, 1) // one a minute
	}
	if got := w.count(base+360, min10); got != 6 {
		t.Fatalf("count within the window = %d, want 6", got)
	}
	// Half a window later, about half of the previous bucket still counts.
	if got := w.count(base+min10+300, min10); got != 3 {
		t.Fatalf("count half a window later = %d, want 3", got)
	}
	if got := w.count(base+3*min10, min10); got != 0 {
		t.Fatalf("count long after = %d, want 0", got)
	}
	// A late event inside the previous bucket still counts; an older one does not.
	w.add(base+min10+10, min10, 1)
	w.add(base+100, min10, 1)
	w.add(base-2*min10, min10, 1)
	if got := w.count(base+min10+10, min10); got != 8 {
		t.Fatalf("count with late events = %d, want 8", got)
	}
}

// An event far older than a merchant's 10-minute windows — delivered late,
// or decided again after a takeover behind what was counted since — is not
// judged by the later minutes they hold: their failing users and the
// current bucket's failure rate read together as an outage that never was.
func TestALateAttemptIsNotJudgedByLaterMinutes(t *testing.T) {
	e := newEngine(t, time.Minute)
	t0 := time.Date(2026, 11, 1, 8, 0, 0, 0, time.UTC)
	n := 0
	attempt := func(at time.Time, acc, status string) []Decision {
		n++
		ev := event.Event{EventID: fmt.Sprintf("pa-%d", n), Type: event.TypePaymentAttempt, TypeName: "payment_attempt", TS: at,
			AccountID: acc, PaymentID: fmt.Sprintf("pay-%d", n), Attempt: 1, Status: status, MerchantID: "m-late",
			Amount: 50_000, Currency: "IDR", BalanceAfter: -1}
		if status == "failed" {
			ev.ErrorCode = "MERCHANT_UNAVAILABLE"
		}
		out, _ := e.Process(&ev, nil)
		return out
	}
	spike := func(ds []Decision) bool {
		for _, d := range ds {
			for _, h := range d.Rules {
				if h.ID == "merchant_failure_spike" {
					return true
				}
			}
		}
		return false
	}
	// Three hours of a merchant failing one attempt in ten, each failure a
	// different user's; then a new bucket opens with two failures.
	for i := range 180 {
		status := "succeeded"
		if i%10 == 0 {
			status = "failed"
		}
		if ds := attempt(t0.Add(time.Duration(i)*time.Minute), fmt.Sprintf("acc-%d", i), status); spike(ds) {
			t.Fatalf("an outage at minute %d of a merchant failing one attempt in ten", i)
		}
	}
	now := t0.Add(180 * time.Minute)
	for i := range 2 {
		if spike(attempt(now.Add(time.Duration(i)*time.Second), fmt.Sprintf("acc-new-%d", i), "failed")) {
			t.Fatal("an outage from two failing users")
		}
	}
	if spike(attempt(now.Add(-2*time.Hour), "acc-late", "failed")) {
		t.Error("a failed attempt two hours late read the minutes after it as a merchant outage")
	}
}

func newEngine(t testing.TB, lateness time.Duration) *Engine {
	t.Helper()
	set, err := rules.Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	return New(Config{AllowedLateness: lateness, IdleExpiry: 30 * 24 * time.Hour,
		Thresholds: Thresholds{Review: 40, StepUp: 60, Freeze: 85}}, set, nil, slog.New(slog.DiscardHandler))
}

func genEvents(t testing.TB, accounts int, seed uint64, days float64) []event.Event {
	t.Helper()
	cfg := sim.DefaultConfig(accounts)
	cfg.Seed = seed
	cfg.HistoryDays = 2
	cfg.Duration = time.Duration(days * 24 * float64(time.Hour))
	g := sim.New(cfg)
	var out []event.Event
	for {
		it, ok := g.Next()
		if !ok {
			return out
		}
		out = append(out, it.Event)
	}
}

// genRaw renders generated traffic into one pointer-free buffer, so that the
// benchmark's input does not load the garbage collector.
func genRaw(t testing.TB, accounts int, seed uint64, days float64) [][]byte {
	return genRawHistory(t, accounts, seed, 2, days).raw
}

// rawStream is generated traffic: history (the first warm events) builds
// habits, the rest is the days asked for.
type rawStream struct {
	raw  [][]byte
	warm int
}

// genRawHistory is genRaw with historyDays of habit-forming traffic before
// the days measured.
func genRawHistory(t testing.TB, accounts int, seed uint64, historyDays, days float64) rawStream {
	t.Helper()
	key := rawKey{accounts, seed, historyDays, days}
	if out, ok := rawCache[key]; ok {
		return out
	}
	defer func() { runtime.GC() }()
	// Generating a million accounts' stream takes minutes; comparing two
	// builds runs each many times, so they may share it through a file.
	var file string
	if dir := os.Getenv("WALLETGUARD_BENCH_STREAMS"); dir != "" {
		file = filepath.Join(dir, fmt.Sprintf("stream-%d-%d-%g-%g.ndjson", accounts, seed, historyDays, days))
		if st, err := loadRawStream(file); err == nil {
			rawCache[key] = st
			return st
		} else if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("load generated stream: %v", err)
		}
	}
	cfg := sim.DefaultConfig(accounts)
	cfg.Seed = seed
	cfg.HistoryDays = historyDays
	cfg.Duration = time.Duration(days * 24 * float64(time.Hour))
	g := sim.New(cfg)
	var out rawBlocks
	warm := 0
	warmUntil := cfg.Start // without a history, the first half is one
	if historyDays == 0 {
		warmUntil = cfg.Start.Add(cfg.Duration / 2)
	}
	for {
		it, ok := g.Next()
		if !ok {
			break
		}
		if it.Event.TS.Before(warmUntil) {
			warm++
		}
		j, err := event.Marshal(&it.Event)
		if err != nil {
			t.Fatal(err)
		}
		out.add(j)
	}
	rawCache[key] = rawStream{out.raw, warm}
	if file != "" {
		if err := saveRawStream(file, rawCache[key]); err != nil {
			t.Fatalf("save generated stream: %v", err)
		}
	}
	return rawCache[key]
}

// saveRawStream writes st as NDJSON after a line with its warm count, to a
// temporary file renamed into place, so that a run stopped half way leaves
// no stream that looks whole.
func saveRawStream(file string, st rawStream) error {
	tmp := file + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	fmt.Fprintf(w, "%d\n", st.warm)
	for _, r := range st.raw {
		w.Write(r)
		w.WriteByte('\n')
	}
	if err := errors.Join(w.Flush(), f.Close()); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	return os.Rename(tmp, file)
}

// loadRawStream reads what saveRawStream wrote, into blocks as
// genRawHistory lays them out (rawBlocks).
func loadRawStream(file string) (rawStream, error) {
	f, err := os.Open(file)
	if err != nil {
		return rawStream{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var st rawStream
	if !sc.Scan() {
		return st, fmt.Errorf("%s: empty", file)
	}
	if st.warm, err = strconv.Atoi(sc.Text()); err != nil {
		return st, fmt.Errorf("%s: warm count: %w", file, err)
	}
	var blocks rawBlocks
	for sc.Scan() {
		blocks.add(sc.Bytes())
	}
	if err := sc.Err(); err != nil {
		return st, fmt.Errorf("read %s: %w", file, err)
	}
	st.raw = blocks.raw
	if st.warm > len(st.raw) {
		return st, fmt.Errorf("%s: %d warm events of %d", file, st.warm, len(st.raw))
	}
	return st, nil
}

// rawBlocks copies events into blocks that never move: one growing buffer
// would copy gigabytes as it grew and leave them to the collector, which
// then shares the timed part's core with it.
type rawBlocks struct {
	buf []byte
	raw [][]byte
}

func (b *rawBlocks) add(j []byte) {
	if len(b.buf)+len(j) > cap(b.buf) {
		b.buf = make([]byte, 0, max(64<<20, len(j)))
	}
	start := len(b.buf)
	b.buf = append(b.buf, j...)
	b.raw = append(b.raw, b.buf[start:len(b.buf):len(b.buf)])
}

// rawCache keeps generated streams across a benchmark's runs, by what was
// asked for: tests and benchmarks in one binary ask for different streams.
var rawCache = map[rawKey]rawStream{}

type rawKey struct {
	accounts          int
	seed              uint64
	historyDays, days float64
}

// decideAll runs evs through a fresh engine without interruption: the
// decisions every checkpointed and restored run must reproduce.
func decideAll(t testing.TB, evs []event.Event) []Decision {
	t.Helper()
	ref := newEngine(t, 5*time.Minute)
	var want []Decision
	for i := range evs {
		want, _ = ref.Process(&evs[i], want)
	}
	return want
}

// sameDecisions fails at the first decision of got that differs from want's,
// byte for byte as published.
func sameDecisions(t testing.TB, want, got []Decision) {
	t.Helper()
	a, b := encodeAll(t, want), encodeAll(t, got)
	if bytes.Equal(a, b) {
		return
	}
	al, bl := bytes.Split(a, []byte("\n")), bytes.Split(b, []byte("\n"))
	for i := range min(len(al), len(bl)) {
		if !bytes.Equal(al[i], bl[i]) {
			t.Fatalf("decision %d differs after restore:\nuninterrupted: %s\nrestored:      %s", i, al[i], bl[i])
		}
	}
	t.Fatalf("%d decisions uninterrupted, %d with restores", len(al), len(bl))
}

func encodeAll(t testing.TB, ds []Decision) []byte {
	t.Helper()
	var b bytes.Buffer
	for i := range ds {
		j, err := gojson.Marshal(&ds[i])
		if err != nil {
			t.Fatal(err)
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// TestCheckpointRestoreIsExact processes a stream in one engine, and the same
// stream in an engine that is checkpointed and replaced by a restored one
// halfway (a crash right after a checkpoint, which is the only state a crash
// can leave): the decisions must be byte-identical, so nothing was lost or
// counted twice, timers included.
func TestCheckpointRestoreIsExact(t *testing.T) {
	evs := genEvents(t, 400, 11, 1)
	want := decideAll(t, evs)

	dir := t.TempDir()
	var got []Decision
	e := newEngine(t, 5*time.Minute)
	cuts := []int{len(evs) / 3, len(evs) / 2, 2 * len(evs) / 3}
	next := 0
	for i := range evs {
		if next < len(cuts) && i == cuts[next] {
			next++
			st, err := OpenStore(filepath.Join(dir, "state"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.Checkpoint(st, Offsets{"wallet.events": {0: int64(i)}}); err != nil {
				t.Fatal(err)
			}
			st.Close()
			st, err = OpenStore(filepath.Join(dir, "state"))
			if err != nil {
				t.Fatal(err)
			}
			e = newEngine(t, 5*time.Minute)
			off, err := e.Restore(st)
			if err != nil {
				t.Fatal(err)
			}
			st.Close()
			if off["wallet.events"][0] != int64(i) {
				t.Fatalf("restored offsets %v, want %d", off, i)
			}
		}
		got, _ = e.Process(&evs[i], got)
	}
	if len(e.timers) == 0 {
		t.Log("no timers pending at the end")
	}
	sameDecisions(t, want, got)
	timerDecisions := bytes.Count(encodeAll(t, want), []byte(`"trigger":"timer"`))
	if timerDecisions == 0 {
		t.Fatal("the stream produced no timer decisions: the test does not cover timers")
	}
	t.Logf("%d events, %d decisions, %d from timers, identical across 3 restores", len(evs), len(want), timerDecisions)
}

func TestRedeliveredEventIsNotCountedTwice(t *testing.T) {
	e := newEngine(t, time.Minute)
	ts := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	login := event.Event{EventID: "e1", Type: event.TypeLogin, TypeName: "login", TS: ts, AccountID: "a", Result: "failure", BalanceAfter: -1}
	out, dup := e.Process(&login, nil)
	if dup || len(out) != 1 {
		t.Fatalf("first delivery: dup=%v decisions=%d", dup, len(out))
	}
	out, dup = e.Process(&login, nil)
	if !dup || len(out) != 0 {
		t.Fatalf("redelivery: dup=%v decisions=%d", dup, len(out))
	}
	next := login
	next.EventID, next.TS = "e2", ts.Add(time.Second)
	var v rules.AccountView
	a := e.accounts.get(key64("a"))
	a.view(&v, &next, toSec(next.TS.Unix()))
	if v.LoginsFailed10m != 1 {
		t.Fatalf("failed logins counted %d times, want 1", v.LoginsFailed10m)
	}
}

func TestTimerFiresOnWatermarkAndCancels(t *testing.T) {
	e := newEngine(t, time.Minute)
	base := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	att := func(id, acc, pid, status string, at time.Duration, n int64) event.Event {
		return event.Event{EventID: id, Type: event.TypePaymentAttempt, TypeName: "payment_attempt", TS: base.Add(at),
			AccountID: acc, PaymentID: pid, Attempt: n, Status: status, ErrorCode: "NETWORK_TIMEOUT", BalanceAfter: -1, MerchantID: "m"}
	}
	var out []Decision
	for _, ev := range []event.Event{
		att("a1", "stuck", "p1", "retrying", 0, 1),
		att("b1", "recovers", "p2", "retrying", time.Minute, 1),
		att("b2", "recovers", "p2", "succeeded", 2*time.Minute, 2),
		att("x", "other", "p3", "succeeded", 10*time.Minute, 1),
	} {
		out, _ = e.Process(&ev, out)
	}
	for _, d := range out {
		if d.Trigger == "timer" {
			t.Fatalf("timer fired before the watermark passed its deadline: %+v", d)
		}
	}
	later := att("y", "other", "p4", "succeeded", 12*time.Minute, 1) // watermark = 11 min
	out, _ = e.Process(&later, out)
	var fired []Decision
	for _, d := range out {
		if d.Trigger == "timer" {
			fired = append(fired, d)
		}
	}
	if len(fired) != 1 || fired[0].AccountID != "stuck" || fired[0].Rules[0].ID != "payment_not_recovered" {
		t.Fatalf("timer decisions %+v, want one for the stuck payment", fired)
	}
	if r := fired[0].Rules[0].Reason; !bytes.Contains([]byte(r), []byte("network")) {
		t.Errorf("timer reason does not name the cause: %q", r)
	}
}

// BenchmarkPipeline is the hot path decode -> state -> rules -> decision with
// the built-in packs, over a population of accounts held in memory. It
// decodes as the daemon's fetchers do, on buffers handed over.
func BenchmarkPipeline(b *testing.B) {
	raw := genRaw(b, 100_000, 5, 0.5)
	e := newEngine(b, 5*time.Minute)
	now := time.Now()
	out := make([]Decision, 0, 16)
	var ahead decodeAhead
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		if i == len(raw) {
			b.StopTimer()
			e = newEngine(b, 5*time.Minute) // a second pass would only find duplicates
			i = 0
			b.StartTimer()
		}
		out, _ = e.Process(ahead.next(b, e, raw, i, now), out[:0])
		i++
	}
	b.ReportMetric(float64(len(raw)), "events-in-stream")
}

// decodeAhead decodes events as the daemon's pipeline receives them:
// each is decoded and announced to the engine (Prefetch) two events before
// it is processed.
type decodeAhead struct {
	ring [3]event.Event
	upTo int // raw events decoded and announced: [0, upTo)
}

// next returns raw[i], decoded, having announced the events up to i+2.
func (d *decodeAhead) next(b *testing.B, e *Engine, raw [][]byte, i int, now time.Time) *event.Event {
	if d.upTo <= i || d.upTo > i+3 {
		d.upTo = i // a new pass
	}
	for ; d.upTo < min(i+3, len(raw)); d.upTo++ {
		ev := &d.ring[d.upTo%3]
		var err error
		if *ev, err = event.DecodeOwned(raw[d.upTo], now); err != nil {
			b.Fatal(err)
		}
		e.Prefetch(ev)
	}
	return &d.ring[i%3]
}

// BenchmarkPipeline1M is BenchmarkPipeline over a million accounts: the
// first day of traffic puts them in state (untimed), the second is decoded
// and decided. The sim's per-account history would take more memory than a
// machine has at this size, so the first day stands in for it.
func BenchmarkPipeline1M(b *testing.B) {
	st := genRawHistory(b, 1_000_000, 5, 0, 2)
	now := time.Now()
	out := make([]Decision, 0, 16)
	var heap uint64 // the state's, after the first day
	warm := func() *Engine {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		e := newEngine(b, 5*time.Minute)
		for _, raw := range st.raw[:st.warm] {
			ev, err := event.DecodeOwned(raw, now)
			if err != nil {
				b.Fatal(err)
			}
			out, _ = e.Process(&ev, out[:0])
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap = after.HeapAlloc - min(after.HeapAlloc, before.HeapAlloc)
		return e
	}
	e := warm()
	held, perAccount := e.Stats().Accounts, float64(heap)/float64(e.Stats().Accounts)
	var ahead decodeAhead
	b.ReportAllocs()
	b.ResetTimer()
	i := st.warm
	for b.Loop() {
		if i == len(st.raw) {
			b.StopTimer()
			e = warm()
			i = st.warm
			b.StartTimer()
		}
		out, _ = e.Process(ahead.next(b, e, st.raw, i, now), out[:0])
		i++
	}
	b.ReportMetric(float64(held), "accounts-held")
	b.ReportMetric(float64(len(st.raw)-st.warm), "events-in-stream")
	b.ReportMetric(perAccount, "state-bytes/account")
}

// BenchmarkAccountMemory measures the heap held per account with a million
// accounts in state (reported as bytes/account).
func BenchmarkAccountMemory(b *testing.B) {
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		e := newEngine(b, time.Minute)
		ts := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
		ev := event.Event{Type: event.TypeLogin, TypeName: "login", TS: ts, Result: "success", DeviceID: "", BalanceAfter: -1}
		ids := make([]byte, 0, 32)
		const n = 1_000_000
		for i := 0; i < n; i++ {
			ids = append(ids[:0], "acc-"...)
			ids = appendInt(ids, i)
			ev.AccountID = string(ids)
			ev.EventID = ev.AccountID + "-e"
			e.Process(&ev, nil)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/account")
		runtime.KeepAlive(e)
	}
}

func appendInt(b []byte, i int) []byte {
	var tmp [20]byte
	n := len(tmp)
	for {
		n--
		tmp[n] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			break
		}
	}
	return append(b, tmp[n:]...)
}

// BenchmarkCheckpointRestore1M writes a full checkpoint of a million
// accounts and restores it: the recovery time after a restart.
func BenchmarkCheckpointRestore1M(b *testing.B) {
	for b.Loop() {
		e := newEngine(b, time.Minute)
		ts := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
		ev := event.Event{Type: event.TypeLogin, TypeName: "login", TS: ts, Result: "success", DeviceID: "d", IP: "36.72.1.1", BalanceAfter: -1}
		const n = 1_000_000
		ids := make([]byte, 0, 32)
		for i := 0; i < n; i++ {
			ids = appendInt(append(ids[:0], "acc-"...), i)
			ev.AccountID = string(ids)
			ev.EventID = ev.AccountID + "-e"
			e.Process(&ev, nil)
		}
		st, err := OpenStore(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if _, err := e.Checkpoint(st, Offsets{}); err != nil {
			b.Fatal(err)
		}
		write := time.Since(start)
		var size int64
		for _, f := range st.rows.files {
			size += f.Size
		}
		start = time.Now()
		r := newEngine(b, time.Minute)
		if _, err := r.Restore(st); err != nil {
			b.Fatal(err)
		}
		restore := time.Since(start)
		if r.Stats().Accounts != n {
			b.Fatalf("restored %d accounts", r.Stats().Accounts)
		}
		st.Close()
		b.ReportMetric(write.Seconds(), "checkpoint-s")
		b.ReportMetric(restore.Seconds(), "restore-s")
		b.ReportMetric(float64(size)/1e6, "rowfile-MB")
	}
}

func TestBloomRemembersEveryMemberAndRarelyInventsOne(t *testing.T) {
	var b bloom
	for i := 0; i < 8; i++ {
		b.add(hash32(fmt.Sprintf("m-%04d", i)))
	}
	for i := 0; i < 8; i++ {
		if !b.has(hash32(fmt.Sprintf("m-%04d", i))) {
			t.Fatalf("member m-%04d forgotten", i)
		}
	}
	false_ := 0
	for i := 1000; i < 11000; i++ {
		if b.has(hash32(fmt.Sprintf("m-%04d", i))) {
			false_++
		}
	}
	// Three probes into 128 bits with 8 members: ≈ 0.4% in theory.
	if false_ > 150 {
		t.Errorf("%d of 10000 new merchants read as known", false_)
	}
}

// TestTimersFollowTheirOwnPartition: a partition read far ahead of another
// (catching up after a lag) must not fire the other's timers before the
// events that cancel them were read.
func TestTimersFollowTheirOwnPartition(t *testing.T) {
	e := newEngine(t, time.Minute)
	t0 := time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)
	attempt := func(id, acc, status string, at time.Time) *event.Event {
		ev := &event.Event{EventID: id, Type: event.TypePaymentAttempt, TypeName: "payment_attempt", TS: at, AccountID: acc,
			PaymentID: "pay-" + acc, Attempt: 1, Status: status, MerchantID: "m-1", Amount: 100, Currency: "IDR", BalanceAfter: -1}
		if status != "succeeded" {
			ev.ErrorCode = "NETWORK_TIMEOUT"
		}
		return ev
	}
	var out []Decision
	timers := func() int {
		n := 0
		for _, d := range out {
			if d.Trigger == "timer" {
				n++
			}
		}
		return n
	}
	// Partition 2: a failed attempt, the success comes 2 minutes later.
	out, _ = e.ProcessFrom(2, attempt("b1", "acc-b", "retrying", t0), out)
	// Partition 1 is read an hour ahead meanwhile.
	out, _ = e.ProcessFrom(1, attempt("a1", "acc-a", "succeeded", t0.Add(time.Hour)), out)
	if n := timers(); n != 0 {
		t.Fatalf("another partition's event time fired %d timers of partition 2", n)
	}
	out, _ = e.ProcessFrom(2, attempt("b2", "acc-b", "succeeded", t0.Add(2*time.Minute)), out)
	out, _ = e.ProcessFrom(2, attempt("b3", "acc-c", "retrying", t0.Add(time.Hour)), out)
	if n := timers(); n != 0 {
		t.Errorf("%d timer decisions for a payment that recovered", n)
	}
	// Without the success, partition 2's own time fires it.
	out, _ = e.ProcessFrom(3, attempt("c1", "acc-d", "retrying", t0), out)
	out, _ = e.ProcessFrom(3, attempt("c2", "acc-e", "succeeded", t0.Add(30*time.Minute)), out)
	if n := timers(); n != 1 {
		t.Errorf("%d timer decisions, want the one of acc-d", n)
	}
}

// TestCaptureSpreadOverEventsIsExact: a checkpoint copied a few rows at a
// time while the engine goes on deciding holds the state of the moment it
// began — rows changed meanwhile are copied before they change. An engine
// restored from it and fed the events after that moment decides exactly
// what an uninterrupted one does.
func TestCaptureSpreadOverEventsIsExact(t *testing.T) {
	evs := genEvents(t, 400, 11, 1)
	want := decideAll(t, evs)

	dir := t.TempDir()
	e := newEngine(t, 5*time.Minute)
	var got []Decision
	cuts := []int{len(evs) / 4, len(evs) / 2, 3 * len(evs) / 4}
	next, began, keep := 0, -1, 0
	var c *Capture
	for i := 0; i < len(evs); i++ {
		if next < len(cuts) && i == cuts[next] {
			next++
			var err error
			if c, err = e.BeginCheckpoint(Offsets{"wallet.events": {0: int64(i)}}); err != nil {
				t.Fatal(err)
			}
			began, keep = i, len(got)
		}
		got, _ = e.Process(&evs[i], got)
		if c == nil || !c.CopySome(1) {
			continue
		}
		// Written when complete, several events after it began: a crash
		// now restarts from the state and offsets of the beginning.
		st, err := OpenStore(filepath.Join(dir, "state"))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.DB().Update(c.Write(st)); err != nil {
			t.Fatal(err)
		}
		if i-began < 50 {
			t.Fatalf("the capture took %d events: too few to test copying rows before they change", i-began)
		}
		e = newEngine(t, 5*time.Minute)
		off, err := e.Restore(st)
		st.Close()
		if err != nil {
			t.Fatal(err)
		}
		if off["wallet.events"][0] != int64(began) {
			t.Fatalf("restored offsets %v, want %d", off, began)
		}
		c, got, i = nil, got[:keep], began-1 // the restored engine re-reads from where the capture began
	}
	sameDecisions(t, want, got)
}

// TestCaptureCopiesAChainBeforeItChanges: a payment attempt decided while
// a checkpoint is being copied leaves the checkpoint's copy of its chain
// as it was when the checkpoint began.
func TestCaptureCopiesAChainBeforeItChanges(t *testing.T) {
	e := newEngine(t, time.Minute)
	base := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	att := func(id, status string, at time.Duration, n int64) event.Event {
		return event.Event{EventID: id, Type: event.TypePaymentAttempt, TypeName: "payment_attempt", TS: base.Add(at),
			AccountID: "acc", PaymentID: "p1", Attempt: n, Status: status, ErrorCode: "NETWORK_TIMEOUT", BalanceAfter: -1, MerchantID: "m"}
	}
	first := att("a1", "retrying", 0, 1)
	e.Process(&first, nil)
	c, err := e.BeginCheckpoint(Offsets{})
	if err != nil {
		t.Fatal(err)
	}
	second := att("a2", "succeeded", time.Minute, 2)
	e.Process(&second, nil) // before any row was copied
	if !c.CopySome(math.MaxInt) {
		t.Fatal("capture not complete")
	}
	st, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.DB().Update(c.Write(st)); err != nil {
		t.Fatal(err)
	}
	r := newEngine(t, time.Minute)
	if _, err := r.Restore(st); err != nil {
		t.Fatal(err)
	}
	ch := r.chains.get(key64("acc\x00p1"))
	if ch == nil || ch.attempts != 1 || r.syms.name(ch.lastStatus) != "retrying" || ch.succeeded {
		t.Fatalf("restored chain %+v, want the one attempt retrying when the checkpoint began", ch)
	}
	if a := e.chains.get(key64("acc\x00p1")); a.attempts != 2 || !a.succeeded {
		t.Fatalf("live chain %+v, want both attempts", a)
	}
}

// TestKeysMatchStoredCheckpoints: chain keys and country names are built
// without allocating, and must equal what earlier releases wrote to
// checkpoints and showed in profiles.
func TestKeysMatchStoredCheckpoints(t *testing.T) {
	for _, c := range [][2]string{{"acc-1", "pay-9"}, {"", ""}, {string(make([]byte, 128*4)), "p"}} {
		if got, want := chainKey(c[0], c[1]), key64(c[0]+"\x00"+c[1]); got != want {
			t.Fatalf("chainKey(%q, %q) = %x, want %x", c[0], c[1], got, want)
		}
	}
	for _, code := range []string{"AA", "ID", "SG", "ZZ", "id", "1A", "Z["} {
		if got := unpack2(pack2(code)); got != code {
			t.Fatalf("unpack2(pack2(%q)) = %q", code, got)
		}
	}
}

// TestPaymentChainsExpire: a settled payment's chain goes an hour after its
// last attempt, a failing one after a day, and one a pending timer will read
// stays until the timer has fired — with the attempts it had.
func TestPaymentChainsExpire(t *testing.T) {
	set, err := rules.Compile([]rules.Source{{Name: "slow.yaml", Content: []byte(`
rules:
  - id: settlement_overdue
    description: A payment still retrying a day and a half later.
    on: [payment_attempt]
    when: event.status == "retrying"
    timer:
      after: 36h
      scope: payment
      until: event.type == "payment_attempt" && event.status == "succeeded"
    score: 10
    category: stuck_retry
    severity: low
    reason: payment {payment.payment_id} retried {payment.attempts} times and never settled
`)}})
	if err != nil {
		t.Fatal(err)
	}
	e := New(Config{AllowedLateness: time.Minute, IdleExpiry: 30 * 24 * time.Hour,
		Thresholds: Thresholds{Review: 40, StepUp: 60, Freeze: 85}}, set, nil, slog.New(slog.DiscardHandler))
	base := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	seq := 0
	att := func(acc, pid, status string, at time.Duration) event.Event {
		seq++
		return event.Event{EventID: fmt.Sprintf("e%d", seq), Type: event.TypePaymentAttempt, TypeName: "payment_attempt", TS: base.Add(at),
			AccountID: acc, PaymentID: pid, Attempt: 1, Status: status, ErrorCode: "NETWORK_TIMEOUT", BalanceAfter: -1, MerchantID: "m"}
	}
	var fired []Decision
	process := func(ev event.Event) {
		out, _ := e.Process(&ev, nil)
		for _, d := range out {
			if d.Trigger == "timer" {
				fired = append(fired, d)
			}
		}
	}
	for _, ev := range []event.Event{
		att("settled", "p-ok", "succeeded", 0),
		att("failing", "p-bad", "failed", 0),
		att("waiting", "p-wait", "retrying", 0),
		att("waiting", "p-wait", "retrying", time.Minute),
	} {
		process(ev)
	}
	has := func(acc, pid string) bool { return e.chains.get(chainKey(acc, pid)) != nil }
	// Other accounts' payments move event time on; sweeping visits a few
	// slots per event, so each step sends enough of them to go round.
	advance := func(to time.Duration) {
		for i := 0; i < 400; i++ {
			process(att(fmt.Sprintf("busy-%d", i%40), fmt.Sprintf("q-%d", i%40), "succeeded", to))
		}
	}
	advance(50 * time.Minute)
	if !has("settled", "p-ok") {
		t.Fatal("a settled payment's chain went within its hour")
	}
	advance(2 * time.Hour)
	if has("settled", "p-ok") {
		t.Error("a settled payment's chain is still held two hours after its attempt")
	}
	if !has("failing", "p-bad") || !has("waiting", "p-wait") {
		t.Fatal("a failing payment's chain went within its day")
	}
	advance(26 * time.Hour)
	if has("failing", "p-bad") {
		t.Error("a failed payment's chain is still held a day after its last attempt")
	}
	if !has("waiting", "p-wait") {
		t.Fatal("the chain a pending timer reads went before the timer fired")
	}
	if len(fired) != 0 {
		t.Fatalf("timer fired early: %+v", fired)
	}
	advance(38 * time.Hour)
	if len(fired) != 1 || fired[0].AccountID != "waiting" || !strings.Contains(fired[0].Rules[0].Reason, "retried 2 times") {
		t.Fatalf("timer decisions %+v, want one for p-wait quoting its 2 attempts", fired)
	}
	advance(39 * time.Hour)
	if has("waiting", "p-wait") {
		t.Error("the chain is still held after its timer fired and its day passed")
	}
}

// TestFailingAccountsPerIPSurviveRestore: an address counts each account
// failing logins from it once, whether it has seen one (held in the row) or
// many (in a set), across a checkpoint and restore at either stage, and
// forgets a lone failure after the hour.
func TestFailingAccountsPerIPSurviveRestore(t *testing.T) {
	base := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	seq := 0
	fail := func(e *Engine, acc, ip string, at time.Duration) {
		seq++
		ev := event.Event{EventID: fmt.Sprintf("l%d", seq), Type: event.TypeLogin, TypeName: "login", TS: base.Add(at),
			AccountID: acc, IP: ip, Result: "failure", BalanceAfter: -1}
		e.Process(&ev, nil)
	}
	failing := func(e *Engine, ip string, at time.Duration) (in10m, in1h int) {
		var v rules.IPView
		e.ips.get(key64(ip)).view(&v, toSec(base.Add(at).Unix()))
		return v.FailedAccounts10, v.FailedAccounts1h
	}
	e := newEngine(t, time.Minute)
	for i := range 3 {
		fail(e, "mistyper", "10.0.0.1", time.Duration(i)*time.Minute)
	}
	if n, _ := failing(e, "10.0.0.1", 3*time.Minute); n != 1 {
		t.Fatalf("one account failing three times counts as %d accounts", n)
	}
	e = checkpointAndRestore(t, e)
	if n, _ := failing(e, "10.0.0.1", 3*time.Minute); n != 1 {
		t.Fatalf("after a restore, one failing account counts as %d", n)
	}
	for i := range 12 {
		fail(e, fmt.Sprintf("victim-%d", i), "10.0.0.1", 4*time.Minute+time.Duration(i)*time.Second)
	}
	if n, _ := failing(e, "10.0.0.1", 5*time.Minute); n != 13 {
		t.Fatalf("13 accounts failing from one address count as %d", n)
	}
	e = checkpointAndRestore(t, e)
	if n, _ := failing(e, "10.0.0.1", 5*time.Minute); n != 13 {
		t.Fatalf("after a restore, 13 failing accounts count as %d", n)
	}
	fail(e, "mistyper", "10.0.0.2", 5*time.Minute)
	fail(e, "other", "10.0.0.2", 70*time.Minute) // the first failure is over an hour old
	if n10, n1h := failing(e, "10.0.0.2", 70*time.Minute); n10 != 1 || n1h != 1 {
		t.Fatalf("a failure after an hour alone counts as %d (10 min) / %d (1 h) accounts, want 1 / 1", n10, n1h)
	}
	fail(e, "third", "10.0.0.2", 71*time.Minute)
	if n, _ := failing(e, "10.0.0.2", 71*time.Minute); n != 2 {
		t.Fatalf("two accounts failing within minutes count as %d", n)
	}
}

// TestPrefetchChangesNothing: announcing events ahead, in order as the
// pipeline does or wrongly (events that never come, on an empty engine, in
// the middle of a checkpoint's capture), leaves every decision as it was.
func TestPrefetchChangesNothing(t *testing.T) {
	evs := genEvents(t, 300, 17, 1)
	want := decideAll(t, evs)
	e := newEngine(t, 5*time.Minute)
	stray := evs[len(evs)/2]
	stray.AccountID, stray.DeviceID, stray.IP = "never-seen", "never-seen", "203.0.113.9"
	e.Prefetch(&stray) // before any state exists
	var got []Decision
	for i := range evs {
		if i+2 < len(evs) {
			e.Prefetch(&evs[i+2])
		}
		if i%97 == 0 {
			e.Prefetch(&stray)
		}
		if i == len(evs)/3 {
			if _, err := e.BeginCheckpoint(Offsets{}); err != nil {
				t.Fatal(err)
			}
		}
		if i == len(evs)/3+50 {
			e.capture.CopySome(math.MaxInt)
		}
		got, _ = e.Process(&evs[i], got)
	}
	sameDecisions(t, want, got)
	if s := e.Stats(); s.Accounts == 0 || e.accounts.get(key64("never-seen")) != nil {
		t.Fatalf("state after the stream: %+v; an announced event that never came must leave no row", s)
	}
}

// TestIdleRowsExpire: accounts, devices and addresses not seen for the idle
// expiry leave the state while traffic goes on, within the number of events
// the sweep needs to visit every row once, and those still active stay.
func TestIdleRowsExpire(t *testing.T) {
	set, err := rules.Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	e := New(Config{AllowedLateness: time.Minute, IdleExpiry: time.Hour,
		Thresholds: Thresholds{Review: 40, StepUp: 60, Freeze: 85}}, set, nil, slog.New(slog.DiscardHandler))
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	login := func(i int, ts time.Time, seq int) {
		ev := event.Event{Type: event.TypeLogin, TypeName: "login", TS: ts, Result: "success", BalanceAfter: -1,
			AccountID: fmt.Sprintf("acc-%d", i), DeviceID: fmt.Sprintf("dev-%d", i), IP: fmt.Sprintf("10.%d.%d.1", i/250, i%250),
			EventID: fmt.Sprintf("e-%d-%d", i, seq)}
		e.Process(&ev, nil)
	}
	const idle, active = 2000, 10
	for i := range idle + active {
		login(i, t0, 0)
	}
	if s := e.Stats(); s.Accounts != idle+active || s.Devices != idle+active || s.IPs != idle+active {
		t.Fatalf("before: %+v, want %d of each", s, idle+active)
	}
	// Two hours later only the active ones go on, for as many events as
	// a sweep of every row takes (eight events a row), and a margin.
	for n := 0; n < 10*(idle+active); n++ {
		i := idle + n%active
		login(i, t0.Add(2*time.Hour+time.Duration(n)*time.Millisecond), n+1)
	}
	s := e.Stats()
	if s.Accounts != active || s.Devices != active || s.IPs != active {
		t.Errorf("after: %d accounts, %d devices, %d addresses held, want the %d active ones", s.Accounts, s.Devices, s.IPs, active)
	}
}

// changelog is rows as a changelog topic holds them, in the order written.
type changelogRow struct {
	kind byte
	key  uint64
	v    []byte
}

// publish captures a checkpoint at offset i and appends its rows to log,
// returning the marker's meta.
func publish(t testing.TB, e *Engine, i int, log *[]changelogRow) []byte {
	t.Helper()
	c, err := e.BeginCheckpoint(Offsets{"wallet.events": {0: int64(i)}})
	if err != nil {
		t.Fatal(err)
	}
	c.CopySome(math.MaxInt)
	if err := c.EachRow(func(kind byte, key uint64, v []byte) error {
		*log = append(*log, changelogRow{kind, key, bytes.Clone(v)})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return c.Meta()
}

func restoreChangelog(t *testing.T, meta []byte, log []changelogRow) (*Engine, Offsets) {
	t.Helper()
	e := newEngine(t, 5*time.Minute)
	return e, restoreInto(t, e, meta, log)
}

func restoreInto(t *testing.T, e *Engine, meta []byte, log []changelogRow) Offsets {
	t.Helper()
	off, err := e.RestoreChangelog(meta, func(apply func(byte, uint64, []byte) error) error {
		for _, r := range log {
			if err := apply(r.kind, r.key, r.v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return off
}

func liveTimers(e *Engine) int {
	n := 0
	for _, ts := range e.byAccount {
		for _, t := range ts {
			if !t.cancelled && !t.done {
				n++
			}
		}
	}
	return n
}

func savedTimerPending(e *Engine) bool {
	for _, ts := range e.byAccount {
		for _, t := range ts {
			if t.saved && !t.cancelled && !t.done {
				return true
			}
		}
	}
	return false
}

// TestChangelogRestoreIsExact: the rows of successive checkpoints, applied
// in order to an empty engine with the last one's marker, give it the state
// of that moment — an engine restored from them and fed the events after
// decides exactly what an uninterrupted one does, timers included. A
// changelog begun afresh (MarkAllChanged) needs none of the rows before it;
// and the restored engine's next checkpoint holds its whole state, so the
// local store it starts without is complete after one checkpoint.
func TestChangelogRestoreIsExact(t *testing.T) {
	evs := genEvents(t, 400, 11, 1)
	want := decideAll(t, evs)

	e := newEngine(t, 5*time.Minute)
	var got []Decision
	var log, fresh []changelogRow
	q1, half, q3 := len(evs)/4, len(evs)/2, 3*len(evs)/4
	afresh := -1 // where the changelog is begun afresh: with timers pending
	for i := range evs {
		switch {
		case i == q1:
			publish(t, e, i, &log)
		case i == half:
			// The deltas of two checkpoints restore the state.
			var off Offsets
			e, off = restoreChangelog(t, publish(t, e, i, &log), log)
			if off["wallet.events"][0] != int64(half) {
				t.Fatalf("restored offsets %v, want %d", off, half)
			}
		case i > half && afresh < 0 && i%100 == 0 && !savedTimerPending(e):
			publish(t, e, i, &log) // until a checkpoint holds a pending timer
		case i > half && afresh < 0 && savedTimerPending(e):
			// A changelog begun afresh restores it alone, timers that
			// earlier checkpoints hold included.
			afresh = i
			before, timers := e.Stats(), liveTimers(e)
			e.MarkAllChanged()
			meta := publish(t, e, i, &fresh)
			e, _ = restoreChangelog(t, meta, fresh)
			after := e.Stats()
			after.Timers, before.Timers = 0, 0 // the heaps may hold ended timers yet
			if after != before || liveTimers(e) != timers {
				t.Fatalf("restored from a changelog begun afresh: %+v with %d timers, want %+v with %d", after, liveTimers(e), before, timers)
			}
		case i == q3:
			// The restored engine's next checkpoint holds its whole
			// state: the local store it starts without is complete.
			st, err := OpenStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.Checkpoint(st, Offsets{}); err != nil {
				t.Fatal(err)
			}
			e = newEngine(t, 5*time.Minute)
			if _, err := e.Restore(st); err != nil {
				t.Fatal(err)
			}
			st.Close()
		}
		got, _ = e.Process(&evs[i], got)
	}
	if afresh < 0 || afresh >= q3 {
		t.Fatalf("no timer pending between events %d and %d: the test does not cover a changelog begun afresh", half, q3)
	}
	sameDecisions(t, want, got)
	timers := bytes.Count(encodeAll(t, want), []byte(`"trigger":"timer"`))
	if timers == 0 {
		t.Fatal("the stream produced no timer decisions: the test does not cover timers")
	}
	t.Logf("%d events, %d decisions (%d from timers); deltas of %d rows, begun afresh at event %d: %d", len(evs), len(want), timers, len(log), afresh, len(fresh))
}

// TestChangelogReplacesAStaleStore: an engine restored from an old store
// (a volume's backup, an instance that lost its partitions a day ago)
// takes the newer state of a changelog in its place. Its next checkpoint
// replaces the store's rows: timers that fired and rows that went since
// the old checkpoint do not come back when the store is opened again, and
// the rest of the stream gets the decisions of an undisturbed run.
func TestChangelogReplacesAStaleStore(t *testing.T) {
	evs := genEvents(t, 400, 11, 1)
	want := decideAll(t, evs)
	dir := t.TempDir()
	st, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { st.Close() }()

	e := newEngine(t, 5*time.Minute)
	var got []Decision
	var log []changelogRow
	var meta []byte
	q1, half := len(evs)/4, len(evs)/2
	stale := map[uint64]bool{} // timers pending in the old store
	for i := range evs {
		switch i {
		case q1 / 2, q1:
			// Two checkpoints in the old store, so it has two files; the
			// changelog has them too.
			c, err := e.BeginCheckpoint(Offsets{"wallet.events": {0: int64(i)}})
			if err != nil {
				t.Fatal(err)
			}
			c.CopySome(math.MaxInt)
			if err := st.DB().Update(c.Write(st)); err != nil {
				t.Fatal(err)
			}
			if err := c.EachRow(func(kind byte, key uint64, v []byte) error {
				log = append(log, changelogRow{kind, key, bytes.Clone(v)})
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if i == q1 {
				for k, ts := range e.byAccount {
					if len(ts) > 0 {
						stale[k] = true
					}
				}
			}
		case half:
			meta = publish(t, e, i, &log)
		}
		if i == half {
			break
		}
		got, _ = e.Process(&evs[i], got)
	}

	// Another engine opens the old store, then learns the changelog is
	// ahead of it.
	b := newEngine(t, 5*time.Minute)
	off, err := b.Restore(st)
	if err != nil {
		t.Fatal(err)
	}
	newer, err := MetaOffsets(meta)
	if err != nil {
		t.Fatal(err)
	}
	if !newer.Ahead(off) || off.Ahead(newer) {
		t.Fatalf("the changelog at %v is not ahead of the store at %v", newer, off)
	}
	n := b.Fresh()
	if n.Stats().Accounts != 0 {
		t.Fatalf("a fresh engine holds %+v", n.Stats())
	}
	restoreInto(t, n, meta, log)
	if err := b.Take(n); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Checkpoint(st, newer); err != nil {
		t.Fatal(err)
	}
	if n := len(st.rows.files); n != 1 {
		t.Errorf("the store lists %d row files after a checkpoint of the whole state, want 1", n)
	}
	st.Close()
	if st, err = OpenStore(dir); err != nil {
		t.Fatal(err)
	}
	c := newEngine(t, 5*time.Minute)
	if off, err = c.Restore(st); err != nil {
		t.Fatal(err)
	}
	if off["wallet.events"][0] != int64(half) {
		t.Fatalf("store reopened at %v, want %d", off, half)
	}
	got2, want2 := c.Stats(), e.Stats()
	got2.Timers, want2.Timers = 0, 0 // the heaps may hold ended timers yet
	if got2 != want2 || liveTimers(c) != liveTimers(e) {
		t.Fatalf("store reopened holds %+v and %d timers, the engine it was replaced from %+v and %d", got2, liveTimers(c), want2, liveTimers(e))
	}
	gone := 0
	for k := range stale {
		if len(e.byAccount[k]) == 0 {
			gone++
		}
	}
	for i := half; i < len(evs); i++ {
		got, _ = c.Process(&evs[i], got)
	}
	sameDecisions(t, want, got)
	if gone == 0 {
		t.Fatal("no timer of the old store ended before the changelog's state: the test does not cover stale rows")
	}
	t.Logf("%d of %d accounts with timers pending in the old store had none in the newer state", gone, len(stale))
}

// FuzzRestoreChangelogRow: a restore may read a damaged changelog (a
// topic written to by hand, a broker's fault): a row it cannot decode is
// an error that names it, never a crash of the daemon.
func FuzzRestoreChangelogRow(f *testing.F) {
	evs := genEvents(f, 30, 5, 0.5)
	e := newEngine(f, 5*time.Minute)
	var out []Decision
	for i := range evs {
		out, _ = e.Process(&evs[i], out[:0])
	}
	var log []changelogRow
	meta := publish(f, e, len(evs), &log)
	seeded := map[byte]int{}
	for _, r := range log {
		if seeded[r.kind] < 5 {
			f.Add(r.kind, r.key, r.v)
			seeded[r.kind]++
		}
	}
	if len(seeded) < 5 {
		f.Fatalf("the stream's checkpoint has rows of %d kinds, want accounts, devices, payees, IPs, payments and more", len(seeded))
	}
	keys := make([]uint64, len(log))
	for i, r := range log {
		keys[i] = r.key
	}
	f.Fuzz(func(t *testing.T, kind byte, key uint64, v []byte) {
		// The damaged row is one the stream's events then touch, and the
		// engine decides them and checkpoints with it.
		key = keys[key%uint64(len(keys))]
		fresh := e.Fresh()
		if _, err := fresh.RestoreChangelog(meta, func(apply func(byte, uint64, []byte) error) error {
			for _, r := range log {
				if r.kind != kind%(RowMerchant+1) || r.key != key {
					if err := apply(r.kind, r.key, r.v); err != nil {
						return err
					}
				}
			}
			return apply(kind%(RowMerchant+1), key, v)
		}); err != nil {
			return
		}
		var out []Decision
		for i := range evs[:min(len(evs), 300)] {
			out, _ = fresh.Process(&evs[i], out[:0])
		}
		c, err := fresh.BeginCheckpoint(Offsets{"wallet.events": {0: 1}})
		if err != nil {
			t.Fatal(err)
		}
		c.CopySome(math.MaxInt)
		_ = c.EachRow(func(byte, uint64, []byte) error { return nil })
	})
}

// TestTimerReasonReadsWhatItsConfirmDoesNot: a timer's confirm is checked
// on the views it reads, and a confirmed timer's reason still quotes the
// views only the reason reads — the account's and its device's — as they
// are when it fires; an unconfirmed one decides nothing.
func TestTimerReasonReadsWhatItsConfirmDoesNot(t *testing.T) {
	set, err := rules.Compile([]rules.Source{{Name: "team.yaml", Content: []byte(`
rules:
  - id: retried_and_unsettled
    on: [payment_attempt]
    when: event.status == "failed"
    timer:
      after: 10m
      scope: payment
      confirm: payment.attempts >= 2
    score: 10
    category: stuck_retry
    severity: low
    reason: "{payment.attempts} attempts; the account has {account.events_seen} events and {account.known_devices} devices"
`)}})
	if err != nil {
		t.Fatal(err)
	}
	r := set.ByID("retried_and_unsettled")
	if r.ConfirmReads() != rules.RootPayment || r.Reads()&rules.RootAccount == 0 {
		t.Fatalf("confirm reads %b, the rule %b: want the payment alone, and the account too", r.ConfirmReads(), r.Reads())
	}
	e := New(Config{AllowedLateness: time.Minute, IdleExpiry: 30 * 24 * time.Hour,
		Thresholds: Thresholds{Review: 40, StepUp: 60, Freeze: 85}}, set, nil, slog.New(slog.DiscardHandler))
	base := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	seq := 0
	att := func(acc, pid, dev, status string, at time.Duration) event.Event {
		seq++
		return event.Event{EventID: fmt.Sprintf("e%d", seq), Type: event.TypePaymentAttempt, TypeName: "payment_attempt", TS: base.Add(at),
			AccountID: acc, PaymentID: pid, DeviceID: dev, Attempt: 1, Status: status, ErrorCode: "NETWORK_TIMEOUT", BalanceAfter: -1, MerchantID: "m"}
	}
	var fired []Decision
	for _, ev := range []event.Event{
		att("twice", "p-1", "d-1", "failed", 0),
		att("twice", "p-1", "d-2", "failed", time.Minute),
		att("once", "p-2", "d-3", "failed", time.Minute),
		att("other", "p-3", "d-4", "succeeded", 20*time.Minute), // moves event time past both timers
	} {
		out, _ := e.Process(&ev, nil)
		for _, d := range out {
			if d.Trigger == "timer" {
				fired = append(fired, d)
			}
		}
	}
	if len(fired) != 1 || fired[0].AccountID != "twice" {
		t.Fatalf("timer decisions %+v, want one, for the payment tried twice", fired)
	}
	if got, want := fired[0].Rules[0].Reason, "2 attempts; the account has 2 events and 2 devices"; got != want {
		t.Errorf("reason %q, want %q", got, want)
	}
}
