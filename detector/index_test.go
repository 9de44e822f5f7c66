package detector

import (
	"math/rand/v2"
	"testing"
)

// TestIndexAgreesWithAMap drives the index and a Go map with the same random
// inserts, lookups and deletes — through several resizes, with deletes while
// entries are still moving — and requires the same answers throughout.
func TestIndexAgreesWithAMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var x index
	want := map[uint64]uint32{}
	var keys []uint64
	// Keys that share low bits collide on purpose: long probe runs, and runs
	// that wrap past the end, are where deletion and resizing go wrong.
	key := func() uint64 {
		if len(keys) > 0 && rng.IntN(3) == 0 {
			return keys[rng.IntN(len(keys))]
		}
		k := rng.Uint64()
		switch rng.IntN(64) {
		case 0: // home in the first slot
			k &^= 1<<40 - 1
		case 1: // home in the last slot: the run wraps to the start
			k |= 1<<40 - 1
		case 2, 3, 4, 5:
			k &^= 0xfff
		}
		return k
	}
	check := func(step int, k uint64) {
		got, ok := x.get(k)
		w, wok := want[k]
		if ok != wok || ok && got != w {
			t.Fatalf("step %d: get(%x) = %d,%v, want %d,%v", step, k, got, ok, w, wok)
		}
	}
	for step := 0; step < 400_000; step++ {
		k := key()
		switch r := rng.IntN(10); {
		case r < 6 || step < 100_000: // grow through several resizes first
			if _, ok := want[k]; !ok {
				row := uint32(rng.IntN(1 << 30))
				x.put(k, row)
				want[k] = row
				keys = append(keys, k)
			}
		case r < 9:
			x.del(k)
			delete(want, k)
		default:
			check(step, k)
		}
		check(step, k)
		if x.len() != len(want) {
			t.Fatalf("step %d: len %d, want %d", step, x.len(), len(want))
		}
	}
	for _, k := range keys {
		check(-1, k)
	}
	seen := 0
	x.each(func(k uint64, row uint32) {
		if w, ok := want[k]; !ok || w != row {
			t.Fatalf("each visited %x=%d, want %d,%v", k, row, w, ok)
		}
		seen++
	})
	if seen != len(want) {
		t.Fatalf("each visited %d entries, want %d", seen, len(want))
	}
}

// TestIndexDeleteAtTheWrap deletes the entry in the last slot while the
// first slot holds an entry at home: it must stay where lookups find it.
func TestIndexDeleteAtTheWrap(t *testing.T) {
	var x index
	last, first, wrapped := uint64(1<<20|indexMinSize-1), uint64(1<<21), uint64(1<<22|indexMinSize-1)
	x.put(last, 1)    // slot 1023
	x.put(first, 2)   // slot 0, its home
	x.put(wrapped, 3) // home 1023, runs on to slot 1
	x.del(last)
	for k, want := range map[uint64]uint32{first: 2, wrapped: 3} {
		if got, ok := x.get(k); !ok || got != want {
			t.Fatalf("after deleting the last slot's entry, get(%x) = %d,%v, want %d", k, got, ok, want)
		}
	}
	if _, ok := x.get(last); ok {
		t.Fatal("deleted entry still found")
	}
}

// BenchmarkIndexLookup and BenchmarkMapLookup find random keys among a
// million: the index's reason to exist.
func BenchmarkIndexLookup(b *testing.B) {
	keys := benchKeys()
	var x index
	for i, k := range keys {
		x.put(k, uint32(i))
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for b.Loop() {
		if _, ok := x.get(keys[rng.IntN(len(keys))]); !ok {
			b.Fatal("missing")
		}
	}
}

func BenchmarkMapLookup(b *testing.B) {
	keys := benchKeys()
	m := make(map[uint64]uint32)
	for i, k := range keys {
		m[k] = uint32(i)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for b.Loop() {
		if _, ok := m[keys[rng.IntN(len(keys))]]; !ok {
			b.Fatal("missing")
		}
	}
}

func benchKeys() []uint64 {
	rng := rand.New(rand.NewPCG(7, 8))
	keys := make([]uint64, 1_000_000)
	for i := range keys {
		keys[i] = rng.Uint64()
	}
	return keys
}
