package alerts

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/walletguard/walletguard/detector"
)

var t0 = time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)

func stuck(account, payment, merchant string, at time.Duration, n int) detector.Decision {
	return detector.Decision{
		DecisionID: "d-" + account + payment + at.String(), EventID: "e", AccountID: account, TS: t0.Add(at),
		Action: "allow", MerchantID: merchant, PaymentID: payment,
		Rules: []detector.Hit{{ID: "payment_retry_loop", Score: 10, Category: "stuck_retry", Severity: "medium",
			Group:  "payment:" + account + "/" + payment,
			Reason: "payment " + payment + " failed 3 of 3 attempts; likely cause: network (NETWORK_TIMEOUT); ask the user"}},
	}
}

func TestOneAlertPerStuckPayment(t *testing.T) {
	m := NewManager()
	var out []Alert
	for i := 0; i < 5; i++ {
		d := stuck("acc-1", "pay-1", "m-1", time.Duration(i)*time.Minute, i)
		out = m.Observe(&d, out)
	}
	open := m.Open()
	if len(open) != 1 {
		t.Fatalf("%d alerts for one stuck payment", len(open))
	}
	a := open[0]
	if a.Count != 5 || a.Cause != "network" || !strings.Contains(a.Title, "network") || len(a.RecommendedActions) == 0 {
		t.Fatalf("alert %+v", a)
	}
	if !strings.Contains(a.RecommendedActions[0], "connection") {
		t.Errorf("advice for a network cause: %q", a.RecommendedActions[0])
	}
	ids := map[string]bool{}
	for _, x := range out {
		ids[x.AlertID] = true
	}
	if len(ids) != 1 {
		t.Errorf("emissions carry %d different alert ids for one incident", len(ids))
	}
}

func TestMerchantOutageAbsorbsUsersStuckPayments(t *testing.T) {
	m := NewManager()
	var out []Alert
	outage := detector.Decision{DecisionID: "o1", AccountID: "u-0", TS: t0, Action: "allow", MerchantID: "m-9",
		Rules: []detector.Hit{{ID: "merchant_failure_spike", Category: "merchant_outage", Severity: "high", Group: "merchant:m-9", Reason: "merchant m-9 failing"}}}
	out = m.Observe(&outage, out)
	for i := 1; i <= 12; i++ {
		d := stuck("u-"+string(rune('a'+i)), "p", "m-9", time.Duration(i)*time.Minute, 3)
		out = m.Observe(&d, out)
	}
	open := m.Open()
	if len(open) != 1 || open[0].Category != "merchant_outage" {
		t.Fatalf("want only the outage alert, got %d: %+v", len(open), open)
	}
	if open[0].AffectedAccounts != 13 {
		t.Errorf("affected accounts %d, want 13", open[0].AffectedAccounts)
	}
	// The outage alert is re-sent as it grows (5, 10 users), not once per user.
	if len(out) > 4 {
		t.Errorf("%d alert emissions for a 13-user outage", len(out))
	}
}

func TestOutageRecognisedLaterGroupsEarlierUserAlerts(t *testing.T) {
	m := NewManager()
	var out []Alert
	for i := 0; i < 3; i++ {
		d := stuck("u-"+string(rune('a'+i)), "p", "m-9", time.Duration(i)*time.Minute, 3)
		out = m.Observe(&d, out)
	}
	other := stuck("u-z", "p", "m-1", 2*time.Minute, 3) // another merchant: not part of the outage
	out = m.Observe(&other, out)
	if n := len(m.Open()); n != 4 {
		t.Fatalf("%d open alerts before the outage is recognised, want 4", n)
	}
	outage := detector.Decision{DecisionID: "o1", AccountID: "u-d", TS: t0.Add(4 * time.Minute), Action: "allow", MerchantID: "m-9",
		Rules: []detector.Hit{{ID: "merchant_failure_spike", Category: "merchant_outage", Severity: "high", Group: "merchant:m-9", Reason: "merchant m-9 failing"}}}
	out = m.Observe(&outage, out[:0])
	open := m.Open()
	if len(open) != 2 {
		t.Fatalf("want the outage and the other merchant's alert open, got %d: %+v", len(open), open)
	}
	var outageAlert Alert
	grouped := 0
	for _, a := range out {
		switch {
		case a.Category == "merchant_outage":
			outageAlert = a
		case a.Status == "grouped":
			grouped++
			if a.MerchantID != "m-9" {
				t.Errorf("alert of merchant %s grouped under m-9's outage", a.MerchantID)
			}
		}
	}
	if grouped != 3 {
		t.Errorf("%d user alerts re-sent as grouped, want 3", grouped)
	}
	if outageAlert.AffectedAccounts != 4 {
		t.Errorf("outage counts %d affected users, want 4 (three earlier, one now)", outageAlert.AffectedAccounts)
	}
	for _, a := range out {
		if a.Status == "grouped" && a.GroupedUnder != outageAlert.AlertID {
			t.Errorf("grouped under %q, want %q", a.GroupedUnder, outageAlert.AlertID)
		}
	}
}

