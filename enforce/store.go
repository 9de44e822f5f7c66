package enforce

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketStates = []byte("enforce")
	bucketMeta   = []byte("enforce_meta")
	bucketAudit  = []byte("audit")
	keyBreaker   = []byte("breaker")
)

// record is an account's state as stored: the state plus what must never
// leave the package (the sealed secret, the last used time step).
type record struct {
	State
	Sealed   []byte `json:"totp_sealed,omitempty"`
	LastStep int64  `json:"totp_last_step,omitempty"`
}

// Save writes changed states, the breaker and the automatic actions' audit
// entries inside the caller's transaction (the checkpoint's), and hands
// automatic commands to Forward.
func (p *Planner) Save(tx *bolt.Tx) error {
	write, _, err := p.PrepareSave()
	if err != nil {
		return err
	}
	return write(tx)
}

// PrepareSave captures what Save writes — encoded states, the breaker,
// audit entries, commands to forward — and returns the function that
// writes it (for a checkpoint written outside the lock), and the function
// that puts it all back to be saved again if that write fails (called with
// the caller's lock held; newer changes made meanwhile are kept).
func (p *Planner) PrepareSave() (write func(*bolt.Tx) error, undo func(), err error) {
	// Under the caller's lock only copies are taken (a sealed secret is
	// replaced, never changed in place); encoding runs in the write, off
	// the pipeline, which thousands of changed accounts would hold up.
	type kv struct {
		id string
		r  record
	}
	states := make([]kv, 0, len(p.dirty))
	for id := range p.dirty {
		if s := p.states[id]; s != nil {
			states = append(states, kv{id, recordOf(s)})
		}
	}
	clear(p.dirty)
	var breaker []byte
	if p.breaker.dirty {
		v, err := json.Marshal(&p.breaker)
		if err != nil {
			return nil, nil, err
		}
		breaker, p.breaker.dirty = v, false
	}
	gone := p.handedOver
	p.handedOver = nil
	audit := slices.Clone(p.audit)
	p.audit = p.audit[:0]
	forward := slices.Clone(p.forward)
	p.forward = p.forward[:0]
	fwd, clog, audited := p.cfg.Forward, p.cfg.Changelog, p.cfg.Audited
	undo = func() {
		for _, s := range states {
			p.dirty[s.id] = true
		}
		p.handedOver = append(gone, p.handedOver...)
		if breaker != nil {
			p.breaker.dirty = true
		}
		p.audit = append(audit, p.audit...)
		p.forward = append(forward, p.forward...)
	}
	write = func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketStates)
		if err != nil {
			return err
		}
		for _, s := range states {
			v, err := encodeRecord(s.id, &s.r)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(s.id), v); err != nil {
				return err
			}
			if clog != nil {
				clog(s.id, v)
			}
		}
		for _, id := range gone {
			// The changelog keeps them: they are the new owner's there.
			if err := b.Delete([]byte(id)); err != nil {
				return err
			}
		}
		if breaker != nil {
			if clog != nil {
				clog("", breaker)
			}
			meta, err := tx.CreateBucketIfNotExists(bucketMeta)
			if err != nil {
				return err
			}
			if err := meta.Put(keyBreaker, breaker); err != nil {
				return err
			}
		}
		if err := AppendAudit(tx, audited, audit...); err != nil {
			return err
		}
		if fwd != nil {
			for _, c := range forward {
				if err := fwd(tx, c); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return write, undo, nil
}

// HandOver forgets the states of the accounts another instance decides
// from now on (their partition moved to it), belongs picking them: they
// leave memory now and the store at the next save, with nothing for the
// changelog, where they are the new owner's. It returns how many went.
func (p *Planner) HandOver(belongs func(id string) bool) int {
	n := 0
	for id := range p.states {
		if belongs(id) {
			delete(p.states, id)
			delete(p.dirty, id)
			p.handedOver = append(p.handedOver, id)
			n++
		}
	}
	return n
}

// MarkAllChanged makes every account state and the breaker part of the
// next save: for a changelog that must be written afresh.
func (p *Planner) MarkAllChanged() {
	for id := range p.states {
		p.dirty[id] = true
	}
	p.breaker.dirty = true
}

// PutRecord writes into tx a record the changelog holds (Config.Changelog):
// an account's state, or the breaker's for id "". Load then reads it.
func PutRecord(tx *bolt.Tx, id string, v []byte) error {
	bucket, key := bucketStates, []byte(id)
	if id == "" {
		bucket, key = bucketMeta, keyBreaker
	}
	b, err := tx.CreateBucketIfNotExists(bucket)
	if err != nil {
		return err
	}
	return b.Put(key, v)
}

// CheckRecord reports whether v is a stored account state (id "": the
// breaker's) that Load can read: a restore checks every record before it
// replaces anything.
func CheckRecord(id string, v []byte) error {
	var err error
	if id == "" {
		var b breakerState
		err = json.Unmarshal(v, &b)
	} else {
		var r record
		err = json.Unmarshal(v, &r)
	}
	if err != nil {
		return fmt.Errorf("account state %q: %w", id, err)
	}
	return nil
}

// DropRecords deletes from tx every account's state and the breaker's:
// for a store whose state a newer changelog's replaces (PutRecord).
func DropRecords(tx *bolt.Tx) error {
	if tx.Bucket(bucketStates) != nil {
		if err := tx.DeleteBucket(bucketStates); err != nil {
			return err
		}
	}
	if meta := tx.Bucket(bucketMeta); meta != nil {
		return meta.Delete(keyBreaker)
	}
	return nil
}

// Reset drops every account state and the breaker's from memory, for Load
// to fill again from a store whose records a changelog's replaced
// (DropRecords, PutRecord).
func (p *Planner) Reset() {
	p.states, p.dirty = map[string]*State{}, map[string]bool{}
	p.breaker = breakerState{}
	p.metrics.breakerOpen(false)
}

// SaveAccount writes one account's state and the breaker inside the
// caller's transaction: a manual action is durable before it is answered.
func (p *Planner) SaveAccount(tx *bolt.Tx, id string) error {
	if id != "" {
		if err := p.putState(tx, id); err != nil {
			return err
		}
	}
	return p.putBreaker(tx)
}

// putBreaker writes the breaker's state when it changed.
func (p *Planner) putBreaker(tx *bolt.Tx) error {
	if !p.breaker.dirty {
		return nil
	}
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	v, err := json.Marshal(&p.breaker)
	if err != nil {
		return err
	}
	if err := meta.Put(keyBreaker, v); err != nil {
		return err
	}
	if p.cfg.Changelog != nil {
		p.cfg.Changelog("", v)
	}
	p.breaker.dirty = false
	return nil
}

func (p *Planner) putState(tx *bolt.Tx, id string) error {
	b, err := tx.CreateBucketIfNotExists(bucketStates)
	if err != nil {
		return err
	}
	v, err := p.encodeState(id)
	if err != nil || v == nil {
		return err
	}
	return b.Put([]byte(id), v)
}

// encodeState is an account's stored record; nil for an unknown account.
func (p *Planner) encodeState(id string) ([]byte, error) {
	s := p.states[id]
	if s == nil {
		return nil, nil
	}
	r := recordOf(s)
	return encodeRecord(id, &r)
}

// recordOf is what the store keeps of s.
func recordOf(s *State) record { return record{State: *s, Sealed: s.sealed, LastStep: s.lastStep} }

func encodeRecord(id string, r *record) ([]byte, error) {
	v, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode state of %s: %w", id, err)
	}
	return v, nil
}

