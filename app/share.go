package app

import (
	"context"
	"crypto/rand"
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

	"github.com/segmentio/kafka-go"
	bolt "go.etcd.io/bbolt"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/ingest"
	"github.com/walletguard/walletguard/outbox"
)

// Instances that share the partitions (kafka.share_partitions,
// docs/scaling.md) each decide the partitions the group assigns them and
// observe the others' events for what spans accounts. A partition's state —
// its accounts' detection rows, payment chains, timers and security states —
// moves through the changelog. Every member publishes its checkpoints there
// under its own epochs, and after each, for every partition it decides, a
// marker "marker/<partition>" naming the checkpoint (epoch, sequence) its
// state of the partition is whole at, and the sequence from which that
// epoch holds it (walletguard-from). The member that gains a partition
// restores it from the newest such marker — or from the sole owner's
// "marker", if that one is further along the partition.
//
// Members write rows of their own accounts only, under keys no other
// member writes, except two kinds whose keys are a member's own numbering:
// timers, whose key a member mixes with its salt (walletguard-member), and
// the outbox's records, which it keys 'o', its salt, and the outbox key.
const (
	clogPartMarker   = "marker/"
	clogSharedOutbox = 'o'
	hdrFrom          = "walletguard-from"
	hdrMember        = "walletguard-member"
)

var (
	keyMember  = []byte("member")  // this member's salt
	keyDecided = []byte("decided") // the partitions the state in this store decides
)

// sharing is a member's side of sharing the partitions.
type sharing struct {
	salt uint64 // mixed into the keys of this member's timers and outbox records in the changelog
	mu   sync.Mutex
	// deciding holds the partitions this member decides now, each with the
	// changelog sequence from which the current epoch holds its whole state
	// (0: from the next checkpoint's). Written by the pipeline, under mu.
	deciding map[int]uint64
	// local holds the partitions the state restored from this store
	// decided, until the first assignment weighs them against the
	// changelog's.
	local map[int]bool
	// start is where the partitions gained start: where their state was
	// taken. Read by the source's StartOffset.
	start   map[string]map[int]int64
	changes chan *shareChange
	// flush asks the pipeline for a checkpoint, published, and is
	// answered once it is (revoked).
	flush chan chan struct{}
	// cold: this process started with no state of its own and has
	// neither decided nor observed an event yet. Its first partitions
	// gained then bring the state of every device, IP, payee and merchant
	// with them, and observing starts where that state was taken
	// (observeAt), not at each partition's beginning.
	cold      atomic.Bool
	observeAt map[string]map[int]int64 // under mu
}

// openSharing reads this member's salt (made once, kept in the store) and
// the partitions its stored state decides.
func openSharing(db *bolt.DB) (*sharing, error) {
	s := &sharing{deciding: map[int]uint64{}, local: map[int]bool{}, start: map[string]map[int]int64{}, changes: make(chan *shareChange), flush: make(chan chan struct{})}
	err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bChangelog)
		if err != nil {
			return err
		}
		if v := b.Get(keyMember); len(v) == 8 {
			s.salt = binary.BigEndian.Uint64(v)
		} else {
			var r [8]byte
			rand.Read(r[:])
			s.salt = binary.BigEndian.Uint64(r[:]) | 1 // never 0: the sole owner's
			if err := b.Put(keyMember, binary.BigEndian.AppendUint64(nil, s.salt)); err != nil {
				return err
			}
		}
		if v := b.Get(keyDecided); v != nil {
			var parts []int
			if err := json.Unmarshal(v, &parts); err != nil {
				return fmt.Errorf("partitions decided: %w", err)
			}
			for _, p := range parts {
				s.local[p] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return s, nil
}

// putDecided records in the checkpoint which partitions its state decides.
func putDecided(tx *bolt.Tx, parts map[int]uint64) error {
	b, err := tx.CreateBucketIfNotExists(bChangelog)
	if err != nil {
		return err
	}
	v, err := json.Marshal(slices.Sorted(maps.Keys(parts)))
	if err != nil {
		return err
	}
	return b.Put(keyDecided, v)
}

// decides reports whether this member decides partition p now. Pipeline
// only.
func (s *sharing) decides(p int) bool {
	_, ok := s.deciding[p]
	return ok
}

// capture numbers, for the checkpoint seq of its epoch, the sequence each
// partition decided is whole from, and returns them. Pipeline only.
func (s *sharing) capture(seq uint64) map[int]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p, from := range s.deciding {
		if from == 0 || seq == 1 { // gained since the last one, or a new epoch: all of it now
			s.deciding[p] = seq
		}
	}
	return maps.Clone(s.deciding)
}

