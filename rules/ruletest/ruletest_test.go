package ruletest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRuleCases runs every case in rules/testdata, as `walletguard rules test` does.
func TestRuleCases(t *testing.T) {
	results, err := RunDir("../testdata")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if r.Err != nil {
			t.Errorf("%s:\n%v", r.Name, r.Err)
		}
	}
	if len(results) < 8 {
		t.Errorf("only %d rule cases found", len(results))
	}
}

// TestWrongExpectationFails proves the runner can fail: the takeover case
// with the opposite expectation must be reported.
func TestWrongExpectationFails(t *testing.T) {
	dir := t.TempDir()
	b, err := os.ReadFile("../testdata/takeover_reset_2fa/events.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "events.ndjson"), b, 0o644)
	os.WriteFile(filepath.Join(dir, "case.yaml"), []byte("expect:\n  - event_id: t5\n    action: allow\n    not_rules: [new_payee_after_security_change]\n"), 0o644)
	_, err = RunCase(dir)
	if err == nil || !strings.Contains(err.Error(), "event t5: action freeze") || !strings.Contains(err.Error(), "must not") {
		t.Fatalf("wrong expectation not reported: %v", err)
	}
}
