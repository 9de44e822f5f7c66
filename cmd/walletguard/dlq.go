package main

import (
	"bufio"
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/ingest"
)

// cmdDLQ is `walletguard dlq`: what the dead-letter topic holds, grouped by
// what was wrong, so an SRE can tell which producer to call about what; and
// an export of the rejected records, to fix and produce again.
func cmdDLQ(args []string) int {
	fs := flag.NewFlagSet("dlq", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file (default: built-in defaults)")
	since := fs.String("since", "", "only dead letters rejected since then: a duration back from now (2h) or an RFC 3339 time")
	reasons := fs.String("reason", "", "only these reasons, comma-separated (missing_field,wrong_type,…)")
	field := fs.String("field", "", "only dead letters about this field (ts, amount, geo.country, …)")
	samples := fs.Int("samples", 2, "rejected records shown for each kind of fault")
	export := fs.String("export", "", "write the selected dead letters to this file (- for stdout) as NDJSON: reason, field, detail, source, key and the original value")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, ok := brokersConfig(*cfgPath)
	if !ok {
		return 2
	}
	sel := deadLetterFilter{field: *field}
	if *since != "" {
		var err error
		if sel.since, err = parseSince(*since, time.Now()); err != nil {
			fmt.Fprintf(os.Stderr, "walletguard: --since: %v\n", err)
			return 2
		}
	}
	for r := range strings.SplitSeq(*reasons, ",") {
		if r = strings.TrimSpace(r); r != "" {
			if sel.reasons == nil {
				sel.reasons = map[string]bool{}
			}
			sel.reasons[r] = true
		}
	}
	// With no brokers configured, the dead letters are on the embedded
	// broker of the daemon running with this config.
	brokers := cfg.Kafka.Brokers
	if len(brokers) == 0 {
		brokers = []string{cfg.Kafka.EmbeddedListen}
	}
	summaryTo := io.Writer(os.Stdout)
	var exp *deadLetterExport
	var file *os.File
	var err error
	switch *export {
	case "":
	case "-":
		summaryTo = os.Stderr // stdout carries the records
		exp = &deadLetterExport{w: bufio.NewWriter(os.Stdout)}
	default:
		if file, err = os.Create(*export); err != nil {
			fmt.Fprintf(os.Stderr, "walletguard: %v\n", err)
			return 1
		}
		defer file.Close()
		exp = &deadLetterExport{w: bufio.NewWriter(file)}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	sum := newDeadLetterSummary(*samples)
	held, err := ingest.ReadDeadLetters(ctx, brokers, cfg.Kafka.DLQTopic, sel.since, slog.New(slog.DiscardHandler), func(batch []ingest.Rejected) error {
		for i := range batch {
			r := &batch[i]
			if !sel.match(r) {
				continue
			}
			sum.add(r)
			if exp != nil {
				if err := exp.write(r); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err == nil && exp != nil {
		err = exp.w.Flush()
	}
	if err == nil && file != nil {
		err = file.Close()
	}
	if err != nil {
		hint := ""
		if len(cfg.Kafka.Brokers) == 0 {
			hint = " (kafka.brokers is empty: the dead letters are on the embedded broker of a running walletguard with this config)"
		}
		fmt.Fprintf(os.Stderr, "walletguard: dead letters on %s: %v%s\n", strings.Join(brokers, ","), err, hint)
		return 1
	}
	sum.held = held
	sum.print(summaryTo, cfg.Kafka.DLQTopic)
	return 0
}

// parseSince reads --since: a duration back from now, or a time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a duration (2h) nor an RFC 3339 time", s)
	}
	return t, nil
}

type deadLetterFilter struct {
	since   time.Time
	reasons map[string]bool
	field   string
}

func (f *deadLetterFilter) match(r *ingest.Rejected) bool {
	return (f.since.IsZero() || !r.RejectedAt.Before(f.since)) &&
		(f.reasons == nil || f.reasons[r.Reason]) &&
		(f.field == "" || r.Field == f.field)
}

// hintFields name event.Hints as the summary shows them.
var hintFields = []string{"type", "app_version", "channel"}

// deadLetterGroup is the dead letters of one reason and field: most often
// one fault of one producer.
type deadLetterGroup struct {
	reason, field string
	count         int
	first, last   time.Time
	detail        string // the latest one's
	topics        map[string]int
	hints         map[string]map[string]int // hint field → value → count
	samples       []ingest.Rejected         // the latest ones
}

type deadLetterSummary struct {
	held, matched int64
	samples       int
	groups        map[[2]string]*deadLetterGroup
}

func newDeadLetterSummary(samples int) *deadLetterSummary {
	return &deadLetterSummary{samples: samples, groups: map[[2]string]*deadLetterGroup{}}
}

func (s *deadLetterSummary) add(r *ingest.Rejected) {
	s.matched++
	k := [2]string{r.Reason, r.Field}
	g := s.groups[k]
	if g == nil {
		g = &deadLetterGroup{reason: r.Reason, field: r.Field, topics: map[string]int{}, hints: map[string]map[string]int{}}
		s.groups[k] = g
	}
	g.count++
	g.topics[r.SourceTopic]++
	if t := r.RejectedAt; !t.IsZero() {
		if g.first.IsZero() || t.Before(g.first) {
			g.first = t
		}
		if !t.Before(g.last) {
			g.last, g.detail = t, r.Detail
		}
	} else if g.detail == "" {
		g.detail = r.Detail
	}
	h := event.HintsOf(r.Value)
	for i, v := range []string{h.Type, h.AppVersion, h.Channel} {
		if v != "" {
			f := hintFields[i]
			if g.hints[f] == nil {
				g.hints[f] = map[string]int{}
			}
			g.hints[f][v]++
		}
	}
	if s.samples > 0 {
		if len(g.samples) == s.samples {
			g.samples = append(g.samples[:0], g.samples[1:]...)
		}
		g.samples = append(g.samples, *r)
	}
}

// sorted returns the groups, largest first.
func (s *deadLetterSummary) sorted() []*deadLetterGroup {
	gs := slices.Collect(maps.Values(s.groups))
	slices.SortFunc(gs, func(a, b *deadLetterGroup) int {
		return cmp.Or(b.count-a.count, strings.Compare(a.reason, b.reason), strings.Compare(a.field, b.field))
	})
	return gs
}

// from says where a group's records came from: their topics and the hint
// fields' values shared by at least half of them.
func (g *deadLetterGroup) from() string {
	parts := []string{strings.Join(slices.Sorted(maps.Keys(g.topics)), ", ")}
	for _, f := range hintFields {
		vals := g.hints[f]
		if len(vals) == 0 {
			continue
		}
		top := slices.MaxFunc(slices.Collect(maps.Keys(vals)), func(a, b string) int {
			return cmp.Or(vals[a]-vals[b], strings.Compare(b, a))
		})
		if n := vals[top]; 2*n >= g.count {
			parts = append(parts, fmt.Sprintf("%s %s (%d)", f, top, n))
		}
	}
	return strings.Join(parts, "; ")
}

func (s *deadLetterSummary) print(w io.Writer, topic string) {
	if s.matched == 0 {
		fmt.Fprintf(w, "%s: no dead letters selected of %d held\n", topic, s.held)
		return
	}
	fmt.Fprintf(w, "%s: %d dead letters selected of %d held\n\n", topic, s.matched, s.held)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  count\treason\tfield\tfirst rejected\tlast rejected")
	groups := s.sorted()
	for _, g := range groups {
		fmt.Fprintf(tw, "%7d\t%s\t%s\t%s\t%s\n", g.count, g.reason, cmp.Or(g.field, "-"), stamp(g.first), stamp(g.last))
	}
	tw.Flush()
	for _, g := range groups {
		fmt.Fprintf(w, "\n%s %s: %s\n", g.reason, cmp.Or(g.field, "(the whole value)"), clipText(g.detail, 200))
		fmt.Fprintf(w, "  from %s\n", g.from())
		for _, r := range g.samples {
			cut := ""
			if r.Truncated() {
				cut = fmt.Sprintf(" (first %d of %d bytes)", len(r.Value), r.ValueSize)
			}
			fmt.Fprintf(w, "  %s key %s%s: %s\n", r.Source, clipText(string(r.Key), 60), cut, clipText(string(r.Value), 200))
		}
	}
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}

// clipText makes s fit on one line of a terminal: its runs of white space
// made one space, quoted if it holds other control characters or invalid
// UTF-8 (a rejected record may), and cut to at most n bytes.
func clipText(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		s = strconv.Quote(s)
	}
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// deadLetterExport writes dead letters as NDJSON, one object a line.
type deadLetterExport struct {
	w   *bufio.Writer
	buf []byte
}

func (e *deadLetterExport) write(r *ingest.Rejected) error {
	var err error
	if e.buf, err = r.AppendJSON(e.buf[:0]); err != nil {
		return err
	}
	_, err = e.w.Write(e.buf)
	return err
}
