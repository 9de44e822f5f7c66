package detector

// chunkRows is how many rows a chunk holds. Rows live in fixed chunks rather
// than one growing slice: growing a slice of a million rows copies hundreds
// of megabytes at once (and the GC cannot preempt that copy), while a new
// chunk costs one small allocation and leaves every row where it was.
const chunkBits = 12
const chunkRows = 1 << chunkBits

// table stores fixed-size state rows in chunks, indexed by a 64-bit key
// hash (index.go): far less memory and GC work than a map of pointers, and
// rows can be checkpointed incrementally through the dirty list.
type table[T any] struct {
	idx     index
	chunks  []*[chunkRows]T
	n       uint32 // rows ever allocated (free ones included)
	hand    uint32 // next row sweepSome looks at
	keys    []uint64
	free    []uint32
	flags   []uint8  // per slot: rowDirty, rowSaved, rowPending
	changed []uint32 // rows dirtied since the last checkpoint
	deleted []uint64 // keys removed since the last checkpoint
	// forgotten are the keys of deleted that went to another owner (a
	// partition handed over): the store deletes them, a changelog must not.
	forgotten []uint64

	snap *snapshot[T] // the checkpoint being captured, nil if none

	pk *packing[T] // rows stored packed (pack.go) rather than in chunks, if set
}

const (
	rowDirty   = 1 << iota // changed since the last checkpoint began
	rowSaved               // in a checkpoint: its removal must be written too
	rowPending             // changed before the checkpoint being captured, not copied yet
)

// snapshot is a table's part of a checkpoint being captured: the rows as
// they were when it began. They are copied a slice at a time between
// events (copySome), and a row about to change or go is copied first, so
// the pipeline never stops for the whole copy.
type snapshot[T any] struct {
	enc     func([]byte, *T) []byte
	rows    rowBuf
	size    int // of an encoded row, usually
	gone    []uint64
	forgot  []uint64 // of gone, those forgotten
	pending []uint32
	next    int
}

func newTable[T any]() *table[T] {
	return &table[T]{}
}

// newPackedTable is a table whose rows are stored packed: for large rows
// that are mostly zero. Sweeping reads only the first headBytes of a row:
// the fields its lastSeen and keep functions look at must lie there.
func newPackedTable[T any](headBytes uintptr) *table[T] {
	t := &table[T]{}
	t.pk = newPacking[T](&t.idx, headBytes)
	return t
}

func (t *table[T]) len() int { return t.idx.len() }

// row is row i of a table that is not packed.
func (t *table[T]) row(i uint32) *T { return &t.chunks[i>>chunkBits][i&(chunkRows-1)] }

// read returns row i to be read. The pointer stays valid until the row
// expires, or, in a packed table, until the next call on the table.
func (t *table[T]) read(i uint32) *T {
	if t.pk != nil {
		return t.pk.read(i, t.pk.loc[i], t.pk.words)
	}
	return t.row(i)
}

// sweepRead is read for sweeping: of a packed row, only the head.
func (t *table[T]) sweepRead(i uint32) *T {
	if t.pk != nil {
		return t.pk.read(i, t.pk.loc[i], t.pk.head)
	}
	return t.row(i)
}

// get returns the row for key to be read, or nil (see read).
func (t *table[T]) get(key uint64) *T {
	e := t.idx.find(key)
	if e == nil {
		return nil
	}
	if t.pk != nil {
		return t.pk.read(e.row-1, e.loc, t.pk.words)
	}
	return t.row(e.row - 1)
}

// upsert returns the row for key, creating a zero row if absent, and marks it
// dirty.
func (t *table[T]) upsert(key uint64) *T {
	var i, loc uint32
	e := t.idx.find(key)
	if e != nil {
		i, loc = e.row-1, e.loc
	} else {
		if n := len(t.free); n > 0 {
			i = t.free[n-1]
			t.free = t.free[:n-1]
			t.keys[i] = key // a freed row is zero
		} else {
			i = t.n
			if t.pk != nil {
				t.pk.loc = append(t.pk.loc, 0)
			} else if int(i>>chunkBits) == len(t.chunks) {
				t.chunks = append(t.chunks, new([chunkRows]T))
			}
			t.n++
			t.keys = append(t.keys, key)
			t.flags = append(t.flags, 0)
		}
		t.idx.put(key, i)
	}
	f := t.flags[i]
	if f&rowPending != 0 {
		t.copyRow(i) // the checkpoint being captured needs it as it is
		f = t.flags[i]
	}
	if f&rowDirty == 0 {
		t.flags[i] = f | rowDirty
		t.changed = append(t.changed, i)
	}
	if t.pk != nil {
		return t.pk.change(i, key, loc)
	}
	return t.row(i)
}

// put stores a row as loaded from a checkpoint; it is not dirty.
func (t *table[T]) put(key uint64, row T) {
	p := t.upsert(key)
	*p = row
	i, _ := t.idx.get(key)
	t.flags[i] = rowSaved
	t.changed = t.changed[:len(t.changed)-1]
}

// drop removes a row as a checkpoint's delete says, without recording
// the removal for the next checkpoint.
func (t *table[T]) drop(key uint64) {
	if i, ok := t.idx.get(key); ok {
		t.release(i, key)
	}
}

// markAllChanged marks every row changed: the next checkpoint holds them all.
func (t *table[T]) markAllChanged() {
	t.idx.each(func(_ uint64, i uint32) {
		if f := t.flags[i]; f&rowDirty == 0 {
			t.flags[i] = f | rowDirty
			t.changed = append(t.changed, i)
		}
	})
}

