package detector

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"unsafe"
)

// A packed table stores each row encoded: a bitmap of the row's nonzero
// 32-bit words, then those words. Most of a row is zero most of its life —
// an account seen a few times has one device, one network, no security
// change, empty windows — so an account row of 440 bytes packs to about
// 170, and a device's 68 to about 20. The rows of the event at hand are
// decoded into a fixed row and packed again when the table moves on to
// another row: a few hundred nanoseconds per event for less than half the
// memory.
//
// Encodings live in slabs by size (in pairs of words), chunks of 32 KB
// that hold no pointers; a row whose encoding changes size moves to
// another slab and leaves its slot on that slab's free list.
type packing[T any] struct {
	words, hdr int // a row's words, and the bitmap's
	head       int // leading words sweeping reads
	// Where each row's encoding is (0 for an all-zero row), by row number
	// here and in the row's index entry: the event path finds it through
	// the key, sweeping through the row number.
	loc    []uint32
	idx    *index
	chunks [][]uint32
	// The encoding size, in pairs of words, of the slab each chunk belongs
	// to: what prefetching a row loads, without first loading its bitmap.
	chunkPairs []uint8
	slabs      []slab // by encoded size in pairs of words

	open    uint32 // row number+1 of the row decoded in cur, 0 if none
	openKey uint64
	openLoc uint32
	cur     T // the open row: its only current copy
	tmp     T // a row decoded for reading
	zero    T // every free row, and every row without a nonzero word
	buf     []uint32
}

// slab allocates encodings of one size.
type slab struct {
	chunk, used uint32 // the chunk being filled, and its words used
	free        []uint32
}

// A location is a chunk number and an offset in pairs of words. Chunk 0 is
// never allocated, so location 0 means an all-zero row.
const (
	packChunkWords = 1 << 13
	packOffBits    = 12
)

func newPacking[T any](idx *index, headBytes uintptr) *packing[T] {
	var z T
	if unsafe.Sizeof(z)%4 != 0 || unsafe.Alignof(z) < 4 {
		panic("packed rows must be whole, aligned 32-bit words")
	}
	words := int(unsafe.Sizeof(z) / 4)
	hdr := (words + 31) / 32
	head := int(headBytes+3) / 4
	if head < 1 || head > words {
		panic("the head sweeping reads must lie in the row")
	}
	if (hdr+words+1)/2 > 255 {
		panic("packed rows must encode to at most 255 pairs of words")
	}
	return &packing[T]{words: words, hdr: hdr, head: head, idx: idx, chunks: [][]uint32{nil}, chunkPairs: []uint8{0},
		slabs: make([]slab, (hdr+words+1)/2+1), buf: make([]uint32, hdr+words)}
}

func wordsOf[T any](v *T, n int) []uint32 { return unsafe.Slice((*uint32)(unsafe.Pointer(v)), n) }

// at returns the encoding at location l, from its start.
func (p *packing[T]) at(l uint32) []uint32 {
	return p.chunks[l>>packOffBits][(l&(1<<packOffBits-1))<<1:]
}

// sizeAt is the length in words of the encoding at l.
func (p *packing[T]) sizeAt(l uint32) int {
	if l == 0 {
		return 0
	}
	n := p.hdr
	for _, b := range p.at(l)[:p.hdr] {
		n += bits.OnesCount32(b)
	}
	return n
}

// decode decodes the first n words of the encoding at l into dst; the
// rest of dst is left as it was. The first words come first among the
// encoded ones, so a prefix decodes without looking at the rest.
func (p *packing[T]) decode(l uint32, dst *T, n int) {
	ws := wordsOf(dst, p.words)[:n]
	clear(ws)
	if l == 0 {
		return
	}
	enc := p.at(l)
	j := p.hdr
	for k, b := range enc[:(n+31)/32] {
		if rest := n - k<<5; rest < 32 {
			b &= 1<<rest - 1
		}
		for ; b != 0; b &= b - 1 {
			ws[k<<5+bits.TrailingZeros32(b)] = enc[j]
			j++
		}
	}
}

// encode packs v into p.buf; an all-zero row encodes to the bare bitmap.
func (p *packing[T]) encode(v *T) []uint32 {
	ws := wordsOf(v, p.words)
	buf := p.buf[:p.hdr+p.words]
	// Unchecked stores: n stays below hdr+j+1, within buf.
	out := unsafe.Pointer(unsafe.SliceData(buf))
	n := uintptr(p.hdr)
	for k := range p.hdr {
		// Without a branch (which words are zero is as good as random),
		// and the bitmap word in a register.
		var bm uint32
		for j, w := range ws[k<<5 : min(k<<5+32, len(ws))] {
			*(*uint32)(unsafe.Add(out, n*4)) = w
			nz := (w | -w) >> 31
			bm |= nz << (j & 31)
			n += uintptr(nz)
		}
		buf[k] = bm
	}
	return buf[:n]
}

// pack stores v's encoding, at l if it fits the same slab, and returns
// where it is.
func (p *packing[T]) pack(l uint32, v *T) uint32 {
	enc := p.encode(v)
	if len(enc) == p.hdr {
		p.release(l)
		return 0
	}
	if l == 0 || (p.sizeAt(l)+1)>>1 != (len(enc)+1)>>1 {
		p.release(l)
		l = p.alloc((len(enc) + 1) >> 1)
	}
	copy(p.at(l), enc)
	return l
}

