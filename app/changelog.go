package app

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/segmentio/kafka-go"
	bolt "go.etcd.io/bbolt"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/ingest"
	"github.com/walletguard/walletguard/outbox"
)

// The changelog (kafka.changelog_topic) holds what every checkpoint adds to
// the state, so that an instance without its data_dir restores it from
// Kafka. Its records, compacted by key:
//
//   - a detection-state row: the row kind (1–7, detector.EachRow) and the
//     row's 8-byte big-endian key; an empty value deletes the row;
//   - an account's enforcement state: 'S' and the account id; the freeze
//     breaker: 'B'; an alert: 'A' and its key (an empty value: gone);
//   - an audit entry: 'U', the account id, a zero byte and the hash of the
//     entry as stored; an empty value once enforce.audit_retention has
//     passed. Entries are facts, not state: a restore takes those of every
//     epoch (an automatic action decided again has the same key); a new
//     epoch writes the whole trail again;
//   - a record the outbox has yet to deliver (an alert to a receiver, a
//     command to the account service, a manual action): 'O' and its key in
//     the outbox; an empty value once it is delivered or given up on;
//   - a record the outbox gave up on (its dead-letter list): 'D' and the
//     hash of the letter as stored — one letter has one key whichever
//     instance's outbox holds it; an empty value once
//     alerts.dead_letter_retention has passed. Facts, like audit entries:
//     a restore takes those of every epoch, and a new epoch writes the
//     whole list again;
//   - the marker, key "marker", written last, once every row of its
//     checkpoint is acknowledged: the engine's clocks and the event offsets
//     the state was taken at (detector.Capture.Meta).
//
// Instances that share the partitions (kafka.share_partitions, share.go)
// write the same records under their own epochs, with two differences: a
// marker per partition decided, "marker/<partition>", in place of "marker";
// and the keys of timers and outbox records, which are a member's own
// numbering, made the member's ('o', its salt and the outbox key; a timer's
// number mixed with its salt).
//
// Every record carries the epoch and the sequence number of its checkpoint.
// An epoch begins with the whole state, so its rows need none from before
// it; a new one begins when the changelog may have missed a checkpoint (a
// publish that failed, a restart whose last checkpoint was not published).
// A restore takes the last marker, epoch E and sequence S, and applies the
// rows of E up to S in the order they were written: the rows of a later
// checkpoint whose marker never came are left out.
const (
	clogMarker  = "marker"
	clogState   = 'S'
	clogBreaker = 'B'
	clogAlert   = 'A'
	clogOutbox  = 'O'
	clogAudit   = 'U'
	clogDead    = 'D'
	hdrEpoch    = "walletguard-epoch"
	hdrSeq      = "walletguard-seq"
	// clogChunk is how many records go in one write: the whole state of a
	// new epoch goes out a piece at a time.
	clogChunk = 4096
	// clogMaxRecord keeps records under a broker's default message.max.bytes
	// (1 MB): an alert's list of accounts can outgrow it in a large outage.
	clogMaxRecord = 1000000 - 4096
)

var (
	bChangelog   = []byte("changelog")
	keyWritten   = []byte("written")   // epoch and seq of the checkpoint in this store
	keyPublished = []byte("published") // of the last one the changelog has whole
)

// changelog is the publishing side's position.
type changelog struct {
	topic      string
	epoch, seq uint64 // of the last checkpoint captured; used by the pipeline only
	// fresh makes the next checkpoint begin a new epoch. Set by a publish
	// that failed, in the checkpoint writer; read by the pipeline.
	fresh atomic.Bool
	// saved are the account states and alerts saved to the store since the
	// last checkpoint published: by checkpoints, and by manual actions in
	// between. Under writeMu.
	saved []ingest.Message
	// merchants are the merchant rows the changelog has, by key, as a hash
	// of their value, for the epoch merchantsEpoch. A checkpoint carries
	// every merchant (they are few); the changelog gets those that changed,
	// and a delete for those gone. Checkpoint writer only.
	merchants      map[uint64]uint64
	merchantsEpoch uint64
	// outboxEpoch is the epoch the whole outbox was written in; since, the
	// outbox's changes (outbox.OnChange, from whichever goroutine commits
	// them) wait in outbox for the next checkpoint. Checkpoint writer only.
	outboxEpoch uint64
	outbox      toldRecords
	auditEpoch  uint64 // the epoch the whole audit trail was written in
	// dead are the records given up on (noteDead) and the deletes of those
	// past their retention (pruneDead) since the last checkpoint published.
	dead      toldRecords
	deadEpoch uint64 // the epoch the whole dead-letter list was written in
	// salt is this member's when it shares the partitions (share.go), 0
	// for a sole owner.
	salt uint64
}

