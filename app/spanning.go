package app

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"

	gojson "github.com/goccy/go-json"
	"github.com/segmentio/kafka-go"
	bolt "go.etcd.io/bbolt"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/ingest"
)

// Alerts that span accounts, when instances share the partitions. A
// merchant outage, a faulty app version, an address stuffing credentials
// or a mule payee touches accounts that several members decide; raised by
// each, support would get one such alert per member. So each member's
// alerts manager is split (alerts.Manager.SetSplit): it raises the alerts
// of its own accounts, and writes each decision with a finding that spans
// accounts to kafka.findings_topic as well. The member that decides
// partition 0 — the lead — reads that topic and raises those alerts, once,
// from every member's findings, its own included.
//
// The lead's place in the findings topic is part of its checkpoints (in
// the store, and in the changelog as the record "findings"), with the
// alerts it raised: a lead restarted on its volume reads on from there,
// and the member that takes partition 0 over adopts both from the
// previous lead's marker, and reads the findings since — those the
// previous lead had not checkpointed are folded again, into the state they
// had not reached. A decision made again after a takeover (same id) is
// folded once, if its copies are close enough to be remembered.

// clogFindings is the changelog key of the lead's place in the findings topic.
const clogFindings = "findings"

// findingsKey is the key of every record of the findings topic. One key
// puts them in one partition, whatever the topic's count: one order, which
// every lead folds them in. Alerts depend on that order — which finding of
// a merchant's opens its outage alert (and names it), which stuck payments
// an outage takes in — and a lead taking over folds again what the
// previous lead folded after its last checkpoint: read in another
// interleaving of several partitions, it would raise one incident under a
// second alert id. Findings are few (decisions whose findings span
// accounts), so one partition carries them.
var findingsKey = []byte("findings")

// keyFindings is the store key of the lead's place in the findings topic.
var keyFindings = []byte("findings")

// recentFindings is how many decision ids the lead remembers to fold a
// decision made twice only once.
const recentFindings = 1 << 16

// spanning is a member's side of the alerts that span accounts.
type spanning struct {
	mu  sync.Mutex
	gen uint64    // under mu: what a tail of an earlier lead reads is dropped
	in  []finding // under mu: read, for the pipeline to fold
	// waiting is set when in has findings; wake tells the pipeline, idle.
	waiting atomic.Bool
	wake    chan struct{}

	// The pipeline's, with procMu held.
	lead   bool
	read   map[int]int64 // next offset per partition of the findings topic, folded
	stop   context.CancelFunc
	stored map[int]int64 // the place this store's state was taken at, until the first assignment
	seen   map[string]struct{}
	ring   []string // seen's ids, oldest first once full
	next   int
}

type finding struct {
	partition int
	offset    int64
	value     []byte
	// recalled: a decision folded before the place a lead starts from,
	// whose id (in value) it remembers, not folds.
	recalled bool
}

// loadFindings reads the lead's place in the findings topic this store's
// state was taken at, if it led.
func loadFindings(tx *bolt.Tx) (map[int]int64, error) {
	b := tx.Bucket(bChangelog)
	if b == nil {
		return nil, nil
	}
	v := b.Get(keyFindings)
	if v == nil {
		return nil, nil
	}
	var read map[int]int64
	if err := json.Unmarshal(v, &read); err != nil {
		return nil, fmt.Errorf("place in the findings topic: %w", err)
	}
	return read, nil
}

// spansAccounts reports whether d has a finding whose alert the lead
// raises.
func spansAccounts(d *detector.Decision) bool {
	for i := range d.Rules {
		if h := &d.Rules[i]; alerts.Wanted(d, h) && alerts.Spanning(d, h) {
			return true
		}
	}
	return false
}

// setLead makes this member raise the alerts that span accounts (on) or
// stop (off). A lead reads the findings from read (nil: the topic's
// first); one that stops forgets those alerts: the next lead has them.
// Pipeline only, with procMu held.
func (a *App) setLead(on bool, read map[int]int64) {
	sp := a.spans
	if sp.lead {
		sp.stop()
		sp.mu.Lock()
		sp.gen++
		sp.in = nil
		sp.mu.Unlock()
		sp.lead, sp.read, sp.stop = false, nil, nil
		a.amet.spanningLead.Set(0)
	}
	if !on {
		keys := a.proc.Alerts.DropSpanning()
		if len(keys) == 0 {
			return
		}
		a.writeMu.Lock()
		err := a.store.DB().Update(func(tx *bolt.Tx) error { return alerts.DeleteRecords(tx, keys) })
		a.writeMu.Unlock()
		if err != nil {
			// Held in the store, they come back only if this store's state
			// leads again, with its place in the findings topic.
			a.log.Warn("alerts that span accounts not deleted from the store", "alerts", len(keys), "err", err)
		}
		a.log.Info("alerts that span accounts left to the member that decides partition 0", "alerts", len(keys))
		return
	}
	sp.lead, sp.read = true, maps.Clone(read)
	if sp.read == nil {
		sp.read = map[int]int64{}
	}
	start := maps.Clone(sp.read)
	sp.mu.Lock()
	sp.gen++
	gen := sp.gen
	sp.mu.Unlock()
	ctx, stop := context.WithCancel(context.Background())
	sp.stop = stop
	a.amet.spanningLead.Set(1)
	a.log.Info("raising the alerts that span accounts, from every member's findings", "topic", a.cfg.Kafka.FindingsTopic, "from", start)
	hand := func(f finding) {
		sp.mu.Lock()
		if sp.gen == gen {
			sp.in = append(sp.in, f)
			sp.waiting.Store(true)
			select {
			case sp.wake <- struct{}{}:
			default:
			}
		}
		sp.mu.Unlock()
	}
	go func() {
		a.recallFindings(ctx, start, hand)
		ingest.TailFrom(ctx, a.brokers, a.cfg.Kafka.FindingsTopic, func(p int) int64 {
			if o, ok := start[p]; ok {
				return o
			}
			return kafka.FirstOffset
		}, a.log, func(p int, m kafka.Message) { hand(finding{partition: p, offset: m.Offset, value: m.Value}) })
	}()
}

