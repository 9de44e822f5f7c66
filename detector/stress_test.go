package detector

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/sim"
)

// TestManyRestoresStress checkpoints at random points and restores several
// times: the decisions equal an uninterrupted run. It runs with the row
// files merged as in production (rarely, for a state this small) and as
// often as they can be: whenever the files after the oldest outweigh it.
func TestManyRestoresStress(t *testing.T) {
	for _, tc := range []struct {
		name      string
		compactAt int64
	}{{"deltas", minRowLog}, {"merging", 0}} {
		t.Run(tc.name, func(t *testing.T) { testManyRestores(t, tc.compactAt) })
	}
}

func testManyRestores(t *testing.T, compactAt int64) {
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
	want := decideAll(t, evs)
	dir := t.TempDir()
	st, err := OpenStore(filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { st.Close() }()
	st.rows.minLog = compactAt
	e := newEngine(t, 5*time.Minute)
	var got []Decision
	merges, maxFiles := 0, 0
	restores := map[int]bool{6000: true, 12000: true, 20000: true, 31000: true}
	rng := rand.New(rand.NewPCG(1, 2))
	nextCk := 100
	for i := range evs {
		if i == nextCk || restores[i] {
			nextCk = i + 1 + rng.IntN(3000)
			if _, err := e.Checkpoint(st, Offsets{"t": {0: int64(i)}}); err != nil {
				t.Fatal(err)
			}
			maxFiles = max(maxFiles, len(st.rows.files))
			if restores[i] {
				// As after a crash: the store opened afresh. Closing
				// waits for a merge under way, which counts it.
				st.Close()
				merges += st.rows.merges
				if st, err = OpenStore(filepath.Join(dir, "s")); err != nil {
					t.Fatal(err)
				}
				st.rows.minLog = compactAt
				e = newEngine(t, 5*time.Minute)
				if _, err := e.Restore(st); err != nil {
					t.Fatal(err)
				}
			}
		}
		got, _ = e.Process(&evs[i], got)
	}
	sameDecisions(t, want, got)
	// A merge under way finishes and is listed by the next checkpoint.
	st.rows.wait()
	if _, err := e.Checkpoint(st, Offsets{"t": {0: int64(len(evs))}}); err != nil {
		t.Fatal(err)
	}
	// A merge that last checkpoint called for is listed by the one after.
	st.rows.wait()
	if st.rows.merged != nil {
		if _, err := e.Checkpoint(st, Offsets{"t": {0: int64(len(evs))}}); err != nil {
			t.Fatal(err)
		}
	}
	merges += st.rows.merges
	files, err := os.ReadDir(filepath.Join(dir, "s", "rows"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(st.rows.files) {
		t.Errorf("%d row files on disk, the checkpoint lists %d: replaced files were left behind", len(files), len(st.rows.files))
	}
	t.Logf("%d merges, at most %d row files, %d now", merges, maxFiles, len(files))
	// Merged means no merge is due: the files after the oldest do not
	// outweigh it (how many there are depends on the rows' sizes).
	newer := st.rows.newerSize()
	if compactAt == 0 && (merges < 3 || newer > st.rows.files[0].Size) {
		t.Errorf("%d merges, and %d row files at the end whose newer ones outweigh the oldest (%d > %d bytes): the files are not merged",
			merges, len(files), newer, st.rows.files[0].Size)
	}
	r := newEngine(t, 5*time.Minute)
	if _, err := r.Restore(st); err != nil {
		t.Fatal(err)
	}
	if r.Stats() != e.Stats() {
		t.Errorf("restored after the last merge: %+v, want %+v", r.Stats(), e.Stats())
	}
}
