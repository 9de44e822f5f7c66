package rules

import (
	"strings"
	"testing"

	"github.com/walletguard/walletguard/event"
)

func TestBuiltinPacksCompile(t *testing.T) {
	s, err := Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Rules) < 15 || len(s.Version) != 12 {
		t.Fatalf("%d rules, version %q", len(s.Rules), s.Version)
	}
	// Rules are indexed by event type: an event pays only for its own.
	for _, r := range s.ForType(event.TypeLogin) {
		found := false
		for _, ty := range r.Types {
			found = found || ty == event.TypeLogin
		}
		if !found {
			t.Errorf("rule %s indexed under login but is on %v", r.ID, r.On)
		}
	}
}

func compileOne(t *testing.T, body string) error {
	t.Helper()
	_, err := Compile([]Source{{Name: "team/risk.yaml", Content: []byte(body)}})
	return err
}

func TestCompileErrorsNameFileRuleAndPosition(t *testing.T) {
	cases := []struct {
		name, body string
		want       []string
	}{
		{"syntax error", `rules:
  - id: broken
    on: [login]
    when: event.result == "failure" &&
    score: 10
`, []string{"team/risk.yaml:2", "rule broken", "when:"}},
		{"misspelt field", `rules:
  - id: typo
    on: [transaction]
    when: accont.amount_ratio > 3
    score: 10
`, []string{"team/risk.yaml:2", "rule typo", "unknown name accont", "(1:1)"}},
		{"misspelt nested field", `rules:
  - id: typo2
    on: [transaction]
    when: account.amount_ration > 3
    score: 10
`, []string{"rule typo2", "amount_ration"}},
		{"wrong type", `rules:
  - id: types
    on: [transaction]
    when: event.amount > "big"
    score: 10
`, []string{"rule types", "invalid operation"}},
		{"not a bool", `rules:
  - id: notbool
    on: [login]
    when: event.amount
    score: 10
`, []string{"rule notbool", "bool"}},
		{"unknown key", `rules:
  - id: k
    on: [login]
    wen: true
    score: 10
`, []string{"team/risk.yaml:2", "wen"}},
		{"bad event type", `rules:
  - id: k
    on: [logout]
    when: true
`, []string{`"logout" is not an event type`}},
		{"bad reason placeholder", `rules:
  - id: k
    on: [login]
    when: true
    reason: "{event.nope}"
`, []string{"rule k", "reason", "nope"}},
		{"bad timer", `rules:
  - id: k
    on: [payment_attempt]
    when: true
    timer: {after: soon, scope: payment, until: "true"}
`, []string{"timer.after"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := compileOne(t, c.body)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestDuplicateIDsAcrossFilesRefused(t *testing.T) {
	r := "rules:\n  - id: same\n    on: [login]\n    when: \"true\"\n"
	_, err := Compile([]Source{{Name: "a.yaml", Content: []byte(r)}, {Name: "b.yaml", Content: []byte(r)}})
	if err == nil || !strings.Contains(err.Error(), "already used in a.yaml") {
		t.Fatalf("duplicate id not refused: %v", err)
	}
}

func TestReasonTemplateQuotesValues(t *testing.T) {
	s, err := Compile([]Source{{Name: "r.yaml", Content: []byte(`rules:
  - id: big
    on: [transaction]
    when: account.amount_ratio > 10
    reason: "{event.kind} {money(event.amount, event.currency)} is {num(account.amount_ratio)}× the typical {money(account.typical_amount, event.currency)} {{literal}}"
`)}})
	if err != nil {
		t.Fatal(err)
	}
	env := NewEnv()
	env.Event.Kind, env.Event.Amount, env.Event.Currency = "transfer", 480000000, "IDR"
	env.Account.AmountRatio, env.Account.TypicalAmount = 22.857, 21000000
	var ev Evaluator
	ok, err := ev.Match(s.Rules[0], env)
	if err != nil || !ok {
		t.Fatalf("match: %v %v", ok, err)
	}
	got := ev.Reason(s.Rules[0], env)
	want := "transfer 4,800,000.00 IDR is 22.9× the typical 210,000.00 IDR {literal}"
	if got != want {
		t.Fatalf("reason %q\nwant   %q", got, want)
	}
}

// A payment that failed once and never came back is reported as "1
// attempt", which is what a support agent reads to the user.
func TestStuckPaymentReasonCountsAttempts(t *testing.T) {
	s, err := Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	var rule *Rule
	for _, r := range s.Rules {
		if r.ID == "payment_not_recovered" {
			rule = r
		}
	}
	if rule == nil {
		t.Fatal("built-in rule payment_not_recovered missing")
	}
	var ev Evaluator
	for _, tc := range []struct {
		attempts int
		want     string
	}{{1, "(1 attempt, last status retrying)"}, {2, "(2 attempts, last status retrying)"}, {1200, "(1,200 attempts, last status retrying)"}} {
		env := NewEnv()
		env.Payment = PaymentView{Known: true, Attempts: tc.attempts, Failures: 1, LastStatus: "retrying",
			DominantError: "NETWORK_TIMEOUT", MinsSinceFailure: 10, PaymentID: "pay-1", MerchantID: "m-1"}
		if got := ev.Reason(rule, env); !strings.Contains(got, tc.want) {
			t.Errorf("%d attempts: reason %q, want it to contain %q", tc.attempts, got, tc.want)
		}
	}
}

func TestVersionIsContentHash(t *testing.T) {
	a, _ := Compile(BuiltinSources())
	b, _ := Compile(BuiltinSources())
	src := BuiltinSources()
	src[0].Content = append(src[0].Content, '\n')
	c, _ := Compile(src)
	if a.Version != b.Version || a.Version == c.Version {
		t.Fatalf("versions %s %s %s", a.Version, b.Version, c.Version)
	}
}
