package app

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	gojson "github.com/goccy/go-json"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/ingest"
	"github.com/walletguard/walletguard/rules"
	"github.com/walletguard/walletguard/store"
)

// ReplaySummary is what a replay saw and decided.
type ReplaySummary struct {
	Lines, Events, Rejected, Duplicates int
	// RejectedBy counts the rejected lines by reason and field
	// ("wrong_type amount"); the lines are in rejected.ndjson.
	RejectedBy       map[string]int
	ByAction         map[string]int
	RuleHits         map[string]int
	Commands, Alerts int
	Elapsed          time.Duration
	// ClickHouse is set when the replay also wrote to clickhouse.addr.
	ClickHouse     string
	RulesetVersion string
}

// PlannerConfig is the enforcement part of cfg, without the secret-sealing
// key and forwarding (which only the daemon has).
func PlannerConfig(cfg config.Config) enforce.Config {
	e := cfg.Enforce
	return enforce.Config{MaxFreezes: e.Breaker.MaxFreezes, Window: e.Breaker.Window.D(), MaxWrongCodes: e.TOTP.MaxWrongCodes, Issuer: e.TOTP.Issuer,
		UnfreezeGrace: e.UnfreezeGrace.D()}
}

// NewProcessor builds the detection path from config and a rule set.
func NewProcessor(cfg config.Config, set *rules.Set, m *detector.Metrics, log *slog.Logger) *Processor {
	d := cfg.Detector
	return &Processor{
		Engine: detector.New(detector.Config{
			AllowedLateness: d.AllowedLateness.D(), IdleExpiry: d.IdleExpiry.D(), MaxRows: d.MaxAccounts, AllowList: d.AllowList,
			Thresholds: detector.Thresholds{Review: d.Thresholds.Review, StepUp: d.Thresholds.StepUp, Freeze: d.Thresholds.Freeze},
		}, set, m, log),
		Planner: enforce.NewPlanner(PlannerConfig(cfg), nil),
		Alerts:  alerts.NewManager(),
	}
}

// Replay scores newline-delimited events from r without Kafka (CONTRACT §5)
// and writes decisions, alerts and commands as NDJSON into outDir, and the
// lines that are not valid events, with why, into outDir/rejected.ndjson
// (the shape of walletguard dlq --export). name is where r comes from, as
// the rejected lines' source says it: name:line.
func Replay(cfg config.Config, set *rules.Set, r io.Reader, name, outDir string, log *slog.Logger) (ReplaySummary, error) {
	start := time.Now()
	sum := ReplaySummary{ByAction: map[string]int{}, RuleHits: map[string]int{}, RejectedBy: map[string]int{}, RulesetVersion: set.Version}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return sum, fmt.Errorf("create output dir: %w", err)
	}
	files := map[string]*bufio.Writer{}
	var closers []*os.File
	for _, out := range []string{"decisions", "alerts", "commands", "rejected"} {
		f, err := os.Create(filepath.Join(outDir, out+".ndjson"))
		if err != nil {
			return sum, fmt.Errorf("create %s output: %w", out, err)
		}
		closers = append(closers, f)
		files[out] = bufio.NewWriterSize(f, 1<<20)
	}
	defer func() {
		for _, f := range closers {
			f.Close()
		}
	}()
	p := NewProcessor(cfg, set, nil, log)
	var sink *store.Writer
	if ch := cfg.ClickHouse; ch.Addr != "" {
		// A backtest can land in ClickHouse too, for analysts; its spool
		// lives beside the outputs.
		var err error
		if sink, err = openStore(ch, filepath.Join(outDir, "spool"), log, prometheus.NewRegistry()); err != nil {
			return sum, err
		}
		sum.ClickHouse = ch.Addr + "/" + ch.Database
	}
	var out Outputs
	var buf []byte // one decision's JSON at a time
	write := func() error {
		for i := range out.Decisions {
			d := &out.Decisions[i]
			sum.ByAction[d.Action]++
			for _, h := range d.Rules {
				sum.RuleHits[h.ID]++
			}
			for _, h := range d.Shadow {
				sum.RuleHits[h.ID+" (shadow)"]++
			}
			w := files["decisions"]
			buf = d.AppendJSON(buf[:0])
			w.Write(buf)
			if err := w.WriteByte('\n'); err != nil {
				return fmt.Errorf("write decision: %w", err)
			}
		}
		for i := range out.Commands {
			sum.Commands++
			if err := writeLine(files["commands"], &out.Commands[i]); err != nil {
				return err
			}
		}
		for i := range out.Alerts {
			sum.Alerts++
			if err := writeLine(files["alerts"], &out.Alerts[i]); err != nil {
				return err
			}
		}
		out.Reset()
		return nil
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 256<<10), event.MaxSize+1024)
	in := replayInput{sc: sc, sum: &sum, log: log, engine: p.Engine, keepLines: sink != nil, now: time.Now(),
		name: name, rejected: files["rejected"], sink: sink}
	for {
		ev, line, ok := in.next()
		if !ok {
			break
		}
		nd, na := len(out.Decisions), len(out.Alerts)
		if p.Handle(ev, &out) {
			sum.Duplicates++
		} else if sink != nil {
			sink.Add(sinkBatch(ev, line, out.Decisions[nd:], out.Alerts[na:], p.Planner.TakeAudit()))
		}
		if len(out.Decisions) >= 1024 {
			if err := write(); err != nil {
				return sum, err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return sum, fmt.Errorf("read events (line %d): %w", sum.Lines+1, err)
	}
	nd, na := len(out.Decisions), len(out.Alerts)
	p.Flush(&out)
	if sink != nil {
		sink.Add(sinkBatch(nil, nil, out.Decisions[nd:], out.Alerts[na:], p.Planner.TakeAudit()))
	}
	if err := write(); err != nil {
		return sum, err
	}
	if sink != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := sink.Close(ctx); err != nil {
			return sum, fmt.Errorf("clickhouse: %w", err)
		}
		if n := sink.SpoolBytes(); n > 0 {
			return sum, fmt.Errorf("clickhouse %s did not take every row: %d bytes remain in %s (a later replay with the same --out writes them)",
				cfg.ClickHouse.Addr, n, filepath.Join(outDir, "spool"))
		}
	}
	for _, w := range files {
		if err := w.Flush(); err != nil {
			return sum, fmt.Errorf("write output: %w", err)
		}
	}
	sum.Elapsed = time.Since(start)
	return sum, nil
}

