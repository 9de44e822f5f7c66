package detector

import (
	"log/slog"
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
	geo := func(c string) event.Geo { return event.Geo{Country: c} }
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

	r := checkpointAndRestore(t, e)
	q, _ := r.Profile("acc-7")
	if q.Events != p.Events || q.TypicalAmount != p.TypicalAmount || !q.LastSeen.Equal(p.LastSeen) || q.HomeCountry != p.HomeCountry {
		t.Errorf("restored profile %+v differs from %+v", q, p)
	}
}

// TestCapacityDropsTheLongestUnseen: a burst of new account ids past
// max_accounts keeps memory bounded by dropping the accounts seen longest
// ago; an account in regular use survives the burst, and a checkpoint
// taken after it restores the same population.
func TestCapacityDropsTheLongestUnseen(t *testing.T) {
	set := newEngine(t, time.Minute).Rules()
	e := New(Config{AllowedLateness: time.Minute, IdleExpiry: 30 * 24 * time.Hour, MaxRows: 1000,
		Thresholds: Thresholds{Review: 40, StepUp: 60, Freeze: 85}}, set, nil, slog.New(slog.DiscardHandler))
	ts := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	ids := make([]byte, 0, 32)
	for i := 0; i < 20000; i++ {
		ids = appendInt(append(ids[:0], "burst-"...), i)
		ev := event.Event{Type: event.TypeLogin, TypeName: "login", Result: "success", TS: ts, AccountID: string(ids),
			EventID: string(ids) + "-e", IP: "203.0.113.9", DeviceID: "d-" + string(ids), BalanceAfter: -1}
		e.Process(&ev, nil)
		if i%100 == 0 { // a regular user keeps using the wallet through the burst
			reg := event.Event{Type: event.TypeLogin, TypeName: "login", Result: "success", TS: ts, AccountID: "regular",
				EventID: "r-" + string(ids), DeviceID: "phone", BalanceAfter: -1}
			e.Process(&reg, nil)
		}
		ts = ts.Add(100 * time.Millisecond)
	}
	st := e.Stats()
	if st.Accounts > 1001 || st.Accounts < 900 {
		t.Fatalf("%d accounts held with max 1000", st.Accounts)
	}
	if n := e.devices.len(); n > 1001 {
		t.Fatalf("%d devices held with max 1000", n)
	}
	if n := e.timerCount(); n > 1001 || len(e.byAccount) > 1001 {
		t.Fatalf("%d timers of %d accounts pending with max 1000 accounts", n, len(e.byAccount))
	}
	if _, ok := e.Profile("regular"); !ok {
		t.Error("the account in regular use was dropped")
	}
	if _, ok := e.Profile("burst-0"); ok {
		t.Error("the first burst account, unseen since, is still held")
	}
	if _, ok := e.Profile("burst-19999"); !ok {
		t.Error("the newest account was dropped")
	}
	if e.evicted[0] < 18000 {
		t.Errorf("evicted %d accounts, want about 19,000", e.evicted[0])
	}
	// A flood of payment ids within the hour, before any chain expires.
	for i := 0; i < 3000; i++ {
		ids = appendInt(append(ids[:0], "pay-"...), i)
		ev := event.Event{Type: event.TypePaymentAttempt, TypeName: "payment_attempt", TS: ts, AccountID: "regular",
			EventID: string(ids), PaymentID: string(ids), Attempt: 1, Status: "failed", ErrorCode: "NETWORK_TIMEOUT", MerchantID: "m", BalanceAfter: -1}
		e.Process(&ev, nil)
		ts = ts.Add(100 * time.Millisecond)
	}
	if n := e.chains.len(); n > 1001 || e.evicted[4] < 1900 {
		t.Fatalf("%d payment chains held with max 1000, %d evicted", n, e.evicted[4])
	}
	if e.chains.get(chainKey("regular", "pay-2999")) == nil {
		t.Error("the newest payment's chain was dropped")
	}
	st = e.Stats()

	r := checkpointAndRestore(t, e)
	if got := r.Stats().Accounts; got != st.Accounts {
		t.Errorf("restored %d accounts, held %d", got, st.Accounts)
	}
}

// checkpointAndRestore writes a full checkpoint of e and loads it into a
// fresh engine: what a restart would hold.
func checkpointAndRestore(t *testing.T, e *Engine) *Engine {
	t.Helper()
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
	return r
}
