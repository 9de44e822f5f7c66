package app

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Comparison is how a backtest's decisions differ from a baseline's on the
// same events: what a risk analyst reads before rolling out a rule change.
type Comparison struct {
	BaselineVersion, CandidateVersion string
	Decisions                         int            // in the candidate
	Changed                           int            // same decision, other action or rules
	Added, Removed                    int            // decisions only one run made (timers)
	Transitions                       map[string]int // "allow → step_up": decisions whose action changed so
	// Frozen and SteppedUp are the accounts with at least one such decision,
	// in the baseline and in the candidate.
	Frozen, SteppedUp [2]map[string]accountCause
	RuleHits          map[string][2]int // rule id: hits in the baseline, in the candidate
}

// accountCause is the first decision that took an account to an action.
type accountCause struct {
	DecisionID string
	Rules      []string
}

// decisionLine is the part of a decision record (detector.Decision) a
// comparison reads: the baseline's decisions are all held in memory, and
// their reasons and shadow hits would be most of it.
type decisionLine struct {
	DecisionID     string    `json:"decision_id"`
	EventID        string    `json:"event_id"`
	AccountID      string    `json:"account_id"`
	TS             time.Time `json:"ts"`
	Score          int       `json:"score"`
	Action         string    `json:"action"`
	Trigger        string    `json:"trigger"`
	RulesetVersion string    `json:"ruleset_version"`
	Rules          []struct {
		ID string `json:"id"`
	} `json:"rules"`
}

func (d *decisionLine) ruleIDs() []string {
	ids := make([]string, len(d.Rules))
	for i, r := range d.Rules {
		ids[i] = r.ID
	}
	return ids
}

// decisionSide is one run's view of a decision in changes.ndjson.
type decisionSide struct {
	Action string   `json:"action"`
	Score  int      `json:"score"`
	Rules  []string `json:"rules"`
}

// decisionChange is one line of changes.ndjson.
type decisionChange struct {
	DecisionID string        `json:"decision_id"`
	EventID    string        `json:"event_id"`
	AccountID  string        `json:"account_id"`
	TS         time.Time     `json:"ts"`
	Trigger    string        `json:"trigger"`
	Baseline   *decisionSide `json:"baseline"`  // nil: only the candidate decided
	Candidate  *decisionSide `json:"candidate"` // nil: only the baseline decided
}

// CompareDecisions reads decisions.ndjson of two replays of the same events
// — a baseline and a candidate rule set — and writes
// candidateDir/changes.ndjson, one line per decision whose action or fired
// rules differ, in the candidate's order.
func CompareDecisions(baselineDir, candidateDir string) (Comparison, error) {
	c := Comparison{Transitions: map[string]int{}, RuleHits: map[string][2]int{},
		Frozen: [2]map[string]accountCause{{}, {}}, SteppedUp: [2]map[string]accountCause{{}, {}}}
	base := map[string]*decisionLine{}
	err := readDecisions(filepath.Join(baselineDir, "decisions.ndjson"), func(d *decisionLine) {
		base[d.DecisionID] = d
		c.BaselineVersion = d.RulesetVersion
		c.note(0, d)
	})
	if err != nil {
		return c, err
	}
	out, err := os.Create(filepath.Join(candidateDir, "changes.ndjson"))
	if err != nil {
		return c, err
	}
	defer out.Close()
	w := bufio.NewWriter(out)
	enc := json.NewEncoder(w)
	seen := map[string]bool{}
	err = readDecisions(filepath.Join(candidateDir, "decisions.ndjson"), func(d *decisionLine) {
		c.Decisions++
		c.CandidateVersion = d.RulesetVersion
		c.note(1, d)
		seen[d.DecisionID] = true
		b := base[d.DecisionID]
		after := &decisionSide{Action: d.Action, Score: d.Score, Rules: d.ruleIDs()}
		ch := decisionChange{DecisionID: d.DecisionID, EventID: d.EventID, AccountID: d.AccountID, TS: d.TS, Trigger: d.Trigger, Candidate: after}
		switch {
		case b == nil:
			c.Added++
		case b.Action != d.Action || !slices.Equal(b.ruleIDs(), after.Rules):
			c.Changed++
			if b.Action != d.Action {
				c.Transitions[b.Action+" → "+d.Action]++
			}
			ch.Baseline = &decisionSide{Action: b.Action, Score: b.Score, Rules: b.ruleIDs()}
		default:
			return
		}
		enc.Encode(&ch)
	})
	if err != nil {
		return c, err
	}
	for _, id := range slices.Sorted(maps.Keys(base)) {
		if b := base[id]; !seen[id] {
			c.Removed++
			enc.Encode(&decisionChange{DecisionID: b.DecisionID, EventID: b.EventID, AccountID: b.AccountID, TS: b.TS, Trigger: b.Trigger,
				Baseline: &decisionSide{Action: b.Action, Score: b.Score, Rules: b.ruleIDs()}})
		}
	}
	if err := w.Flush(); err != nil {
		return c, err
	}
	return c, out.Close()
}

