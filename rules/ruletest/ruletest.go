// Package ruletest runs rule test cases: a directory of events in and the
// decisions (and alerts) expected out, like unit tests for rules. It is what
// `walletguard rules test DIR` and the repository's own tests run.
//
// A case is a directory holding events.ndjson (contract events, one per
// line) and case.yaml:
//
//	description: a takeover that drains the balance is frozen
//	rules: []                 # rule files relative to the case; empty = built-in packs
//	allow_list: []            # accounts never frozen automatically
//	others: allow             # every event not listed below must be allowed
//	expect:
//	  - event_id: e7
//	    action: freeze        # exact action
//	    rules: [balance_drain_after_takeover]  # these must fire
//	    not_rules: [mule_payee]                # these must not
//	    min_score: 85
//	    max_action: step_up                    # at most this action (an honest case: never a freeze)
//	  - timer: payment_not_recovered           # a timer decision must appear
//	    event_id: e2                           # the event that started it
//	alerts:
//	  - category: stuck_retry
//	    cause: network
//	    count: 1                               # exactly this many alerts of the category
package ruletest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/rules"
)

// Case is a parsed case.yaml.
type Case struct {
	Description string        `yaml:"description"`
	Rules       []string      `yaml:"rules"`
	AllowList   []string      `yaml:"allow_list"`
	Others      string        `yaml:"others"`
	Expect      []Expectation `yaml:"expect"`
	Alerts      []AlertExpect `yaml:"alerts"`
}

// Expectation is one expected decision.
type Expectation struct {
	EventID string `yaml:"event_id"`
	Timer   string `yaml:"timer"`
	Action  string `yaml:"action"`
	// MaxAction is the strongest action allowed.
	MaxAction string   `yaml:"max_action"`
	Rules     []string `yaml:"rules"`
	NotRules  []string `yaml:"not_rules"`
	MinScore  int      `yaml:"min_score"`
	MaxScore  *int     `yaml:"max_score"`
}

// AlertExpect is an expectation on the alerts raised.
type AlertExpect struct {
	Category string `yaml:"category"`
	Cause    string `yaml:"cause"`
	Count    *int   `yaml:"count"`
	MinUsers int    `yaml:"min_affected_accounts"`
}

// Result is the outcome of one case.
type Result struct {
	Name   string
	Events int
	Err    error
}

// Thresholds used by rule tests: the product defaults.
var Thresholds = detector.Thresholds{Review: 40, StepUp: 60, Freeze: 85}

// RunDir runs every case below dir (a directory with case.yaml is a case).
func RunDir(dir string) ([]Result, error) {
	var cases []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && d.Name() == "case.yaml" {
			cases = append(cases, filepath.Dir(p))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("find rule tests in %s: %w", dir, err)
	}
	if len(cases) == 0 {
		return nil, fmt.Errorf("no rule test cases (case.yaml) under %s", dir)
	}
	sort.Strings(cases)
	var out []Result
	for _, c := range cases {
		n, err := RunCase(c)
		out = append(out, Result{Name: c, Events: n, Err: err})
	}
	return out, nil
}

// RunCase runs one case directory; it returns the number of events.
func RunCase(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "case.yaml"))
	if err != nil {
		return 0, err
	}
	var c Case
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return 0, fmt.Errorf("%s/case.yaml: %w", dir, err)
	}
	var paths []string
	for _, r := range c.Rules {
		paths = append(paths, filepath.Join(dir, r))
	}
	set, err := rules.Load(paths)
	if err != nil {
		return 0, err
	}
	evs, err := readEvents(filepath.Join(dir, "events.ndjson"))
	if err != nil {
		return 0, err
	}
	eng := detector.New(detector.Config{AllowedLateness: time.Minute, IdleExpiry: 30 * 24 * time.Hour, Thresholds: Thresholds,
		AllowList: c.AllowList}, set, nil, slog.New(slog.DiscardHandler))
	mgr := alerts.NewManager()
	var ds []detector.Decision
	var als []alerts.Alert
	for i := range evs {
		n := len(ds)
		ds, _ = eng.Process(&evs[i], ds)
		for j := n; j < len(ds); j++ {
			als = mgr.Observe(&ds[j], als)
		}
	}
	n := len(ds)
	ds = eng.Flush(ds)
	for j := n; j < len(ds); j++ {
		als = mgr.Observe(&ds[j], als)
	}
	return len(evs), check(&c, ds, mgr.Open())
}

