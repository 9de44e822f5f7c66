package detector

import (
	"testing"
	"time"

	"github.com/walletguard/walletguard/event"
)

// TestProfileDescribesTheHabit: after a month of ordinary payments from one
// phone in Indonesia and a login from Singapore, the profile says so in
// plain values, and survives a checkpoint and restore unchanged.
func TestProfileDescribesTheHabit(t *testing.T) {
	e := newEngine(t, time.Minute)
	ts := time.Date(2026, 10, 1, 9, 0, 0, 0, time.UTC)
	geo := func(c string) *event.Geo { return &event.Geo{Country: c} }
	n := 0
	send := func(ev event.Event) {
		n++
		ev.EventID, ev.AccountID, ev.TS = "e"+string(rune('a'+n%26))+time.Duration(n).String(), "acc-7", ts
		if ev.BalanceAfter == 0 {
			ev.BalanceAfter = -1
		}
		if _, dup := e.Process(&ev, nil); dup {
			t.Fatalf("event %d taken for a duplicate", n)
		}
	}
	for d := 0; d < 30; d++ {
		send(event.Event{Type: event.TypeLogin, TypeName: "login", Result: "success", DeviceID: "phone-1", IP: "36.72.1.5", Geo: geo("ID")})
		send(event.Event{Type: event.TypeTransaction, TypeName: "transaction", Kind: "payment", Status: "success", Amount: 50000,
			Currency: "IDR", MerchantID: "m-1", DeviceID: "phone-1", IP: "36.72.1.5", Geo: geo("ID"), BalanceAfter: 900000 - int64(d)*1000})
		ts = ts.Add(24 * time.Hour)
	}
	send(event.Event{Type: event.TypeLogin, TypeName: "login", Result: "success", DeviceID: "phone-1", IP: "8.8.8.8", Geo: geo("SG")})

	p, ok := e.Profile("acc-7")
	if !ok {
		t.Fatal("no profile for a known account")
	}
	if p.Events != 61 || p.Transactions != 30 {
		t.Errorf("events %d, transactions %d; want 61, 30", p.Events, p.Transactions)
	}
	if p.TypicalAmount < 45000 || p.TypicalAmount > 55000 || p.Currency != "IDR" {
		t.Errorf("typical amount %d %s, want about 50,000 IDR", p.TypicalAmount, p.Currency)
	}
	if p.HomeCountry != "ID" || len(p.Countries) != 2 || p.Countries[0] != "ID" || p.Countries[1] != "SG" {
		t.Errorf("home %q countries %v, want ID then SG", p.HomeCountry, p.Countries)
	}
	if p.KnownDevices != 1 || p.KnownNetworks != 2 {
		t.Errorf("devices %d networks %d, want 1 and 2", p.KnownDevices, p.KnownNetworks)
	}
	if p.Balance == nil || *p.Balance != 900000-29*1000 {
		t.Errorf("balance %v, want the last reported 871000", p.Balance)
	}
	if p.LastLogin == nil || !p.LastLogin.Equal(ts) || p.LastLoginCountry != "SG" {
		t.Errorf("last login %v in %q, want %v in SG", p.LastLogin, p.LastLoginCountry, ts)
	}
	if _, ok := e.Profile("never-seen"); ok {
		t.Error("a profile for an account never seen")
	}

	s, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := e.Checkpoint(s, Offsets{}); err != nil {
		t.Fatal(err)
	}
	r := newEngine(t, time.Minute)
	if _, err := r.Restore(s); err != nil {
		t.Fatal(err)
	}
	q, _ := r.Profile("acc-7")
	if q.Events != p.Events || q.TypicalAmount != p.TypicalAmount || !q.LastSeen.Equal(p.LastSeen) || q.HomeCountry != p.HomeCountry {
		t.Errorf("restored profile %+v differs from %+v", q, p)
	}
}
