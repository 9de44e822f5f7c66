package main

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/walletguard/walletguard/app"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/rules"
)

// TestDemoPrintsAGrowingAlertAsAnUpdate: a payment failing attempt after
// attempt raises one alert that grows; the demo prints it once as an
// ALERT and each later attempt as an UPDATED line, so that a newcomer
// does not read one stuck payment as several.
func TestDemoPrintsAGrowingAlertAsAnUpdate(t *testing.T) {
	set, err := rules.Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	p := app.NewProcessor(config.Default(), set, nil, slog.New(slog.DiscardHandler))
	start := time.Now().UTC().Add(-time.Hour)
	var notes []string
	for i := 1; i <= 6; i++ {
		line := fmt.Sprintf(`{"event_id":"pa-%d","type":"payment_attempt","account_id":"acc-1","ts":%q,"payment_id":"pay-1","attempt":%d,`+
			`"status":"failed","error_code":"INSUFFICIENT_BALANCE","merchant_id":"m-1","amount":50000,"currency":"IDR"}`,
			i, start.Add(time.Duration(i)*20*time.Second).Format(time.RFC3339), i)
		ev, err := event.Decode([]byte(line), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		var out app.Outputs
		p.Handle(&ev, &out)
		notes = appendDemoNotes(notes, &out)
	}
	var raised, updated int
	for _, n := range notes {
		switch {
		case strings.HasPrefix(n, "  ALERT ") && strings.Contains(n, "Payment stuck retrying"):
			raised++
		case strings.HasPrefix(n, "  UPDATED ") && strings.Contains(n, "Payment stuck retrying"):
			updated++
		}
	}
	if raised != 1 || updated == 0 {
		t.Errorf("one stuck payment printed as %d new alerts and %d updates, want 1 and some:\n%s", raised, updated, strings.Join(notes, "\n"))
	}
}
