package detector

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/walletguard/walletguard/sim"
)

func checkTable[T any](t *testing.T, name string, tb *table[T]) {
	seen := map[uint32]uint64{}
	for k, i := range tb.idx {
		if prev, dup := seen[i]; dup {
			t.Fatalf("%s: slot %d mapped by %x and %x", name, i, prev, k)
		}
		seen[i] = k
	}
	fs := map[uint32]bool{}
	for _, i := range tb.free {
		if fs[i] {
			t.Fatalf("%s: slot %d free twice", name, i)
		}
		fs[i] = true
		if _, m := seen[i]; m {
			t.Fatalf("%s: free slot %d is mapped", name, i)
		}
	}
}

// TestTableInvariantsUnderCheckpoints: no slot is mapped twice or both free and
// mapped while rows expire, are reused and are checkpointed.
func TestTableInvariantsUnderCheckpoints(t *testing.T) {
	cfg := sim.DefaultConfig(1500)
	cfg.Seed, cfg.HistoryDays, cfg.Duration = 99, 2, 30*time.Hour
	g := sim.New(cfg)
	e := newEngine(t, 5*time.Minute)
	st, _ := OpenStore(filepath.Join(t.TempDir(), "s"))
	n := 0
	for {
		it, ok := g.Next()
		if !ok {
			break
		}
		ev := it.Event
		e.Process(&ev, nil)
		n++
		if n%997 == 0 {
			e.Checkpoint(st, Offsets{})
			checkTable(t, "payees", e.payees)
			checkTable(t, "accounts", e.accounts)
			checkTable(t, "devices", e.devices)
			checkTable(t, "ips", e.ips)
		}
	}
}

// TestDrainReportsEachChangeOnce: a checkpoint captures a changed row once,
// never a removed one, and a slot reused by another key under that key —
// the rules the incremental checkpoint relies on.
func TestDrainReportsEachChangeOnce(t *testing.T) {
	tb := newTable[uint64]()
	*tb.upsert(1) = 10
	*tb.upsert(2) = 20
	*tb.upsert(1) = 11 // changed twice: captured once
	i, _ := tb.idx[2]
	tb.remove(i, 2)
	*tb.upsert(3) = 30 // reuses 2's slot
	*tb.upsert(4) = 40
	j, _ := tb.idx[4]
	tb.remove(j, 4) // created and gone before the checkpoint
	got := map[uint64]uint64{}
	var gone []uint64
	tb.drain(func(k uint64, r *uint64) {
		if _, dup := got[k]; dup {
			t.Errorf("key %d captured twice", k)
		}
		got[k] = *r
	}, func(k uint64) { gone = append(gone, k) })
	want := map[uint64]uint64{1: 11, 3: 30}
	if len(got) != len(want) || got[1] != 11 || got[3] != 30 {
		t.Errorf("captured %v, want %v", got, want)
	}
	if len(gone) != 2 || gone[0] != 2 || gone[1] != 4 {
		t.Errorf("gone %v, want [2 4]", gone)
	}
	tb.drain(func(k uint64, _ *uint64) { t.Errorf("key %d captured again with no change", k) }, func(uint64) {})
}