// outboxKey is the changelog key of the outbox record under k: a member
// that shares the partitions keys its records apart from the others'.
func (c *changelog) outboxKey(k []byte) []byte {
	if c.salt == 0 {
		return append([]byte{clogOutbox}, k...)
	}
	return append(binary.BigEndian.AppendUint64([]byte{clogSharedOutbox}, c.salt), k...)
}

// toldRecords are changelog records told of by goroutines other than the
// pipeline and the checkpoint writer — the outbox's hooks — kept for the
// next checkpoint.
type toldRecords struct {
	mu   sync.Mutex
	list []ingest.Message
}

func (q *toldRecords) add(m ...ingest.Message) {
	q.mu.Lock()
	q.list = append(q.list, m...)
	q.mu.Unlock()
}

func (q *toldRecords) take() []ingest.Message {
	q.mu.Lock()
	defer q.mu.Unlock()
	l := q.list
	q.list = nil
	return l
}

// putBack returns records taken that could not be published, ahead of
// those told of since.
func (q *toldRecords) putBack(l []ingest.Message) {
	q.mu.Lock()
	q.list = append(l, q.list...)
	q.mu.Unlock()
}

// next numbers the checkpoint being captured; on a new epoch it first
// marks the whole state changed. Called with procMu held.
func (c *changelog) next(p *Processor) (epoch, seq uint64) {
	if c.fresh.Swap(false) {
		p.Engine.MarkAllChanged()
		p.Planner.MarkAllChanged()
		p.Alerts.MarkAllChanged()
		c.epoch, c.seq = uint64(time.Now().UnixNano()), 0
	}
	c.seq++
	return c.epoch, c.seq
}

// noteState is the Planner's changelog hook, and noteAlert the alerts':
// they run inside the transaction that saves the state, under writeMu.
func (c *changelog) noteState(id string, v []byte) {
	key := append([]byte{clogState}, id...)
	if id == "" {
		key = []byte{clogBreaker}
	}
	c.saved = append(c.saved, ingest.Message{Topic: c.topic, Key: key, Value: v})
}

func (c *changelog) noteAlert(key string, v []byte) {
	c.saved = append(c.saved, ingest.Message{Topic: c.topic, Key: append([]byte{clogAlert}, key...), Value: v})
}

// noteAudit is the hook of the audit trail, v an entry as stored; same
// rules as noteState.
func (c *changelog) noteAudit(v []byte) {
	c.saved = append(c.saved, auditRecord(c.topic, v))
}

// noteDead is the outbox's OnDead: a record given up on goes with the next
// checkpoint.
func (c *changelog) noteDead(v []byte) { c.dead.add(deadRecord(c.topic, v, false)) }

// deadRecord is a dead letter's changelog record; gone makes it the record
// that deletes it.
func deadRecord(topic string, v []byte, gone bool) ingest.Message {
	m := ingest.Message{Topic: topic, Key: binary.BigEndian.AppendUint64([]byte{clogDead}, xxhash.Sum64(v))}
	if !gone {
		m.Value = slices.Clone(v)
	}
	return m
}

// auditRecord is an audit entry's changelog record; gone makes it the
// record that deletes it.
func auditRecord(topic string, v []byte) ingest.Message {
	var e struct {
		AccountID string `json:"account_id"`
	}
	_ = json.Unmarshal(v, &e) // an entry without an account (the breaker's) keys under ""
	key := append(append([]byte{clogAudit}, e.AccountID...), 0)
	key = binary.BigEndian.AppendUint64(key, xxhash.Sum64(v))
	return ingest.Message{Topic: topic, Key: key, Value: slices.Clone(v)}
}

