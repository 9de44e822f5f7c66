package detector

import (
	"bytes"
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
// partitions, each deciding its own and observing the other's events;
// past halfway, the second dies right after publishing a checkpoint, and the
// first adopts its partitions from the changelog and decides them on. Every
// decision — of either engine, before and after — equals what one engine
// deciding every partition gives, timers included. Without the adoption
// the survivor decides differently: the test needs the moved state.
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
	src := make([]uint32, len(evs))
	for i := range evs {
		src[i] = partitionOf(&evs[i], parts)
	}
	one := newEngine(t, 5*time.Minute)
	var want []Decision
	for i := range evs {
		want, _ = one.ProcessFrom(src[i], &evs[i], want)
	}

	run := func(adopt, observe bool) (got []Decision, moved PartitionState, resymboled bool, survivor *Engine) {
		a, b := newEngine(t, 5*time.Minute), newEngine(t, 5*time.Minute)
		ownsA := func(p uint32) bool { return p < parts/2 }
		var log []changelogRow
		var meta []byte
		q1, half := len(evs)/4, len(evs)/2
		for i := range evs {
			switch {
			case i == q1:
				publish(t, b, i, &log)
			case i >= half && b != nil && liveTimers(b) > 0: // it dies with timers pending
				meta = publish(t, b, i, &log)
				restored, _ := restoreChangelog(t, meta, log)
				resymboled = !slices.Equal(a.syms.names, restored.syms.names)
				for p := uint32(parts / 2); p < parts; p++ {
					if !adopt {
						continue
					}
					st, err := a.AdoptPartition(restored, p)
					if err != nil {
						t.Fatal(err)
					}
					moved.Accounts += st.Accounts
					moved.Payments += st.Payments
					moved.Timers += st.Timers
				}
				// The adopted chains read as they did in the restored
				// engine, whose symbols are numbered otherwise.
				restored.chains.idx.each(func(k uint64, i uint32) {
					c := restored.chains.read(i)
					if !adopt || c.part < tagOf(parts/2) {
						return
					}
					w := appendChain(nil, c, restored.syms)
					if g := a.chains.get(k); g == nil || !bytes.Equal(appendChain(nil, g, a.syms), w) {
						t.Fatalf("payment %x reads otherwise once adopted", k)
					}
				})
				ownsA = func(uint32) bool { return true }
				b = nil
			}
			ev := &evs[i]
			if ownsA(src[i]) {
				got, _ = a.ProcessFrom(src[i], ev, got)
				if b != nil && observe {
					b.Observe(ev)
				}
			} else {
				got, _ = b.ProcessFrom(src[i], ev, got)
				if observe {
					a.Observe(ev)
				}
			}
		}
		return got, moved, resymboled, a
	}

	got, moved, resymboled, survivor := run(true, true)
	sameDecisions(t, want, got)
	sameState(t, one, survivor)
	if moved.Accounts == 0 || moved.Payments == 0 || moved.Timers == 0 {
		t.Fatalf("adopted %+v: the handover does not cover accounts, payment chains and timers", moved)
	}
	if !resymboled {
		t.Fatal("both engines numbered their symbols alike: the test does not cover renumbering adopted payment chains")
	}
	timers := bytes.Count(encodeAll(t, want), []byte(`"trigger":"timer"`))
	t.Logf("%d events, %d decisions (%d from timers); adopted %d accounts, %d payments, %d timers",
		len(evs), len(want), timers, moved.Accounts, moved.Payments, moved.Timers)

	cold, _, _, _ := run(false, true)
	if bytes.Equal(encodeAll(t, want), encodeAll(t, cold)) {
		t.Fatal("a survivor that adopted nothing decided the same: the stream does not depend on the moved state")
	}
	blind, _, _, _ := run(true, false)
	if bytes.Equal(encodeAll(t, want), encodeAll(t, blind)) {
		t.Fatal("engines that did not observe each other's events decided the same: the stream does not depend on counts across partitions")
	}
}

// TestDroppedPartitionLeavesTheStore: an engine that hands a partition
// over forgets its accounts, payment chains and timers, in memory and, from
// its next checkpoint, in its store; the other partitions' state and the
// entities stay as they were.
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
	if dropped.Accounts != len(accounts[1]) || dropped.Timers != pending {
		t.Fatalf("dropped %+v, want the partition's %d accounts and %d timers", dropped, len(accounts[1]), pending)
	}
	if _, err := e.Checkpoint(st, Offsets{}); err != nil {
		t.Fatal(err)
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
	check := func(kind string, n, m int, each func(func(key uint64, w, g []byte))) {
		if n != m {
			t.Errorf("%d %s rows, want %d", m, kind, n)
		}
		each(func(key uint64, w, g []byte) {
			if !bytes.Equal(w, g) {
				t.Errorf("%s %x differs", kind, key)
			}
		})
	}
	check("account", want.accounts.len(), got.accounts.len(), func(f func(uint64, []byte, []byte)) {
		want.accounts.idx.each(func(k uint64, i uint32) {
			w := bytes.Clone(raw(want.accounts.read(i)))
			var g []byte
			if r := got.accounts.get(k); r != nil {
				g = raw(r)
			}
			f(k, w, g)
		})
	})
	// Payment chains past their expiry go when sweeping reaches them, which
	// is sooner or later in tables laid out differently.
	live := func(e *Engine) map[uint64][]byte {
		m := map[uint64][]byte{}
		cut := since(e.watermark(), day1)
		e.chains.idx.each(func(k uint64, i uint32) {
			if c := e.chains.read(i); chainExpiry(c) >= cut {
				m[k] = appendChain(nil, c, e.syms)
			}
		})
		return m
	}
	wc, gc := live(want), live(got)
	check("payment", len(wc), len(gc), func(f func(uint64, []byte, []byte)) {
		for k, w := range wc {
			f(k, w, gc[k])
		}
	})
	check("device", want.devices.len(), got.devices.len(), func(f func(uint64, []byte, []byte)) {
		want.devices.idx.each(func(k uint64, i uint32) {
			w := bytes.Clone(raw(want.devices.read(i)))
			var g []byte
			if r := got.devices.get(k); r != nil {
				g = raw(r)
			}
			f(k, w, g)
		})
	})
	check("payee", want.payees.len(), got.payees.len(), func(f func(uint64, []byte, []byte)) {
		want.payees.idx.each(func(k uint64, i uint32) {
			w := bytes.Clone(raw(want.payees.read(i)))
			var g []byte
			if r := got.payees.get(k); r != nil {
				g = raw(r)
			}
			f(k, w, g)
		})
	})
	check("ip", want.ips.len(), got.ips.len(), func(f func(uint64, []byte, []byte)) {
		want.ips.idx.each(func(k uint64, i uint32) {
			var g []byte
			if r := got.ips.get(k); r != nil {
				g = appendIP(nil, r)
			}
			f(k, appendIP(nil, want.ips.read(i)), g)
		})
	})
	check("merchant", len(want.merchants), len(got.merchants), func(f func(uint64, []byte, []byte)) {
		for k, m := range want.merchants {
			var g []byte
			if r := got.merchants[k]; r != nil {
				g = encodeMerchant(r, got.syms)
			}
			f(k, encodeMerchant(m, want.syms), g)
		}
	})
}