// startOffset is the source's StartOffset for a member that shares: a
// partition gained starts where the state it was given was taken, or, with
// none anywhere, at the group's committed offset.
func (a *App) startOffset(topic string, partition int, committed int64) int64 {
	a.share.mu.Lock()
	defer a.share.mu.Unlock()
	if o, ok := a.share.start[topic][partition]; ok {
		return o
	}
	return committed
}

// observeFrom is where observing a partition starts in this process:
// where the state held was taken, or the partition's beginning.
func (a *App) observeFrom(topic string, partition int) int64 {
	a.share.cold.Store(false) // what it observes now is in the state
	a.share.mu.Lock()
	o, ok := a.share.observeAt[topic][partition]
	a.share.mu.Unlock()
	if ok {
		return o
	}
	if o, ok := (*a.startAt.Load())[topic][partition]; ok {
		return o
	}
	return kafka.FirstOffset
}

// shareChange is what a new assignment changes in what this member
// decides, with the state of the partitions gained, restored.
type shareChange struct {
	lost, gained []int
	groups       []*shareGroup
	start        map[string]map[int]int64
	whole        int // the event topic's partitions; 0 if not known
	// entities is set for a cold member: its engine takes that group's
	// whole state, what spans accounts with it, and drops the partitions
	// it did not gain.
	entities *shareGroup
	done     chan error
}

// shareGroup is the state of partitions gained that one marker covers.
type shareGroup struct {
	mark   *partMarker
	parts  []int
	engine *detector.Engine
	states map[string][]byte // account security states, by account
	owed   map[string][]byte // the writer's outbox records yet to deliver, by outbox key
	// With partition 0: the writer's alerts, by key (the lead's alerts
	// that span accounts among them), and its place in the findings topic.
	alerts   map[string][]byte
	findings map[int]int64
}

// partMarker is a marker of the changelog: a member's "marker/<p>" or the
// sole owner's "marker".
type partMarker struct {
	msg              *kafka.Message
	epoch, seq, from uint64
	salt             uint64
	offsets          detector.Offsets
}

// along is how far the marker's state is along partition p, over the
// topics.
func (m *partMarker) along(p int) int64 {
	var n int64
	for _, ps := range m.offsets {
		n += ps[p]
	}
	return n
}

// ownsShared is the source's Owns: it works out the partitions lost and
// gained, restores the state of those gained from the changelog (unless
// this store's own is as far along), and has the pipeline drop and adopt
// them before any of their events is fetched.
func (a *App) ownsShared(ctx context.Context, owned map[string][]int) {
	sh := a.share
	parts := map[int]bool{}
	for _, ps := range owned {
		for _, p := range ps {
			parts[p] = true
		}
	}
	ch := &shareChange{start: map[string]map[int]int64{}, done: make(chan error, 1)}
	sh.mu.Lock()
	for p := range sh.deciding {
		if !parts[p] {
			ch.lost = append(ch.lost, p)
		}
	}
	for p := range parts {
		if _, ok := sh.deciding[p]; !ok {
			ch.gained = append(ch.gained, p)
		}
	}
	local := sh.local
	sh.mu.Unlock()
	slices.Sort(ch.lost)
	slices.Sort(ch.gained)
	if len(ch.lost)+len(ch.gained) == 0 {
		return
	}
	// The breaker's part of the limit (enforce.Planner.SetShare).
	if ends, err := ingest.EndOffsets(ctx, a.brokers, a.cfg.Kafka.Topics[0]); err == nil {
		ch.whole = len(ends)
	} else {
		a.log.Warn("event topic's partitions not counted; the freeze breaker keeps its limit as it was", "err", err)
	}
	if len(ch.gained) > 0 {
		// A partition is decided with its state or not at all: without the
		// changelog, waiting is right.
		for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
			err := a.restoreShared(ctx, ch, local)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return // the generation ended; the next one tries again
			}
			a.log.Error("partitions gained wait for their state from the changelog", "partitions", ch.gained, "err", err, "retry_in", wait.String())
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return
			}
		}
	}
	a.share.changes <- ch
	if err := <-ch.done; err != nil {
		a.log.Error("partitions gained are decided without their state", "partitions", ch.gained, "err", err)
	}
}

