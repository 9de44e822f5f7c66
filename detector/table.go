package detector

// chunkRows is how many rows a chunk holds. Rows live in fixed chunks rather
// than one growing slice: growing a slice of a million rows copies hundreds
// of megabytes at once (and the GC cannot preempt that copy), while a new
// chunk costs one small allocation and leaves every row where it was.
const chunkBits = 12
const chunkRows = 1 << chunkBits

// table stores fixed-size state rows in chunks, indexed by a 64-bit key
// hash: far less memory and GC work than a map of pointers, and rows can be
// checkpointed incrementally through the dirty list.
type table[T any] struct {
	idx     map[uint64]uint32
	chunks  []*[chunkRows]T
	n       uint32 // rows ever allocated (free ones included)
	hand    uint32 // next row sweepSome looks at
	keys    []uint64
	free    []uint32
	dirty   []bool
	saved   []bool   // the slot's row is in a checkpoint: its removal must be written
	changed []uint32 // rows dirtied since the last checkpoint
	deleted []uint64 // keys removed since the last checkpoint
}

func newTable[T any]() *table[T] {
	return &table[T]{idx: map[uint64]uint32{}}
}

func (t *table[T]) len() int { return len(t.idx) }

func (t *table[T]) row(i uint32) *T { return &t.chunks[i>>chunkBits][i&(chunkRows-1)] }

// get returns the row for key, or nil. The pointer stays valid until the row
// expires.
func (t *table[T]) get(key uint64) *T {
	i, ok := t.idx[key]
	if !ok {
		return nil
	}
	return t.row(i)
}

// upsert returns the row for key, creating a zero row if absent, and marks it
// dirty.
func (t *table[T]) upsert(key uint64) *T {
	i, ok := t.idx[key]
	if !ok {
		var zero T
		if n := len(t.free); n > 0 {
			i = t.free[n-1]
			t.free = t.free[:n-1]
			*t.row(i), t.keys[i] = zero, key
		} else {
			i = t.n
			if int(i>>chunkBits) == len(t.chunks) {
				t.chunks = append(t.chunks, new([chunkRows]T))
			}
			t.n++
			t.keys = append(t.keys, key)
			t.dirty = append(t.dirty, false)
			t.saved = append(t.saved, false)
		}
		t.idx[key] = i
	}
	if !t.dirty[i] {
		t.dirty[i] = true
		t.changed = append(t.changed, i)
	}
	return t.row(i)
}

// put stores a row as loaded from a checkpoint; it is not dirty.
func (t *table[T]) put(key uint64, row T) {
	p := t.upsert(key)
	*p = row
	i := t.idx[key]
	t.dirty[i], t.saved[i] = false, true
	t.changed = t.changed[:len(t.changed)-1]
}

// drain calls fn for every row changed and every key deleted since the last
// call, then clears the lists.
func (t *table[T]) drain(fn func(key uint64, row *T), gone func(key uint64)) {
	// A removed slot is not dirty (remove clears the flag), and a slot
	// reused since is listed again: the flag alone tells which entries hold
	// a changed row, without a lookup in the index per row.
	for _, i := range t.changed {
		if t.dirty[i] {
			t.dirty[i], t.saved[i] = false, true
			fn(t.keys[i], t.row(i))
		}
	}
	t.changed = t.changed[:0]
	for _, k := range t.deleted {
		if _, back := t.idx[k]; !back {
			gone(k)
		}
	}
	t.deleted = t.deleted[:0]
}

// each visits every row.
func (t *table[T]) each(fn func(key uint64, row *T)) {
	for key, i := range t.idx {
		fn(key, t.row(i))
	}
}

// sweepSome checks the next n row slots (a clock hand over the table) and
// frees those last seen before cut. lastSeen reads a row's last event time:
// never 0 for a row in use (event times start at 1), always 0 for a freed
// (zeroed) slot — so a free slot is told without a lookup in the index, a
// random memory access per slot that cost more than the rest of an event.
func (t *table[T]) sweepSome(n int, lastSeen func(*T) uint32, cut uint32) int {
	removed := 0
	for ; n > 0 && t.n > 0; n-- {
		if t.hand >= t.n {
			t.hand = 0
		}
		i := t.hand
		t.hand++
		last := lastSeen(t.row(i))
		if last == 0 || last >= cut {
			continue
		}
		if key, ok := t.live(i); ok {
			t.remove(i, key)
			removed++
		}
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
		last := lastSeen(t.row(i))
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
	j, ok := t.idx[key]
	return key, ok && j == i
}

func (t *table[T]) remove(i uint32, key uint64) {
	delete(t.idx, key)
	var zero T
	*t.row(i) = zero
	t.dirty[i] = false
	t.free = append(t.free, i)
	// A row no checkpoint wrote needs no delete (and without checkpoints,
	// in replay, the list would only grow).
	if t.saved[i] {
		t.deleted = append(t.deleted, key)
		t.saved[i] = false
	}
}
