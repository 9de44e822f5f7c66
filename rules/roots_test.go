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