// restoreShared finds, for each partition gained, the state to decide it
// with: the newest marker's in the changelog, or this store's if that is
// as far along; and reads the markers' states.
func (a *App) restoreShared(ctx context.Context, ch *shareChange, local map[int]bool) error {
	ch.groups = nil
	clear(ch.start)
	topic := a.clog.topic
	ends, err := ingest.EndOffsets(ctx, a.brokers, topic)
	if err != nil {
		return fmt.Errorf("changelog %s: %w", topic, err)
	}
	markers := map[string]*partMarker{}
	find := func(key string) (*partMarker, error) {
		if m, ok := markers[key]; ok {
			return m, nil
		}
		m, err := findPartMarker(ctx, a.brokers, topic, ends, key, a.log)
		markers[key] = m
		return m, err
	}
	sole, err := find(clogMarker)
	if err != nil {
		return err
	}
	held := *a.startAt.Load()
	byMarker := map[*partMarker][]int{}
	for _, p := range ch.gained {
		m, err := find(clogPartMarker + strconv.Itoa(p))
		if err != nil {
			return err
		}
		if m == nil || sole != nil && sole.along(p) > m.along(p) {
			m = sole
		}
		var localAt int64
		for _, ps := range held {
			localAt += ps[p]
		}
		switch {
		case m != nil && (!local[p] || m.along(p) > localAt):
			byMarker[m] = append(byMarker[m], p)
			for t, ps := range m.offsets {
				if o, ok := ps[p]; ok {
					setOffset(ch.start, t, p, o)
				}
			}
		case local[p]:
			for t, ps := range held {
				if o, ok := ps[p]; ok {
					setOffset(ch.start, t, p, o)
				}
			}
		}
		// Otherwise no state of it is anywhere: it is decided from the
		// group's committed offset.
	}
	for m, parts := range byMarker {
		g, err := a.readShared(ctx, m, parts, ends)
		if err != nil {
			return err
		}
		ch.groups = append(ch.groups, g)
	}
	// A cold member takes what spans accounts from the checkpoint furthest
	// along. It agrees exactly with the accounts of the partitions gained
	// that were taken at the same checkpoint (all of them, when one member
	// decided them); one gained from another member's checkpoint is off by
	// what the two members' checkpoints differ along it (docs/scaling.md).
	ch.entities = nil
	if a.share.cold.Load() {
		for _, g := range ch.groups {
			if ch.entities == nil || g.mark.total() > ch.entities.mark.total() {
				ch.entities = g
			}
		}
	}
	return nil
}

// total is how far the marker's state is along every partition.
func (m *partMarker) total() int64 {
	var n int64
	for _, ps := range m.offsets {
		for _, o := range ps {
			n += o
		}
	}
	return n
}

