package detector

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"iter"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The detection state's rows — accounts, devices, payees, IPs and payment
// chains — are checkpointed as a log of files beside the store rather than
// as keys in it: each checkpoint appends one file with the rows it changed,
// sorted by kind and key and written front to back. bbolt, a copy-on-write
// B+tree, rewrote most of its pages to store changes spread over a million
// accounts (4–20 s a checkpoint, a core busy beside the pipeline); one
// sequential file of the same rows takes a fraction of that.
//
// When the files written since the oldest outweigh it (or are many), a
// goroutine merges them all into one — the newest version of each row, no
// deletes — and the next checkpoint puts it in their place. The merge only
// reads files: the pipeline never copies the whole state for it.
//
// The list of live files is part of each checkpoint's transaction in the
// store, so the rows and the offsets they belong to move together: a file
// no committed checkpoint lists (the write or the merge was cut off) is
// deleted.

// rowFileMagic starts every row file; the trailer ends it.
const (
	rowFileMagic = "WGROWS1\n"
	rowTrailer   = 0xff
)

// Row kinds in a row file, each with a put and a delete tag.
const (
	rowAccount = iota + 1
	rowDevice
	rowPayee
	rowIP
	rowChain
	rowTimer
)

func putTag(kind byte) byte    { return kind << 1 }
func deleteTag(kind byte) byte { return kind<<1 | 1 }

// minRowLog is how many bytes of files newer than the oldest are kept
// unmerged at least; past that, until they outweigh the oldest.
const minRowLog = 8 << 20

// maxRowFiles bounds the files a restore reads: a quiet state changes
// little, but every checkpoint interval.
const maxRowFiles = 64

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// rowFile is one file of the row log, as the checkpoint's metadata lists it.
type rowFile struct {
	Seq  uint64 `json:"seq"`
	Size int64  `json:"size"`
	CRC  uint32 `json:"crc"`
}

func (f rowFile) name() string { return fmt.Sprintf("rows-%016x.log", f.Seq) }

// rowLog is the store's row files: those the last checkpoint lists, those
// written for a checkpoint whose transaction has not committed, and a merge
// of the oldest listed ones waiting for the next checkpoint.
type rowLog struct {
	dir string
	log *slog.Logger
	// Files are merged once those after the first exceed both minLog bytes
	// and its size, or when maxFiles are listed.
	minLog   int64
	maxFiles int

	mu      sync.Mutex
	files   []rowFile // listed by the last committed checkpoint, oldest first
	next    uint64
	pending []string // written, not (yet) listed by a committed checkpoint
	merged  *mergedFile
	merging bool
	merges  int // completed, for tests
	// Bytes written to row files since the store opened, by checkpoints
	// and by merges: what checkpoints cost the disk.
	written, mergeWritten int64
	wg                    sync.WaitGroup
	closed                atomic.Bool
}

// mergedFile is a merge of the listed files up to seq upto.
type mergedFile struct {
	file rowFile
	upto uint64
}

var metaRowLog = []byte("rowlog")

