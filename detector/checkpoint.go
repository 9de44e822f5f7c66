package detector

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
	"unsafe"

	bolt "go.etcd.io/bbolt"

	"github.com/walletguard/walletguard/event"
)

// layoutVersion changes whenever a checkpointed struct changes shape; a
// checkpoint of another layout is set aside rather than misread.
const layoutVersion = 6

var (
	bMeta      = []byte("meta")
	bAccounts  = []byte("accounts")
	bDevices   = []byte("devices")
	bIPs       = []byte("ips")
	bPayees    = []byte("payees")
	bMerchants = []byte("merchants")
	bChains    = []byte("chains")
	bTimers    = []byte("timers")
)

// Offsets are the next offsets to read, per topic and partition.
type Offsets map[string]map[int]int64

// Ahead reports whether o is a later place in the stream than p: no
// partition of p is behind in o, and o is past p on at least one. A state
// taken at o then holds every event one taken at p does, and more.
func (o Offsets) Ahead(p Offsets) bool {
	beyond := false
	for topic, parts := range o {
		for part, next := range parts {
			beyond = beyond || next > p[topic][part]
		}
	}
	for topic, parts := range p {
		for part, was := range parts {
			if next, ok := o[topic][part]; !ok || next < was {
				return false
			}
		}
	}
	return beyond
}

// Store is the embedded store (bbolt) that holds checkpoints.
type Store struct {
	db   *bolt.DB
	rows *rowLog
}

// OpenStore opens (creating) the checkpoint store in dir.
func OpenStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	path := filepath.Join(dir, "detector.db")
	opts := bolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true, InitialMmapSize: mmapReserve}
	db, err := bolt.Open(path, 0o600, &opts)
	if errors.Is(err, syscall.ENOMEM) {
		// An address-space limit (ulimit -v) refuses the reservation: map
		// only what the file needs, and pay for the remaps.
		opts.InitialMmapSize = 0
		db, err = bolt.Open(path, 0o600, &opts)
	}
	if err != nil {
		return nil, fmt.Errorf("open state store %s: %w", path, err)
	}
	rows, err := openRowLog(db, filepath.Join(dir, "rows"))
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open state store %s: %w", path, err)
	}
	return &Store{db: db, rows: rows}, nil
}

// mmapReserve is the address space bbolt maps for the store up front. When
// the file outgrows its mapping, bbolt remaps it, and before that copies
// every key and value the open write transaction holds out of the old map:
// for a checkpoint of a million accounts that copying was more than half of
// the write (etcd-io/bbolt#392). Reserving address space costs no memory —
// only the pages the store reads or writes are resident.
const mmapReserve = 16 << 30

// Close closes the store. A merge of row files under way is abandoned.
func (s *Store) Close() error {
	s.rows.close()
	return s.db.Close()
}

// SetLogger sets where the store reports the merges of its row files.
func (s *Store) SetLogger(log *slog.Logger) { s.rows.log = log }

// DB exposes the underlying database for other packages' buckets.
func (s *Store) DB() *bolt.DB { return s.db }

// raw views a pointer-free fixed-size value as bytes. Only used on types the
// tests prove hold no pointers.
func raw[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

func fromRaw[T any](b []byte, v *T) error {
	if len(b) != int(unsafe.Sizeof(*v)) {
		return fmt.Errorf("state row is %d bytes, want %d", len(b), unsafe.Sizeof(*v))
	}
	copy(raw(v), b)
	return nil
}

func k8(k uint64) []byte { return binary.BigEndian.AppendUint64(nil, k) }

// Checkpoint writes every state change since the last checkpoint, all timers
// and the given offsets in one transaction: after a crash, the state on disk
// and the offsets to resume from always belong together.
func (e *Engine) Checkpoint(s *Store, offsets Offsets) (time.Duration, error) {
	return e.CheckpointWith(s, offsets)
}

// CheckpointWith is Checkpoint with more state written in the same
// transaction (account security states, alerts), so that all of it and the
// offsets move together.
func (e *Engine) CheckpointWith(s *Store, offsets Offsets, extra ...func(*bolt.Tx) error) (time.Duration, error) {
	start := time.Now()
	write, err := e.PrepareCheckpoint(s, offsets)
	if err != nil {
		return 0, err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		for _, fn := range extra {
			if err := fn(tx); err != nil {
				return err
			}
		}
		return write(tx)
	})
	if err != nil {
		return 0, fmt.Errorf("checkpoint: %w", err)
	}
	return time.Since(start), nil
}

