package detector

// Event time in state is stored as uint32 seconds since epochBase: half the
// size of a Unix int64 and good until 2156.
const epochBase = 1577836800 // 2020-01-01T00:00:00Z, event.MinTS: no accepted event is older

func toSec(unix int64) uint32 {
	if unix <= epochBase {
		return 1
	}
	return uint32(unix - epochBase)
}

func fromSec(s uint32) int64 { return int64(s) + epochBase }

// win is a sliding-window counter on event time: two fixed buckets, the
// previous one weighted by how much of it still overlaps the window (the
// "sliding window counter" estimate). 12 bytes, O(1), no per-event history.
type win struct {
	start     uint32
	cur, prev uint32
}

// addTo adds v at event time now to a two-bucket window: the current bucket
// rolls forward when now has left it, and a late value still inside the
// previous bucket counts there.
func addTo[V uint32 | float32](start *uint32, cur, prev *V, now, size uint32, v V) {
	b := now - now%size
	switch {
	case b == *start:
	case b > *start:
		if b == *start+size {
			*prev = *cur
		} else {
			*prev = 0
		}
		*cur, *start = 0, b
	default:
		if now >= *start-size {
			*prev += v
		}
		return
	}
	*cur += v
}

func (w *win) add(now, size, n uint32) { addTo(&w.start, &w.cur, &w.prev, now, size, n) }

// count estimates the events in the window of length size ending at now.
func (w *win) count(now, size uint32) int {
	cur, prev := slide(w.start, now, size, float64(w.cur), float64(w.prev))
	return int(cur + prev + 0.5)
}

// slide reads a two-bucket window at now: the current bucket's value and the
// share of the previous one that still overlaps the window.
func slide(start, now, size uint32, cur, prev float64) (float64, float64) {
	b := now - now%size
	switch {
	case b == start+size:
		cur, prev = 0, cur
	case b > start+size:
		return 0, 0
	case b < start:
		b = start
	}
	frac := 1 - float64(now-b)/float64(size)
	if frac < 0 {
		frac = 0
	}
	return cur, prev * frac
}

// sumWin is win for amounts. float32 keeps 7 significant digits: plenty for
// risk windows, half the bytes of float64.
type sumWin struct {
	start     uint32
	cur, prev float32
}

func (w *sumWin) add(now, size uint32, v float64) {
	addTo(&w.start, &w.cur, &w.prev, now, size, float32(v))
}

func (w *sumWin) sum(now, size uint32) float64 {
	cur, prev := slide(w.start, now, size, float64(w.cur), float64(w.prev))
	return cur + prev
}

// recent is a small set of (key, last seen) pairs that forgets the least
// recently seen key when full: known devices, payees, merchants, the distinct
// accounts behind an IP. Its size is the caller's array.
type seen struct {
	key  uint32
	last uint32
}

// touch marks key seen at now; it reports whether key was already present.
func touch(set []seen, key, now uint32) bool {
	oldest := 0
	for i := range set {
		if set[i].key == key && set[i].last != 0 {
			if now > set[i].last {
				set[i].last = now
			}
			return true
		}
		if set[i].last < set[oldest].last {
			oldest = i
		}
	}
	set[oldest] = seen{key: key, last: now}
	return false
}

func has(set []seen, key uint32) bool {
	for i := range set {
		if set[i].key == key && set[i].last != 0 {
			return true
		}
	}
	return false
}

// countSince counts entries seen at or after t.
func countSince(set []seen, t uint32) int {
	n := 0
	for i := range set {
		if set[i].last != 0 && set[i].last >= t {
			n++
		}
	}
	return n
}

func since(now, d uint32) uint32 {
	if now > d {
		return now - d
	}
	return 1
}

// bloom is a 128-bit Bloom filter with three probes: "have we ever seen this
// key" in 16 bytes, for sets with no natural bound. With 10 members about 1 in
// 100 new keys reads as known, with 20 about 1 in 20 (a missed signal, never a
// false alarm).
type bloom [2]uint64

// probes skips bit 0 of the key: hash32 always sets it.
func probes(key uint32) [3]uint32 {
	return [3]uint32{key >> 1 & 127, key >> 8 & 127, key >> 15 & 127}
}

func (b *bloom) add(key uint32) {
	for _, bit := range probes(key) {
		b[bit>>6] |= 1 << (bit & 63)
	}
}

func (b *bloom) has(key uint32) bool {
	for _, bit := range probes(key) {
		if b[bit>>6]&(1<<(bit&63)) == 0 {
			return false
		}
	}
	return true
}