func TestFreezeMakesTheAlertCritical(t *testing.T) {
	m := NewManager()
	d := detector.Decision{DecisionID: "x", AccountID: "acc-7", TS: t0, Action: "freeze", Score: 95,
		Rules: []detector.Hit{{ID: "balance_drain_after_takeover", Category: "theft", Severity: "high", Group: "account:acc-7", Reason: "90% of the balance moved out"}}}
	out := m.Observe(&d, nil)
	if len(out) != 1 || out[0].Severity != "critical" || out[0].Action != "freeze" || !strings.Contains(out[0].RecommendedActions[0], "frozen") {
		t.Fatalf("%+v", out)
	}
}

// TestTakeoverIsOneAlert: the findings on an account being taken over —
// before and after the theft rule fires — make one alert, not one per
// category.
func TestTakeoverIsOneAlert(t *testing.T) {
	m := NewManager()
	hit := func(id, cat, sev string, at time.Duration, action string) detector.Decision {
		return detector.Decision{DecisionID: "d-" + id, AccountID: "acc-3", TS: t0.Add(at), Action: action,
			Rules: []detector.Hit{{ID: id, Category: cat, Severity: sev, Group: "account:acc-3", Reason: id + " fired"}}}
	}
	var out []Alert
	for _, d := range []detector.Decision{
		hit("impossible_travel", "impossible_travel", "high", 0, "review"),
		hit("payee_added_from_new_device", "theft", "medium", 5*time.Minute, "step_up"),
		hit("amount_far_above_habit", "abnormal", "low", 8*time.Minute, "freeze"),
	} {
		out = m.Observe(&d, out)
	}
	open := m.Open()
	if len(open) != 1 || open[0].Category != "theft" || open[0].Count != 3 || !slices.Contains(open[0].Rules, "impossible_travel") {
		t.Fatalf("want one theft alert holding the earlier and the later finding, got %+v", open)
	}
	grouped := 0
	for _, a := range m.All() {
		if a.Status == "grouped" {
			grouped++
			if a.GroupedUnder != open[0].AlertID || a.Category != "impossible_travel" {
				t.Errorf("grouped %+v", a)
			}
		}
	}
	if grouped != 1 {
		t.Errorf("%d earlier alerts grouped under the takeover, want 1", grouped)
	}
}

// TestOneAlertPerAccountIncident: findings about one account make one
// alert for support, led by the most serious: a stolen password's login
// (credential stuffing, a new country and impossible travel in one event)
// opens one alert; a later, more serious finding takes the earlier alert
// in; a team's own category stays apart unless the account is taken over;
// findings after the incident has been quiet open a new one.
func TestOneAlertPerAccountIncident(t *testing.T) {
	hit := func(id, cat string) detector.Hit {
		return detector.Hit{ID: id, Category: cat, Severity: "high", Group: "account:acc-9", Reason: id + " fired"}
	}
	decide := func(m *Manager, id string, at time.Duration, hits ...detector.Hit) []Alert {
		d := detector.Decision{DecisionID: "d-" + id, AccountID: "acc-9", TS: t0.Add(at), Action: "step_up", Rules: hits}
		return m.Observe(&d, nil)
	}
	open := func(m *Manager) (cats []string) {
		for _, a := range m.Open() {
			cats = append(cats, a.Category)
		}
		sort.Strings(cats)
		return cats
	}

	// One event, three findings: one alert, led by the stuffing, holding
	// every rule; nothing opened and grouped on the way.
	m := NewManager()
	out := decide(m, "login", 0, hit("new_country", "abnormal"), hit("impossible_travel", "impossible_travel"),
		hit("credential_stuffing_login", "credential_stuffing"))
	if got := open(m); !slices.Equal(got, []string{"credential_stuffing"}) {
		t.Fatalf("open alerts after a stuffed login: %v, want one credential_stuffing", got)
	}
	if a := m.Open()[0]; a.Count != 3 || len(a.Rules) != 3 || len(out) != 1 || len(m.All()) != 1 {
		t.Errorf("the login's alert: count %d, rules %v; %d delivered, %d held; want 3 findings, 3 rules, 1 and 1", a.Count, a.Rules, len(out), len(m.All()))
	}

	// Lesser findings first, a more serious one later: it takes them in.
	m = NewManager()
	decide(m, "pay", 0, hit("amount_far_above_habit", "abnormal"))
	decide(m, "burst", time.Minute, hit("velocity_burst", "velocity")) // folds into the abnormal alert
	if got := open(m); !slices.Equal(got, []string{"abnormal"}) {
		t.Fatalf("open alerts after two lesser findings: %v, want the first", got)
	}
	first := m.Open()[0]
	out = decide(m, "travel", 2*time.Minute, hit("impossible_travel", "impossible_travel"))
	if got := open(m); !slices.Equal(got, []string{"impossible_travel"}) {
		t.Fatalf("open alerts after impossible travel: %v, want it alone", got)
	}
	if g, ok := m.Get(first.AlertID); !ok || g.Status != "grouped" || g.GroupedUnder != m.Open()[0].AlertID {
		t.Errorf("the earlier alert: %+v, want grouped under the impossible travel", g)
	}
	if len(out) != 2 || out[0].Category != "impossible_travel" || out[1].Status != "grouped" {
		t.Fatalf("delivered %+v, want the new alert then the one it took in", out)
	}
	// The lead tells the whole story: the findings it took in, in the
	// order they happened.
	lead := out[0]
	wantRules := []string{"amount_far_above_habit", "impossible_travel", "velocity_burst"}
	if got := slices.Sorted(slices.Values(lead.Rules)); lead.Count != 3 || !slices.Equal(got, wantRules) ||
		len(lead.Evidence) != 3 || !slices.IsSorted(lead.Evidence) || !strings.Contains(lead.Summary, "3 findings") {
		t.Errorf("the new alert as delivered: count %d, rules %v, evidence %q, summary %q; want the 3 findings it took in, in order",
			lead.Count, lead.Rules, lead.Evidence, lead.Summary)
	}
	decide(m, "again", 3*time.Minute, hit("amount_far_above_habit", "abnormal"))
	if a := m.Open(); len(a) != 1 || a[0].Count != 4 {
		t.Errorf("a lesser finding after: %+v, want it folded into the impossible travel", a)
	}

	// A team's own category stays its own alert; a takeover takes it in.
	m = NewManager()
	decide(m, "aml", 0, hit("structuring", "aml"))
	decide(m, "odd", time.Minute, hit("amount_far_above_habit", "abnormal"))
	if got := open(m); !slices.Equal(got, []string{"abnormal", "aml"}) {
		t.Fatalf("open alerts: %v, want the team's category apart", got)
	}
	decide(m, "drain", 2*time.Minute, hit("balance_drain_after_takeover", "theft"))
	decide(m, "aml2", 3*time.Minute, hit("structuring", "aml"))
	if got := open(m); !slices.Equal(got, []string{"theft"}) || m.Open()[0].Count != 4 {
		t.Fatalf("open alerts after the takeover: %v (%+v), want the takeover alone, holding the later finding", got, m.Open())
	}

	// An acknowledged alert still leads: support is on it, also after a
	// restart.
	m = NewManager()
	decide(m, "travel", 0, hit("impossible_travel", "impossible_travel"))
	if _, err := m.Ack(m.Open()[0].AlertID, "agent", t0); err != nil {
		t.Fatal(err)
	}
	restarted := saveAndLoad(t, m)
	for name, m := range map[string]*Manager{"running": m, "restarted": restarted} {
		decide(m, "odd", time.Minute, hit("amount_far_above_habit", "abnormal"))
		if a := m.Open(); len(a) != 1 || a[0].Status != "acknowledged" || a[0].Count != 2 {
			t.Errorf("%s: a lesser finding after an acknowledgement: %+v, want it folded into the acknowledged alert", name, a)
		}
	}

	// Quiet for quietAfter: a new incident.
	m = NewManager()
	decide(m, "stuffed", 0, hit("credential_stuffing_login", "credential_stuffing"))
	decide(m, "later", quietAfter+time.Minute, hit("new_country", "abnormal"))
	if got := open(m); !slices.Equal(got, []string{"abnormal", "credential_stuffing"}) {
		t.Errorf("open alerts after a quiet spell: %v, want a new one beside the old", got)
	}
}

