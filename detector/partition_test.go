package detector

import (
	"bytes"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/sim"
)

// partitionOf places an account on one of n partitions, as a producer
// keying the event topic by account does.
func partitionOf(ev *event.Event, n int) uint32 {
	return uint32(xxhash.Sum64String(ev.AccountID) % uint64(n))
}

// TestEnginesSharingPartitionsDecideAsOne: two engines split four
// partitions, each deciding its own and observing the other's events; past
// halfway the second dies, and the first adopts its partitions from the
// changelog and decides them on. Every decision — of either engine, before
// and after — equals what one engine deciding every partition gives,
// timers included, and so does the survivor's state at the end. That holds
// when the owner dies right after its checkpoint, and when it dies later:
// the survivor then decides again the events it had only observed, counting
// them for their accounts and not again for the entities. Without the
// adoption, or without observing, the engines decide differently: the test
// needs both.
func TestEnginesSharingPartitionsDecideAsOne(t *testing.T) {
	const parts = 4
	// Incidents that span accounts, several a day: credential stuffing
	// (failures per IP), merchant outages and app faults (failure rates).
	cfg := sim.DefaultConfig(400)
	cfg.Seed, cfg.HistoryDays = 11, 2
	cfg.StuffingPerDay, cfg.OutagesPerDay, cfg.AppFaultsPerDay = 4, 3, 2
	var evs []event.Event
	for g := sim.New(cfg); ; {
		it, ok := g.Next()
		if !ok {
			break
		}
		evs = append(evs, it.Event)
	}
	// Sources number their topic in the upper half, as the daemon's do
	// (app.SourceID): a partition is the lower half.
	const topic = 0x5eed << 16
	src := make([]uint32, len(evs))
	for i := range evs {
		src[i] = topic | partitionOf(&evs[i], parts)
	}
	one := newEngine(t, 5*time.Minute)
	var want []Decision
	for i := range evs {
		want, _ = one.ProcessFrom(src[i], &evs[i], want)
	}

	// run has a decide partitions 0 and 1 and b partitions 2 and 3. b
	// publishes a checkpoint at the first event past halfway with timers
	// pending and dies lag events later; a adopts b's partitions from the
	// changelog, decides again the events b decided after its checkpoint
	// (returned apart), and decides every partition from then on.
	type result struct {
		got, again []Decision
		moved      PartitionState
		resymboled bool
		survivor   *Engine
	}
	run := func(adopt, observe bool, lag int) (r result) {
		a, b := newEngine(t, 5*time.Minute), newEngine(t, 5*time.Minute)
		ownsA := func(src uint32) bool { return src&0xffff < parts/2 }
		var log []changelogRow
		var meta []byte
		q1, half := len(evs)/4, len(evs)/2
		marker, dies := -1, -1
		for i := range evs {
			switch {
			case i == q1:
				publish(t, b, i, &log)
			case marker < 0 && i >= half && liveTimers(b) > 0: // its checkpoint holds timers
				meta = publish(t, b, i, &log)
				marker, dies = i, i+lag
			}
			if i == dies {
				restored, _ := restoreChangelog(t, meta, log)
				r.resymboled = !slices.Equal(a.syms.names, restored.syms.names)
				rowsOf(t, log, parts/2, parts)
				for p := uint32(topic | parts/2); p < topic|parts; p++ {
					if !adopt {
						continue
					}
					st, err := a.AdoptPartition(restored, p)
					if err != nil {
						t.Fatal(err)
					}
					r.moved.Accounts += st.Accounts
					r.moved.Payments += st.Payments
					r.moved.Timers += st.Timers
				}
				// The adopted chains read as they did in the restored
				// engine, whose symbols are numbered otherwise.
				restored.chains.idx.each(func(k uint64, i uint32) {
					c := restored.chains.read(i)
					if !adopt || c.part < tagOf(topic|parts/2) {
						return
					}
					w := appendChain(nil, c, restored.syms)
					if g := a.chains.get(k); g == nil || !bytes.Equal(appendChain(nil, g, a.syms), w) {
						t.Fatalf("payment %x reads otherwise once adopted", k)
					}
				})
				for j := marker; j < dies; j++ {
					if !ownsA(src[j]) {
						r.again, _ = a.ProcessObserved(src[j], &evs[j], r.again)
					}
				}
				ownsA = func(uint32) bool { return true }
				b = nil
			}
			ev := &evs[i]
			if ownsA(src[i]) {
				r.got, _ = a.ProcessFrom(src[i], ev, r.got)
				if b != nil && observe {
					b.Observe(ev)
				}
			} else {
				r.got, _ = b.ProcessFrom(src[i], ev, r.got)
				if observe {
					a.Observe(ev)
				}
			}
		}
		r.survivor = a
		return r
	}

	r := run(true, true, 0)
	sameDecisions(t, want, r.got)
	for i := range evs {
		if p, ok := r.survivor.AccountPartition(evs[i].AccountID); !ok || p != int(src[i]&0xffff) {
			t.Fatalf("account %s placed in partition %d (%v); its events come from %d", evs[i].AccountID, p, ok, src[i]&0xffff)
		}
	}
	sameState(t, one, r.survivor)
	moved := r.moved
	if moved.Accounts == 0 || moved.Payments == 0 || moved.Timers == 0 {
		t.Fatalf("adopted %+v: the handover does not cover accounts, payment chains and timers", moved)
	}
	if !r.resymboled {
		t.Fatal("both engines numbered their symbols alike: the test does not cover renumbering adopted payment chains")
	}
	timers := bytes.Count(encodeAll(t, want), []byte(`"trigger":"timer"`))
	t.Logf("%d events, %d decisions (%d from timers); adopted %d accounts, %d payments, %d timers",
		len(evs), len(want), timers, moved.Accounts, moved.Payments, moved.Timers)

	// b dies 400 events after its checkpoint: a decides again those of
	// b's partitions, which it observed already, and goes on.
	late := run(true, true, 400)
	if len(late.again) == 0 {
		t.Fatal("nothing decided again: the test does not cover an owner dying between checkpoints")
	}
	byID := map[string][]byte{}
	for i, j := range bytes.Split(encodeAll(t, want), []byte("\n")) {
		if i < len(want) {
			byID[want[i].DecisionID] = j
		}
	}
	differ := 0
	for i, j := range bytes.Split(encodeAll(t, late.again), []byte("\n")) {
		if i < len(late.again) && !bytes.Equal(byID[late.again[i].DecisionID], j) {
			differ++
		}
	}
	t.Logf("owner dying 400 events after its checkpoint: %d decisions made again, %d of them otherwise", len(late.again), differ)
	sameDecisions(t, want, late.got)
	sameState(t, one, late.survivor)

	cold := run(false, true, 0).got
	if bytes.Equal(encodeAll(t, want), encodeAll(t, cold)) {
		t.Fatal("a survivor that adopted nothing decided the same: the stream does not depend on the moved state")
	}
	blind := run(true, false, 0).got
	if bytes.Equal(encodeAll(t, want), encodeAll(t, blind)) {
		t.Fatal("engines that did not observe each other's events decided the same: the stream does not depend on counts across partitions")
	}
}