// Load reads all states and the breaker. It reports how many accounts have
// a TOTP secret, so the caller can refuse to start without the key.
func (p *Planner) Load(db *bolt.DB) (enrolled int, err error) {
	err = db.View(func(tx *bolt.Tx) error {
		if meta := tx.Bucket(bucketMeta); meta != nil {
			if v := meta.Get(keyBreaker); v != nil {
				if err := json.Unmarshal(v, &p.breaker); err != nil {
					return fmt.Errorf("freeze breaker: %w", err)
				}
				p.metrics.breakerOpen(p.breaker.Open)
			}
		}
		b := tx.Bucket(bucketStates)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var r record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("account state %s: %w", k, err)
			}
			s := r.State
			s.sealed, s.lastStep = r.Sealed, r.LastStep
			if len(s.sealed) > 0 {
				enrolled++
			}
			p.states[string(k)] = &s
			return nil
		})
	})
	return enrolled, err
}

// EachAudit hands fn every audit entry stored, oldest first, as stored
// (valid only during the call).
func EachAudit(tx *bolt.Tx, fn func(v []byte) error) error {
	b := tx.Bucket(bucketAudit)
	if b == nil {
		return nil
	}
	return b.ForEach(func(_, v []byte) error { return fn(v) })
}

// AppendAudit adds entries to the audit trail inside the caller's
// transaction, handing each, as stored, to note if it is set.
func AppendAudit(tx *bolt.Tx, note func(v []byte), entries ...AuditEntry) error {
	if len(entries) == 0 {
		return nil
	}
	b, err := tx.CreateBucketIfNotExists(bucketAudit)
	if err != nil {
		return err
	}
	for i := range entries {
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		v, err := json.Marshal(&entries[i])
		if err != nil {
			return err
		}
		var k [8]byte
		binary.BigEndian.PutUint64(k[:], seq)
		if err := b.Put(k[:], v); err != nil {
			return err
		}
		if note != nil {
			note(v)
		}
	}
	return nil
}

