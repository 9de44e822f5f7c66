package detector

import (
	"bytes"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/sim"
)

// TestManyRestoresStress checkpoints at random points and restores several
// times: the decisions equal an uninterrupted run.
func TestManyRestoresStress(t *testing.T) {
	cfg := sim.DefaultConfig(1500)
	cfg.Seed, cfg.HistoryDays, cfg.Duration = 99, 2, 30*time.Hour
	g := sim.New(cfg)
	var evs []event.Event
	for {
		it, ok := g.Next()
		if !ok {
			break
		}
		evs = append(evs, it.Event)
	}
	ref := newEngine(t, 5*time.Minute)
	var want []Decision
	for i := range evs {
		want, _ = ref.Process(&evs[i], want)
	}
	dir := t.TempDir()
	st, _ := OpenStore(filepath.Join(dir, "s"))
	e := newEngine(t, 5*time.Minute)
	var got []Decision
	restores := map[int]bool{6000: true, 12000: true, 20000: true, 31000: true}
	rng := rand.New(rand.NewPCG(1, 2))
	nextCk := 100
	for i := range evs {
		if i == nextCk || restores[i] {
			nextCk = i + 1 + rng.IntN(3000)
			if _, err := e.Checkpoint(st, Offsets{"t": {0: int64(i)}}); err != nil {
				t.Fatal(err)
			}
			if restores[i] {
				e = newEngine(t, 5*time.Minute)
				if _, err := e.Restore(st); err != nil {
					t.Fatal(err)
				}
			}
		}
		got, _ = e.Process(&evs[i], got)
	}
	a, b := encodeAll(t, want), encodeAll(t, got)
	if !bytes.Equal(a, b) {
		al, bl := bytes.Split(a, []byte("\n")), bytes.Split(b, []byte("\n"))
		for i := range min(len(al), len(bl)) {
			if !bytes.Equal(al[i], bl[i]) {
				t.Fatalf("decision %d differs:\n%s\n%s", i, al[i], bl[i])
			}
		}
	}
}