// pruneAudit deletes the audit entries older than enforce.audit_retention
// from the store, and from the changelog with the next checkpoint, a
// batch at a time: a year of a large wallet's trail goes in steps that
// leave the store to the checkpoints in between.
func (a *App) pruneAudit(now time.Time) {
	keep := a.cfg.Enforce.AuditRetention.D()
	if keep <= 0 {
		return
	}
	const batch = 10_000
	for {
		var gone []ingest.Message
		var n int
		a.writeMu.Lock()
		err := a.store.DB().Update(func(tx *bolt.Tx) error {
			var err error
			n, err = enforce.PruneAudit(tx, now.Add(-keep), batch, func(v []byte) {
				if a.clog != nil {
					m := auditRecord(a.clog.topic, v)
					m.Value = nil
					gone = append(gone, m)
				}
			})
			return err
		})
		if err == nil && a.clog != nil {
			a.clog.saved = append(a.clog.saved, gone...)
		}
		a.writeMu.Unlock()
		if err != nil {
			a.log.Error("audit entries past their retention not deleted", "err", err)
			return
		}
		a.amet.auditPruned.Add(float64(n))
		if n < batch {
			return
		}
	}
}

func putPosition(tx *bolt.Tx, key []byte, epoch, seq uint64) error {
	b, err := tx.CreateBucketIfNotExists(bChangelog)
	if err != nil {
		return err
	}
	return b.Put(key, binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, epoch), seq))
}

// resume continues the epoch of the local checkpoint if the changelog has
// all of it, and otherwise begins a new one with the next checkpoint.
func (c *changelog) resume(db *bolt.DB) error {
	c.fresh.Store(true)
	return db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bChangelog)
		if b == nil {
			return nil
		}
		w, p := b.Get(keyWritten), b.Get(keyPublished)
		if len(w) == 16 && string(w) == string(p) {
			c.epoch, c.seq = binary.BigEndian.Uint64(w), binary.BigEndian.Uint64(w[8:])
			c.fresh.Store(false)
		}
		return nil
	})
}

// publishChangelog writes what the checkpoint work saved to the changelog,
// with the account states and alerts saved since the last one, its marker
// last, and records in the store that the changelog has it.
func (a *App) publishChangelog(ctx context.Context, work *ckptWork, saved []ingest.Message) error {
	c := a.clog
	hdr := []ingest.Header{
		{Key: hdrEpoch, Value: binary.BigEndian.AppendUint64(nil, work.epoch)},
		{Key: hdrSeq, Value: binary.BigEndian.AppendUint64(nil, work.seq)},
	}
	msgs := make([]ingest.Message, 0, clogChunk)
	keys := make([]byte, 0, 9*clogChunk)
	sent := 0
	flush := func() error {
		if len(msgs) == 0 {
			return nil
		}
		if err := a.producer.Write(ctx, "changelog", msgs); err != nil {
			return err
		}
		sent += len(msgs)
		msgs, keys = msgs[:0], keys[:0]
		return nil
	}
	add := func(m ingest.Message) error {
		if len(m.Key)+len(m.Value) > clogMaxRecord {
			// A broker would refuse it for good, and hold every commit.
			a.log.Warn("changelog record over Kafka's default size left out; a restore lacks it", "key", string(m.Key[1:]), "kind", string(m.Key[:1]), "bytes", len(m.Value))
			return nil
		}
		m.Topic, m.Headers = c.topic, hdr
		msgs = append(msgs, m)
		if len(msgs) == clogChunk {
			return flush()
		}
		return nil
	}
	row := func(kind byte, key uint64, v []byte) error {
		if kind == detector.RowTimer {
			key ^= c.salt // a timer's number is its engine's own
		}
		start := len(keys)
		keys = binary.BigEndian.AppendUint64(append(keys, kind), key)
		return add(ingest.Message{Key: keys[start:len(keys):len(keys)], Value: v})
	}
	if c.merchantsEpoch != work.epoch {
		c.merchants, c.merchantsEpoch = nil, work.epoch // a new epoch has them all
	}
	merchants := make(map[uint64]uint64, len(c.merchants))
	err := work.captured.EachRow(func(kind byte, key uint64, v []byte) error {
		if kind == detector.RowMerchant {
			h := xxhash.Sum64(v)
			merchants[key] = h
			if old, ok := c.merchants[key]; ok && old == h {
				return nil
			}
		}
		return row(kind, key, v)
	})
	for key := range c.merchants {
		if _, ok := merchants[key]; !ok && err == nil {
			err = row(detector.RowMerchant, key, nil) // expired
		}
	}
	for i := 0; err == nil && i < len(saved); i++ {
		err = add(saved[i])
	}
	if err == nil {
		err = a.publishOutbox(work.epoch, add)
	}
	var dead []ingest.Message
	if err == nil && c.auditEpoch != work.epoch {
		// The changelog may lack entries saved before it was switched on,
		// or while it could not be written; keys repeat, compaction keeps one.
		err = a.store.DB().View(func(tx *bolt.Tx) error {
			return enforce.EachAudit(tx, func(v []byte) error { return add(auditRecord(c.topic, v)) })
		})
	}
	if err == nil {
		// Dead letters since the last publish; a publish that fails begins
		// a new epoch, which writes them all.
		// A new epoch writes the whole list too; the deletes of letters
		// past their retention go either way.
		dead = c.dead.take()
		if c.deadEpoch != work.epoch {
			err = a.box.EachDead(func(_, v []byte) error { return add(deadRecord(c.topic, v, false)) })
		}
		for i := 0; err == nil && i < len(dead); i++ {
			err = add(dead[i])
		}
	}
	if err == nil {
		err = flush()
	}
	a.amet.changelogRecords.Add(float64(sent))
	if err == nil {
		err = a.producer.Write(ctx, "changelog", a.markers(work, hdr))
	}
	if err != nil {
		c.dead.putBack(dead) // the deletes of pruned letters too, for the next attempt
		return fmt.Errorf("changelog %s: %w", c.topic, err)
	}
	c.merchants, c.auditEpoch, c.deadEpoch = merchants, work.epoch, work.epoch
	return a.store.DB().Update(func(tx *bolt.Tx) error { return putPosition(tx, keyPublished, work.epoch, work.seq) })
}