// recallFindings hands on the ids of the decisions up to recentFindings
// before the place a lead starts from: those the lead before it (or this
// store's, before a restart) remembered having folded. A decision made
// again after a takeover whose first copy came before that place, and
// whose second after, is then folded once, as by one lead throughout.
func (a *App) recallFindings(ctx context.Context, start map[int]int64, hand func(finding)) {
	n := 0
	for p, o := range start {
		err := ingest.ReadBack(ctx, a.brokers, a.cfg.Kafka.FindingsTopic, p, o, recentFindings, a.log, func(m kafka.Message) error {
			var d struct {
				DecisionID string `json:"decision_id"`
			}
			if err := gojson.Unmarshal(m.Value, &d); err == nil {
				hand(finding{partition: p, offset: m.Offset, value: []byte(d.DecisionID), recalled: true})
				n++
			}
			return nil
		})
		if err != nil && ctx.Err() == nil {
			// Folding goes on: a decision made twice across the place may
			// count twice in its alert.
			a.log.Warn("findings before the lead's place not read back", "topic", a.cfg.Kafka.FindingsTopic, "partition", p, "err", err)
		}
	}
	if n > 0 {
		a.log.Info("remembering the decisions folded before the lead's place", "decisions", n)
	}
}

// remember adds a decision id to those the lead folded, forgetting the
// oldest once it holds recentFindings.
func (sp *spanning) remember(id string) {
	if len(sp.ring) < recentFindings {
		sp.ring = append(sp.ring, id)
	} else {
		delete(sp.seen, sp.ring[sp.next])
		sp.ring[sp.next] = id
		sp.next = (sp.next + 1) % recentFindings
	}
	sp.seen[id] = struct{}{}
}

// foldFindings raises the alerts of the findings read so far. Pipeline
// only, with procMu held.
func (a *App) foldFindings() {
	sp := a.spans
	if sp == nil || !sp.waiting.Swap(false) {
		return
	}
	sp.mu.Lock()
	in := sp.in
	sp.in = nil
	sp.mu.Unlock()
	var out []alerts.Alert
	for _, f := range in {
		if f.recalled {
			if _, dup := sp.seen[string(f.value)]; !dup {
				sp.remember(string(f.value))
			}
			continue
		}
		sp.read[f.partition] = f.offset + 1
		var d detector.Decision
		if err := gojson.Unmarshal(f.value, &d); err != nil {
			a.log.Warn("finding not understood; skipped", "topic", a.cfg.Kafka.FindingsTopic, "partition", f.partition, "offset", f.offset, "err", err)
			continue
		}
		if _, dup := sp.seen[d.DecisionID]; dup {
			a.amet.findings.WithLabelValues("repeat").Inc()
			continue
		}
		sp.remember(d.DecisionID)
		a.amet.findings.WithLabelValues("folded").Inc()
		out = a.proc.Alerts.ObserveSpanning(&d, out)
	}
	if len(out) > 0 {
		a.queueAlerts(out)
		a.toSink(nil, nil, nil, out, nil)
	}
}

// prepareFindings captures the lead's place in the findings topic for the
// checkpoint: into the store and the changelog. Called with procMu held.
func (a *App) prepareFindings() func(*bolt.Tx) error {
	sp := a.spans
	if sp == nil || !sp.lead {
		return nil
	}
	v, err := json.Marshal(sp.read)
	return func(tx *bolt.Tx) error {
		if err != nil {
			return fmt.Errorf("place in the findings topic: %w", err)
		}
		b, err := tx.CreateBucketIfNotExists(bChangelog)
		if err != nil {
			return err
		}
		if err := b.Put(keyFindings, v); err != nil {
			return err
		}
		if a.clog != nil {
			a.clog.saved = append(a.clog.saved, ingest.Message{Topic: a.clog.topic, Key: []byte(clogFindings), Value: v})
		}
		return nil
	}
}

// findingsWake is where the tail tells an idle pipeline of findings; nil
// (never ready) when instances do not share the partitions.
func (a *App) findingsWake() <-chan struct{} {
	if a.spans == nil {
		return nil
	}
	return a.spans.wake
}