// sinkBatch is the analytics rows of one event's outputs.
func sinkBatch(ev *event.Event, raw []byte, ds []detector.Decision, als []alerts.Alert, audit []enforce.AuditEntry) store.Batch {
	now := time.Now()
	var b store.Batch
	if ev != nil {
		b.Events = []store.EventRow{store.NewEventRow(ev, raw, now)}
	}
	for i := range ds {
		b.Decisions = append(b.Decisions, store.NewDecisionRow(&ds[i], now))
	}
	for i := range als {
		b.Alerts = append(b.Alerts, store.NewAlertRow(&als[i], now))
	}
	for i := range audit {
		b.Actions = append(b.Actions, store.NewActionRow(&audit[i], now))
	}
	return b
}

func writeLine(w *bufio.Writer, v any) error {
	b, err := gojson.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	w.Write(b)
	return w.WriteByte('\n')
}

// Print writes the summary for a person.
func (s ReplaySummary) Print(w io.Writer) {
	rate := float64(s.Events) / max(s.Elapsed.Seconds(), 1e-9)
	fmt.Fprintf(w, "replayed %d events in %s (%.0f events/s), rule set %s\n", s.Events, s.Elapsed.Round(time.Millisecond), rate, s.RulesetVersion)
	fmt.Fprintf(w, "rejected %d, duplicates %d\n", s.Rejected, s.Duplicates)
	if s.Rejected > 0 {
		why := slices.SortedFunc(maps.Keys(s.RejectedBy), func(a, b string) int {
			return cmp.Or(s.RejectedBy[b]-s.RejectedBy[a], strings.Compare(a, b))
		})
		fmt.Fprintf(w, "rejected lines, by reason and field (each with its line in rejected.ndjson):\n")
		for _, k := range why {
			fmt.Fprintf(w, "  %6d  %s\n", s.RejectedBy[k], k)
		}
	}
	if s.ClickHouse != "" {
		fmt.Fprintf(w, "events, decisions, actions, alerts and rejected lines written to ClickHouse %s\n", s.ClickHouse)
	}
	fmt.Fprintf(w, "decisions:")
	for _, a := range []string{rules.ActionAllow, rules.ActionReview, rules.ActionStepUp, rules.ActionFreeze} {
		fmt.Fprintf(w, " %s=%d", a, s.ByAction[a])
	}
	fmt.Fprintf(w, "\ncommands %d, alerts %d\n", s.Commands, s.Alerts)
	type kv struct {
		k string
		v int
	}
	var top []kv
	for k, v := range s.RuleHits {
		top = append(top, kv{k, v})
	}
	sort.Slice(top, func(i, j int) bool { return top[i].v > top[j].v || top[i].v == top[j].v && top[i].k < top[j].k })
	fmt.Fprintln(w, "top rules:")
	for i, t := range top {
		if i == 15 {
			break
		}
		fmt.Fprintf(w, "  %6d  %s\n", t.v, t.k)
	}
}