// rowsOf checks that RowPartition places every row of an account, a
// payment chain or a timer in the changelog log in [lo, hi), the partitions
// its writer decided, and that the log holds some of each kind.
func rowsOf(t *testing.T, log []changelogRow, lo, hi int) {
	t.Helper()
	placed := map[byte]int{}
	for _, r := range log {
		p, ok := RowPartition(r.kind, r.v)
		if r.kind == rowAccount && r.v != nil {
			// An earlier release wrote the plain row: placed alike.
			var a account
			if err := decodeStored(r.v, &a); err != nil {
				t.Fatal(err)
			}
			if q, qok := RowPartition(r.kind, raw(&a)); q != p || qok != ok {
				t.Fatalf("an account row placed in partition %d (%v) packed, %d (%v) plain", p, ok, q, qok)
			}
		}
		switch {
		case r.v == nil || r.kind != rowAccount && r.kind != rowChain && r.kind != rowTimer:
			if ok {
				t.Fatalf("a row of kind %d (%d bytes) placed in partition %d: it spans partitions, or is a delete", r.kind, len(r.v), p)
			}
		case !ok || p < lo || p >= hi:
			t.Fatalf("a row of kind %d placed in partition %d (%v): its writer decides [%d, %d)", r.kind, p, ok, lo, hi)
		default:
			placed[r.kind]++
		}
	}
	if placed[rowAccount] == 0 || placed[rowChain] == 0 || placed[rowTimer] == 0 {
		t.Fatalf("rows placed by kind: %v; the log lacks accounts, payment chains or timers", placed)
	}
}