// markers are a checkpoint's last records: the sole owner's marker, or
// one for each partition a member that shares them decides (share.go).
func (a *App) markers(work *ckptWork, hdr []ingest.Header) []ingest.Message {
	meta := work.captured.Meta()
	if a.share == nil {
		return []ingest.Message{{Topic: a.clog.topic, Key: []byte(clogMarker), Value: meta, Headers: hdr}}
	}
	var out []ingest.Message
	for _, p := range slices.Sorted(maps.Keys(work.parts)) {
		h := append(slices.Clip(hdr),
			ingest.Header{Key: hdrFrom, Value: binary.BigEndian.AppendUint64(nil, work.parts[p])},
			ingest.Header{Key: hdrMember, Value: binary.BigEndian.AppendUint64(nil, a.clog.salt)})
		out = append(out, ingest.Message{Topic: a.clog.topic, Key: []byte(clogPartMarker + strconv.Itoa(p)), Value: meta, Headers: h})
	}
	return out
}

// publishOutbox adds to a checkpoint's records the outbox's: those put
// since the last checkpoint published, and an empty value for those gone
// since (delivered, given up on, or digested), as the outbox told of them.
// A new epoch has the whole outbox. A record delivered in the moment
// between this and the marker goes out again after a restore, as outbox
// records may: receivers drop repeats by id. A publish that fails begins a
// new epoch, which writes the whole outbox again.
func (a *App) publishOutbox(epoch uint64, add func(ingest.Message) error) error {
	c := a.clog
	changes := c.outbox.take()
	whole := c.outboxEpoch != epoch
	c.outboxEpoch = epoch
	if !whole {
		for i := range changes {
			if err := add(changes[i]); err != nil {
				return err
			}
		}
		return nil
	}
	// The changes told before are in what is read now; those told from
	// now on are published next time, again if they are read here too.
	return a.box.EachPending(func(k, v []byte) error {
		// add keeps the message until it is written: copies, not bbolt's memory.
		return add(ingest.Message{Key: c.outboxKey(k), Value: append([]byte(nil), v...)})
	})
}

// noteOutbox is the outbox's OnChange: the change goes with the next
// checkpoint.
func (c *changelog) noteOutbox(k, v []byte) {
	c.outbox.add(ingest.Message{Topic: c.topic, Key: c.outboxKey(k), Value: v})
}

