package rules

import (
	"testing"

	"github.com/walletguard/walletguard/event"
)

// TestUsesListsTheViewsRulesRead: a view is filled for an event type only
// if one of its rules reads it — in its condition, its timer or its reason.
func TestUsesListsTheViewsRulesRead(t *testing.T) {
	set, err := Compile([]Source{{Name: "team/risk.yaml", Content: []byte(`rules:
  - id: shared_device
    on: [login]
    when: device.accounts_24h > 3 && event.ip != ""
    score: 10
  - id: merchant_in_reason
    on: [transaction]
    when: event.amount > 0
    reason: "merchant failure rate {merchant.failure_rate_10m}"
    score: 10
  - id: stuck
    on: [payment_attempt]
    when: event.status == "retrying"
    timer: {after: 10m, scope: payment, until: payment.succeeded}
    score: 10
`)}})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		typ  event.Type
		root Root
		want bool
	}{
		{event.TypeLogin, RootDevice, true},
		{event.TypeLogin, RootIP, false}, // event.ip is a field of the event, not the IP view
		{event.TypeTransaction, RootMerchant, true},
		{event.TypeTransaction, RootDevice, false},
		{event.TypePaymentAttempt, RootPayment, true},
		{event.TypePaymentAttempt, RootMerchant, false},
		{event.TypeAccountChange, RootDevice, false},
	}
	for _, c := range cases {
		if got := set.Uses(c.typ, c.root); got != c.want {
			t.Errorf("Uses(%s, %b) = %v, want %v", c.typ, c.root, got, c.want)
		}
	}
}

// TestGuardsNeverChangeAResult: for every built-in rule and a spread of
// events, a condition with its native guard gives what expr alone gives
// (on the VM: a rule compiled natively has no use for its guard).
func TestGuardsNeverChangeAResult(t *testing.T) {
	set, err := Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	guarded := 0
	for _, r := range set.Rules {
		if r.guard != nil {
			guarded++
		}
	}
	if guarded < len(set.Rules)*3/4 {
		t.Errorf("only %d of %d built-in rules have a guard", guarded, len(set.Rules))
	}
	withGuard, without := &Evaluator{vmOnly: true}, &Evaluator{vmOnly: true}
	env := NewEnv()
	kinds := []string{"payment", "transfer", "withdrawal", "cash_out", "topup", ""}
	changes := []string{"password_reset", "mfa_disabled", "payee_added", "phone_change", ""}
	statuses := []string{"success", "failed", "retrying", "succeeded", ""}
	results := []string{"success", "failure", ""}
	for i := 0; i < 2000; i++ {
		env.Event = EventView{Type: event.Types()[i%4].String(), Kind: kinds[i%len(kinds)], Change: changes[i%len(changes)], Outgoing: i%3 != 0,
			Status: statuses[i%len(statuses)], Result: results[i%len(results)], Amount: float64(i * 1000), Country: "SG", Hour: i % 24}
		env.Account.KnownDevices, env.Account.IsNewDevice, env.Account.AmountRatio = i%3, i%2 == 0, float64(i%40)
		env.Account.MinsSincePasswordReset = float64(i % 200)
		for _, r := range set.Rules {
			got, err1 := withGuard.Match(r, env)
			saved := r.guard
			r.guard = nil
			want, err2 := without.Match(r, env)
			r.guard = saved
			if got != want || (err1 == nil) != (err2 == nil) {
				t.Fatalf("rule %s on %+v: with guard %v (%v), expr alone %v (%v)", r.ID, env.Event, got, err1, want, err2)
			}
		}
	}
}

// The built-in rules that count over many accounts are those that read
// an IP, a merchant, an app version or a payee; the account's own rules
// are not.
func TestSpansAccounts(t *testing.T) {
	set, err := Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{"credential_stuffing_ip": true, "signed_in_before_stuffing_recognised": true,
		"merchant_failure_spike": true, "app_version_failure_spike": true, "mule_payee": true,
		"new_device_login": false, "amount_far_above_habit": false, "payment_retry_loop": false} {
		if r := set.ByID(id); r == nil || r.SpansAccounts() != want {
			t.Errorf("%s spans accounts: want %v (rule found: %v)", id, want, r != nil)
		}
	}
}
