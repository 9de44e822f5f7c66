package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRulesCheck: what a risk analyst sees from `walletguard rules check` —
// a broken file refused with file, rule and position; a working one
// accepted, with a note for a condition that runs on expr's VM.
func TestRulesCheck(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bad := write("bad.yaml", `rules:
  - id: misspelt
    on: [transaction]
    when: event.outgoing && account.amount_ratoi >= 8
    score: 10
`)
	out, err := exec.Command(bin, "rules", "check", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "bad.yaml:2") || !strings.Contains(string(out), "misspelt") ||
		!strings.Contains(string(out), "amount_ratoi") || !strings.Contains(string(out), "(1:") {
		t.Errorf("misspelt field: err %v, output:\n%s", err, out)
	}

	slow := write("slow.yaml", `rules:
  - id: every_third_attempt
    on: [payment_attempt]
    when: event.attempt % 3 == 0 && event.status == "failed"
    score: 5
  - id: fast
    on: [payment_attempt]
    when: event.attempt >= 3 && event.status == "failed"
    score: 5
`)
	out, err = exec.Command(bin, "rules", "check", slow).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ok: 2 rules") {
		t.Fatalf("valid rules: err %v, output:\n%s", err, out)
	}
	if !strings.Contains(string(out), "slow.yaml:2: rule every_third_attempt: when runs on expr's VM") {
		t.Errorf("no note for the rule on the VM:\n%s", out)
	}
	if strings.Contains(string(out), "rule fast") {
		t.Errorf("a compiled rule is noted as slow:\n%s", out)
	}
}
