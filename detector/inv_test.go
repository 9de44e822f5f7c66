package detector

import (
	"encoding/binary"
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/walletguard/walletguard/sim"
)

func checkTable[T any](t *testing.T, name string, tb *table[T]) {
	seen := map[uint32]uint64{}
	tb.idx.each(func(k uint64, i uint32) {
		if prev, dup := seen[i]; dup {
			t.Fatalf("%s: slot %d mapped by %x and %x", name, i, prev, k)
		}
		seen[i] = k
		if tb.pk != nil && tb.idx.find(k).loc != tb.pk.loc[i] {
			t.Fatalf("%s: row %d is at %x by its index entry, at %x by its number", name, i, tb.idx.find(k).loc, tb.pk.loc[i])
		}
	})
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
			checkTable(t, "chains", e.chains)
		}
	}
}

// TestDrainReportsEachChangeOnce: a checkpoint captures a changed row once,
// never a removed one, and a slot reused by another key under that key; a
// removal is written only for a row a checkpoint wrote — the rules the
// incremental checkpoint relies on.
func TestDrainReportsEachChangeOnce(t *testing.T) {
	tb := newTable[uint64]()
	drain := func() (map[uint64]uint64, []uint64) {
		tb.beginSnapshot(appendRaw[uint64], 8)
		tb.copySome(math.MaxInt)
		c := tb.endSnapshot(0)
		c.flatten()
		got := map[uint64]uint64{}
		for _, r := range c.rows {
			if _, dup := got[r.k]; dup {
				t.Errorf("key %d captured twice", r.k)
			}
			got[r.k] = binary.LittleEndian.Uint64(r.v)
		}
		return got, c.gone
	}
	*tb.upsert(1) = 10
	*tb.upsert(2) = 20
	drain()
	*tb.upsert(1) = 11
	*tb.upsert(1) = 12 // changed twice: captured once
	i, _ := tb.idx.get(2)
	tb.remove(i, 2)
	*tb.upsert(3) = 30 // reuses 2's slot
	*tb.upsert(4) = 40
	j, _ := tb.idx.get(4)
	tb.remove(j, 4) // created and gone between two checkpoints
	got, gone := drain()
	if len(got) != 2 || got[1] != 12 || got[3] != 30 {
		t.Errorf("captured %v, want map[1:12 3:30]", got)
	}
	if len(gone) != 1 || gone[0] != 2 {
		t.Errorf("gone %v, want [2]: 4 was never written", gone)
	}
	if got, gone := drain(); len(got)+len(gone) != 0 {
		t.Errorf("captured %v and gone %v again with no change", got, gone)
	}

	// A written row removed and back before the next checkpoint is written
	// again, not deleted; one removed, back and removed again is deleted
	// once.
	k, _ := tb.idx.get(1)
	tb.remove(k, 1)
	*tb.upsert(1) = 13
	k, _ = tb.idx.get(3)
	tb.remove(k, 3)
	*tb.upsert(3) = 31
	k, _ = tb.idx.get(3)
	tb.remove(k, 3)
	got, gone = drain()
	if len(got) != 1 || got[1] != 13 {
		t.Errorf("captured %v, want map[1:13]", got)
	}
	if len(gone) != 1 || gone[0] != 3 {
		t.Errorf("gone %v, want [3]", gone)
	}
}