// replayInput decodes a replay's lines two events ahead of the one being
// decided and announces them to the engine (detector.Engine.Prefetch), as
// the daemon's pipeline does. Lines are read, counted and rejected in file
// order, so the summary and the log are those of reading one at a time.
type replayInput struct {
	sc        *bufio.Scanner
	sum       *ReplaySummary
	log       *slog.Logger
	engine    *detector.Engine
	keepLines bool // the raw lines go to ClickHouse: copied, the scanner reuses its buffer
	// A backtest file may lie in the future of the wall clock (generated
	// traffic): "too far in the future" is judged against the file's own
	// clock, the newest event time accepted so far, when that is later.
	now time.Time
	// Where rejected lines go: name is the input's, for their source.
	name     string
	rejected *bufio.Writer
	sink     *store.Writer
	buf      []byte
	ring     [3]struct {
		ev   event.Event
		line []byte
	}
	head, n int
	done    bool
}

// next returns the next valid event and its line; ok is false at the end.
func (r *replayInput) next() (ev *event.Event, line []byte, ok bool) {
	for r.n < len(r.ring) && r.read() {
	}
	if r.n == 0 {
		return nil, nil, false
	}
	it := &r.ring[r.head]
	r.head = (r.head + 1) % len(r.ring)
	r.n--
	return &it.ev, it.line, true
}

// read decodes the next valid line into the ring and announces it; false
// at the end of the input. The slot it fills is never the one next
// returned last: the ring holds that event and two ahead of it.
func (r *replayInput) read() bool {
	for !r.done {
		if !r.sc.Scan() {
			r.done = true
			break
		}
		line := r.sc.Bytes()
		r.sum.Lines++
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		ev, err := event.Decode(line, r.now)
		if err != nil {
			r.reject(line, err)
			continue
		}
		r.sum.Events++
		if ev.TS.After(r.now) {
			r.now = ev.TS
		}
		it := &r.ring[(r.head+r.n)%len(r.ring)]
		it.ev = ev
		if r.keepLines {
			it.line = append(it.line[:0], line...)
		}
		r.n++
		r.engine.Prefetch(&it.ev)
		return true
	}
	return false
}

// reject counts a line that is not a valid event and keeps it, with why:
// in rejected.ndjson, and in ClickHouse's rejected table when the replay
// writes there, as the daemon's dead letters are.
func (r *replayInput) reject(line []byte, err error) {
	reason := event.ReasonOf(err)
	var field, detail string
	if re, ok := errors.AsType[*event.RejectError](err); ok {
		field, detail = re.Field, re.Detail
	} else {
		detail = err.Error()
	}
	r.sum.Rejected++
	r.sum.RejectedBy[strings.TrimSpace(string(reason)+" "+field)]++
	r.log.Warn("replay: event rejected", "line", r.sum.Lines, "reason", reason, "field", field, "detail", detail)
	now := time.Now()
	rej := ingest.Rejected{Source: r.name + ":" + strconv.Itoa(r.sum.Lines), SourceTopic: r.name, RejectedAt: now,
		Reason: string(reason), Field: field, Detail: detail, Value: line, ValueSize: len(line)}
	// A write error shows when the file is flushed at the end.
	if r.buf, err = rej.AppendJSON(r.buf[:0]); err == nil {
		r.rejected.Write(r.buf)
	}
	if r.sink != nil {
		rec := ingest.Record{Topic: r.name, Offset: int64(r.sum.Lines), Value: line, Arrived: now}
		row := store.NewRejectedRow(&rec, string(reason), field, detail, now)
		row.Source = rej.Source
		r.sink.Add(store.Batch{Rejected: []store.RejectedRow{row}})
	}
}