// restoreChangelog loads the state the changelog holds up to its last
// marker into the engine and the store (account states, alerts), and
// returns the event offsets it was taken at; nil if it restored nothing.
// held is where the state the engine holds was taken (nil: it holds none):
// a changelog not ahead of it is left alone, one ahead replaces it — a
// store from an old backup, or of an instance another owned the partitions
// after, would otherwise read again, and decide again, every event since.
func (a *App) restoreChangelog(ctx context.Context, held detector.Offsets) (detector.Offsets, error) {
	marker, ends, err := a.lastMarker(ctx, held != nil)
	if err != nil && held != nil {
		// The local state is whole; only perhaps older.
		a.log.Warn("changelog unreadable: going on with the local checkpoint, though the changelog may hold a newer state", "topic", a.clog.topic, "err", err)
		return nil, nil
	}
	if err != nil || marker == nil {
		return nil, err
	}
	if held != nil {
		if ahead, err := a.markerAhead(marker, held); err != nil || !ahead {
			return nil, err
		}
	}
	r, err := a.readChangelog(ctx, marker, ends)
	if err != nil {
		return nil, err
	}
	why := "empty"
	if held != nil {
		why = "newer"
	}
	if err := a.adoptRestored(r, why); err != nil {
		return nil, err
	}
	return r.offsets, nil
}

// adoptRestored puts a state restored from the changelog in place of the
// one held, in the store and the engine; the next checkpoint begins a new
// epoch with it, and what the owner still owed waits for takeOver.
func (a *App) adoptRestored(r *clogRestore, why string) error {
	a.writeMu.Lock()
	err := a.store.DB().Update(func(tx *bolt.Tx) error { return r.replace(tx, a.box) })
	if err == nil {
		a.clog.saved = nil // the new epoch publishes the whole state
	}
	a.writeMu.Unlock()
	if err != nil {
		return fmt.Errorf("store the state restored from the changelog: %w", err)
	}
	if err := a.proc.Engine.Take(r.engine); err != nil {
		return err
	}
	a.clog.fresh.Store(true)
	a.amet.changelogRestores.WithLabelValues(why).Inc()
	r.logRestored(a.log, a.proc.Engine.Stats())
	a.owed = r.owed()
	return nil
}

// restoreOnTakeover is the source's Assigning: an instance that takes
// partitions over without following their owner (kafka.standby_follow
// off) holds the state it started with, which may be hours older than the
// owner's. If the changelog holds a newer one, it restores that before
// fetching any event, and starts where it was taken — deciding as the
// owner would have, instead of as a new install would. It does so only on
// the first assignment: after that the partitions' state is its own.
func (a *App) restoreOnTakeover(ctx context.Context) {
	if a.clog == nil || a.cfg.Kafka.StandbyFollow || a.owned.Load() {
		return
	}
	held := *a.startAt.Load()
	marker, ends, err := a.lastMarker(ctx, false)
	ahead := false
	if err == nil && marker != nil {
		ahead, err = a.markerAhead(marker, held)
	}
	var r *clogRestore
	if err == nil && ahead {
		a.restoring.Store(true)
		defer a.restoring.Store(false)
		r, err = a.readChangelog(ctx, marker, ends)
	}
	if err == nil && r != nil {
		r.done = make(chan error, 1)
		select {
		case a.restores <- r:
			err = <-r.done
		case <-ctx.Done():
			err = context.Cause(ctx)
		}
	}
	if ctx.Err() != nil {
		return // the generation ended: the next one tries again
	}
	if err != nil {
		a.log.Error("taking the partitions over with the state held, not the changelog's", "topic", a.clog.topic, "err", err)
	}
	a.owned.Store(true)
}

// installRestored puts a state restored from the changelog in place of
// the one held: in the store, the engine, the account states and the
// alerts; next, the pipeline's position, becomes where it was taken.
// Pipeline only, with procMu held and no checkpoint being captured or
// written.
func (a *App) installRestored(r *clogRestore, next map[string]map[int]int64) error {
	if err := a.adoptRestored(r, "takeover"); err != nil {
		return err
	}
	a.proc.Planner.Reset()
	if _, err := a.proc.Planner.Load(a.store.DB()); err != nil {
		return fmt.Errorf("account states restored from the changelog: %w", err)
	}
	a.proc.Alerts.Reset()
	if err := a.proc.Alerts.Load(a.store.DB()); err != nil {
		return fmt.Errorf("alerts restored from the changelog: %w", err)
	}
	clear(next)
	for t, ps := range r.offsets {
		next[t] = maps.Clone(ps)
	}
	a.startAt.Store(&r.offsets)
	a.held.Store(int64(a.proc.Engine.Stats().Accounts))
	return nil
}