// openRowLog reads the list of live files from the store and deletes the
// files it does not list: written for a checkpoint that did not commit.
func openRowLog(db *bolt.DB, dir string) (*rowLog, error) {
	l := &rowLog{dir: dir, log: slog.New(slog.DiscardHandler), minLog: minRowLog, maxFiles: maxRowFiles}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create checkpoint dir: %w", err)
	}
	err := db.View(func(tx *bolt.Tx) error {
		if meta := tx.Bucket(bMeta); meta != nil {
			if v := meta.Get(metaRowLog); v != nil {
				if err := json.Unmarshal(v, &l.files); err != nil {
					return fmt.Errorf("checkpoint file list: %w", err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	for _, f := range l.files {
		live[f.name()] = true
		l.next = max(l.next, f.Seq+1)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read checkpoint dir: %w", err)
	}
	for _, de := range entries {
		name := de.Name()
		if !strings.HasPrefix(name, "rows-") || live[name] {
			continue
		}
		var seq uint64
		if _, err := fmt.Sscanf(name, "rows-%016x.log", &seq); err == nil {
			l.next = max(l.next, seq+1)
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return nil, fmt.Errorf("remove unfinished checkpoint file: %w", err)
		}
	}
	return l, nil
}

// rowSet is one kind of row captured for a checkpoint.
type rowSet struct {
	kind   byte
	rows   []kv
	blocks [][]kv // rows as captured, until flatten
	gone   []uint64
	forgot []uint64 // of gone, the keys another owner has now: not for a changelog
}

// flatten puts the captured blocks of rows into one list, sorted, and
// takes out of gone the keys that are written: a key removed and back
// since the last checkpoint is a row again. The capture leaves that to
// this, off the pipeline, rather than look every removed key up.
func (s *rowSet) flatten() {
	if s.blocks != nil {
		n := 0
		for _, b := range s.blocks {
			n += len(b)
		}
		s.rows = make([]kv, 0, n)
		for _, b := range s.blocks {
			s.rows = append(s.rows, b...)
		}
		s.blocks = nil
	}
	sortKV(s.rows)
	slices.Sort(s.gone)
	gone, i := s.gone[:0], 0
	for _, k := range s.gone {
		for i < len(s.rows) && s.rows[i].k < k {
			i++
		}
		written := i < len(s.rows) && s.rows[i].k == k
		if !written && (len(gone) == 0 || gone[len(gone)-1] != k) {
			gone = append(gone, k)
		}
	}
	s.gone = gone
	slices.Sort(s.forgot)
}

// write writes a checkpoint's rows to a new file (none if there are none)
// and, in tx, lists the live files with it — a waiting merge in place of
// the files it covers. A base write's file holds the whole state: it
// replaces every file listed. The list in memory and the files it drops
// follow when tx commits.
func (l *rowLog) write(tx *bolt.Tx, sets []rowSet, base bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	// A file of an attempt whose transaction failed (a full disk, say) is
	// no part of any checkpoint.
	for _, p := range l.pending {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove unfinished checkpoint file: %w", err)
		}
	}
	l.pending = l.pending[:0]
	files := l.files
	merged := l.merged
	if base {
		files = nil
	} else if merged != nil {
		files = []rowFile{merged.file}
		for _, f := range l.files {
			if f.Seq > merged.upto {
				files = append(files, f)
			}
		}
	}
	empty := true
	for _, s := range sets {
		empty = empty && len(s.rows) == 0 && len(s.gone) == 0
	}
	if !empty {
		f := rowFile{Seq: l.next}
		l.next++
		path := filepath.Join(l.dir, f.name())
		l.pending = append(l.pending, path)
		var err error
		f.Size, f.CRC, err = writeRowFile(path, sortedRecords(sets))
		l.written += f.Size
		if err != nil {
			return fmt.Errorf("checkpoint file %s: %w", path, err)
		}
		files = append(slices.Clip(files), f)
	} else if merged == nil && !base {
		return nil
	}
	list, err := json.Marshal(files)
	if err != nil {
		return err
	}
	meta, err := tx.CreateBucketIfNotExists(bMeta)
	if err != nil {
		return err
	}
	if err := meta.Put(metaRowLog, list); err != nil {
		return err
	}
	tx.OnCommit(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		old := l.files
		l.files, l.pending = files, l.pending[:0]
		if l.merged == merged {
			l.merged = nil
			if base && merged != nil {
				_ = os.Remove(filepath.Join(l.dir, merged.file.name()))
			}
		}
		for _, o := range old {
			if !slices.Contains(files, o) {
				// Left behind if this fails: the next start deletes it.
				_ = os.Remove(filepath.Join(l.dir, o.name()))
			}
		}
		l.maybeMerge()
	})
	return nil
}

// maybeMerge starts merging the listed files when they call for it. Call
// it with l.mu held.
func (l *rowLog) maybeMerge() {
	if l.merging || l.merged != nil || l.closed.Load() || len(l.files) < 2 {
		return
	}
	if l.newerSize() <= max(l.files[0].Size, l.minLog) && len(l.files) < l.maxFiles {
		return
	}
	in := slices.Clone(l.files)
	out := rowFile{Seq: l.next}
	l.next++
	l.merging = true
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		start := time.Now()
		err := l.merge(in, &out)
		l.mu.Lock()
		defer l.mu.Unlock()
		l.merging = false
		l.mergeWritten += out.Size
		if err == nil && (len(l.files) < len(in) || !slices.Equal(l.files[:len(in)], in)) {
			// A checkpoint of the whole state replaced the files meanwhile.
			os.Remove(filepath.Join(l.dir, out.name()))
			return
		}
		if err != nil {
			os.Remove(filepath.Join(l.dir, out.name()))
			l.log.Warn("merging checkpoint files failed; the next checkpoint tries again", "files", len(in), "err", err)
			return
		}
		l.merges++
		l.merged = &mergedFile{file: out, upto: in[len(in)-1].Seq}
		l.log.Info("merged checkpoint files", "files", len(in), "bytes", out.Size, "took", time.Since(start).Round(time.Millisecond))
	}()
}

// newerSize is the size of the listed files after the oldest: a merge is
// due once they outweigh it.
func (l *rowLog) newerSize() int64 {
	var n int64
	for _, f := range l.files[1:] {
		n += f.Size
	}
	return n
}

// errClosed stops a merge when the store closes.
var errClosed = errors.New("store closed")

// merge writes the newest version of every row of the files in (oldest
// first), without the rows they delete, to out. Each file is sorted by
// kind and key, so the merge streams: one record of each file at a time.
func (l *rowLog) merge(in []rowFile, out *rowFile) error {
	curs := make([]*rowCursor, 0, len(in))
	defer func() {
		for _, c := range curs {
			c.close()
		}
	}()
	for _, f := range in {
		c, err := l.open(f)
		if err != nil {
			return err
		}
		curs = append(curs, c)
		if err := c.next(); err != nil {
			return err
		}
	}
	emit := func(yield func(rec) bool) {
		for n := 0; ; n++ {
			if n%4096 == 0 && l.closed.Load() {
				return
			}
			// The smallest kind and key; of equals, the newest file's.
			best := -1
			for i, c := range curs {
				if c.done {
					continue
				}
				if best < 0 || c.r.less(curs[best].r) || c.r.same(curs[best].r) {
					best = i
				}
			}
			if best < 0 {
				return
			}
			r := curs[best].r
			if r.v != nil && !yield(r) {
				return
			}
			// Past this key in every file that has it (r keeps the key).
			for _, c := range curs {
				if !c.done && c.r.same(r) {
					if c.err = c.next(); c.err != nil {
						return
					}
				}
			}
		}
	}
	path := filepath.Join(l.dir, out.name())
	var err error
	out.Size, out.CRC, err = writeRowFile(path, emit)
	if err != nil {
		return err
	}
	if l.closed.Load() {
		return errClosed
	}
	for _, c := range curs {
		if c.err != nil {
			return c.err
		}
		if !c.done {
			return fmt.Errorf("merge of %s stopped early", c.path)
		}
	}
	return nil
}

// wait waits for a merge under way.
func (l *rowLog) wait() { l.wg.Wait() }

// close stops a merge under way and waits for it.
func (l *rowLog) close() {
	l.closed.Store(true)
	l.wg.Wait()
}

// crcWriter sums what passes through it.
type crcWriter struct {
	w   io.Writer
	crc uint32
	n   int64
}

func (c *crcWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.crc = crc32.Update(c.crc, castagnoli, p[:n])
	c.n += int64(n)
	return n, err
}

// rec is one record of a row file: a row's bytes, or nil for its delete.
type rec struct {
	kind byte
	key  uint64
	v    []byte
}

func (r rec) less(o rec) bool { return r.kind < o.kind || r.kind == o.kind && r.key < o.key }
func (r rec) same(o rec) bool { return r.kind == o.kind && r.key == o.key }

// sortedRecords yields the rows and deletes of a checkpoint in kind and key
// order. Within one checkpoint a key is either written or deleted.
func sortedRecords(sets []rowSet) iter.Seq[rec] {
	for _, s := range sets {
		sortKV(s.rows)
		slices.Sort(s.gone)
	}
	slices.SortStableFunc(sets, func(a, b rowSet) int { return int(a.kind) - int(b.kind) })
	return func(yield func(rec) bool) {
		for _, s := range sets {
			i, j := 0, 0
			for i < len(s.rows) || j < len(s.gone) {
				var r rec
				if j == len(s.gone) || i < len(s.rows) && s.rows[i].k < s.gone[j] {
					r = rec{s.kind, s.rows[i].k, s.rows[i].v}
					i++
				} else {
					r = rec{kind: s.kind, key: s.gone[j]}
					j++
				}
				if !yield(r) {
					return
				}
			}
		}
	}
}

// writeRowFile writes the records to a new file, makes it durable, and
// returns its size and checksum.
func writeRowFile(path string, recs iter.Seq[rec]) (size int64, crc uint32, err error) {
	file, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, 0, err
	}
	defer func() {
		if err != nil {
			file.Close()
			os.Remove(path)
		}
	}()
	cw := &crcWriter{w: &syncingWriter{f: file}}
	w := bufio.NewWriterSize(cw, 1<<20)
	w.WriteString(rowFileMagic)
	var hdr [1 + 8 + binary.MaxVarintLen64]byte
	for r := range recs {
		binary.LittleEndian.PutUint64(hdr[1:], r.key)
		if r.v == nil {
			hdr[0] = deleteTag(r.kind)
			w.Write(hdr[:9])
			continue
		}
		hdr[0] = putTag(r.kind)
		n := binary.PutUvarint(hdr[9:], uint64(len(r.v)))
		w.Write(hdr[:9+n])
		w.Write(r.v)
	}
	w.WriteByte(rowTrailer)
	if err = w.Flush(); err != nil {
		return 0, 0, err
	}
	// The trailer carries the sum of everything before it.
	sum := binary.LittleEndian.AppendUint32(nil, cw.crc)
	if _, err = file.Write(sum); err != nil {
		return 0, 0, err
	}
	if err = file.Sync(); err != nil {
		return 0, 0, err
	}
	if err = file.Close(); err != nil {
		return 0, 0, err
	}
	// The file's name must be as durable as its content before a
	// checkpoint lists it.
	if err = syncDir(filepath.Dir(path)); err != nil {
		return 0, 0, err
	}
	return cw.n + 4, cw.crc, nil
}

// syncingWriter makes a file durable as it goes, every syncEvery bytes.
// A merge writes hundreds of megabytes; left dirty, they would all be
// flushed by the next checkpoint's fsync (ext4 commits them together) and
// that checkpoint would wait seconds for them.
type syncingWriter struct {
	f        *os.File
	unsynced int
}

const syncEvery = 16 << 20

func (w *syncingWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.unsynced += n
	if err == nil && w.unsynced >= syncEvery {
		w.unsynced = 0
		err = w.f.Sync()
	}
	return n, err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// rowCursor reads a live file's records in order, checking the file
// against its listing: after the last record, done is set and the
// checksum has been verified.
type rowCursor struct {
	path string
	f    rowFile
	file *os.File
	crc  *crcWriter
	br   *bufio.Reader
	r    rec
	buf  []byte
	done bool
	err  error
}

func (l *rowLog) open(f rowFile) (*rowCursor, error) {
	path := filepath.Join(l.dir, f.name())
	file, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoint file: %w", err)
	}
	c := &rowCursor{path: path, f: f, file: file, crc: &crcWriter{w: io.Discard}}
	st, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("checkpoint file: %w", err)
	}
	if st.Size() != f.Size || f.Size < int64(len(rowFileMagic))+5 {
		file.Close()
		return nil, fmt.Errorf("checkpoint file %s is %d bytes, the checkpoint wrote %d", path, st.Size(), f.Size)
	}
	c.br = bufio.NewReaderSize(io.TeeReader(io.LimitReader(file, f.Size-4), c.crc), 1<<20)
	magic := make([]byte, len(rowFileMagic))
	if _, err := io.ReadFull(c.br, magic); err != nil || string(magic) != rowFileMagic {
		file.Close()
		return nil, c.damaged("no header")
	}
	return c, nil
}

