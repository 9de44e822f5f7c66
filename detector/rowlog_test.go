package detector

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// checkpointed returns an engine fed n generated events and checkpointed
// into a store in dir, and the store.
func checkpointed(t *testing.T, dir string, n int) (*Engine, *Store) {
	t.Helper()
	evs := genEvents(t, 200, 5, 1)
	e := newEngine(t, 5*time.Minute)
	for i := range evs[:min(n, len(evs))] {
		e.Process(&evs[i], nil)
	}
	st, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Checkpoint(st, Offsets{"t": {0: int64(n)}}); err != nil {
		t.Fatal(err)
	}
	return e, st
}

func rowFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "rows", "rows-*.log"))
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestDamagedRowFileIsRefused: a checkpoint whose row file was changed or
// cut short is not restored as if it were whole; the error names the file.
func TestDamagedRowFileIsRefused(t *testing.T) {
	for _, damage := range []struct {
		name string
		do   func([]byte) []byte
	}{
		{"a byte flipped", func(b []byte) []byte { b[len(b)/2] ^= 0x20; return b }},
		{"cut short", func(b []byte) []byte { return b[:len(b)-100] }},
	} {
		t.Run(damage.name, func(t *testing.T) {
			dir := t.TempDir()
			_, st := checkpointed(t, dir, 3000)
			st.Close()
			files := rowFiles(t, dir)
			if len(files) != 1 {
				t.Fatalf("%d row files after one checkpoint", len(files))
			}
			b, err := os.ReadFile(files[0])
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(files[0], damage.do(b), 0o600); err != nil {
				t.Fatal(err)
			}
			st, err = OpenStore(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			_, err = newEngine(t, 5*time.Minute).Restore(st)
			if err == nil || !strings.Contains(err.Error(), filepath.Base(files[0])) {
				t.Fatalf("restore of a damaged row file: %v", err)
			}
		})
	}
}

// TestRowFilesOfUncommittedCheckpointsGo: a row file written for a
// checkpoint whose transaction failed (a full disk) or that a crash cut
// off is deleted — by the next checkpoint, or at the next start — and the
// state restored is the last committed one.
func TestRowFilesOfUncommittedCheckpointsGo(t *testing.T) {
	dir := t.TempDir()
	e, st := checkpointed(t, dir, 2000)
	evs := genEvents(t, 200, 5, 1)
	for i := 2000; i < 3000; i++ {
		e.Process(&evs[i], nil)
	}
	write, err := e.PrepareCheckpoint(st, Offsets{"t": {0: 3000}})
	if err != nil {
		t.Fatal(err)
	}
	failed := errors.New("disk full")
	if err := st.DB().Update(func(tx *bolt.Tx) error {
		if err := write(tx); err != nil {
			return err
		}
		return failed
	}); !errors.Is(err, failed) {
		t.Fatal(err)
	}
	if n := len(rowFiles(t, dir)); n != 2 {
		t.Fatalf("%d row files after the failed write, want the committed one and the failed one's", n)
	}
	// The retry writes the same capture again.
	if err := st.DB().Update(write); err != nil {
		t.Fatal(err)
	}
	if n := len(rowFiles(t, dir)); n != 2 {
		t.Fatalf("%d row files after the retry, want 2", n)
	}
	// A crash between writing a file and committing its checkpoint.
	orphan := filepath.Join(dir, "rows", rowFile{Seq: 1 << 40}.name())
	if err := os.WriteFile(orphan, []byte(rowFileMagic), 0o600); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if st, err = OpenStore(dir); err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatalf("the uncommitted file is still there: %v", err)
	}
	r := newEngine(t, 5*time.Minute)
	off, err := r.Restore(st)
	if err != nil {
		t.Fatal(err)
	}
	if off["t"][0] != 3000 || r.Stats().Accounts != e.Stats().Accounts {
		t.Fatalf("restored offset %v and %d accounts, want 3000 and %d", off, r.Stats().Accounts, e.Stats().Accounts)
	}
	// File numbers are not reused: the orphan's number was seen.
	if st.rows.next <= 1<<40 {
		t.Fatalf("next row file %d would reuse a number seen on disk", st.rows.next)
	}
}

