package app

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/walletguard/walletguard/rules"
)

// TestCompareShowsWhatARuleChangeDoes backtests a careless rule change
// against the built-in set on the same generated traffic: the balance-drain
// rule put in shadow mode, and "first activity from a new country" made to
// freeze. The comparison must show the drain rule's hits going to zero, name
// the travellers the change would freeze and the rule behind each, and
// write a changes file whose every line is a real difference. A run
// compared with itself shows none.
func TestCompareShowsWhatARuleChangeDoes(t *testing.T) {
	file, _ := writeSim(t, 1500, 41)
	base, err := rules.Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	baseDir := t.TempDir()
	replayFile(t, file, baseDir, base)

	dir := t.TempDir()
	for _, src := range rules.BuiltinSources() {
		text := string(src.Content)
		text = strings.Replace(text, "- id: balance_drain_after_takeover\n", "- id: balance_drain_after_takeover\n    mode: shadow\n", 1)
		text = strings.Replace(text, "- id: new_country\n", "- id: new_country\n    action: freeze\n", 1)
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(src.Name)), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cand, err := rules.Load([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	if cand.Version == base.Version {
		t.Fatal("the edited rule set has the built-in version")
	}
	candDir := t.TempDir()
	replayFile(t, file, candDir, cand)

	c, err := CompareDecisions(baseDir, candDir)
	if err != nil {
		t.Fatal(err)
	}
	var report strings.Builder
	c.Print(&report)
	t.Log("\n" + report.String())
	if h := c.RuleHits["balance_drain_after_takeover"]; h[0] == 0 || h[1] != 0 {
		t.Errorf("balance_drain_after_takeover hits %v, want some in the baseline and none once in shadow", h)
	}
	gained := Gained(c.Frozen)
	if len(gained) == 0 || c.Transitions["allow → freeze"]+c.Transitions["review → freeze"]+c.Transitions["step_up → freeze"] == 0 {
		t.Fatalf("making new_country freeze froze no new accounts: gained %v, transitions %v", gained, c.Transitions)
	}
	for _, id := range gained {
		if !slices.Contains(c.Frozen[1][id].Rules, "new_country") {
			t.Errorf("%s is newly frozen, but not by the changed rule: %v", id, c.Frozen[1][id].Rules)
		}
	}
	if !strings.Contains(report.String(), "newly frozen: "+gained[0]+" (") {
		t.Errorf("the report does not name the newly frozen accounts")
	}
	if c.Transitions["freeze → allow"]+c.Transitions["freeze → review"]+c.Transitions["freeze → step_up"] == 0 {
		t.Errorf("no freeze decision changed with the drain rule in shadow: %v", c.Transitions)
	}

	// Every line of changes.ndjson is a decision that really differs.
	f, err := os.Open(filepath.Join(candDir, "changes.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lines := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines++
		var ch decisionChange
		if err := json.Unmarshal(sc.Bytes(), &ch); err != nil {
			t.Fatal(err)
		}
		if ch.Baseline != nil && ch.Candidate != nil && ch.Baseline.Action == ch.Candidate.Action && slices.Equal(ch.Baseline.Rules, ch.Candidate.Rules) {
			t.Fatalf("changes.ndjson lists an unchanged decision: %s", sc.Bytes())
		}
	}
	if lines != c.Changed+c.Added+c.Removed || c.Changed == 0 {
		t.Errorf("changes.ndjson has %d lines for %d changed, %d added, %d removed", lines, c.Changed, c.Added, c.Removed)
	}

	same, err := CompareDecisions(baseDir, baseDir)
	if err != nil {
		t.Fatal(err)
	}
	if same.Changed+same.Added+same.Removed != 0 || len(same.Transitions) != 0 {
		t.Errorf("a run compared with itself differs: %+v", same)
	}
}
