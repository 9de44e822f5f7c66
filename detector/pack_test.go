package detector

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"
	"unsafe"
)

// TestPackedTableMatchesPlain drives a packed and a plain table of account
// rows through the same random changes, reads, expiries and reuse: every
// row reads back the same, and slots freed by rows that grew or went are
// reused rather than piling up.
func TestPackedTableMatchesPlain(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	packed, plain := newPackedTable[account](unsafe.Offsetof(account{}.last)+4), newTable[account]()
	const keys = 3000
	words := int(unsafe.Sizeof(account{}) / 4)
	change := func(a *account) {
		ws := wordsOf(a, words)
		for range 1 + rng.IntN(6) {
			w := rng.IntN(words)
			switch rng.IntN(3) {
			case 0:
				ws[w] = 0
			case 1:
				ws[w] = uint32(rng.IntN(5))
			default:
				ws[w] = rng.Uint32()
			}
		}
		a.last = max(a.last, 1) // a row in use is never all zero here
	}
	for round := range 40 {
		for range 5000 {
			k := uint64(1 + rng.IntN(keys))
			switch rng.IntN(10) {
			case 0:
				if i, ok := packed.idx.get(k); ok {
					packed.remove(i, k)
				}
				if i, ok := plain.idx.get(k); ok {
					plain.remove(i, k)
				}
			case 1, 2, 3:
				p, q := packed.get(k), plain.get(k)
				if (p == nil) != (q == nil) || p != nil && !same(p, q) {
					t.Fatalf("round %d: key %d reads differently from the packed table", round, k)
				}
			default:
				a, b := packed.upsert(k), plain.upsert(k)
				if !same(a, b) {
					t.Fatalf("round %d: key %d opened differently from the packed table", round, k)
				}
				change(a)
				*b = *a
			}
		}
		// Expire a tenth of the rows through the sweep, as the engine does.
		cut := uint32(rng.IntN(1 << 16))
		last := func(a *account) uint32 { return a.last & 0xffff }
		packed.sweepSome(int(packed.n)/10, last, cut, nil)
		plain.sweepSome(int(plain.n)/10, last, cut, nil)
		if packed.len() != plain.len() {
			t.Fatalf("round %d: %d packed rows, %d plain", round, packed.len(), plain.len())
		}
	}
	checkTable(t, "packed", packed)
	for k := uint64(1); k <= keys; k++ {
		p, q := packed.get(k), plain.get(k)
		if (p == nil) != (q == nil) || p != nil && !same(p, q) {
			t.Fatalf("key %d reads differently from the packed table at the end", k)
		}
	}
	// Slots in use and free together cannot exceed what the slabs hold; a
	// free list that lost slots would leave the chunks growing instead.
	pk := packed.pk
	var held int
	for i := range pk.loc {
		if pk.loc[i] != 0 {
			held += (pk.sizeAt(pk.loc[i]) + 1) &^ 1
		}
	}
	for c, s := range pk.slabs {
		held += 2 * c * len(s.free)
	}
	capacity := (len(pk.chunks) - 1) * packChunkWords
	if held > capacity || capacity > 2*held+len(pk.slabs)*packChunkWords {
		t.Errorf("%d words held in %d words of slabs: slots are lost or leak", held, capacity)
	}
}

// TestAccountsPackSmall: on generated traffic with two days of history,
// packed rows take well under their fixed size (account 440 bytes, device
// 68, payee 84): the saving the README's bytes per account count on.
func TestAccountsPackSmall(t *testing.T) {
	evs := genEvents(t, 3000, 5, 1)
	e := newEngine(t, 5*time.Minute)
	for i := range evs {
		e.Process(&evs[i], nil)
	}
	check := func(name string, avg float64, raw uintptr, most float64) {
		t.Logf("%s: %.0f bytes packed, %d unpacked", name, avg, raw)
		if avg > most*float64(raw) {
			t.Errorf("%s rows pack to %.0f bytes on average, more than %.0f%% of %d", name, avg, 100*most, raw)
		}
	}
	check("account", packedSize(e.accounts), unsafe.Sizeof(account{}), 0.65)
	check("device", packedSize(e.devices), unsafe.Sizeof(deviceState{}), 0.5)
	check("payee", packedSize(e.payees), unsafe.Sizeof(payeeState{}), 0.75)
}

// same compares rows bit for bit: random words make NaNs of float fields.
func same(a, b *account) bool { return bytes.Equal(raw(a), raw(b)) }

// packedSize is the average bytes of a table's rows, as stored.
func packedSize[T any](t *table[T]) float64 {
	var n, words int
	for i, l := range t.pk.loc {
		if _, ok := t.live(uint32(i)); ok {
			n++
			words += (t.pk.sizeAt(l) + 1) &^ 1
		}
	}
	return 4 * float64(words) / float64(max(n, 1))
}