// TestStoreFromBeforeRowFilesIsUpgraded: a store written by the release
// that kept rows as keys in bbolt (testdata/store-v6: the first half of the
// stream of TestCheckpointRestoreIsExact, checkpointed) is restored; the
// first checkpoint moves every row into a file and drops the old buckets;
// and decisions, before and after that, equal an uninterrupted run's.
func TestStoreFromBeforeRowFilesIsUpgraded(t *testing.T) {
	evs := genEvents(t, 400, 11, 1)
	want := decideAll(t, evs)
	cut := len(evs) / 2
	skip := len(decideAll(t, evs[:cut])) // the decisions of the first half, which the old release made

	dir := t.TempDir()
	gz, err := os.Open("testdata/store-v6/detector.db.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer gz.Close()
	zr, err := gzip.NewReader(gz)
	if err != nil {
		t.Fatal(err)
	}
	db, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "detector.db"), db, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, 5*time.Minute)
	off, err := e.Restore(st)
	if err != nil {
		t.Fatal(err)
	}
	if off["wallet.events"][0] != int64(cut) {
		t.Fatalf("restored offsets %v, want %d", off, cut)
	}
	var got []Decision
	upgradeAt := cut + (len(evs)-cut)/2
	for i := cut; i < len(evs); i++ {
		if i == upgradeAt {
			if _, err := e.Checkpoint(st, Offsets{"wallet.events": {0: int64(i)}}); err != nil {
				t.Fatal(err)
			}
			if err := st.DB().View(func(tx *bolt.Tx) error {
				for _, name := range [][]byte{bAccounts, bDevices, bPayees, bIPs, bChains} {
					if tx.Bucket(name) != nil {
						t.Errorf("bucket %s still there after the first checkpoint", name)
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			st.Close()
			if st, err = OpenStore(dir); err != nil {
				t.Fatal(err)
			}
			e = newEngine(t, 5*time.Minute)
			if _, err := e.Restore(st); err != nil {
				t.Fatal(err)
			}
		}
		got, _ = e.Process(&evs[i], got)
	}
	st.Close()
	sameDecisions(t, want[skip:], got)
	if len(rowFiles(t, dir)) != 1 {
		t.Fatalf("%d row files, want the one full checkpoint", len(rowFiles(t, dir)))
	}
	t.Logf("%d decisions after the old release's checkpoint, identical", len(got))
}

// TestMergeKeepsTheNewestRowOfEachKey: merged files hold, for each kind and
// key, the row of the newest file that has it, and no row a newer file
// deletes — whatever the order the checkpoints captured them in.
func TestMergeKeepsTheNewestRowOfEachKey(t *testing.T) {
	st, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.rows.minLog = 1 << 40 // merged below, by hand
	want := map[[2]uint64]string{}
	rng := rand.New(rand.NewPCG(3, 4))
	for f := 0; f < 6; f++ {
		var sets []rowSet
		for kind := byte(rowChain); kind >= rowAccount; kind-- { // not in kind order
			s := rowSet{kind: kind}
			seen := map[uint64]bool{}
			for range 300 {
				k := uint64(rng.IntN(500))
				if seen[k] {
					continue // a checkpoint holds a key once
				}
				seen[k] = true
				id := [2]uint64{uint64(kind), k}
				if _, ok := want[id]; ok && rng.IntN(4) == 0 {
					s.gone = append(s.gone, k)
					delete(want, id)
					continue
				}
				v := fmt.Sprintf("%d/%d/%d", f, kind, k)
				s.rows = append(s.rows, kv{k, []byte(v)})
				want[id] = v
			}
			sets = append(sets, s)
		}
		if err := st.DB().Update(func(tx *bolt.Tx) error { return st.rows.write(tx, sets, false) }); err != nil {
			t.Fatal(err)
		}
	}
	if len(st.rows.files) != 6 {
		t.Fatalf("%d files listed", len(st.rows.files))
	}
	out := rowFile{Seq: 1000}
	if err := st.rows.merge(st.rows.files, &out); err != nil {
		t.Fatal(err)
	}
	got := map[[2]uint64]string{}
	var prev rec
	if err := st.rows.read(out, func(kind byte, key uint64, v []byte) error {
		r := rec{kind: kind, key: key}
		if v == nil {
			t.Errorf("the merge kept a delete of %d/%d", kind, key)
		}
		if len(got) > 0 && !prev.less(r) {
			t.Errorf("%d/%d after %d/%d: not in order", kind, key, prev.kind, prev.key)
		}
		prev = r
		got[[2]uint64{uint64(kind), key}] = string(v)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) {
		t.Fatalf("merged %d rows, want %d", len(got), len(want))
	}
}

// TestWholeStateReplacesEveryRowFile: a checkpoint of the whole state (after
// Take) lists its own file alone — not the files before it, nor a merge of
// them waiting to be listed — and those files leave the disk. Opened again,
// the store holds only its rows.
func TestWholeStateReplacesEveryRowFile(t *testing.T) {
	dir := t.TempDir()
	st, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { st.Close() }()
	st.rows.minLog = 1 << 40 // merged below, by hand
	write := func(base bool, keys ...uint64) {
		t.Helper()
		s := rowSet{kind: rowAccount}
		for _, k := range keys {
			s.rows = append(s.rows, kv{k, fmt.Appendf(nil, "v%d", k)})
		}
		if err := st.DB().Update(func(tx *bolt.Tx) error { return st.rows.write(tx, []rowSet{s}, base) }); err != nil {
			t.Fatal(err)
		}
	}
	write(false, 1, 2)
	write(false, 3)
	merged := rowFile{Seq: st.rows.next}
	st.rows.next++
	if err := st.rows.merge(st.rows.files, &merged); err != nil {
		t.Fatal(err)
	}
	st.rows.merged = &mergedFile{file: merged, upto: st.rows.files[len(st.rows.files)-1].Seq}
	write(true, 7, 8)
	if n := len(st.rows.files); n != 1 {
		t.Fatalf("%d files listed after a checkpoint of the whole state, want 1", n)
	}
	if st.rows.merged != nil {
		t.Error("a merge of the replaced files is still waiting to be listed")
	}
	names, _ := filepath.Glob(filepath.Join(dir, "rows", "rows-*.log"))
	if len(names) != 1 {
		t.Errorf("row files on disk: %v, want the whole state's alone", names)
	}
	st.Close()
	if st, err = OpenStore(dir); err != nil {
		t.Fatal(err)
	}
	var keys []uint64
	for _, f := range st.rows.files {
		if err := st.rows.read(f, func(_ byte, key uint64, _ []byte) error { keys = append(keys, key); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(keys, []uint64{7, 8}) {
		t.Errorf("store opened again holds rows %v, want [7 8]", keys)
	}
}

// TestPackedRowsAreStoredPacked: a checkpoint stores accounts, devices and
// payees as they are packed in memory, and its file is well under the size
// of the plain rows an earlier release wrote (the other rows and the keys
// stay as they were); a store holding plain rows, or plain rows overwritten
// by packed ones, restores the same state.
func TestPackedRowsAreStoredPacked(t *testing.T) {
	evs := genEvents(t, 400, 11, 1)
	cut := len(evs) / 2
	// checkpoint writes what e changed since its last checkpoint, as the
	// earlier release did if plain, and returns the size of its row file.
	checkpoint := func(e *Engine, st *Store, n int, plain bool) int64 {
		c, err := e.BeginCheckpoint(Offsets{"t": {0: int64(n)}})
		if err != nil {
			t.Fatal(err)
		}
		if plain {
			e.accounts.snap.enc = appendRaw[account]
			e.devices.snap.enc = appendRaw[deviceState]
			e.payees.snap.enc = appendRaw[payeeState]
		}
		c.CopySome(math.MaxInt)
		if err := st.DB().Update(c.Write(st)); err != nil {
			t.Fatal(err)
		}
		files := st.rows.files
		return files[len(files)-1].Size
	}
	restored := func(dir string) *Engine {
		st, err := OpenStore(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		r := newEngine(t, 5*time.Minute)
		if _, err := r.Restore(st); err != nil {
			t.Fatal(err)
		}
		return r
	}

	var size [2]int64
	for i, plain := range []bool{false, true} {
		dir := t.TempDir()
		e := newEngine(t, 5*time.Minute)
		st, err := OpenStore(dir)
		if err != nil {
			t.Fatal(err)
		}
		for j := range evs[:cut] {
			e.Process(&evs[j], nil)
		}
		size[i] = checkpoint(e, st, cut, plain)
		// The rest of the stream checkpointed packed, over the first
		// checkpoint's rows.
		for j := cut; j < len(evs); j++ {
			e.Process(&evs[j], nil)
		}
		checkpoint(e, st, len(evs), false)
		st.Close()
		sameState(t, e, restored(dir))
	}
	if 3*size[0] > 2*size[1] {
		t.Errorf("a checkpoint of %d events took %d bytes packed, %d plain: want under two thirds", cut, size[0], size[1])
	}
	t.Logf("first checkpoint: %d bytes packed, %d plain", size[0], size[1])
}

// TestFileStatsTellTheDisk: the store reports the row files a restore
// reads as they lie on disk, and every byte checkpoints and merges wrote.
func TestFileStatsTellTheDisk(t *testing.T) {
	dir := t.TempDir()
	evs := genEvents(t, 200, 5, 1)
	e := newEngine(t, 5*time.Minute)
	st, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.rows.minLog = 0 // merge as soon as the newer files outweigh the oldest
	size := func(f rowFile) int64 {
		fi, err := os.Stat(filepath.Join(dir, "rows", f.name()))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	var written, merged int64
	seen := map[uint64]bool{}
	const steps = 10
	step := len(evs) / steps
	for i := range steps {
		for j := i * step; j < (i+1)*step; j++ {
			e.Process(&evs[j], nil)
		}
		st.rows.wait() // a merge under way is listed by this checkpoint
		if _, err := e.Checkpoint(st, Offsets{"t": {0: int64((i + 1) * step)}}); err != nil {
			t.Fatal(err)
		}
		files := slices.Clone(st.rows.files)
		var listed int64
		for k, f := range files {
			listed += size(f)
			if !seen[f.Seq] {
				seen[f.Seq] = true
				if k == len(files)-1 {
					written += size(f)
				} else {
					merged += size(f) // a merge, listed in place of the files it holds
				}
			}
		}
		if fs := st.FileStats(); fs.Files != len(files) || fs.Bytes != listed {
			t.Fatalf("checkpoint %d: reported %d files of %d bytes; %d files of %d bytes listed on disk", i, fs.Files, fs.Bytes, len(files), listed)
		}
	}
	st.rows.wait()
	if m := st.rows.merged; m != nil {
		merged += size(m.file) // done, and listed by the next checkpoint
	}
	fs := st.FileStats()
	if fs.Written != written || fs.Merged != merged {
		t.Fatalf("reported %d bytes written by checkpoints and %d by merges; the files hold %d and %d", fs.Written, fs.Merged, written, merged)
	}
	if merged == 0 || fs.Files >= steps {
		t.Fatalf("%d merges wrote %d bytes, %d files listed: the test did not merge", st.rows.merges, merged, fs.Files)
	}
	t.Logf("%d checkpoints wrote %d bytes, %d merges %d; %d files of %d bytes listed", steps, written, st.rows.merges, merged, fs.Files, fs.Bytes)
}

// TestSortKVOrdersAnySpreadOfKeys: rows come out in key order whether the
// keys are hashes spread evenly, crowd into a few values, or sit all in the
// low bits — the deal by top bits must not lose or reorder any.
func TestSortKVOrdersAnySpreadOfKeys(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 9))
	spreads := map[string]func() uint64{
		"hashes":   r.Uint64,
		"few":      func() uint64 { return r.Uint64N(5) << 60 },
		"low bits": func() uint64 { return r.Uint64N(1 << 20) },
	}
	for name, key := range spreads {
		for _, n := range []int{0, 1, 4095, 4096, 50000} {
			rows := make([]kv, n)
			for i := range rows {
				rows[i] = kv{k: key(), v: []byte{byte(i)}}
			}
			want := slices.Clone(rows)
			slices.SortStableFunc(want, compareKV)
			sortKV(rows)
			if !slices.IsSortedFunc(rows, compareKV) {
				t.Fatalf("%s, %d rows: not in key order", name, n)
			}
			// The same rows, each once: compare as multisets of (key, value).
			count := map[[2]uint64]int{}
			for _, x := range want {
				count[[2]uint64{x.k, uint64(x.v[0])}]++
			}
			for _, x := range rows {
				count[[2]uint64{x.k, uint64(x.v[0])}]--
			}
			for k, c := range count {
				if c != 0 {
					t.Fatalf("%s, %d rows: row %v appears %d times too many", name, n, k, -c)
				}
			}
		}
	}
}