// TestDroppedPartitionLeavesTheStore: an engine that hands a partition
// over forgets its accounts, payment chains and timers, in memory and, from
// its next checkpoint, in its store — but hands a changelog no delete for
// them, which would delete the new owner's rows; the other partitions'
// state and the entities stay as they were.
func TestDroppedPartitionLeavesTheStore(t *testing.T) {
	evs := genEvents(t, 400, 11, 1)
	e := newEngine(t, 5*time.Minute)
	accounts := map[uint32]map[string]bool{0: {}, 1: {}}
	for i := range evs {
		p := partitionOf(&evs[i], 2)
		accounts[p][evs[i].AccountID] = true
		e.ProcessFrom(p, &evs[i], nil)
	}
	st, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := e.Checkpoint(st, Offsets{}); err != nil {
		t.Fatal(err)
	}
	before := e.Stats()
	timersOf := func(e *Engine, p uint32) int {
		n := 0
		for _, ts := range e.byAccount {
			for _, t := range ts {
				if t.src == p && !t.cancelled && !t.done {
					n++
				}
			}
		}
		return n
	}
	pending := timersOf(e, 1)
	dropped, err := e.DropPartition(1)
	if err != nil {
		t.Fatal(err)
	}
	if dropped.Accounts != len(accounts[1]) || dropped.Timers != pending || pending == 0 {
		t.Fatalf("dropped %+v, want the partition's %d accounts and %d timers", dropped, len(accounts[1]), pending)
	}
	// One checkpoint: to the store, which forgets them, and to a
	// changelog, which must not delete what is the new owner's now.
	c, err := e.BeginCheckpoint(Offsets{})
	if err != nil {
		t.Fatal(err)
	}
	c.CopySome(math.MaxInt)
	if err := st.DB().Update(c.Write(st)); err != nil {
		t.Fatal(err)
	}
	deletes := 0
	if err := c.EachRow(func(_ byte, _ uint64, v []byte) error {
		if v == nil {
			deletes++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if deletes != 0 {
		t.Errorf("the changelog gets %d deletes for the rows handed over", deletes)
	}
	r := newEngine(t, 5*time.Minute)
	if _, err := r.Restore(st); err != nil {
		t.Fatal(err)
	}
	after := r.Stats()
	if after.Accounts != len(accounts[0]) || after.Payments != before.Payments-dropped.Payments {
		t.Errorf("store holds %d accounts and %d payments, want partition 0's %d and %d", after.Accounts, after.Payments, len(accounts[0]), before.Payments-dropped.Payments)
	}
	if after.Devices != before.Devices || after.IPs != before.IPs || after.Payees != before.Payees || after.Merchants != before.Merchants {
		t.Errorf("entities changed: %+v, were %+v", after, before)
	}
	for id := range accounts[1] {
		if r.accounts.get(key64(id)) != nil {
			t.Fatalf("account %s of the dropped partition is back from the store", id)
		}
	}
	for id := range accounts[0] {
		if r.accounts.get(key64(id)) == nil {
			t.Fatalf("account %s of the kept partition is gone", id)
		}
	}
	if n := timersOf(r, 1); n != 0 {
		t.Errorf("%d timers of the dropped partition back from the store", n)
	}
	if timersOf(r, 0) != timersOf(e, 0) {
		t.Errorf("%d timers of the kept partition restored, %d held", timersOf(r, 0), timersOf(e, 0))
	}
}

// sameState fails unless got holds every account, payment chain, device,
// IP, payee, merchant and app version want holds, as want holds it.
func sameState(t *testing.T, want, got *Engine) {
	t.Helper()
	check := func(kind string, w, g map[uint64][]byte) {
		if len(w) != len(g) {
			t.Errorf("%d %s rows, want %d", len(g), kind, len(w))
		}
		for k, v := range w {
			if !bytes.Equal(v, g[k]) {
				t.Errorf("%s %x differs", kind, k)
			}
		}
	}
	acct := func(a *account) []byte { return bytes.Clone(raw(a)) }
	check("account", encodedRows(want.accounts, acct, nil), encodedRows(got.accounts, acct, nil))
	// Payment chains past their expiry go when sweeping reaches them, which
	// is sooner or later in tables laid out differently.
	chains := func(e *Engine) map[uint64][]byte {
		cut := since(e.watermark(), day1)
		return encodedRows(e.chains, func(c *chain) []byte { return appendChain(nil, c, e.syms) }, func(c *chain) bool { return chainExpiry(c) >= cut })
	}
	check("payment", chains(want), chains(got))
	device := func(d *deviceState) []byte { return bytes.Clone(raw(d)) }
	check("device", encodedRows(want.devices, device, nil), encodedRows(got.devices, device, nil))
	payee := func(p *payeeState) []byte { return bytes.Clone(raw(p)) }
	check("payee", encodedRows(want.payees, payee, nil), encodedRows(got.payees, payee, nil))
	ip := func(s *ipState) []byte { return appendIP(nil, s) }
	check("ip", encodedRows(want.ips, ip, nil), encodedRows(got.ips, ip, nil))
	merchants := func(e *Engine) map[uint64][]byte {
		m := map[uint64][]byte{}
		for k, v := range e.merchants {
			m[k] = encodeMerchant(v, e.syms)
		}
		return m
	}
	check("merchant", merchants(want), merchants(got))
}

// encodedRows encodes the rows of a table that keep accepts (all if nil),
// by key.
func encodedRows[T any](t *table[T], enc func(*T) []byte, keep func(*T) bool) map[uint64][]byte {
	m := map[uint64][]byte{}
	t.idx.each(func(k uint64, i uint32) {
		if r := t.read(i); keep == nil || keep(r) {
			m[k] = enc(r)
		}
	})
	return m
}

// BenchmarkObserve is BenchmarkPipeline for an engine that only observes
// the events (another instance decides them): what each instance pays per
// event of the partitions it does not own. Compare the two on one machine.
func BenchmarkObserve(b *testing.B) {
	raw := genRaw(b, 100_000, 5, 0.5)
	e := newEngine(b, 5*time.Minute)
	now := time.Now()
	var ev event.Event
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		if i == len(raw) {
			i = 0 // observing is not deduplicated: a second pass costs the same
		}
		var err error
		if ev, err = event.DecodeOwned(raw[i], now); err != nil {
			b.Fatal(err)
		}
		e.Observe(&ev)
		i++
	}
	b.ReportMetric(float64(len(raw)), "events-in-stream")
}