func (c *Comparison) note(side int, d *decisionLine) {
	for _, r := range d.Rules {
		h := c.RuleHits[r.ID]
		h[side]++
		c.RuleHits[r.ID] = h
	}
	var m map[string]accountCause
	switch d.Action {
	case "freeze":
		m = c.Frozen[side]
	case "step_up":
		m = c.SteppedUp[side]
	default:
		return
	}
	if _, ok := m[d.AccountID]; !ok {
		m[d.AccountID] = accountCause{DecisionID: d.DecisionID, Rules: d.ruleIDs()}
	}
}

func readDecisions(path string, fn func(*decisionLine)) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read decisions: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for n := 1; sc.Scan(); n++ {
		d := new(decisionLine)
		if err := json.Unmarshal(sc.Bytes(), d); err != nil {
			return fmt.Errorf("%s line %d: %w", path, n, err)
		}
		fn(d)
	}
	return sc.Err()
}

// Gained and Lost list the accounts that only the candidate, or only the
// baseline, took to an action.
func Gained(m [2]map[string]accountCause) []string { return onlyIn(m[1], m[0]) }

// Lost is the other side of Gained.
func Lost(m [2]map[string]accountCause) []string { return onlyIn(m[0], m[1]) }

func onlyIn(a, b map[string]accountCause) []string {
	var out []string
	for id := range a {
		if _, ok := b[id]; !ok {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// Print writes the comparison for a person.
func (c Comparison) Print(w io.Writer) {
	fmt.Fprintf(w, "compared with the baseline (rule set %s → %s): %d decisions, %d changed, %d only in the candidate, %d only in the baseline\n",
		c.BaselineVersion, c.CandidateVersion, c.Decisions, c.Changed, c.Added, c.Removed)
	if len(c.Transitions) > 0 {
		keys := slices.SortedFunc(maps.Keys(c.Transitions), func(a, b string) int { return cmp.Compare(c.Transitions[b], c.Transitions[a]) })
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %d", k, c.Transitions[k]))
		}
		fmt.Fprintf(w, "  actions: %s\n", strings.Join(parts, ", "))
	}
	accounts := func(what string, m [2]map[string]accountCause) {
		gained, lost := Gained(m), Lost(m)
		fmt.Fprintf(w, "  %s accounts: %d → %d (+%d, −%d)\n", what, len(m[0]), len(m[1]), len(gained), len(lost))
		list := func(label string, ids []string, side int) {
			if len(ids) == 0 {
				return
			}
			var parts []string
			for i, id := range ids {
				if i == 10 {
					parts = append(parts, fmt.Sprintf("… %d more", len(ids)-10))
					break
				}
				parts = append(parts, fmt.Sprintf("%s (%s)", id, strings.Join(m[side][id].Rules, ", ")))
			}
			fmt.Fprintf(w, "    %s: %s\n", label, strings.Join(parts, "; "))
		}
		list("newly "+what, gained, 1)
		list("no longer "+what, lost, 0)
	}
	accounts("frozen", c.Frozen)
	accounts("stepped-up", c.SteppedUp)
	var moved []string
	for _, id := range slices.Sorted(maps.Keys(c.RuleHits)) {
		if h := c.RuleHits[id]; h[0] != h[1] {
			moved = append(moved, fmt.Sprintf("%s %d → %d", id, h[0], h[1]))
		}
	}
	if len(moved) > 0 {
		fmt.Fprintf(w, "  rule hits that changed: %s\n", strings.Join(moved, ", "))
	}
}