// PrepareCheckpoint captures, encoded, every state change since the last
// checkpoint, the timers armed and gone, the engine's clocks and offsets,
// and returns the function that writes them in a transaction. Capturing is
// a copy (under the caller's lock); the write — the slow part — may run
// later in another goroutine while the engine goes on. BeginCheckpoint
// spreads the copy over the events that follow.
func (e *Engine) PrepareCheckpoint(s *Store, offsets Offsets) (func(*bolt.Tx) error, error) {
	c, err := e.BeginCheckpoint(offsets)
	if err != nil {
		return nil, err
	}
	c.CopySome(math.MaxInt)
	return c.Write(s), nil
}

// Capture is a checkpoint being captured: the state as it was when
// BeginCheckpoint was called. Until CopySome reports it complete, the
// engine copies a row into it before changing the row; in between events
// the caller copies the rest a slice at a time. The pipeline thus stops
// only to mark what changed, not to copy it all.
type Capture struct {
	e           *Engine
	meta        [4 * 8]byte
	srcs        []byte
	offsets     []byte
	tables      []rowSet
	merchants   []kv
	timerPut    []*timer
	timerGone   []uint64
	timerForgot []uint64
	timerSet    *rowSet  // timerPut encoded, by the first write
	sets        []rowSet // every set in order, by the first write (rowSets)
	complete    bool
	base        bool // the whole state, after Take: it replaces the store's rows
}

// BeginCheckpoint starts capturing a checkpoint with the offsets given: the
// next offsets to read, which the state at this moment has consumed up to.
// Only one may be under way; CopySome finishes it.
func (e *Engine) BeginCheckpoint(offsets Offsets) (*Capture, error) {
	if e.capture != nil {
		return nil, errors.New("checkpoint: the previous capture is not complete")
	}
	e.updateGauges() // on wall-clock time too: event time may stand still
	c := &Capture{e: e, base: e.rebase}
	e.rebase = false
	var err error
	if c.offsets, err = json.Marshal(offsets); err != nil {
		return nil, err
	}
	binary.LittleEndian.PutUint64(c.meta[0:], layoutVersion)
	binary.LittleEndian.PutUint64(c.meta[8:], uint64(e.maxTS))
	binary.LittleEndian.PutUint64(c.meta[16:], uint64(e.lastSweep))
	binary.LittleEndian.PutUint64(c.meta[24:], e.timerSeq)
	c.srcs = make([]byte, 0, 8*len(e.srcMax))
	for src, ts := range e.srcMax {
		c.srcs = binary.LittleEndian.AppendUint32(c.srcs, src)
		c.srcs = binary.LittleEndian.AppendUint32(c.srcs, ts)
	}
	c.timerPut, c.timerGone, c.timerForgot = e.captureTimers()
	// Merchants and app versions are few: copied whole, now.
	c.merchants = make([]kv, 0, len(e.merchants))
	for k, mr := range e.merchants {
		c.merchants = append(c.merchants, kv{k, encodeMerchant(mr, e.syms)})
	}
	// Packed rows are stored packed: a copy of their bytes, and 40-55%
	// fewer bytes than the plain rows to write, merge and read back.
	e.accounts.beginSnapshot(nil, rawSize[account]()/2)
	e.devices.beginSnapshot(nil, rawSize[deviceState]()/2)
	e.payees.beginSnapshot(nil, rawSize[payeeState]()/2)
	e.ips.beginSnapshot(appendIP, rawSize[ipFlat]())
	syms := e.syms
	e.chains.beginSnapshot(func(dst []byte, c *chain) []byte { return appendChain(dst, c, syms) }, 128)
	e.capture = c
	return c, nil
}

// CopySome copies up to n more changed rows into the checkpoint and reports
// whether it is complete. Call it with the engine's lock held.
func (c *Capture) CopySome(n int) bool {
	if c.complete {
		return true
	}
	e := c.e
	left := n
	for _, t := range []interface{ copySome(int) (bool, int) }{
		snapshotter[account]{e.accounts}, snapshotter[deviceState]{e.devices},
		snapshotter[payeeState]{e.payees}, snapshotter[ipState]{e.ips},
		snapshotter[chain]{e.chains},
	} {
		done, copied := t.copySome(left)
		left -= copied
		if !done {
			return false
		}
	}
	c.tables = []rowSet{
		e.accounts.endSnapshot(rowAccount), e.devices.endSnapshot(rowDevice),
		e.payees.endSnapshot(rowPayee), e.ips.endSnapshot(rowIP),
		e.chains.endSnapshot(rowChain),
	}
	c.complete = true
	e.capture = nil
	return true
}

