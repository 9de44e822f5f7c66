package detector

// index maps a row's 64-bit key hash to its row number. It is an open-address
// table with linear probing over one flat array: a lookup usually costs one
// cache line, where Go's map costs two or three (its directory, the group's
// control word, the slot) — and with millions of rows every line is a cache
// miss. Keys are already uniform hashes, so their low bits place them.
//
// It grows like Go's map does, a little at a time: a resize allocates the
// larger array and moves the old entries a few slots per insert, so no event
// waits for a million entries to move.
type index struct {
	slots []islot
	mask  uint64
	n     int // live entries, in slots and old together

	// old is the array being moved into slots during a resize, nil
	// otherwise. It is read-only but for tombstones: an entry deleted
	// before it moved is marked, not removed, so that the probe sequences
	// of the entries after it stay intact.
	old   []islot
	moved int // entries of old moved so far (old[:moved])
}

// islot is an entry: the key, the row, and for a packed table where the
// row's encoding is, so that the lookup that finds the row number finds the
// row too, with no second dependent miss. 16 bytes, no padding.
type islot struct {
	k   uint64
	row uint32 // row number + 1; 0 is an empty slot, tomb a deleted one (in old only)
	loc uint32 // a packed row's location (pack.go)
}

func mkSlot(key uint64, row uint32) islot { return islot{k: key, row: row} }

func (s *islot) key() uint64 { return s.k }

func (s *islot) is(key uint64) bool { return s.k == key }

const (
	tomb         = ^uint32(0)
	indexMinSize = 1024
	moveStep     = 32 // old slots moved per insert during a resize
)

func (x *index) len() int { return x.n }

// get returns key's row.
func (x *index) get(key uint64) (uint32, bool) {
	if s := x.find(key); s != nil {
		return s.row - 1, true
	}
	return 0, false
}

// find returns key's entry, or nil. The pointer is good until the next put
// or del.
func (x *index) find(key uint64) *islot {
	if x.slots != nil {
		for i := key & x.mask; ; i = (i + 1) & x.mask {
			s := &x.slots[i]
			if s.row == 0 {
				break
			}
			if s.is(key) {
				return s
			}
		}
	}
	if x.old != nil {
		// Entries before moved are in slots too, where a miss is the truth.
		if j, ok := x.findOld(key); ok && int(j) >= x.moved {
			return &x.old[j]
		}
	}
	return nil
}

func (x *index) findOld(key uint64) (uint64, bool) {
	mask := uint64(len(x.old) - 1)
	for j := key & mask; ; j = (j + 1) & mask {
		s := &x.old[j]
		if s.row == 0 {
			return 0, false
		}
		if s.is(key) && s.row != tomb {
			return j, true
		}
	}
}

// put adds key, which must not be present, with row.
func (x *index) put(key uint64, row uint32) {
	if x.slots == nil {
		x.slots, x.mask = make([]islot, indexMinSize), indexMinSize-1
	}
	if x.old == nil && (x.n+1)*4 > len(x.slots)*3 { // load over 3/4: grow
		x.old = x.slots
		x.moved = 0
		x.slots = make([]islot, 2*len(x.old))
		x.mask = uint64(len(x.slots) - 1)
	}
	x.place(mkSlot(key, row+1))
	x.n++
	if x.old != nil {
		x.moveSome()
	}
}

// place stores an entry (row already +1) in the first free slot of its probe.
func (x *index) place(e islot) {
	i := e.key() & x.mask
	for x.slots[i].row != 0 {
		i = (i + 1) & x.mask
	}
	x.slots[i] = e
}

// moveSome moves the next old slots into the current array.
func (x *index) moveSome() {
	end := min(x.moved+moveStep, len(x.old))
	for _, s := range x.old[x.moved:end] {
		if s.row != 0 && s.row != tomb {
			x.place(s)
		}
	}
	x.moved = end
	if end == len(x.old) {
		x.old = nil
	}
}

// del removes key if present.
func (x *index) del(key uint64) {
	if x.old != nil {
		if j, ok := x.findOld(key); ok && int(j) >= x.moved {
			x.old[j].row = tomb
			x.n--
			return
		}
	}
	if x.slots == nil {
		return
	}
	i := key & x.mask
	for {
		s := &x.slots[i]
		if s.row == 0 {
			return
		}
		if s.is(key) {
			break
		}
		i = (i + 1) & x.mask
	}
	x.n--
	// Backward shift: pull later entries of the probe run into the hole
	// unless their home lies after it, so lookups never need tombstones.
	j := i
	for {
		x.slots[i] = islot{}
		for {
			j = (j + 1) & x.mask
			s := x.slots[j]
			if s.row == 0 {
				return
			}
			h := s.key() & x.mask
			// s stays if its home is cyclically within (i, j].
			if i <= j && i < h && h <= j || i > j && (i < h || h <= j) {
				continue
			}
			x.slots[i] = s
			i = j
			break
		}
	}
}

// each visits every entry.
func (x *index) each(fn func(key uint64, row uint32)) {
	for _, s := range x.slots {
		if s.row != 0 {
			fn(s.key(), s.row-1)
		}
	}
	if x.old != nil {
		for _, s := range x.old[x.moved:] {
			if s.row != 0 && s.row != tomb {
				fn(s.key(), s.row-1)
			}
		}
	}
}