// alloc returns a location for an encoding of pairs pairs of words.
func (p *packing[T]) alloc(pairs int) uint32 {
	s := &p.slabs[pairs]
	if n := len(s.free); n > 0 {
		l := s.free[n-1]
		s.free = s.free[:n-1]
		return l
	}
	if s.chunk == 0 || int(s.used)+2*pairs > packChunkWords {
		s.chunk, s.used = uint32(len(p.chunks)), 0
		p.chunks = append(p.chunks, make([]uint32, packChunkWords))
		p.chunkPairs = append(p.chunkPairs, uint8(pairs))
	}
	l := s.chunk<<packOffBits | s.used>>1
	s.used += uint32(2 * pairs)
	return l
}

func (p *packing[T]) release(l uint32) {
	if l != 0 {
		s := &p.slabs[(p.sizeAt(l)+1)>>1]
		s.free = append(s.free, l)
	}
}

// change returns row i, key's, whose encoding is at l, decoded to be
// changed: the row stays open, and is packed when another row is opened.
func (p *packing[T]) change(i uint32, key uint64, l uint32) *T {
	if p.open == i+1 {
		return &p.cur
	}
	if p.open != 0 {
		o := p.open - 1
		if nl := p.pack(p.openLoc, &p.cur); nl != p.openLoc {
			p.loc[o] = nl
			if e := p.idx.find(p.openKey); e != nil {
				e.loc = nl
			}
		}
	}
	p.decode(l, &p.cur, p.words)
	p.open, p.openKey, p.openLoc = i+1, key, l
	return &p.cur
}

// read returns row i, whose encoding is at l, decoded to be read, until
// the next call: its first n words, the rest not the row's unless n is the
// whole row (sweeping needs only the head, where a row says when it was
// last seen).
func (p *packing[T]) read(i, l uint32, n int) *T {
	if p.open == i+1 {
		return &p.cur
	}
	if l == 0 {
		return &p.zero
	}
	p.decode(l, &p.tmp, n)
	return &p.tmp
}

// free empties row i.
func (p *packing[T]) free(i uint32) {
	if p.open == i+1 {
		p.open = 0
	}
	p.release(p.loc[i])
	p.loc[i] = 0
}

// addr is where the encoding at l starts, 0 for none.
func (p *packing[T]) addr(l uint32) uintptr {
	if l != 0 {
		return uintptr(unsafe.Pointer(&p.at(l)[0]))
	}
	return 0
}

// span is where the encoding at l lies, [0, 0) for none.
func (p *packing[T]) span(l uint32) (start, end uintptr) {
	if start = p.addr(l); start == 0 {
		return 0, 0
	}
	return start, start + uintptr(p.chunkPairs[l>>packOffBits])*8
}

// prefetchRows loads the first line of the encodings of n rows from row i
// on (wrapping around), where sweeping reads when a row was last seen.
func (p *packing[T]) prefetchRows(i uint32, n int) {
	for ; n > 0 && len(p.loc) > 0; n-- {
		if int(i) >= len(p.loc) {
			i = 0
		}
		if a := p.addr(p.loc[i]); a != 0 {
			prefetch(a)
		}
		i++
	}
}

// packedRow starts a row a checkpoint holds as its packed encoding. Such a
// value is one byte and whole words long, so never the length of a plain
// row, which is whole words: a store or changelog written with plain rows
// reads as before, and both may hold versions of one key.
const packedRow = 'p'

// appendStored appends row i (its encoding at l) to dst as a checkpoint
// holds it: packedRow, then the encoding's words. Most of a row is zero,
// so this is well under half of the plain row, and copying it needs no
// decoding.
func (p *packing[T]) appendStored(dst []byte, i, l uint32) []byte {
	var enc []uint32
	switch {
	case p.open == i+1:
		enc = p.encode(&p.cur)
	case l == 0:
		enc = p.buf[:p.hdr]
		clear(enc)
	default:
		enc = p.at(l)[:p.sizeAt(l)]
	}
	dst = append(dst, packedRow)
	return append(dst, unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(enc))), 4*len(enc))...)
}

// decodeStored decodes a row as a checkpoint holds it: packed
// (appendStored) or, from an older checkpoint, plain. A packed row is read
// in place, checked as it goes: its bitmap must mark as many words as
// follow it, all within the row.
func decodeStored[T any](b []byte, dst *T) error {
	if len(b)%4 != 1 || b[0] != packedRow {
		return fromRaw(b, dst)
	}
	ws := wordsOf(dst, int(unsafe.Sizeof(*dst)/4))
	hdr, n := (len(ws)+31)/32, (len(b)-1)/4
	if n < hdr {
		return fmt.Errorf("packed state row of %d bytes, shorter than its bitmap", len(b))
	}
	clear(ws)
	j := hdr
	for k := range hdr {
		bm := storedAt(b, k)
		if rest := len(ws) - k<<5; rest < 32 && bm>>rest != 0 {
			return fmt.Errorf("packed state row marks words past the row's %d", len(ws))
		}
		for ; bm != 0; bm &= bm - 1 {
			if j == n {
				return fmt.Errorf("packed state row of %d bytes marks more words than it holds", len(b))
			}
			ws[k<<5+bits.TrailingZeros32(bm)] = storedAt(b, j)
			j++
		}
	}
	if j != n {
		return fmt.Errorf("packed state row of %d bytes holds %d words it does not mark", len(b), n-j)
	}
	return nil
}

// storedAt is word k of a packed row's encoding.
func storedAt(b []byte, k int) uint32 { return binary.NativeEndian.Uint32(b[1+4*k:]) }
