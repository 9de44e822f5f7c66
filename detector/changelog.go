package detector

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// RowMerchant is the kind of a merchant's (or an app version's) row in a
// changelog. The other kinds are those of the row files; merchants live in
// their own bucket there, written whole each time.
const RowMerchant = 7

// RowTimer is the kind of a pending timer's row, keyed by the engine's own
// numbering of its timers.
const RowTimer = rowTimer

// EachRow hands every row the checkpoint captured to fn, in the order a
// restore must apply them: rows changed since the previous checkpoint
// (v nil for a row that is gone, but not for one dropped with its
// partition: DropPartition), the timers armed and ended, and every
// merchant. It is what a checkpoint adds to the state, for a changelog
// outside this process. The capture must be complete; v is valid only
// during the call.
func (c *Capture) EachRow(fn func(kind byte, key uint64, v []byte) error) error {
	if !c.complete {
		return errors.New("checkpoint: rows read before the capture is complete")
	}
	sets, err := c.rowSets()
	if err != nil {
		return err
	}
	for _, s := range sets {
		for _, r := range s.rows {
			if err := fn(s.kind, r.k, r.v); err != nil {
				return err
			}
		}
		for _, k := range s.gone {
			// A row handed over with its partition is the new owner's to
			// write; deleting it here could delete the new owner's copy.
			if _, forgot := slices.BinarySearch(s.forgot, k); forgot {
				continue
			}
			if err := fn(s.kind, k, nil); err != nil {
				return err
			}
		}
	}
	for _, r := range c.merchants {
		if err := fn(RowMerchant, r.k, r.v); err != nil {
			return err
		}
	}
	return nil
}

// Meta is the checkpoint's engine clocks, sources' event times and
// offsets in one value: what a changelog's marker carries, so that a
// restore gets them with the rows they belong to.
func (c *Capture) Meta() []byte {
	b := make([]byte, 0, len(c.meta)+4+len(c.srcs)+len(c.offsets))
	b = append(b, c.meta[:]...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(c.srcs)))
	b = append(b, c.srcs...)
	return append(b, c.offsets...)
}

// splitMeta takes a marker's meta (Capture.Meta) apart.
func splitMeta(meta []byte) (m, srcs, offsets []byte, err error) {
	n := len(Capture{}.meta)
	if len(meta) < n+4 {
		return nil, nil, nil, errors.New("marker too short")
	}
	srcLen := int(binary.LittleEndian.Uint32(meta[n:]))
	if len(meta) < n+4+srcLen {
		return nil, nil, nil, errors.New("marker too short for its sources")
	}
	return meta[:n], meta[n+4 : n+4+srcLen], meta[n+4+srcLen:], nil
}

// MetaOffsets is the event offsets a marker's meta (Capture.Meta) names:
// where the state it closes was taken.
func MetaOffsets(meta []byte) (Offsets, error) {
	_, _, offsets, err := splitMeta(meta)
	if err != nil {
		return nil, err
	}
	var o Offsets
	if err := json.Unmarshal(offsets, &o); err != nil {
		return nil, fmt.Errorf("marker offsets: %w", err)
	}
	return o, nil
}

// RestoreChangelog loads into an empty engine (New, Fresh) the rows
// read handing each to apply (every row of a changelog up to its last
// marker, in order), and the marker's meta (Capture.Meta). It returns the
// offsets the state was taken at. Every row is then marked changed: the
// next checkpoint writes the whole state to the local store (replacing
// what it held, once a live engine Takes it).
func (e *Engine) RestoreChangelog(meta []byte, read func(apply func(kind byte, key uint64, v []byte) error) error) (Offsets, error) {
	r, err := e.BeginRestore(meta)
	if err != nil {
		return nil, err
	}
	if err := read(r.Apply); err != nil {
		return nil, fmt.Errorf("restore changelog: %w", err)
	}
	return r.Finish(), nil
}

// Restoring is RestoreChangelog taken apart, for a reader that feeds
// several engines from one pass over a changelog: BeginRestore, Apply for
// every row in order, Finish.
type Restoring struct {
	e       *Engine
	timers  map[uint64]*timer
	rows    func(kind byte, key uint64, v []byte) error
	offsets Offsets
}

// BeginRestore starts loading a changelog's rows into an empty engine, at
// the marker's meta (Capture.Meta).
func (e *Engine) BeginRestore(meta []byte) (*Restoring, error) {
	m, srcs, off, err := splitMeta(meta)
	if err != nil {
		return nil, fmt.Errorf("restore changelog: %w", err)
	}
	offsets, err := e.setMeta(m, srcs, off)
	if err != nil {
		return nil, fmt.Errorf("restore changelog: %w", err)
	}
	timers := map[uint64]*timer{}
	return &Restoring{e: e, timers: timers, rows: e.rowApplier(timers), offsets: offsets}, nil
}

// Apply takes in one row; v nil deletes it.
func (r *Restoring) Apply(kind byte, key uint64, v []byte) error {
	if kind != RowMerchant {
		return r.rows(kind, key, v)
	}
	if v == nil {
		delete(r.e.merchants, key)
		return nil
	}
	m, err := decodeMerchant(v, r.e.syms)
	if err != nil {
		return fmt.Errorf("merchants: %w", err)
	}
	r.e.merchants[key] = m
	return nil
}

// Finish queues the timers read and marks every row changed; it returns
// the offsets the state was taken at.
func (r *Restoring) Finish() Offsets {
	r.e.installAllChanged(r.timers)
	r.e.updateGauges()
	return r.offsets
}

// MarkAllChanged makes the whole state part of the next checkpoint, every
// pending timer included: for a changelog that must be written afresh.
func (e *Engine) MarkAllChanged() {
	e.markAllChanged()
	var pending []*timer
	for _, h := range e.timers {
		for _, t := range *h {
			if !t.cancelled && !t.done { // an ended one may wait in the heap
				pending = append(pending, t)
			}
		}
	}
	// A checkpoint lists new timers in the order they were armed.
	slices.SortFunc(pending, func(a, b *timer) int { return cmp.Compare(a.seq, b.seq) })
	e.timersNew = pending
}