// handedOverPast reports whether an owner handed over (stopped with its
// outbox delivered) at or past offsets on every partition. It waits a
// moment for the actions topic to be read to its end.
func (a *App) handedOverPast(offsets detector.Offsets) bool {
	if a.cfg.Kafka.ActionsTopic == "" {
		return false
	}
	a.awaitHandovers("delivering again the recent alerts restored")
	a.manualMu.Lock()
	defer a.manualMu.Unlock()
	for t, ps := range offsets {
		for p, o := range ps {
			if at, ok := a.handoverAt[t][p]; !ok || at < o {
				return false
			}
		}
	}
	return true
}

// markerAhead reports whether the state the marker closes was taken past
// held, and says so in the log.
func (a *App) markerAhead(marker *kafka.Message, held detector.Offsets) (bool, error) {
	at, err := detector.MetaOffsets(marker.Value)
	if err != nil {
		return false, fmt.Errorf("changelog %s: marker at %d/%d: %w", a.clog.topic, marker.Partition, marker.Offset, err)
	}
	if !at.Ahead(held) {
		return false, nil
	}
	a.log.Warn("the changelog holds a newer state than this instance's (a store from a backup, an owner since); replacing the state with it",
		"topic", a.clog.topic, "held", held, "changelog", at)
	return true, nil
}

// readChangelog restores, into an engine of its own, the state the
// changelog holds up to marker, and keeps the account states and alerts
// for the store.
func (a *App) readChangelog(ctx context.Context, marker *kafka.Message, ends map[int]int64) (*clogRestore, error) {
	epoch, seq, ok := clogPlace(marker)
	if !ok {
		return nil, fmt.Errorf("changelog %s: marker at %d/%d has no epoch", a.clog.topic, marker.Partition, marker.Offset)
	}
	r := newClogRestore(a.clog.topic, epoch, seq)
	r.engine = a.proc.Engine.Fresh()
	var err error
	r.offsets, err = r.engine.RestoreChangelog(marker.Value, func(apply func(byte, uint64, []byte) error) error {
		// Partitions are read side by side; each key is on one, in order.
		return ingest.ReadPartitions(ctx, a.brokers, a.clog.topic, ends, a.log, func(_ int, batch []kafka.Message) error {
			for i := range batch {
				if err := r.take(&batch[i], apply); err != nil {
					return err
				}
			}
			return nil
		})
	})
	return r, err
}