// findPartMarker finds the changelog's last marker under key (the sole
// owner's, or a partition's), nil if there is none.
func findPartMarker(ctx context.Context, brokers []string, topic string, ends map[int]int64, key string, log *slog.Logger) (*partMarker, error) {
	if len(ends) == 0 {
		return nil, nil
	}
	mp := ingest.KeyPartition([]byte(key), len(ends))
	msg, err := ingest.LastMatching(ctx, brokers, topic, mp, ends[mp], log, func(m *kafka.Message) bool { return string(m.Key) == key })
	if err != nil || msg == nil {
		return nil, err
	}
	m := &partMarker{msg: msg, from: 1}
	var ok bool
	if m.epoch, m.seq, ok = clogPlace(msg); !ok {
		return nil, fmt.Errorf("changelog %s: marker %s at %d/%d has no epoch", topic, key, msg.Partition, msg.Offset)
	}
	for _, h := range msg.Headers {
		if len(h.Value) == 8 && h.Key == hdrFrom {
			m.from = binary.BigEndian.Uint64(h.Value)
		}
		if len(h.Value) == 8 && h.Key == hdrMember {
			m.salt = binary.BigEndian.Uint64(h.Value)
		}
	}
	if m.offsets, err = detector.MetaOffsets(msg.Value); err != nil {
		return nil, fmt.Errorf("changelog %s: marker %s at %d/%d: %w", topic, key, msg.Partition, msg.Offset, err)
	}
	return m, nil
}

func setOffset(o map[string]map[int]int64, topic string, p int, at int64) {
	if o[topic] == nil {
		o[topic] = map[int]int64{}
	}
	o[topic][p] = at
}