// snapshotter adapts a table's copySome to count what it copied.
type snapshotter[T any] struct{ t *table[T] }

func (s snapshotter[T]) copySome(n int) (bool, int) {
	before := s.t.snap.rows.len()
	done := s.t.copySome(n)
	return done, s.t.snap.rows.len() - before
}

// Write returns the function that writes the complete checkpoint in a
// transaction. It reads only the copy: it may run while the engine goes on,
// and run again if it failed.
func (c *Capture) Write(s *Store) func(*bolt.Tx) error {
	if !c.complete {
		panic("detector: Capture.Write before the copy is complete")
	}
	sortKV(c.merchants)
	return func(tx *bolt.Tx) error {
		sets, err := c.rowSets()
		if err != nil {
			return err
		}
		// A store from before the row files kept rows as keys: the
		// engine restored from it wrote them all to its first file.
		legacy := tx.Bucket(bMeta) != nil && tx.Bucket(bMeta).Get(metaRowLog) == nil
		if err := s.rows.write(tx, sets, c.base); err != nil {
			return err
		}
		if legacy {
			for _, name := range [][]byte{bAccounts, bDevices, bPayees, bIPs, bChains, bTimers} {
				if tx.Bucket(name) != nil {
					if err := tx.DeleteBucket(name); err != nil {
						return err
					}
				}
			}
		}
		if err := rewrite(tx, bMerchants, func(b *bolt.Bucket) error {
			for _, r := range c.merchants {
				if err := b.Put(k8(r.k), r.v); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bMeta)
		if err != nil {
			return err
		}
		if err := meta.Put([]byte("engine"), c.meta[:]); err != nil {
			return err
		}
		if err := meta.Put([]byte("sources"), c.srcs); err != nil {
			return err
		}
		return meta.Put([]byte("offsets"), c.offsets)
	}
}

type kv struct {
	k uint64
	v []byte
}

// sortKV orders rows by key, the order row files and bbolt are written in.
// The keys are hashes, spread evenly: a large set is dealt into buckets by
// the top bits of its keys, in one pass, and each bucket, a handful of
// rows, sorted on its own — a few times faster than comparison sorting
// half a million rows, which took the checkpoint write tens of
// milliseconds of CPU beside the pipeline.
func sortKV(rows []kv) {
	if len(rows) < 1<<12 {
		slices.SortFunc(rows, compareKV)
		return
	}
	shift := 64 - uint(bits.Len(uint(len(rows)/4))) // about 4 rows a bucket
	counts := make([]int32, 1<<(64-shift)+1)
	for i := range rows {
		counts[rows[i].k>>shift+1]++
	}
	for b := 1; b < len(counts); b++ {
		counts[b] += counts[b-1]
	}
	dealt := make([]kv, len(rows))
	next := slices.Clone(counts[:len(counts)-1])
	for i := range rows {
		b := rows[i].k >> shift
		dealt[next[b]] = rows[i]
		next[b]++
	}
	copy(rows, dealt)
	for b := 0; b < len(counts)-1; b++ {
		if lo, hi := counts[b], counts[b+1]; hi-lo > 1 {
			slices.SortFunc(rows[lo:hi], compareKV)
		}
	}
}

func compareKV(a, b kv) int { return cmp.Compare(a.k, b.k) }

func appendRaw[T any](dst []byte, r *T) []byte { return append(dst, raw(r)...) }

func rawSize[T any]() int { return int(unsafe.Sizeof(*new(T))) }

// rowBuf collects encoded rows in chunks of a megabyte: a few allocations
// for a checkpoint's rows instead of one per row, and none of the size of
// them all — allocating a million rows' worth at once, while the pipeline
// waited, paid for it in one go (the page faults and the garbage
// collector's assist): pauses of up to 200 ms.
type rowBuf struct {
	buf   []byte
	start int // of the row being appended
	// The rows' keys, in blocks for the same reason: one list for half a
	// million changed rows, allocated or grown while the pipeline waits,
	// cost milliseconds of page faults and copying.
	full  [][]kv // blocks of kvBlock rows
	block []kv   // the block being filled
}

const (
	rowChunk = 1 << 20
	kvBlock  = 4096
)

// grow makes room for a row of about n bytes; a longer one still fits,
// moved to a larger array by append (the rows before it stay where they
// are).
func (r *rowBuf) grow(n int) {
	if cap(r.buf)-len(r.buf) < n {
		r.buf, r.start = make([]byte, 0, max(rowChunk, n)), 0
	}
}

// done ends the row appended to buf since the previous one, under key k.
func (r *rowBuf) done(k uint64) {
	end := len(r.buf)
	if len(r.block) == kvBlock {
		r.full, r.block = append(r.full, r.block), nil
	}
	if r.block == nil {
		r.block = make([]kv, 0, kvBlock)
	}
	r.block = append(r.block, kv{k: k, v: r.buf[r.start:end:end]})
	r.start = end
}

// len is how many rows are done.
func (r *rowBuf) len() int { return len(r.full)*kvBlock + len(r.block) }

// set returns the rows as a set of kind, with the keys gone. Its list of
// rows is put together by the write (rowSet.flatten), off the pipeline.
func (r *rowBuf) set(kind byte, gone []uint64) rowSet {
	return rowSet{kind: kind, blocks: append(r.full, r.block), gone: gone}
}

// captureTimers lists the timers armed since the last checkpoint that are
// still pending, and those that fired or were cancelled. Encoding them is
// left to the write: a timer does not change once armed.
func (e *Engine) captureTimers() (put []*timer, gone, forgot []uint64) {
	for _, t := range e.timersNew { // armed in seq order
		if t.cancelled || t.done {
			continue
		}
		put = append(put, t)
		t.saved = true
	}
	gone, forgot = slices.Clone(e.timersGone), slices.Clone(e.timersForgot)
	e.timersNew, e.timersGone, e.timersForgot = e.timersNew[:0], e.timersGone[:0], e.timersForgot[:0]
	return put, gone, forgot
}

// rowSets puts the captured rows in order, once, for the write and for
// EachRow: the tables' sets, then the timers'.
func (c *Capture) rowSets() ([]rowSet, error) {
	if c.sets == nil {
		timers, err := c.timerRows()
		if err != nil {
			return nil, err
		}
		for i := range c.tables {
			c.tables[i].flatten()
		}
		c.sets = append(slices.Clip(c.tables), timers)
	}
	return c.sets, nil
}

// timerRows encodes the captured timers, once.
func (c *Capture) timerRows() (rowSet, error) {
	if c.timerSet == nil {
		s := rowSet{kind: rowTimer, rows: make([]kv, 0, len(c.timerPut)), gone: c.timerGone, forgot: c.timerForgot}
		slices.Sort(s.forgot)
		for _, t := range c.timerPut {
			v, err := encodeTimer(t)
			if err != nil {
				return rowSet{}, fmt.Errorf("timer %s: %w", t.rule, err)
			}
			s.rows = append(s.rows, kv{t.seq, v})
		}
		c.timerSet = &s
	}
	return *c.timerSet, nil
}

func rewrite(tx *bolt.Tx, name []byte, fill func(*bolt.Bucket) error) error {
	if tx.Bucket(name) != nil {
		if err := tx.DeleteBucket(name); err != nil {
			return err
		}
	}
	b, err := tx.CreateBucket(name)
	if err != nil {
		return err
	}
	return fill(b)
}

// Restore loads the last checkpoint into an empty engine and returns the
// offsets it was taken at (nil if there is none).
func (e *Engine) Restore(s *Store) (Offsets, error) {
	var offsets Offsets
	err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bMeta)
		if meta == nil {
			return nil
		}
		var err error
		offsets, err = e.setMeta(meta.Get([]byte("engine")), meta.Get([]byte("sources")), meta.Get([]byte("offsets")))
		if err != nil {
			return err
		}
		if err := e.loadRows(tx, s); err != nil {
			return err
		}
		if b := tx.Bucket(bMerchants); b != nil {
			if err := b.ForEach(func(k, v []byte) error {
				m, err := decodeMerchant(v, e.syms)
				if err != nil {
					return err
				}
				e.merchants[binary.BigEndian.Uint64(k)] = m
				return nil
			}); err != nil {
				return fmt.Errorf("merchants: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("restore checkpoint: %w", err)
	}
	e.updateGauges()
	return offsets, nil
}

// setMeta restores the engine's clocks, the sources' newest event times
// and the offsets of a checkpoint, as BeginCheckpoint captured them.
func (e *Engine) setMeta(m, srcs, offsets []byte) (Offsets, error) {
	if len(m) != 32 {
		return nil, errors.New("checkpoint metadata is damaged")
	}
	if v := binary.LittleEndian.Uint64(m[0:]); v != layoutVersion {
		return nil, fmt.Errorf("checkpoint layout %d is not this build's %d", v, layoutVersion)
	}
	var o Offsets
	if err := json.Unmarshal(offsets, &o); err != nil {
		return nil, fmt.Errorf("checkpoint offsets: %w", err)
	}
	e.maxTS = uint32(binary.LittleEndian.Uint64(m[8:]))
	e.lastSweep = uint32(binary.LittleEndian.Uint64(m[16:]))
	e.timerSeq = binary.LittleEndian.Uint64(m[24:])
	if len(srcs)%8 == 0 {
		for i := 0; i < len(srcs); i += 8 {
			e.srcMax[binary.LittleEndian.Uint32(srcs[i:])] = binary.LittleEndian.Uint32(srcs[i+4:])
		}
	}
	return o, nil
}

// loadRows loads the rows of the checkpoint: from its row files, or from
// the keyed buckets of a store written before them — then the next
// checkpoint writes every row to a file and drops the buckets.
func (e *Engine) loadRows(tx *bolt.Tx, s *Store) error {
	timers := map[uint64]*timer{}
	apply := e.rowApplier(timers)
	if tx.Bucket(bMeta).Get(metaRowLog) != nil {
		for _, f := range s.rows.files {
			if err := s.rows.read(f, apply); err != nil {
				return err
			}
		}
		e.installTimers(timers)
		return nil
	}
	for _, b := range []struct {
		name []byte
		kind byte
	}{{bAccounts, rowAccount}, {bDevices, rowDevice}, {bPayees, rowPayee}, {bIPs, rowIP}, {bChains, rowChain}, {bTimers, rowTimer}} {
		if bk := tx.Bucket(b.name); bk != nil {
			if err := bk.ForEach(func(k, v []byte) error { return apply(b.kind, binary.BigEndian.Uint64(k), v) }); err != nil {
				return err
			}
		}
	}
	// All of it goes to the first file.
	e.installAllChanged(timers)
	return nil
}

// installAllChanged marks every row changed and queues the timers restored
// as new: the next checkpoint writes all of it to a store that lacks it.
func (e *Engine) installAllChanged(timers map[uint64]*timer) {
	e.markAllChanged()
	for _, t := range e.installTimers(timers) {
		t.saved = false
		e.timersNew = append(e.timersNew, t)
	}
}

// installTimers queues the timers restored, in the order they were armed,
// and returns them.
func (e *Engine) installTimers(timers map[uint64]*timer) []*timer {
	ts := slices.SortedFunc(maps.Values(timers), func(a, b *timer) int { return cmp.Compare(a.seq, b.seq) })
	for _, t := range ts {
		h := e.queue(t.src)
		t.index = len(*h)
		*h = append(*h, t)
		e.byAccount[t.account] = append(e.byAccount[t.account], t)
		e.markTimers(t.account)
	}
	for _, h := range e.timers {
		heapInit(h)
	}
	return ts
}

// rowApplier returns the function that applies one record of a checkpoint
// to the engine, in order: rows replace what earlier files held, deletes
// remove it. Timers are collected in timers, to be queued once all are read.
func (e *Engine) rowApplier(timers map[uint64]*timer) func(kind byte, key uint64, v []byte) error {
	return func(kind byte, key uint64, v []byte) error {
		switch kind {
		case rowAccount:
			return applyTableRow("accounts", e.accounts, key, v, decodeStored[account])
		case rowDevice:
			return applyTableRow("devices", e.devices, key, v, decodeStored[deviceState])
		case rowPayee:
			return applyTableRow("payees", e.payees, key, v, decodeStored[payeeState])
		case rowIP:
			return applyTableRow("ips", e.ips, key, v, decodeIP)
		case rowTimer:
			if v == nil {
				delete(timers, key)
				return nil
			}
			t, err := decodeTimer(v)
			if err != nil {
				return fmt.Errorf("timers: %w", err)
			}
			t.seq, t.saved = key, true
			timers[key] = t
			return nil
		case rowChain:
			return applyTableRow("payments", e.chains, key, v, func(b []byte, c *chain) error { return decodeChain(b, c, e.syms) })
		}
		return fmt.Errorf("checkpoint: unknown row kind %d", kind)
	}
}

func applyTableRow[T any](name string, t *table[T], key uint64, v []byte, dec func([]byte, *T) error) error {
	if v == nil {
		t.drop(key)
		return nil
	}
	var row T
	if err := dec(v, &row); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	t.put(key, row)
	return nil
}

// markAllChanged makes every row part of the next checkpoint.
func (e *Engine) markAllChanged() {
	e.accounts.markAllChanged()
	e.devices.markAllChanged()
	e.payees.markAllChanged()
	e.ips.markAllChanged()
	e.chains.markAllChanged()
}

// ipFlat is ipState without its pointer, for encoding.
type ipFlat struct {
	first, last uint32
	logins10m   win
	fails10m    win
	accounts    [4]seen
}

// appendIP writes the failing accounts as a set of 64, as releases before
// the row held the first one did; decodeIP folds a set of one back.
func appendIP(dst []byte, s *ipState) []byte {
	f := ipFlat{s.first, s.last, s.logins10m, s.fails10m, s.accounts}
	out := append(dst, raw(&f)...)
	switch {
	case s.failed != nil:
		out = append(out, raw(s.failed)...)
	case s.failedOne[0].last != 0:
		var set [64]seen
		set[0] = s.failedOne[0]
		out = append(out, raw(&set)...)
	}
	return out
}

func decodeIP(b []byte, s *ipState) error {
	var f ipFlat
	n := int(unsafe.Sizeof(f))
	if len(b) < n {
		return errors.New("ip row too short")
	}
	if err := fromRaw(b[:n], &f); err != nil {
		return err
	}
	*s = ipState{first: f.first, last: f.last, logins10m: f.logins10m, fails10m: f.fails10m, accounts: f.accounts}
	if len(b) == n {
		return nil
	}
	var set [64]seen
	if err := fromRaw(b[n:], &set); err != nil {
		return err
	}
	if countSince(set[:], 1) > 1 {
		s.failed = &set
		return nil
	}
	for _, f := range set {
		if f.last != 0 {
			s.failedOne[0] = f
		}
	}
	return nil
}

// wbuf and rbuf are a minimal length-prefixed encoding for the few state
// types that hold strings.
type wbuf []byte

func (w *wbuf) u64(v uint64) { *w = binary.AppendUvarint(*w, v) }
func (w *wbuf) str(s string) { w.u64(uint64(len(s))); *w = append(*w, s...) }
func (w *wbuf) f64(v float64) {
	*w = binary.LittleEndian.AppendUint64(*w, math.Float64bits(v))
}

type rbuf struct {
	b   []byte
	err error
}

func (r *rbuf) u64() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errors.New("truncated state row")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *rbuf) str() string {
	n := r.u64()
	if r.err != nil || uint64(len(r.b)) < n {
		r.err = errors.New("truncated state row")
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// skip passes over a string without copying it.
func (r *rbuf) skip() {
	n := r.u64()
	if r.err != nil || uint64(len(r.b)) < n {
		r.err = errors.New("truncated state row")
		return
	}
	r.b = r.b[n:]
}

func (r *rbuf) f64() float64 {
	if r.err != nil || len(r.b) < 8 {
		r.err = errors.New("truncated state row")
		return 0
	}
	v := math.Float64frombits(binary.LittleEndian.Uint64(r.b))
	r.b = r.b[8:]
	return v
}

func (r *rbuf) win() win {
	return win{start: uint32(r.u64()), cur: uint32(r.u64()), prev: uint32(r.u64())}
}

func (w *wbuf) win(x win) { w.u64(uint64(x.start)); w.u64(uint64(x.cur)); w.u64(uint64(x.prev)) }

func encodeMerchant(m *merchantState, syms *symbols) []byte {
	var w wbuf
	w.u64(uint64(m.first))
	w.u64(uint64(m.last))
	w.win(m.attempts10m)
	w.win(m.failures10m)
	w.f64(float64(m.baseline))
	w.u64(uint64(m.baseN))
	w.u64(uint64(m.bucket))
	w.u64(uint64(m.bAttempts))
	w.u64(uint64(m.bFailures))
	for _, s := range m.failing {
		w.u64(uint64(s.key))
		w.u64(uint64(s.last))
	}
	for _, e := range m.errCodes {
		w.str(syms.name(e.code))
		w.u64(uint64(e.n))
		w.u64(uint64(e.bucket))
	}
	return w
}

func decodeMerchant(b []byte, syms *symbols) (*merchantState, error) {
	r := rbuf{b: b}
	m := &merchantState{}
	m.first, m.last = uint32(r.u64()), uint32(r.u64())
	m.attempts10m, m.failures10m = r.win(), r.win()
	m.baseline = float32(r.f64())
	m.baseN = uint16(r.u64())
	m.bucket, m.bAttempts, m.bFailures = uint32(r.u64()), uint32(r.u64()), uint32(r.u64())
	for i := range m.failing {
		m.failing[i] = seen{key: uint32(r.u64()), last: uint32(r.u64())}
	}
	for i := range m.errCodes {
		m.errCodes[i] = errCount{code: syms.id(r.str()), n: uint32(r.u64()), bucket: uint32(r.u64())}
	}
	return m, r.err
}

func appendChain(dst []byte, c *chain, syms *symbols) []byte {
	w := wbuf(dst)
	w.u64(c.account)
	w.u64(uint64(c.first))
	w.u64(uint64(c.last))
	w.u64(uint64(c.firstFail))
	w.u64(uint64(c.attempts))
	w.u64(uint64(c.failures))
	if c.succeeded {
		w.u64(1)
	} else {
		w.u64(0)
	}
	w.str(syms.name(c.lastStatus))
	w.str(syms.name(c.lastError))
	for _, e := range c.errs {
		w.str(syms.name(e.code))
		w.u64(uint64(e.n))
	}
	w.str(syms.name(c.merchant))
	w.u64(uint64(c.amount))
	w.str(syms.name(c.currency))
	w.str(syms.name(c.appVersion))
	w.str("") // where earlier releases wrote the payment id, which the chain no longer keeps
	w.u64(uint64(c.part))
	return w
}

func decodeChain(b []byte, c *chain, syms *symbols) error {
	r := rbuf{b: b}
	c.account = r.u64()
	c.first, c.last, c.firstFail = uint32(r.u64()), uint32(r.u64()), uint32(r.u64())
	c.attempts, c.failures = uint16(r.u64()), uint16(r.u64())
	c.succeeded = r.u64() == 1
	c.lastStatus, c.lastError = syms.id(r.str()), syms.id(r.str())
	for i := range c.errs {
		c.errs[i] = chainErr{code: syms.id(r.str()), n: uint32(r.u64())}
	}
	c.merchant = syms.id(r.str())
	c.amount = int64(r.u64())
	c.currency, c.appVersion = syms.id(r.str()), syms.id(r.str())
	r.str() // the payment id of earlier releases
	// Earlier releases did not record the partition.
	if r.err == nil && len(r.b) > 0 {
		c.part = partTag(r.u64())
	}
	return r.err
}

func encodeTimer(t *timer) ([]byte, error) {
	ev, err := event.Marshal(&t.ev)
	if err != nil {
		return nil, err
	}
	var w wbuf
	w.u64(uint64(t.due))
	w.str(t.rule)
	w.u64(t.account)
	w.str(t.paymentID)
	w.str(string(ev))
	w.u64(uint64(t.src))
	return w, nil
}

// decodeTimerHead reads only the source an encoded timer (encodeTimer)
// belongs to.
func decodeTimerHead(b []byte) (src uint32, err error) {
	r := rbuf{b: b}
	r.u64()  // due
	r.skip() // rule
	r.u64()  // account
	r.skip() // payment
	r.skip() // event
	src = uint32(r.u64())
	return src, r.err
}

func decodeTimer(b []byte) (*timer, error) {
	r := rbuf{b: b}
	t := &timer{due: uint32(r.u64()), rule: r.str(), account: r.u64(), paymentID: r.str()}
	raw := r.str()
	t.src = uint32(r.u64())
	if r.err != nil {
		return nil, r.err
	}
	// The event was valid when the timer was armed; only the future check
	// could differ now, and a timer's event is in the past.
	ev, err := event.DecodeOwned([]byte(raw), time.Unix(fromSec(t.due), 0).Add(48*time.Hour))
	if err != nil {
		return nil, fmt.Errorf("timer event: %w", err)
	}
	t.ev = ev
	return t, nil
}