func readEvents(path string) ([]event.Event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []event.Event
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 128<<10), event.MaxSize+1024)
	line := 0
	for sc.Scan() {
		line++
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		// Test fixtures may be dated anywhere: only the future check uses now.
		ev, err := event.Decode(sc.Bytes(), time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC))
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		out = append(out, ev)
	}
	return out, sc.Err()
}

func check(c *Case, ds []detector.Decision, open []alerts.Alert) error {
	var errs []error
	listed := map[string]bool{}
	for _, x := range c.Expect {
		if x.Timer == "" {
			listed[x.EventID] = true
		}
		d := find(ds, x)
		if d == nil {
			if x.Timer != "" {
				errs = append(errs, fmt.Errorf("timer %s started by %s did not fire", x.Timer, x.EventID))
			} else {
				errs = append(errs, fmt.Errorf("no decision for event %s", x.EventID))
			}
			continue
		}
		what := "event " + x.EventID
		if x.Timer != "" {
			what = "timer " + x.Timer
		}
		fired := ruleIDs(d)
		if x.Action != "" && d.Action != x.Action {
			errs = append(errs, fmt.Errorf("%s: action %s (score %d, rules %v), want %s", what, d.Action, d.Score, fired, x.Action))
		}
		if x.MaxAction != "" && rules.ActionRank(d.Action) > rules.ActionRank(x.MaxAction) {
			errs = append(errs, fmt.Errorf("%s: action %s (score %d, rules %v), want at most %s", what, d.Action, d.Score, fired, x.MaxAction))
		}
		for _, r := range x.Rules {
			if !slices.Contains(fired, r) {
				errs = append(errs, fmt.Errorf("%s: rule %s did not fire (fired: %v)", what, r, fired))
			}
		}
		for _, r := range x.NotRules {
			if slices.Contains(fired, r) {
				errs = append(errs, fmt.Errorf("%s: rule %s fired but must not: %s", what, r, reasonOf(d, r)))
			}
		}
		if d.Score < x.MinScore {
			errs = append(errs, fmt.Errorf("%s: score %d below %d", what, d.Score, x.MinScore))
		}
		if x.MaxScore != nil && d.Score > *x.MaxScore {
			errs = append(errs, fmt.Errorf("%s: score %d above %d (rules %v)", what, d.Score, *x.MaxScore, fired))
		}
	}
	if c.Others != "" {
		for i := range ds {
			d := &ds[i]
			if d.Trigger == "event" && !listed[d.EventID] && d.Action != c.Others {
				errs = append(errs, fmt.Errorf("event %s: action %s (rules %v), want %s like every unlisted event", d.EventID, d.Action, ruleIDs(d), c.Others))
			}
		}
	}
	for _, x := range c.Alerts {
		var match []alerts.Alert
		for _, a := range open {
			if a.Category == x.Category && (x.Cause == "" || a.Cause == x.Cause) {
				match = append(match, a)
			}
		}
		if x.Count != nil && len(match) != *x.Count {
			errs = append(errs, fmt.Errorf("%d %s alerts (cause %q), want %d: %s", len(match), x.Category, x.Cause, *x.Count, titles(open)))
		} else if x.Count == nil && len(match) == 0 {
			errs = append(errs, fmt.Errorf("no %s alert (cause %q): %s", x.Category, x.Cause, titles(open)))
		}
		for _, a := range match {
			if a.AffectedAccounts < x.MinUsers {
				errs = append(errs, fmt.Errorf("%s alert %s affects %d accounts, want at least %d", x.Category, a.DedupKey, a.AffectedAccounts, x.MinUsers))
			}
		}
	}
	return errors.Join(errs...)
}

func find(ds []detector.Decision, x Expectation) *detector.Decision {
	for i := range ds {
		d := &ds[i]
		if d.EventID != x.EventID {
			continue
		}
		if x.Timer == "" && d.Trigger == "event" {
			return d
		}
		if x.Timer != "" && d.Trigger == "timer" && slices.Contains(ruleIDs(d), x.Timer) {
			return d
		}
	}
	return nil
}

func ruleIDs(d *detector.Decision) []string {
	var ids []string
	for _, h := range d.Rules {
		ids = append(ids, h.ID)
	}
	for _, h := range d.Shadow {
		ids = append(ids, h.ID)
	}
	return ids
}

func reasonOf(d *detector.Decision, id string) string {
	for _, h := range append(append([]detector.Hit(nil), d.Rules...), d.Shadow...) {
		if h.ID == id {
			return h.Reason
		}
	}
	return ""
}

func titles(as []alerts.Alert) string {
	var t []string
	for _, a := range as {
		t = append(t, a.Title)
	}
	if len(t) == 0 {
		return "no alerts at all"
	}
	return "alerts: " + strings.Join(t, "; ")
}