// beginSnapshot starts capturing the rows changed and the keys deleted
// since the last checkpoint, as they are now. Only flags change here; the
// rows are copied by copySome, or by upsert and remove before they touch
// one. Changes from now on belong to the next checkpoint. enc encodes a
// row, usually in size bytes; nil stores a packed table's rows as they are
// packed (packing.appendStored).
func (t *table[T]) beginSnapshot(enc func([]byte, *T) []byte, size int) {
	sn := &snapshot[T]{enc: enc, pending: t.changed, size: size}
	for _, i := range t.changed {
		if f := t.flags[i]; f&rowDirty != 0 {
			t.flags[i] = f&^rowDirty | rowPending
		}
	}
	sn.gone = t.deleted // less those back since: rowSet.flatten
	sn.forgot = t.forgotten
	t.changed, t.deleted, t.forgotten = nil, nil, nil
	t.snap = sn
}

// copyRow copies pending row i into the snapshot.
func (t *table[T]) copyRow(i uint32) {
	sn := t.snap
	sn.rows.grow(sn.size)
	if sn.enc == nil {
		sn.rows.buf = t.pk.appendStored(sn.rows.buf, i, t.pk.loc[i])
	} else {
		sn.rows.buf = sn.enc(sn.rows.buf, t.read(i))
	}
	sn.rows.done(t.keys[i])
	t.flags[i] = t.flags[i]&^rowPending | rowSaved
}

// copySome copies up to n pending rows; it reports whether none are left.
func (t *table[T]) copySome(n int) bool {
	sn := t.snap
	for ; n > 0 && sn.next < len(sn.pending); sn.next++ {
		if i := sn.pending[sn.next]; t.flags[i]&rowPending != 0 {
			t.copyRow(i)
			n--
		}
	}
	return sn.next == len(sn.pending)
}

// endSnapshot returns the captured rows and deleted keys. Every pending row
// must have been copied.
func (t *table[T]) endSnapshot(kind byte) rowSet {
	sn := t.snap
	t.snap = nil
	if t.changed == nil {
		t.changed = sn.pending[:0] // reuse the list's memory
	}
	set := sn.rows.set(kind, sn.gone)
	set.forgot = sn.forgot
	return set
}

// sweepSome checks the next n row slots (a clock hand over the table) and
// frees those last seen before cut. lastSeen reads a row's last event time:
// never 0 for a row in use (event times start at 1), always 0 for a freed
// (zeroed) slot — so a free slot is told without a lookup in the index, a
// random memory access per slot that cost more than the rest of an event.
// keep, if not nil, may hold back a row that is due.
func (t *table[T]) sweepSome(n int, lastSeen func(*T) uint32, cut uint32, keep func(key uint64, row *T) bool) int {
	removed, n0 := 0, n
	for ; n > 0 && t.n > 0; n-- {
		if t.hand >= t.n {
			t.hand = 0
		}
		i := t.hand
		t.hand++
		last := lastSeen(t.sweepRead(i))
		if last == 0 || last >= cut {
			continue
		}
		if key, ok := t.live(i); ok && (keep == nil || !keep(key, t.sweepRead(i))) {
			t.remove(i, key)
			removed++
		}
	}
	if t.pk != nil {
		// Packed rows lie anywhere: the next call's would each be a miss.
		t.pk.prefetchRows(t.hand, n0)
	}
	return removed
}

// evictOldest frees, among the next sample row slots, the one last seen
// longest ago — never the row of keep. A clock hand that samples: an
// approximate least-recently-seen eviction at O(sample) per call, for when
// the table is over its capacity.
func (t *table[T]) evictOldest(sample int, lastSeen func(*T) uint32, keep uint64) (key uint64, ok bool) {
	best, bestLast := uint32(0), uint32(0)
	found := false
	for ; sample > 0 && t.n > 0; sample-- {
		if t.hand >= t.n {
			t.hand = 0
		}
		i := t.hand
		t.hand++
		last := lastSeen(t.sweepRead(i))
		if last == 0 || t.keys[i] == keep {
			continue
		}
		if !found || last < bestLast {
			best, bestLast, found = i, last, true
		}
	}
	if !found {
		return 0, false
	}
	if key, ok = t.live(best); ok {
		t.remove(best, key)
	}
	return key, ok
}

// live returns the key of slot i if the slot holds that key's row.
func (t *table[T]) live(i uint32) (uint64, bool) {
	key := t.keys[i]
	j, ok := t.idx.get(key)
	return key, ok && j == i
}

func (t *table[T]) remove(i uint32, key uint64) {
	if t.flags[i]&rowPending != 0 {
		t.copyRow(i) // written as it was, then deleted by the next checkpoint
	}
	// A row no checkpoint wrote needs no delete (and without checkpoints,
	// in replay, the list would only grow).
	if t.flags[i]&rowSaved != 0 {
		t.deleted = append(t.deleted, key)
	}
	t.release(i, key)
}

// forget is remove for a row another owner has now: the store deletes it
// with the next checkpoint, the changelog keeps it (see Capture.EachRow).
func (t *table[T]) forget(i uint32, key uint64) {
	if t.flags[i]&rowSaved != 0 {
		t.forgotten = append(t.forgotten, key)
	}
	t.remove(i, key)
}

// release frees slot i, which holds key's row.
func (t *table[T]) release(i uint32, key uint64) {
	t.idx.del(key)
	if t.pk != nil {
		t.pk.free(i)
	} else {
		var zero T
		*t.row(i) = zero
	}
	t.free = append(t.free, i)
	t.flags[i] = 0
}