// readShared restores into an engine of its own the state the marker
// closes — the rows its writer wrote in the marker's epoch up to it — and
// keeps its writer's security states and undelivered outbox records. Rows
// of the partitions gained count from the sequence the marker says the
// epoch holds them whole from: the writer may have decided them before, in
// the same epoch, with accounts since gone.
func (a *App) readShared(ctx context.Context, m *partMarker, parts []int, ends map[int]int64) (*shareGroup, error) {
	g := &shareGroup{mark: m, parts: parts, engine: a.proc.Engine.Fresh(), states: map[string][]byte{}, owed: map[string][]byte{}}
	leads := slices.Contains(parts, 0)
	if leads {
		g.alerts = map[string][]byte{}
	}
	r, err := g.engine.BeginRestore(m.msg.Value)
	if err != nil {
		return nil, fmt.Errorf("changelog %s: marker at %d/%d: %w", a.clog.topic, m.msg.Partition, m.msg.Offset, err)
	}
	topic := a.clog.topic
	err = ingest.ReadPartitions(ctx, a.brokers, topic, ends, a.log, func(_ int, batch []kafka.Message) error {
		for i := range batch {
			msg := &batch[i]
			e, s, ok := clogPlace(msg)
			if !ok || e != m.epoch || s > m.seq || len(msg.Key) == 0 {
				continue
			}
			damaged := func(err error) error {
				return fmt.Errorf("changelog %s: record at %d/%d: %w", topic, msg.Partition, msg.Offset, err)
			}
			switch kind := msg.Key[0]; {
			case leads && kind == clogAlert && len(msg.Key) > 1:
				k := string(msg.Key[1:])
				if len(msg.Value) == 0 {
					delete(g.alerts, k)
				} else if err := alerts.CheckRecord(k, msg.Value); err != nil {
					return damaged(err)
				} else {
					g.alerts[k] = msg.Value
				}
			case leads && string(msg.Key) == clogFindings:
				g.findings = nil
				if err := json.Unmarshal(msg.Value, &g.findings); err != nil {
					return damaged(err)
				}
			case kind == clogState && len(msg.Key) > 1:
				if err := enforce.CheckRecord(string(msg.Key[1:]), msg.Value); err != nil {
					return damaged(err)
				}
				g.states[string(msg.Key[1:])] = msg.Value
			case kind == clogSharedOutbox && len(msg.Key) > 9:
				if binary.BigEndian.Uint64(msg.Key[1:9]) != m.salt {
					continue // another member's
				}
				k := string(msg.Key[9:])
				if len(msg.Value) == 0 {
					delete(g.owed, k)
				} else if err := outbox.CheckStored(msg.Value); err != nil {
					return damaged(err)
				} else {
					g.owed[k] = msg.Value
				}
			case kind >= 1 && kind <= detector.RowMerchant && len(msg.Key) == 9:
				key := binary.BigEndian.Uint64(msg.Key[1:])
				if kind == detector.RowTimer {
					key ^= m.salt
				}
				v := msg.Value
				if len(v) == 0 {
					v = nil
				} else if p, ok := detector.RowPartition(kind, v); ok && s < m.from && slices.Contains(parts, p) {
					continue // of an earlier time the writer decided the partition
				}
				if err := r.Apply(kind, key, v); err != nil {
					return damaged(err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	r.Finish()
	return g, nil
}

// applyShareChange drops the state of the partitions lost and adopts that
// of those gained. Pipeline only, with procMu held and no checkpoint being
// captured or written.
func (a *App) applyShareChange(ch *shareChange, next map[string]map[int]int64) error {
	sh := a.share
	src := func(p int) uint32 { return SourceID(a.cfg.Kafka.Topics[0], p) }
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for _, p := range ch.lost {
		// Which accounts are the partition's the engine knows until it
		// drops them.
		states := a.proc.Planner.HandOver(func(id string) bool {
			q, ok := a.proc.Engine.AccountPartition(id)
			return ok && q == p
		})
		st, err := a.proc.Engine.DropPartition(src(p))
		if err != nil {
			return err
		}
		delete(sh.deciding, p)
		for t := range sh.start {
			delete(sh.start[t], p)
		}
		a.log.Info("partition handed over to another member", "partition", p, "accounts", st.Accounts, "payments", st.Payments, "timers", st.Timers, "account_states", states)
	}
	// The security states each group brings: its partitions' accounts',
	// and those of accounts the writer holds no row of (a freeze must not
	// be lost for want of knowing its partition). Chosen before a cold
	// member's engine takes a group's state over and drops from it.
	states := make([][]string, len(ch.groups))
	for i, g := range ch.groups {
		for _, id := range slices.Sorted(maps.Keys(g.states)) {
			if p, ok := g.engine.AccountPartition(id); !ok || slices.Contains(g.parts, p) {
				states[i] = append(states[i], id)
			}
		}
	}
	if g := ch.entities; g != nil {
		// A cold member takes the checkpoint's whole state — the entities,
		// and every partition's accounts — and drops the partitions
		// others decide; it observes them from where that state was taken.
		if err := a.proc.Engine.Take(g.engine); err != nil {
			return err
		}
		a.clog.fresh.Store(true) // the next checkpoint publishes the whole state, as after a restore
		drop := map[int]bool{}
		for p := range ch.whole {
			drop[p] = true
		}
		sh.observeAt = map[string]map[int]int64{}
		for t, ps := range g.mark.offsets {
			for p, o := range ps {
				drop[p] = true
				setOffset(sh.observeAt, t, p, o)
				setOffset(next, t, p, o)
			}
		}
		for p := range drop {
			if !slices.Contains(g.parts, p) {
				if _, err := a.proc.Engine.DropPartition(src(p)); err != nil {
					return err
				}
			}
		}
		st := a.proc.Engine.Stats()
		a.log.Info("started cold: took the devices, IPs, payees and merchants from the changelog with the partitions gained", "partitions", g.parts,
			"devices", st.Devices, "ips", st.IPs, "payees", st.Payees, "merchants", st.Merchants, "epoch", g.mark.epoch, "seq", g.mark.seq)
	}
	owed := map[string]int{}
	for i, g := range ch.groups {
		for _, p := range g.parts {
			if g == ch.entities {
				continue // in with the whole state
			}
			st, err := a.proc.Engine.AdoptPartition(g.engine, src(p))
			if err != nil {
				return err
			}
			a.log.Info("partition taken over with its state from the changelog", "partition", p, "accounts", st.Accounts, "payments", st.Payments, "timers", st.Timers,
				"epoch", g.mark.epoch, "seq", g.mark.seq, "offsets", g.mark.offsets)
		}
		for _, id := range states[i] {
			if err := a.proc.Planner.Adopt(id, g.states[id], nil); err != nil {
				return err
			}
		}
		// What the previous owner had yet to deliver: receivers drop
		// repeats by id, and a partition's new owners may be several.
		a.writeMu.Lock()
		err := a.store.DB().Update(func(tx *bolt.Tx) error {
			for _, k := range slices.Sorted(maps.Keys(g.owed)) {
				dest, ok := outbox.KeyDest([]byte(k))
				if !ok {
					continue
				}
				if err := a.box.PutStored(tx, dest, g.owed[k]); err != nil {
					return err
				}
				owed[dest]++
			}
			return nil
		})
		a.writeMu.Unlock()
		if err != nil {
			return fmt.Errorf("outbox records restored: %w", err)
		}
	}
	for dest, n := range owed {
		a.amet.outboxRestored.WithLabelValues(dest).Add(float64(n))
	}
	if len(owed) > 0 {
		a.box.Notify(destAccountService)
		a.notifyReceivers()
	}
	for _, p := range ch.gained {
		sh.deciding[p] = 0
		// Where the partition's state was taken, or, with none, nothing
		// of it is decided yet: until its events come, a checkpoint must
		// not say it was decided as far as it was observed.
		for t := range next {
			delete(next[t], p)
		}
	}
	for t, ps := range ch.start {
		for p, o := range ps {
			setOffset(next, t, p, o)
			setOffset(sh.start, t, p, o)
		}
	}
	if err := a.leadOrNot(ch, sh.local[0]); err != nil {
		return err
	}
	sh.local = nil
	sh.cold.Store(false)
	if ch.whole > 0 {
		a.proc.Planner.SetShare(len(sh.deciding), ch.whole)
	}
	return nil
}

// leadOrNot makes this member the lead — it raises the alerts that span
// accounts (spanning.go) — when it decides partition 0, with the alerts
// and place in the findings topic of the state it took partition 0 with:
// the previous lead's from the changelog, or this store's (local). Under
// the sharing's mu.
func (a *App) leadOrNot(ch *shareChange, local bool) error {
	sp := a.spans
	defer func() { sp.stored = nil }()
	if _, leads := a.share.deciding[0]; !leads {
		a.setLead(false, nil)
		return nil
	}
	if sp.lead {
		return nil
	}
	read, adopted := map[int]int64(nil), false
	if local {
		read = sp.stored
	}
	for _, g := range ch.groups {
		if !slices.Contains(g.parts, 0) {
			continue
		}
		n, err := a.proc.Alerts.AdoptSpanning(g.alerts)
		if err != nil {
			return fmt.Errorf("alerts that span accounts: %w", err)
		}
		read, adopted = g.findings, true
		a.log.Info("alerts that span accounts taken over from the changelog with partition 0", "alerts", n, "findings_from", read, "epoch", g.mark.epoch, "seq", g.mark.seq)
	}
	if !adopted && !local {
		// No state of partition 0 anywhere: a new group. What this store
		// holds of those alerts, if anything, is of another time.
		a.setLead(false, nil)
	}
	a.setLead(true, read)
	return nil
}

// revoked is the source's Revoked: when a generation ends, the state of
// the partitions this member decided is checkpointed and published before
// it joins the next, so that a member given one of them restores it as it
// was when this one stopped deciding it, and decides none of its events
// again.
func (a *App) revoked(ctx context.Context) {
	done := make(chan struct{})
	select {
	case a.share.flush <- done:
		<-done
	case <-ctx.Done():
	}
}

// flushes is where revoked asks the pipeline for a checkpoint; nil (never
// ready) for a sole owner.
func (a *App) flushes() <-chan chan struct{} {
	if a.share == nil {
		return nil
	}
	return a.share.flush
}

// shareChanges is where ownsShared hands the pipeline what an assignment
// changes; nil (never ready) for a sole owner.
func (a *App) shareChanges() <-chan *shareChange {
	if a.share == nil {
		return nil
	}
	return a.share.changes
}

// observe folds in an event of a partition another member decides: the
// devices, IPs, payees and merchants it names. An event that member
// dead-letters is skipped.
func (a *App) observe(rec *ingest.Record) {
	if rec.Err != nil {
		return
	}
	a.proc.Engine.Observe(&rec.Event)
	a.imet.Observed.Inc()
}
