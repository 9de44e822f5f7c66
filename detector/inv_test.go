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