// PruneAudit deletes, oldest first, up to limit audit entries made before
// before, handing each, as stored, to gone (valid only during the call).
// Entries are kept in the order they were added, which is their time order
// but for a checkpoint's worth of disorder (an automatic action is stamped
// with its event's time, and saved with the checkpoint after a manual one
// made meanwhile): it looks past newer entries, and stops after
// pruneLookPast of them in a row.
func PruneAudit(tx *bolt.Tx, before time.Time, limit int, gone func(v []byte)) (int, error) {
	b := tx.Bucket(bucketAudit)
	if b == nil {
		return 0, nil
	}
	var keys [][]byte
	newer := 0
	c := b.Cursor()
	for k, v := c.First(); k != nil && len(keys) < limit && newer < pruneLookPast; k, v = c.Next() {
		var e struct {
			At time.Time `json:"at"`
		}
		if err := json.Unmarshal(v, &e); err != nil {
			return 0, fmt.Errorf("audit entry %x: %w", k, err)
		}
		if !e.At.Before(before) {
			newer++
			continue
		}
		newer = 0
		if gone != nil {
			gone(v)
		}
		keys = append(keys, slices.Clone(k))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
	}
	return len(keys), nil
}

// pruneLookPast is how many newer audit entries in a row end a prune.
const pruneLookPast = 10_000

// ListAudit returns audit entries, newest first, of one account (all for
// ""), at most limit of them, stored before the entry numbered before (0:
// from the newest), and where a next page begins (0: the trail has no
// more). One account's entries are looked for among 200,000 a page.
func ListAudit(db *bolt.DB, account string, limit int, before uint64) ([]AuditEntry, uint64, error) {
	var out []AuditEntry
	var next uint64
	err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAudit)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		k, v := c.Last()
		if before > 0 {
			var seek [8]byte
			binary.BigEndian.PutUint64(seek[:], before)
			if k, v = c.Seek(seek[:]); k == nil {
				k, v = c.Last()
			} else {
				k, v = c.Prev()
			}
		}
		for scanned := 0; k != nil; k, v = c.Prev() {
			if len(out) == limit || scanned == 200_000 {
				return nil // next is the last one looked at
			}
			scanned++
			next = binary.BigEndian.Uint64(k)
			var e AuditEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("audit entry %x: %w", k, err)
			}
			if account == "" || e.AccountID == account {
				out = append(out, e)
			}
		}
		next = 0 // the oldest was looked at
		return nil
	})
	return out, next, err
}

// ForwardPending hands the automatic commands not yet forwarded to Forward
// inside tx. A manual action calls it before adding its own command, so the
// account service sees a freeze before the unfreeze that undoes it.
func (p *Planner) ForwardPending(tx *bolt.Tx) error {
	if p.cfg.Forward != nil {
		for _, c := range p.forward {
			if err := p.cfg.Forward(tx, c); err != nil {
				return err
			}
		}
	}
	p.forward = p.forward[:0]
	return nil
}