// lastMarker finds the changelog's last marker, nil if it has none, and
// the end of each of its partitions. With quick, it gives up after a
// while: the caller has a state to go on with.
func (a *App) lastMarker(ctx context.Context, quick bool) (*kafka.Message, map[int]int64, error) {
	if quick {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	return findMarker(ctx, a.brokers, a.cfg.Kafka.ChangelogTopic, a.log)
}

// clogRestore sorts the records of a changelog being restored: detection
// rows go to its engine as they come, account states and alerts are kept,
// the latest of each, for the store, and the outbox records still
// waiting, for takeOver.
type clogRestore struct {
	topic                  string
	epoch, seq             uint64 // of the marker restored
	states, alerts, outbox map[string][]byte
	audit                  map[string][]byte // by changelog key
	auditAdded             int
	dead                   map[string][]byte // the outbox's dead letters, by changelog key
	deadAdded              int
	unknown                int // records of kinds this release does not know
	badAudit               int // audit entries unreadable, left out
	badDead                int // dead letters unreadable, left out
	rows                   int
	engine                 *detector.Engine
	offsets                detector.Offsets // where the state was taken
	started                time.Time
	done                   chan error // installRestored's answer
}

func newClogRestore(topic string, epoch, seq uint64) *clogRestore {
	return &clogRestore{topic: topic, epoch: epoch, seq: seq, states: map[string][]byte{}, alerts: map[string][]byte{},
		outbox: map[string][]byte{}, audit: map[string][]byte{}, dead: map[string][]byte{}, started: time.Now()}
}

// owed is the outbox records restored, in the order the outbox held them.
func (r *clogRestore) owed() *owedOutbox {
	keys := slices.Sorted(maps.Keys(r.outbox)) // destination, then sequence
	o := &owedOutbox{records: make([]owedRecord, 0, len(keys)), offsets: r.offsets}
	for _, k := range keys {
		if dest, ok := outbox.KeyDest([]byte(k)); ok {
			o.records = append(o.records, owedRecord{dest: dest, stored: r.outbox[k]})
		}
	}
	return o
}

func (r *clogRestore) take(m *kafka.Message, apply func(byte, uint64, []byte) error) error {
	e, s, ok := clogPlace(m)
	if len(m.Key) > 0 && (m.Key[0] == clogAudit || m.Key[0] == clogDead) {
		// Of this epoch up to the marker, and of every epoch before it: an
		// entry of a later checkpoint is made again when its events are
		// decided again.
		if !ok || e > r.epoch || e == r.epoch && s > r.seq {
			return nil
		}
		if m.Key[0] == clogDead {
			if len(m.Value) == 0 {
				delete(r.dead, string(m.Key)) // past its retention
				return nil
			}
			if outbox.CheckDead(m.Value) != nil {
				r.badDead++ // the list lacks one letter; the state is whole
				return nil
			}
			r.dead[string(m.Key)] = m.Value
			return nil
		}
		if len(m.Value) == 0 {
			delete(r.audit, string(m.Key)) // past its retention
			return nil
		}
		var entry enforce.AuditEntry
		if json.Unmarshal(m.Value, &entry) != nil {
			r.badAudit++ // the trail lacks one line; the state is whole
			return nil
		}
		r.audit[string(m.Key)] = m.Value
		return nil
	}
	if !ok || e != r.epoch || s > r.seq || len(m.Key) == 0 || string(m.Key) == clogMarker {
		return nil // another epoch's, or a checkpoint's whose marker never came
	}
	// Every record is checked as it is read, before anything is replaced:
	// a damaged one fails the restore, not the store it would have gone to.
	damaged := func(err error) error {
		return fmt.Errorf("changelog %s: record at %d/%d: %w", r.topic, m.Partition, m.Offset, err)
	}
	switch m.Key[0] {
	case clogState, clogBreaker:
		id := string(m.Key[1:])
		if err := enforce.CheckRecord(id, m.Value); err != nil {
			return damaged(err)
		}
		r.states[id] = m.Value
	case clogAlert:
		if len(m.Value) == 0 {
			delete(r.alerts, string(m.Key[1:]))
		} else if err := alerts.CheckRecord(string(m.Key[1:]), m.Value); err != nil {
			return damaged(err)
		} else {
			r.alerts[string(m.Key[1:])] = m.Value
		}
	case clogOutbox:
		if len(m.Value) == 0 {
			delete(r.outbox, string(m.Key[1:]))
		} else if err := outbox.CheckStored(m.Value); err != nil {
			return damaged(err)
		} else {
			r.outbox[string(m.Key[1:])] = m.Value
		}
	default:
		if m.Key[0] < 1 || m.Key[0] > detector.RowMerchant {
			// A kind a later release writes: what this one can restore it
			// does, rather than refuse the whole state.
			r.unknown++
			return nil
		}
		if len(m.Key) != 9 {
			return fmt.Errorf("changelog %s: record at %d/%d has a key of %d bytes", r.topic, m.Partition, m.Offset, len(m.Key))
		}
		v := m.Value
		if len(v) == 0 {
			v = nil
		}
		r.rows++
		return apply(m.Key[0], binary.BigEndian.Uint64(m.Key[1:]), v)
	}
	return nil
}

// replace puts the account states and alerts into the store in place of
// those it held, and adds the dead letters it lacks to box.
func (r *clogRestore) replace(tx *bolt.Tx, box *outbox.Box) error {
	if err := enforce.DropRecords(tx); err != nil {
		return err
	}
	if err := alerts.DropRecords(tx); err != nil {
		return err
	}
	for id, v := range r.states {
		if err := enforce.PutRecord(tx, id, v); err != nil {
			return err
		}
	}
	for key, v := range r.alerts {
		if err := alerts.PutRecord(tx, key, v); err != nil {
			return err
		}
	}
	if err := r.addAudit(tx); err != nil {
		return err
	}
	// Sorted by key: each outbox's letters in the order they were put.
	var err error
	r.deadAdded, err = box.AddDead(tx, slices.Collect(func(yield func([]byte) bool) {
		for _, k := range slices.Sorted(maps.Keys(r.dead)) {
			if !yield(r.dead[k]) {
				return
			}
		}
	}))
	return err
}

// addAudit adds to the store's audit trail the entries restored that it
// lacks, oldest first.
func (r *clogRestore) addAudit(tx *bolt.Tx) error {
	if len(r.audit) == 0 {
		return nil
	}
	have := map[uint64]bool{}
	err := enforce.EachAudit(tx, func(v []byte) error {
		have[xxhash.Sum64(v)] = true
		return nil
	})
	if err != nil {
		return err
	}
	var add []enforce.AuditEntry
	for k, v := range r.audit {
		if have[xxhash.Sum64(v)] {
			continue
		}
		var e enforce.AuditEntry
		if err := json.Unmarshal(v, &e); err != nil {
			return fmt.Errorf("changelog %s: audit entry %q: %w", r.topic, k, err)
		}
		add = append(add, e)
	}
	slices.SortStableFunc(add, func(a, b enforce.AuditEntry) int { return a.At.Compare(b.At) })
	r.auditAdded = len(add)
	return enforce.AppendAudit(tx, nil, add...)
}

func (r *clogRestore) logRestored(log *slog.Logger, st detector.Stats) {
	if r.unknown > 0 {
		log.Warn("changelog records of a kind this release does not know left out of the restore (written by a later release?)", "topic", r.topic, "records", r.unknown)
	}
	if r.badAudit > 0 {
		log.Warn("unreadable audit entries in the changelog left out of the restored trail", "topic", r.topic, "entries", r.badAudit)
	}
	if r.badDead > 0 {
		log.Warn("unreadable dead letters in the changelog left out of the restored list", "topic", r.topic, "records", r.badDead)
	}
	log.Info("restored state from changelog", "topic", r.topic, "accounts", st.Accounts, "timers", st.Timers,
		"account_states", len(r.states), "alerts", len(r.alerts), "outbox_records", len(r.outbox), "audit_entries", r.auditAdded, "dead_letters", r.deadAdded, "rows", r.rows, "offsets", r.offsets, "took", time.Since(r.started).Round(time.Millisecond).String())
}

// clogPlace is a changelog record's epoch and sequence number.
func clogPlace(m *kafka.Message) (epoch, seq uint64, ok bool) {
	var n int
	for _, h := range m.Headers {
		if len(h.Value) != 8 {
			continue
		}
		switch h.Key {
		case hdrEpoch:
			epoch, n = binary.BigEndian.Uint64(h.Value), n+1
		case hdrSeq:
			seq, n = binary.BigEndian.Uint64(h.Value), n+1
		}
	}
	return epoch, seq, n == 2
}

// openChangelog creates the changelog topic if it is missing and finds
// where this instance's checkpoints go on in it.
func (a *App) openChangelog(empty bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// As many partitions as the first event topic, so that a later split
	// of the state by partition has as many pieces; a record never needs
	// more than one (compaction keeps a key's latest on its partition).
	parts := 1
	if ends, err := ingest.EndOffsets(ctx, a.brokers, a.cfg.Kafka.Topics[0]); err == nil && len(ends) > 0 {
		parts = len(ends)
	}
	// Compaction must not replace a row the last marker's state needs
	// by a newer one whose marker may never come: a checkpoint's rows
	// stay an hour, or ten checkpoint intervals.
	lag := max(time.Hour, 10*a.cfg.Detector.CheckpointInterval.D())
	if err := ingest.CreateCompacted(ctx, a.brokers, a.cfg.Kafka.ChangelogTopic, parts, lag); err != nil {
		// A cluster may refuse clients to create topics, made by hand then.
		a.log.Warn("changelog topic not created; it must exist, compacted (docs/runbook.md)", "err", err)
	}
	if empty {
		a.clog.fresh.Store(true)
		return nil
	}
	return a.clog.resume(a.store.DB())
}