// BenchmarkPrepareSave is the pause a checkpoint costs the pipeline for the
// alerts: 5,000 of 20,000 open alerts changed since the last one (a busy
// interval under load). The encoding runs in the write, off the pipeline.
func BenchmarkPrepareSave(b *testing.B) {
	m := NewManager()
	const open, changed = 20000, 5000
	var out []Alert
	for i := range open {
		d := stuck(fmt.Sprintf("acc-%06d", i), "pay-1", fmt.Sprintf("m-%03d", i%500), time.Duration(i)*time.Second, 3)
		out = m.Observe(&d, out[:0])
	}
	for b.Loop() {
		b.StopTimer()
		for i := range changed {
			d := stuck(fmt.Sprintf("acc-%06d", i*open/changed), "pay-1", "m-1", time.Hour, 4)
			out = m.Observe(&d, out[:0])
		}
		b.StartTimer()
		if _, _, err := m.PrepareSave(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(changed, "changed-alerts")
}

// TestAcknowledgementOutlivesAnOlderCheckpoint: a checkpoint captures an
// alert as open; support acknowledges it, which is written at once; then
// the checkpoint's older copy is written. The store, and what the
// changelog is handed, must end with the acknowledgement once the next
// checkpoint is written — a restart or a restore must not reopen it.
func TestAcknowledgementOutlivesAnOlderCheckpoint(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "alerts.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	m := NewManager()
	var last map[string]string // the changelog's view: latest status per key
	m.SetChangelog(func(key string, v []byte) {
		var s stored
		json.Unmarshal(v, &s)
		if last == nil {
			last = map[string]string{}
		}
		last[key] = s.Status
	})
	d := stuck("acc-1", "pay-1", "m-1", 0, 3)
	out := m.Observe(&d, nil)
	if len(out) != 1 {
		t.Fatalf("%d alerts raised, want 1", len(out))
	}
	id := out[0].AlertID

	older, _, err := m.PrepareSave() // a checkpoint captures it open
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Ack(id, "rina", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := db.Update(m.Save); err != nil { // the manual action's own write
		t.Fatal(err)
	}
	if err := db.Update(older); err != nil { // then the checkpoint's
		t.Fatal(err)
	}
	next, _, err := m.PrepareSave() // the next checkpoint
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(next); err != nil {
		t.Fatal(err)
	}

	r := NewManager()
	if err := r.Load(db); err != nil {
		t.Fatal(err)
	}
	if al, ok := r.Get(id); !ok || al.Status != "acknowledged" || al.AcknowledgedBy != "rina" {
		t.Errorf("stored after the next checkpoint: %s by %q, want acknowledged by rina", al.Status, al.AcknowledgedBy)
	}
	for key, status := range last {
		if status != "acknowledged" {
			t.Errorf("the changelog's last word on %s: %s, want acknowledged", key, status)
		}
	}
}

// TestSplitManagersRaiseWhatSpansAccountsOnce: instances that share the
// partitions each decide some accounts. Each one's manager, split, raises
// the alerts of its own accounts; one lead raises those that span accounts
// from every instance's findings. Together they hold the alerts one
// manager seeing everything holds — one merchant outage, not one per
// instance — and the lead's hand over whole to another.
func TestSplitManagersRaiseWhatSpansAccountsOnce(t *testing.T) {
	var ds []detector.Decision
	for i := range 30 {
		acct := fmt.Sprintf("u-%02d", i)
		ds = append(ds, stuck(acct, "p", "m-9", time.Duration(i)*time.Minute, 3))
		if i == 3 {
			ds = append(ds, detector.Decision{DecisionID: "o1", AccountID: acct, TS: t0.Add(3 * time.Minute), Action: "allow", MerchantID: "m-9",
				Rules: []detector.Hit{{ID: "merchant_failure_spike", Category: "merchant_outage", Severity: "high", Group: "merchant:m-9", Reason: "merchant m-9 failing"}}})
		}
		if i%7 == 0 { // a takeover of the account, its own alert
			ds = append(ds, detector.Decision{DecisionID: "t-" + acct, AccountID: acct, TS: t0.Add(time.Duration(i) * time.Minute), Action: "freeze",
				Rules: []detector.Hit{{ID: "balance_drain_after_takeover", Category: "theft", Severity: "critical", Group: "account:" + acct, Reason: "drained"}}})
		}
		if i%5 == 0 { // a stuck transfer with no merchant: the account's own
			d := stuck(acct, "q", "", time.Duration(i)*time.Minute, 3)
			ds = append(ds, d)
		}
		if i >= 10 && i < 22 { // an address failing logins on many accounts
			ds = append(ds, detector.Decision{DecisionID: "s-" + acct, AccountID: acct, TS: t0.Add(time.Duration(i) * time.Minute), Action: "allow",
				Rules: []detector.Hit{{ID: "credential_stuffing_ip", Category: "credential_stuffing", Severity: "high", Group: "ip:203.0.113.7", Reason: "stuffing"}}})
		}
	}
	whole := NewManager()
	members := []*Manager{NewManager(), NewManager(), NewManager()}
	lead := NewManager()
	for _, m := range append(members, lead) {
		m.SetSplit(true)
	}
	var wholeOut, splitOut []Alert
	for i := range ds {
		d := &ds[i]
		wholeOut = whole.Observe(d, wholeOut)
		var n int
		fmt.Sscanf(d.AccountID, "u-%d", &n)
		splitOut = members[n%3].Observe(d, splitOut)
		splitOut = lead.ObserveSpanning(d, splitOut)
	}
	summary := func(ms ...*Manager) map[string]string {
		out := map[string]string{}
		for _, m := range ms {
			for _, a := range m.All() {
				if _, dup := out[a.DedupKey]; dup {
					t.Errorf("alert %s held twice", a.DedupKey)
				}
				out[a.DedupKey] = fmt.Sprintf("%s %s %d accounts, %d findings", a.AlertID, a.Status, a.AffectedAccounts, a.Count)
			}
		}
		return out
	}
	want, got := summary(whole), summary(append(members, lead)...)
	if fmt.Sprint(want) != fmt.Sprint(got) {
		t.Errorf("split managers hold\n%v\none manager holds\n%v", got, want)
	}
	outages := map[string]bool{} // alert ids
	for _, a := range splitOut {
		if a.Category == "merchant_outage" {
			outages[a.AlertID] = true
		}
	}
	if len(outages) != 1 {
		t.Errorf("the outage was raised %d times, want once", len(outages))
	}
	for i, m := range members {
		for _, a := range m.All() {
			if a.IsSpanning() {
				t.Errorf("member %d raised %s, which spans accounts", i, a.DedupKey)
			}
		}
	}
	// The four users stuck before the outage was recognised, grouped under
	// it, the outage, the address.
	if n := len(lead.All()); n != 6 {
		t.Errorf("the lead holds %d alerts, want 6", n)
	}

	// The lead hands its alerts over as stored.
	db, err := bolt.Open(filepath.Join(t.TempDir(), "alerts.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	recs := map[string][]byte{}
	lead.SetChangelog(func(key string, v []byte) { recs[key] = v })
	lead.MarkAllChanged()
	if err := db.Update(lead.Save); err != nil {
		t.Fatal(err)
	}
	next := members[1]
	if n, err := next.AdoptSpanning(recs); err != nil || n != len(lead.All()) {
		t.Fatalf("adopted %d of %d alerts: %v", n, len(lead.All()), err)
	}
	if fmt.Sprint(summary(next, members[0], members[2])) != fmt.Sprint(want) {
		t.Errorf("after the handover the members hold\n%v\nwant\n%v", summary(next, members[0], members[2]), want)
	}
	// Stuck payments at the merchant join the adopted outage.
	d := stuck("u-31", "p", "m-9", 31*time.Minute, 3)
	out := next.ObserveSpanning(&d, nil)
	if len(out) != 0 {
		t.Errorf("one more stuck user raised %+v", out)
	}
	for _, a := range next.Open() {
		if a.Category == "merchant_outage" && a.AffectedAccounts != 31 {
			t.Errorf("the adopted outage counts %d accounts after one more, want 31", a.AffectedAccounts)
		}
	}
	if keys := next.DropSpanning(); len(keys) != len(lead.All()) {
		t.Errorf("dropped %d alerts that span accounts, want %d", len(keys), len(lead.All()))
	}
}

// TestAnIncidentAlertIsSentOnceAsItOpens: a new outage or takeover alert
// that takes in earlier alerts is sent once, with the users it took in —
// also when the only alert it takes in is of its own account, which adds
// no user: two identical versions would reach support as two deliveries.
func TestAnIncidentAlertIsSentOnceAsItOpens(t *testing.T) {
	for _, c := range []struct {
		name   string
		before []string // accounts with a stuck payment at m-9 before the outage
		users  int      // the outage's users, its own account included
	}{
		{"own account alone", []string{"u-d"}, 1},
		{"others", []string{"u-a", "u-b"}, 3},
		{"none", nil, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := NewManager()
			var out []Alert
			for i, acct := range c.before {
				d := stuck(acct, "p", "m-9", time.Duration(i)*time.Minute, 3)
				out = m.Observe(&d, out)
			}
			outage := detector.Decision{DecisionID: "o1", AccountID: "u-d", TS: t0.Add(4 * time.Minute), Action: "allow", MerchantID: "m-9",
				Rules: []detector.Hit{{ID: "merchant_failure_spike", Category: "merchant_outage", Severity: "high", Group: "merchant:m-9", Reason: "merchant m-9 failing"}}}
			out = m.Observe(&outage, out[:0])
			sent, grouped := 0, 0
			for _, a := range out {
				switch {
				case a.Category == "merchant_outage":
					sent++
					if a.AffectedAccounts != c.users {
						t.Errorf("the outage is sent with %d users, want %d", a.AffectedAccounts, c.users)
					}
				case a.Status == "grouped":
					grouped++
				}
			}
			if sent != 1 {
				t.Errorf("the new outage alert is sent %d times", sent)
			}
			if grouped != len(c.before) {
				t.Errorf("%d earlier alerts sent as grouped, want %d", grouped, len(c.before))
			}
		})
	}
}

// saveAndLoad saves m into a new store and loads it into a new manager:
// what a restart holds.
func saveAndLoad(t *testing.T, m *Manager) *Manager {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "alerts.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(m.Save); err != nil {
		t.Fatal(err)
	}
	loaded := NewManager()
	if err := loaded.Load(db); err != nil {
		t.Fatal(err)
	}
	return loaded
}

// draws returns a seeded pseudo-random source: each call gives a number
// in [0, n), the same sequence for the same seed on every run.
func draws(seed uint64) func(n int) int {
	return func(n int) int {
		seed = seed*6364136223846793005 + 1442695040888963407
		return int(seed>>33) % n
	}
}

// TestPruneForgetsExactlyTheQuietAlerts: alerts whose last news is older
// than the cut are forgotten — with their outage and grouping entries —
// and every other alert is kept, whatever order their news came in:
// alerts refreshed later, refreshed by a late event (news moving back),
// raised again, and created in the cut's own hour on either side of it.
func TestPruneForgetsExactlyTheQuietAlerts(t *testing.T) {
	m := NewManager()
	var out []Alert
	next := draws(7)
	at := func() time.Duration { return time.Duration(next(10*24*60)) * time.Minute }
	for i := range 3000 {
		switch next(4) {
		case 0, 1: // a user's stuck payment, at one of a few merchants
			d := stuck(fmt.Sprintf("acc-%04d", next(800)), fmt.Sprintf("pay-%d", next(3)), fmt.Sprintf("m-%d", next(5)), at(), 3)
			out = m.Observe(&d, out[:0])
		case 2: // a merchant outage, which takes stuck payments in
			d := stuck(fmt.Sprintf("acc-%04d", next(800)), "pay-o", fmt.Sprintf("m-%d", next(5)), at(), 3)
			d.Rules[0].Group = "merchant:" + d.MerchantID
			out = m.Observe(&d, out[:0])
		default: // raised by walletguard itself, news in any order
			out = m.Raise(fmt.Sprintf("breaker|%d", next(50)), "freeze_storm", "high", "", "storm", t0.Add(at()), out[:0])
		}
		if i%500 == 499 {
			cut := t0.Add(at())
			// Either side of the cut, in its hour.
			out = m.Raise(fmt.Sprintf("edge|%d|before", i), "freeze_storm", "high", "", "storm", cut.Add(-time.Second), out[:0])
			out = m.Raise(fmt.Sprintf("edge|%d|at", i), "freeze_storm", "high", "", "storm", cut, out[:0])
			want := map[string]bool{}
			for k, a := range m.open {
				if !a.UpdatedAt.Before(cut) {
					want[k] = true
				}
			}
			m.prune(cut)
			if len(m.open) != len(want) {
				t.Fatalf("after a prune at %s: %d alerts held, want %d", cut, len(m.open), len(want))
			}
			for k := range want {
				if m.open[k] == nil {
					t.Fatalf("alert %s, with news after the cut, was forgotten", k)
				}
			}
			for idx, keys := range m.related {
				for _, k := range keys {
					if m.open[k] == nil {
						t.Fatalf("related entry %s still lists forgotten alert %s", idx, k)
					}
				}
			}
			for o, k := range m.outages {
				if m.open[k] == nil {
					t.Fatalf("outage %s still names forgotten alert %s", o, k)
				}
			}
		}
	}
}

// TestAlertsAreFoundByTheirIDs acknowledges, resolves and gets alerts by
// id, as support does through the API, while alerts are created, replaced
// by a new incident under the same key, pruned, and loaded from the
// store: an id finds its alert exactly while that alert is held.
func TestAlertsAreFoundByTheirIDs(t *testing.T) {
	m := NewManager()
	var out []Alert
	next := draws(11)
	seen := map[string]bool{} // every id ever handed out
	check := func(when string, m *Manager) {
		t.Helper()
		held := map[string]string{} // id -> key, by walking every alert
		for k, a := range m.open {
			held[a.AlertID] = k
		}
		if len(m.ids) != len(m.open) {
			t.Fatalf("%s: %d ids filed for %d alerts held", when, len(m.ids), len(m.open))
		}
		for id := range seen {
			a, ok := m.Get(id)
			switch key, want := held[id]; {
			case want && !ok:
				t.Fatalf("%s: alert %s (%s) is held but Get does not find it", when, id, key)
			case !want && ok:
				t.Fatalf("%s: Get finds alert %s, which is no longer held", when, id)
			case ok && a.AlertID != id:
				t.Fatalf("%s: Get(%s) returned alert %s", when, id, a.AlertID)
			}
			if _, err := m.Ack(id, "agent", t0); ok != (err == nil) {
				t.Fatalf("%s: Ack(%s) = %v, held %v", when, id, err, ok)
			}
		}
	}
	for i := range 4000 {
		at := time.Duration(i) * 5 * time.Minute // 14 days; quiet keys come back as new incidents
		switch next(3) {
		case 0:
			d := stuck(fmt.Sprintf("acc-%03d", next(300)), "pay-1", fmt.Sprintf("m-%d", next(4)), at, 3)
			out = m.Observe(&d, out[:0])
		case 1:
			out = m.Raise(fmt.Sprintf("breaker|%d", next(20)), "freeze_storm", "high", "", "storm", t0.Add(at), out[:0])
		default:
			// Support resolves one; a repeat of its key opens a new alert.
			for _, a := range m.open {
				if next(2) == 0 {
					if _, err := m.Resolve(a.AlertID, "agent", "done", t0.Add(at)); err != nil {
						t.Fatal(err)
					}
					break
				}
			}
		}
		for _, a := range out {
			seen[a.AlertID] = true
		}
		if i%400 == 399 {
			check(fmt.Sprintf("event %d", i), m)
			m.prune(t0.Add(at - 2*24*time.Hour))
			check(fmt.Sprintf("prune after event %d", i), m)
		}
	}
	loaded := saveAndLoad(t, m)
	if len(loaded.open) == 0 || len(loaded.open) != len(m.open) {
		t.Fatalf("%d alerts loaded, %d held", len(loaded.open), len(m.open))
	}
	check("loaded from the store", loaded)
}

// TestListPicksAndOrders lists alerts by status, category, account and
// merchant, with and without a limit, and checks each listing against a
// walk over every alert held: the right ones, newest first, ties in a
// fixed order, the newest first when limited.
func TestListPicksAndOrders(t *testing.T) {
	m := NewManager()
	var out []Alert
	for i := range 600 {
		// Every tenth shares a time with the one before: ties.
		at := time.Duration(i-i%10/9) * time.Minute
		d := stuck(fmt.Sprintf("acc-%03d", i%200), fmt.Sprintf("pay-%d", i%3), fmt.Sprintf("m-%d", i%7), at, 3)
		if i%5 == 0 {
			d.Rules[0].Category, d.Rules[0].Group = "velocity", "account:"+d.AccountID
		}
		d.Rules[0].Severity = [...]string{"low", "medium", "high", "critical"}[i%4]
		out = m.Observe(&d, out[:0])
	}
	n := 0
	for _, a := range m.open {
		switch n++; n % 4 {
		case 0:
			if _, err := m.Ack(a.AlertID, "agent", t0); err != nil {
				t.Fatal(err)
			}
		case 1:
			if _, err := m.Resolve(a.AlertID, "agent", "done", t0); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, q := range []Query{
		{}, {Status: "all"}, {Status: "resolved"}, {Status: "acknowledged", Category: "velocity"},
		{Category: "stuck_retry", MerchantID: "m-3"}, {Status: "all", AccountID: "acc-042"},
		{Limit: 25}, {Status: "all", Limit: 1}, {Category: "velocity", Limit: 1000},
		{Status: "all", MinSeverity: "high"}, {MinSeverity: "medium", Limit: 30},
	} {
		var want []*Alert
		for _, a := range m.open {
			queue := a.Status == "open" || a.Status == "acknowledged"
			if (q.Status == "" && queue || q.Status == "all" || q.Status == a.Status) &&
				(q.Category == "" || q.Category == a.Category) &&
				(q.AccountID == "" || q.AccountID == a.AccountID) &&
				(q.MerchantID == "" || q.MerchantID == a.MerchantID) &&
				(q.MinSeverity == "" || a.Severity == "critical" || a.Severity == q.MinSeverity ||
					q.MinSeverity == "medium" && a.Severity == "high") {
				want = append(want, a)
			}
		}
		sort.Slice(want, func(i, j int) bool {
			if !want[i].UpdatedAt.Equal(want[j].UpdatedAt) {
				return want[i].UpdatedAt.After(want[j].UpdatedAt)
			}
			return want[i].AlertID < want[j].AlertID
		})
		if q.Limit > 0 && len(want) > q.Limit {
			want = want[:q.Limit]
		}
		got := m.List(q)
		if len(want) == 0 || len(got) != len(want) {
			t.Fatalf("%+v: %d listed, want %d (and some)", q, len(got), len(want))
		}
		for i := range got {
			if got[i].AlertID != want[i].AlertID {
				t.Fatalf("%+v: listing %d is %s (%s), want %s (%s)", q, i, got[i].AlertID, got[i].UpdatedAt, want[i].AlertID, want[i].UpdatedAt)
			}
		}
	}
}

// BenchmarkGet finds one alert by id among 100,000 held: what an
// acknowledgement from support holds the pipeline for.
func BenchmarkGet(b *testing.B) {
	const held = 100_000
	m := NewManager()
	var out []Alert
	var ids []string
	for i := range held {
		d := stuck(fmt.Sprintf("acc-%06d", i), "pay-1", fmt.Sprintf("m-%03d", i%500), time.Duration(i)*time.Second, 3)
		out = m.Observe(&d, out[:0])
		for _, a := range out {
			ids = append(ids, a.AlertID)
		}
	}
	i := 0
	for b.Loop() {
		if _, ok := m.Get(ids[i%len(ids)]); !ok {
			b.Fatal("an alert held was not found")
		}
		i++
	}
}

// BenchmarkList lists alerts among 100,000 held, as the API does under
// the pipeline's lock: support's whole queue, its first page, and one
// account's.
func BenchmarkList(b *testing.B) {
	const held = 100_000
	m := NewManager()
	var out []Alert
	for i := range held {
		d := stuck(fmt.Sprintf("acc-%06d", i), "pay-1", fmt.Sprintf("m-%03d", i%500), time.Duration(i)*time.Second, 3)
		out = m.Observe(&d, out[:0])
	}
	for _, c := range []struct {
		name string
		q    Query
		want int
	}{{"queue", Query{}, held}, {"queue-page", Query{Limit: 1000}, 1000}, {"account", Query{AccountID: "acc-012345"}, 1}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if n := len(m.List(c.q)); n != c.want {
					b.Fatalf("%d alerts listed, want %d", n, c.want)
				}
			}
		})
	}
}

// BenchmarkPrune times one prune among 100,000 alerts held over three
// days, whose cut falls in their first hour: what the pipeline pays every
// 10,000 observations.
func BenchmarkPrune(b *testing.B) {
	const held = 100_000
	m := NewManager()
	var out []Alert
	for i := range held {
		d := stuck(fmt.Sprintf("acc-%06d", i), "pay-1", fmt.Sprintf("m-%03d", i%500), time.Duration(i)*(3*24*time.Hour/held), 3)
		out = m.Observe(&d, out[:0])
	}
	n := len(m.open)
	cut := t0 // in their first hour, before any: each pass costs the same
	for b.Loop() {
		m.prune(cut)
	}
	if len(m.open) != n {
		b.Fatalf("%d alerts held after the prunes, want %d", len(m.open), n)
	}
	b.ReportMetric(float64(n), "alerts-held")
}

// TestARestartGroupsAsTheRunningManagerDoes: a stuck payment an app-fault
// alert did not take in (its failures were the network's then) goes on
// failing, with app errors hours later, when the fault is raised again. A
// manager restarted from a checkpoint in between must group it as the
// running one does: restarts may not change what support is sent.
func TestARestartGroupsAsTheRunningManagerDoes(t *testing.T) {
	payment := func(cause, code string, at time.Duration) detector.Decision {
		d := stuck("u-a", "p", "m-1", at, 3)
		d.AppVersion = "5.1.0"
		d.Rules[0].Reason = "payment p failed 3 of 3 attempts; likely cause: " + cause + " (" + code + "); ask the user"
		return d
	}
	appFault := func(at time.Duration) detector.Decision {
		return detector.Decision{DecisionID: "af" + at.String(), AccountID: "u-x", TS: t0.Add(at), Action: "allow", AppVersion: "5.1.0",
			Rules: []detector.Hit{{ID: "app_version_error_spike", Category: "app_fault", Severity: "high", Group: "app:5.1.0",
				Reason: "app 5.1.0 failing"}}}
	}
	running := NewManager()
	for _, d := range []detector.Decision{payment("network", "NETWORK_TIMEOUT", 0), appFault(10 * time.Minute)} {
		running.Observe(&d, nil)
	}
	if got := len(running.Open()); got != 2 {
		t.Fatalf("%d alerts open, want the network-stuck payment beside the app fault", got)
	}
	restarted := saveAndLoad(t, running)
	states := map[string]string{}
	for name, m := range map[string]*Manager{"running": running, "restarted": restarted} {
		for _, d := range []detector.Decision{payment("network", "NETWORK_TIMEOUT", 3*time.Hour),
			payment("app", "APP_ERROR", 6*time.Hour+20*time.Minute), appFault(6*time.Hour + 30*time.Minute)} {
			m.Observe(&d, nil)
		}
		all := m.All()
		var got []string
		for _, a := range all {
			s := a.Category + " " + a.Status
			for _, p := range all {
				if p.AlertID == a.GroupedUnder {
					s += " under " + p.Category
				}
			}
			got = append(got, s)
		}
		sort.Strings(got)
		states[name] = strings.Join(got, ", ")
	}
	if states["running"] != states["restarted"] {
		t.Errorf("after the second app fault:\n running:   %s\n restarted: %s", states["running"], states["restarted"])
	}
	if want := "app_fault open, stuck_retry grouped under app_fault"; states["running"] != want {
		t.Errorf("after the second app fault: %s, want %s", states["running"], want)
	}
}

// TestPagesMatchTheWholeListing: a page of the queue (a listing with a
// limit, found by walking the hours of the alerts' last news) is the
// head of the whole listing, sorted, and an account's listing (found by
// its own index) that listing's alerts of the account, whatever the news
// did: alerts refreshed hours later, refreshed by a late event or moved
// back by a repeat, acknowledged and resolved, raised again after a quiet
// spell, forgotten by a prune.
func TestPagesMatchTheWholeListing(t *testing.T) {
	for seed := range uint64(20) {
		draw := draws(seed)
		m := NewManager()
		var out []Alert
		for i := range 400 {
			at := time.Duration(draw(72*60)) * time.Minute
			acct := fmt.Sprintf("acc-%03d", draw(150))
			switch draw(4) {
			case 0:
				out = m.Raise("system|"+acct, "twofa_lockout", "high", acct, "locked", t0.Add(at), out[:0])
			case 1:
				d := stuck(acct, "p", fmt.Sprintf("m-%d", draw(5)), at, 3)
				d.Rules[0].Category, d.Rules[0].Group = "velocity", "account:"+acct
				out = m.Observe(&d, out[:0])
			default:
				d := stuck(acct, fmt.Sprintf("pay-%d", draw(3)), fmt.Sprintf("m-%d", draw(5)), at, 3)
				out = m.Observe(&d, out[:0])
			}
			if i%7 == 0 && len(out) > 0 {
				if draw(2) == 0 {
					m.Ack(out[0].AlertID, "agent", t0)
				} else {
					m.Resolve(out[0].AlertID, "agent", "done", t0)
				}
			}
		}
		// An account's listing, found through its own index, is the whole
		// listing's alerts of that account — also once a prune forgot some.
		checkAccounts := func(when string) {
			whole := m.List(Query{Status: "all"})
			for i := range 150 {
				acct := fmt.Sprintf("acc-%03d", i)
				var want []string
				for _, a := range whole {
					if a.AccountID == acct {
						want = append(want, a.AlertID)
					}
				}
				var got []string
				for _, a := range m.List(Query{Status: "all", AccountID: acct}) {
					got = append(got, a.AlertID)
				}
				if !slices.Equal(got, want) {
					t.Fatalf("seed %d, %s: %s's alerts %v, want %v", seed, when, acct, got, want)
				}
			}
		}
		checkAccounts("before a prune")
		m.prune(t0.Add(36 * time.Hour))
		checkAccounts("after a prune")
		for _, q := range []Query{{}, {Status: "all"}, {Status: "resolved"}, {Category: "stuck_retry"}, {MinSeverity: "high"}, {Status: "all", AccountID: "acc-007"}} {
			whole := m.List(q)
			for _, limit := range []int{1, 7, 50, 1000} {
				q.Limit = limit
				page := m.List(q)
				want := whole[:min(limit, len(whole))]
				if len(page) != len(want) {
					t.Fatalf("seed %d, %+v: %d listed, want %d", seed, q, len(page), len(want))
				}
				for i := range page {
					if page[i].AlertID != want[i].AlertID {
						t.Fatalf("seed %d, %+v: listing %d is %s (%s), want %s (%s)", seed, q, i,
							page[i].AlertID, page[i].UpdatedAt, want[i].AlertID, want[i].UpdatedAt)
					}
				}
				// Page after page, each beginning after the token the one
				// before ended with, lists the whole listing once, in order.
				var walked []string
				for q.After = (Cursor{}); ; {
					page := m.List(q)
					for i := range page {
						walked = append(walked, page[i].AlertID)
					}
					if len(page) < limit {
						break
					}
					c, err := ParseCursor(CursorOf(&page[len(page)-1]).String())
					if err != nil {
						t.Fatal(err)
					}
					q.After = c
				}
				q.After = Cursor{}
				var all []string
				for i := range whole {
					all = append(all, whole[i].AlertID)
				}
				if !slices.Equal(walked, all) {
					t.Fatalf("seed %d, %+v: pages walked %d alerts, the whole listing has %d, or in another order", seed, q, len(walked), len(all))
				}
			}
		}
	}
}

// TestCursorTokensAreChecked: a token a listing wrote reads back; anything
// else is refused with why.
func TestCursorTokensAreChecked(t *testing.T) {
	c := Cursor{UpdatedAt: t0.UnixNano(), AlertID: "al-1.x"}
	if got, err := ParseCursor(c.String()); err != nil || got != c {
		t.Fatalf("token %q read back as %+v, %v", c.String(), got, err)
	}
	for _, bad := range []string{"", "%%%", "bm90LWEtdG9rZW4", "MTIzLg"} {
		if _, err := ParseCursor(bad); err == nil {
			t.Errorf("token %q accepted", bad)
		}
	}
}