func (c *rowCursor) close() { c.file.Close() }

func (c *rowCursor) damaged(what string) error {
	return fmt.Errorf("checkpoint file %s is damaged: %s", c.path, what)
}

// next reads the next record into c.r; its bytes are valid until the next
// call.
func (c *rowCursor) next() error {
	tag, err := c.br.ReadByte()
	if err != nil {
		return c.damaged("no trailer")
	}
	if tag == rowTrailer {
		if _, err := c.br.ReadByte(); err != io.EOF {
			return c.damaged("bytes after the trailer")
		}
		var sum [4]byte
		if _, err := io.ReadFull(c.file, sum[:]); err != nil {
			return c.damaged("no checksum")
		}
		if got := binary.LittleEndian.Uint32(sum[:]); got != c.crc.crc || got != c.f.CRC {
			return c.damaged("checksum mismatch")
		}
		c.done = true
		return nil
	}
	var key [8]byte
	if _, err := io.ReadFull(c.br, key[:]); err != nil {
		return c.damaged("cut short")
	}
	c.r = rec{kind: tag >> 1, key: binary.LittleEndian.Uint64(key[:])}
	if tag&1 == 1 {
		return nil
	}
	n, err := binary.ReadUvarint(c.br)
	if err != nil || n == 0 || n > 1<<20 {
		return c.damaged("bad row length")
	}
	c.buf = slices.Grow(c.buf[:0], int(n))[:n]
	if _, err := io.ReadFull(c.br, c.buf); err != nil {
		return c.damaged("cut short")
	}
	c.r.v = c.buf
	return nil
}

// read passes each record of a live file on in order.
func (l *rowLog) read(f rowFile, apply func(kind byte, key uint64, v []byte) error) error {
	c, err := l.open(f)
	if err != nil {
		return err
	}
	defer c.close()
	for {
		if err := c.next(); err != nil {
			return err
		}
		if c.done {
			return nil
		}
		if err := apply(c.r.kind, c.r.key, c.r.v); err != nil {
			return fmt.Errorf("checkpoint file %s: %w", c.path, err)
		}
	}
}

// FileStats describes a store's row files.
type FileStats struct {
	// Files and Bytes are those the last checkpoint lists: what a restore
	// reads.
	Files int
	Bytes int64
	// Written and Merged are the bytes written to row files since the
	// store opened, by checkpoints and by the merges of their files.
	Written, Merged int64
}

// FileStats reports the store's row files.
func (s *Store) FileStats() FileStats {
	l := s.rows
	l.mu.Lock()
	defer l.mu.Unlock()
	st := FileStats{Files: len(l.files), Written: l.written, Merged: l.mergeWritten}
	for _, f := range l.files {
		st.Bytes += f.Size
	}
	return st
}
