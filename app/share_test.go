package app

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/api"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/ingest"
	"github.com/walletguard/walletguard/rules"
)

// acrossAccounts are the built-in rules that count over many accounts
// (rules.Rule.SpansAccounts): what they see depends on how an instance
// interleaves the partitions' events, as it does for one instance reading
// several.
var acrossAccounts = func() map[string]bool {
	set, err := rules.Load(nil)
	if err != nil {
		panic(err)
	}
	return set.AcrossAccounts()
}()

// accountView is what of a decision its account's own history decides:
// the other rules that fired. "" for a decision of rules across accounts
// alone.
func accountView(t *testing.T, v []byte) string {
	t.Helper()
	var d struct {
		DecisionID string `json:"decision_id"`
		EventID    string `json:"event_id"`
		Trigger    string `json:"trigger"`
		Rules      []struct {
			ID string `json:"id"`
		} `json:"rules"`
	}
	if err := json.Unmarshal(v, &d); err != nil {
		t.Fatal(err)
	}
	view := d.DecisionID + " " + d.EventID + " " + d.Trigger
	n := 0
	for _, r := range d.Rules {
		if !acrossAccounts[r.ID] {
			view += " | " + r.ID
			n++
		}
	}
	if d.Trigger != "event" && n == 0 {
		return ""
	}
	return view
}

// TestMembersSharePartitionsAndTheirState runs walletguards that share the
// partitions (kafka.share_partitions). The first decides a stream alone; a
// second joins and takes half the partitions with their state from the
// changelog — an account frozen on the first is frozen on the second — and
// the two decide the next events between them; the second leaves and the
// first takes its partitions back, with what the second changed (an
// account unfrozen there is unfrozen). Every
// event is decided exactly once, and the decisions equal those of one
// walletguard deciding the same partitions alone, in what the accounts' own
// history decides (accountView).
// entityStats counts what member r holds of what spans accounts.
func entityStats(r *running) detector.Stats {
	r.app.procMu.Lock()
	defer r.app.procMu.Unlock()
	st := r.app.proc.Engine.Stats()
	return detector.Stats{Devices: st.Devices, IPs: st.IPs, Payees: st.Payees, Merchants: st.Merchants}
}

// plannerState is the account's security state as member r holds it.
func plannerState(r *running, account string) enforce.State {
	r.app.procMu.Lock()
	defer r.app.procMu.Unlock()
	st, _ := r.app.proc.Planner.Get(account)
	return st
}

// heldSpanning counts the alerts that span accounts member r holds.
func heldSpanning(r *running) int {
	r.app.procMu.Lock()
	defer r.app.procMu.Unlock()
	n := 0
	for _, al := range r.app.proc.Alerts.All() {
		if al.IsSpanning() {
			n++
		}
	}
	return n
}

// spanningDelivered maps the alert ids of the alerts that span accounts
// rc received to their dedup keys.
func spanningDelivered(t *testing.T, rc *receiver) map[string]string {
	t.Helper()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	out := map[string]string{}
	for _, b := range rc.bodies {
		var al alerts.Alert
		if err := json.Unmarshal(b, &al); err != nil {
			t.Fatal(err)
		}
		if al.IsSpanning() {
			out[al.AlertID] = al.DedupKey
		}
	}
	return out
}

// settled is true once rc received nothing new for two seconds.
func settled(rc *receiver) func() bool {
	last, since := -1, time.Now()
	return func() bool {
		rc.mu.Lock()
		n := len(rc.bodies)
		rc.mu.Unlock()
		if n != last {
			last, since = n, time.Now()
		}
		return time.Since(since) > 2*time.Second
	}
}

func accountOf(t *testing.T, value []byte) string {
	t.Helper()
	var e struct {
		AccountID string `json:"account_id"`
	}
	if err := json.Unmarshal(value, &e); err != nil {
		t.Fatal(err)
	}
	return e.AccountID
}

func TestMembersSharePartitionsAndTheirState(t *testing.T) {
	msgs, evs := simMessages(t, 400, 17, 9000)
	// Phase 1, decided by two, holds a credential-stuffing wave over many
	// accounts (events 8,490–8,690).
	cut := []int{0, 4000, 8800, len(msgs)}
	phase := func(i int) []kafka.Message { return msgs[cut[i]:cut[i+1]] }
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

	run := func(share bool) (decisions map[string]string, movedFrozen bool, decidedBySecond float64, spanning map[string]int) {
		broker := eventBroker(t, 4)
		totpKey := enforceConfig(t, t.TempDir()).Enforce.TOTP.KeyFile // every member opens the secrets
		rc := &receiver{secret: "hook-secret", ids: map[string]int{}}
		hook := httptestServer(t, rc)
		cfg := func() config.Config {
			c := testConfig(t, t.TempDir())
			c.Alerts.Webhooks = []config.Webhook{{URL: hook + "/hook", Secret: "hook-secret", Name: "support", Language: "en"}}
			c.Enforce.TOTP.KeyFile = totpKey
			c.Kafka.Brokers = []string{broker.Addr()}
			c.Kafka.ChangelogTopic = "walletguard.changelog"
			c.Kafka.SharePartitions = share
			return c
		}
		decided := func(rs ...*running) float64 {
			var n float64
			for _, r := range rs {
				n += r.app.Snapshot().Consumed
			}
			return n
		}
		// The partitions a member decides, once it has their state.
		deciding := func(r *running) map[int]uint64 {
			r.app.share.mu.Lock()
			defer r.app.share.mu.Unlock()
			return maps.Clone(r.app.share.deciding)
		}
		assigned := func(r *running, n float64) func() bool {
			return func() bool { return metric(t, r.app.HTTPAddr(), "walletguard_partitions_assigned") == n }
		}
		produce(t, broker.Addr(), "wallet.events", phase(0)...)
		appA, err := New(cfg(), quiet.With("member", "a"), Options{})
		if err != nil {
			t.Fatal(err)
		}
		a := launch(t, appA)
		waitFor(t, 60*time.Second, "the first to decide phase 0", func() bool { return decided(a) == float64(cut[1]) })
		// An account of each partition frozen by support on the first.
		frozen := map[int]string{}
		for _, m := range phase(0) {
			p := ingest.KeyPartition(m.Key, 4) // where produce puts it
			if _, ok := frozen[p]; !ok {
				frozen[p] = accountOf(t, m.Value)
				if code, body := call(t, a.app.HTTPAddr(), "POST", "/v1/accounts/"+frozen[p]+"/freeze", "admin-token", `{"reason":"reported stolen"}`); code != http.StatusOK {
					t.Fatalf("freeze: %d %v", code, body)
				}
			}
		}
		if len(frozen) != 4 {
			t.Fatalf("phase 0 reaches %d partitions, want 4", len(frozen))
		}

		var unfrozenOnB string
		appB, err := New(cfg(), quiet.With("member", "b"), Options{})
		if err != nil {
			t.Fatal(err)
		}
		b := launch(t, appB)
		if share {
			waitFor(t, 60*time.Second, "the two to share the partitions", func() bool {
				return assigned(a, 2)() && assigned(b, 2)() && len(deciding(a)) == 2 && len(deciding(b)) == 2
			})
			// The second started with an empty volume: it took every device,
			// IP, payee and merchant from the changelog with its partitions,
			// and observes the first's from where that state was taken, not
			// from their beginning.
			if n := metric(t, b.app.HTTPAddr(), "walletguard_events_observed_total"); n != 0 {
				t.Errorf("the second, started cold, observed %v events of phase 0 again", n)
			}
			if sa, sb := entityStats(a), entityStats(b); sa != sb {
				t.Errorf("entity state: the first holds %+v, the second, started cold, %+v", sa, sb)
			}
			// Frozen on the member that decides it now; the gateway may ask
			// either, and the other passes the question on.
			onB := deciding(b)
			movedFrozen = true
			for p, acct := range frozen {
				owner, other := a, b
				if _, ok := onB[p]; ok {
					owner, other = b, a
				}
				for _, asked := range []*running{owner, other} {
					_, body, h := callH(t, asked.app.HTTPAddr(), "GET", "/v1/accounts/"+acct, "gateway-token", "")
					if body["frozen"] != true {
						t.Errorf("the account frozen in partition %d is not frozen, asking the member that decides it %s", p, map[bool]string{true: "itself", false: "through the other"}[asked == owner])
						movedFrozen = false
					}
					if to := h.Get(api.ForwardedToHeader); asked == other && to != owner.app.HTTPAddr() {
						t.Errorf("asked about partition %d's account, the member that does not decide it answered it %q, want it passed on to %s", p, to, owner.app.HTTPAddr())
					} else if asked == owner && to != "" {
						t.Errorf("the member deciding partition %d passed a question about its account on to %s", p, to)
					}
				}
				// The first forgot the state it handed over.
				if owner == b && plannerState(a, acct).Frozen {
					t.Errorf("the first still holds the freeze of an account of partition %d, which it handed over", p)
					movedFrozen = false
				}
			}
			// And back: unfrozen on the second — asked of the first, which
			// passes it on — and unfrozen on the first once it takes the
			// partition back.
			for p, acct := range frozen {
				if _, ok := onB[p]; ok {
					code, body, h := callH(t, a.app.HTTPAddr(), "POST", "/v1/accounts/"+acct+"/unfreeze", "admin-token", `{"reason":"customer verified"}`)
					if code != http.StatusOK || h.Get(api.ForwardedToHeader) != b.app.HTTPAddr() {
						t.Fatalf("unfreeze asked of the first: %d %v, made by %q, want by the second", code, body, h.Get(api.ForwardedToHeader))
					}
					if plannerState(b, acct).Frozen {
						t.Errorf("the unfreeze passed on left the account frozen on the second")
					}
					unfrozenOnB = acct
					break
				}
			}
			// Each counts its own automatic freezes against its part of the
			// freeze breaker's limit.
			for _, m := range []*running{a, b} {
				_, br := call(t, m.app.HTTPAddr(), "GET", "/v1/enforce/breaker", "viewer-token", "")
				if br["share"] != "2 of 4 partitions" || br["max_freezes"] != float64((m.app.cfg.Enforce.Breaker.MaxFreezes+1)/2) {
					t.Errorf("a member deciding 2 of 4 partitions shows the breaker %v", br)
				}
			}
			// Wrong codes count where the account is decided, whichever
			// member the gateway asks: five lock it.
			totpAcct := ""
			for _, m := range phase(0) {
				id := accountOf(t, m.Value)
				if _, ok := onB[ingest.KeyPartition(m.Key, 4)]; ok && !slices.Contains(slices.Collect(maps.Values(frozen)), id) {
					totpAcct = id
					break
				}
			}
			if code, body := call(t, b.app.HTTPAddr(), "POST", "/v1/accounts/"+totpAcct+"/2fa/enroll", "gateway-token", ""); code != http.StatusOK {
				t.Fatalf("enroll on the second: %d %v", code, body)
			}
			for i := 0; i < 5; i++ {
				if code, body := call(t, a.app.HTTPAddr(), "POST", "/v1/accounts/"+totpAcct+"/2fa/verify", "gateway-token", `{"code":"000000"}`); code == http.StatusOK {
					t.Fatalf("a wrong code verified: %v", body)
				}
			}
			if st := plannerState(b, totpAcct); !st.Locked() {
				t.Errorf("five wrong codes asked of the first left 2FA unlocked on the second, which decides the account")
			}
		}
		produce(t, broker.Addr(), "wallet.events", phase(1)...)
		waitFor(t, 60*time.Second, "phase 1 to be decided", func() bool { return decided(a, b) == float64(cut[2]) })
		t.Logf("sharing %v: phase 1 decided, %v of its events by the second", share, decided(b))
		decidedBySecond = decided(b)
		if share {
			// Both hold every device, IP, payee and merchant, each having
			// observed what the other decided.
			if sa, sb := entityStats(a), entityStats(b); sa != sb {
				t.Errorf("entity state after phase 1: the first holds %+v, the second %+v", sa, sb)
			}
			// The alerts that span accounts are the lead's alone: the
			// member that decides partition 0. It raises them from the
			// findings topic, a fetch after the decisions are written.
			lead, other := a, b
			if _, ok := deciding(b)[0]; ok {
				lead, other = b, a
			}
			waitFor(t, 30*time.Second, "the lead to raise the alerts that span accounts", func() bool { return heldSpanning(lead) > 0 })
			if n := heldSpanning(other); n != 0 {
				t.Errorf("the member that does not decide partition 0 holds %d alerts that span accounts", n)
			}
			if metric(t, lead.app.HTTPAddr(), "walletguard_spanning_alerts_lead") != 1 || metric(t, other.app.HTTPAddr(), "walletguard_spanning_alerts_lead") != 0 {
				t.Error("walletguard_spanning_alerts_lead is not 1 on the member deciding partition 0 alone")
			}
			// Support may use either: each lists every member's alerts,
			// and an acknowledgement asked of the other reaches the lead.
			_, listed := call(t, other.app.HTTPAddr(), "GET", "/v1/alerts?status=all", "viewer-token", "")
			var whole []string
			for _, x := range listed["alerts"].([]any) {
				whole = append(whole, x.(map[string]any)["alert_id"].(string))
			}
			if paged := walkAlertPages(t, other.app.HTTPAddr(), "status=all", 3); !slices.Equal(paged, whole) {
				t.Errorf("pages of 3 through the member that does not lead: %v, want the whole listing %v", paged, whole)
			}
			stuffing := ""
			for _, x := range listed["alerts"].([]any) {
				if al := x.(map[string]any); al["category"] == "credential_stuffing" && al["ip"] != nil {
					stuffing = al["alert_id"].(string)
				}
			}
			if stuffing == "" {
				t.Errorf("the member that does not lead lists no credential-stuffing alert: %v", listed)
			} else {
				code, body, h := callH(t, other.app.HTTPAddr(), "POST", "/v1/alerts/"+stuffing+"/ack", "admin-token", `{"reason":"on it"}`)
				if code != http.StatusOK || body["status"] != "acknowledged" || h.Get(api.ForwardedToHeader) != lead.app.HTTPAddr() {
					t.Errorf("acknowledging the wave's alert through the other member: %d %v, made by %q, want by the lead", code, body, h.Get(api.ForwardedToHeader))
				}
				code, body, h = callH(t, other.app.HTTPAddr(), "GET", "/v1/alerts/"+stuffing, "viewer-token", "")
				if code != http.StatusOK || body["status"] != "acknowledged" || h.Get(api.ForwardedToHeader) != lead.app.HTTPAddr() {
					t.Errorf("reading the wave's alert through the other member: %d %v, answered by %q, want by the lead", code, body, h.Get(api.ForwardedToHeader))
				}
			}
		}
		b.stop(t)
		if share {
			if unfrozenOnB == "" {
				t.Fatal("the second decides none of the partitions with a frozen account")
			}
			waitFor(t, 60*time.Second, "the first to take every partition back", func() bool { return assigned(a, 4)() && len(deciding(a)) == 4 })
			if _, body := call(t, a.app.HTTPAddr(), "GET", "/v1/accounts/"+unfrozenOnB, "viewer-token", ""); body["frozen"] != false {
				t.Errorf("an account unfrozen on the second is frozen=%v on the first, which took its partition back", body["frozen"])
				movedFrozen = false
			}
		}
		produce(t, broker.Addr(), "wallet.events", phase(2)...)
		waitFor(t, 60*time.Second, "phase 2 to be decided", func() bool { return decided(a, b) == float64(len(msgs)) })
		waitFor(t, 60*time.Second, "the alerts to be delivered", settled(rc))
		a.stop(t)
		// Alerts that span accounts, by dedup key: how many incidents
		// (alert ids) support was told of.
		spanning = map[string]int{}
		for _, key := range spanningDelivered(t, rc) {
			spanning[key]++
		}
		if share {
			// What an operator sees: the state of every partition, as the
			// member that decided it last published it, taken at its end.
			st, err := ReadChangelogStatus(context.Background(), cfg(), false, quiet)
			if err != nil {
				t.Fatal(err)
			}
			if st.Marker != nil || len(st.PartitionStates) != 4 {
				t.Errorf("changelog status: sole owner's state %v, %d partitions' states; want none and 4", st.Marker, len(st.PartitionStates))
			}
			for p, m := range st.PartitionStates {
				if m.Offsets["wallet.events"][p] != st.Ends["wallet.events"][p] {
					t.Errorf("partition %d's state taken at %d, its end is %d", p, m.Offsets["wallet.events"][p], st.Ends["wallet.events"][p])
				}
			}
		}

		decisions = map[string]string{}
		perEvent := map[string]int{}
		for _, m := range readAll(t, broker.Addr(), "walletguard.decisions", len(msgs), 60*time.Second) {
			var d struct {
				DecisionID string `json:"decision_id"`
				EventID    string `json:"event_id"`
				Trigger    string `json:"trigger"`
			}
			if err := json.Unmarshal(m.Value, &d); err != nil {
				t.Fatal(err)
			}
			if d.Trigger == "event" {
				perEvent[d.EventID]++
			}
			if v := accountView(t, m.Value); v != "" {
				decisions[d.DecisionID] = v
			}
		}
		for _, ev := range evs {
			if perEvent[ev.EventID] != 1 {
				t.Fatalf("event %s has %d decisions, want exactly 1", ev.EventID, perEvent[ev.EventID])
			}
		}
		return decisions, movedFrozen, decidedBySecond, spanning
	}

	// Alone, the second stands by: the first decides everything — the
	// reference.
	want, _, standby, wantSpanning := run(false)
	if standby != 0 {
		t.Fatalf("a standby decided %v events", standby)
	}
	got, moved, second, gotSpanning := run(true)
	// Support hears of each incident that spans accounts once, as from one
	// walletguard, not once per member that decided some of its accounts.
	t.Logf("alerts that span accounts: one walletguard %v; sharing %v", wantSpanning, gotSpanning)
	if len(wantSpanning) == 0 {
		t.Error("the stream raised no alert that spans accounts")
	}
	// Which payees and addresses cross a threshold can differ at the
	// margin with how the partitions interleave (see "Limits" in
	// docs/scaling.md); how many alerts one incident makes cannot.
	both := 0
	for key, n := range gotSpanning {
		if w, ok := wantSpanning[key]; ok {
			both++
			if n != w {
				t.Errorf("%s: support was told of %d incidents sharing, %d by one walletguard", key, n, w)
			}
		} else if n != 1 {
			t.Errorf("%s: support was told of %d incidents sharing, want 1", key, n)
		}
	}
	if both == 0 {
		t.Errorf("no alert that spans accounts raised both sharing (%v) and by one walletguard (%v)", gotSpanning, wantSpanning)
	}
	if !moved {
		t.Error("freezes and unfreezes did not follow their partitions")
	}
	if second == 0 || second == float64(cut[2]-cut[1]) {
		t.Errorf("the second member decided %v of phase 1's %d events: the partitions were not shared", second, cut[2]-cut[1])
	}
	differ := 0
	for id, w := range want {
		if got[id] != w {
			if _, ok := got[id]; !ok {
				t.Logf("not made sharing: %s", w)
			}
			differ++
			if differ < 4 {
				t.Logf("want %s\ngot  %s", w, got[id])
			}
		}
	}
	for id, g := range got {
		if _, ok := want[id]; !ok {
			t.Logf("made only sharing: %s", g)
		}
	}
	t.Logf("%d events, %d decisions; the second member decided %v of phase 1's %d; %d decisions differ from one walletguard's", len(msgs), len(want), second, cut[2]-cut[1], differ)
	if differ != 0 || len(got) != len(want) {
		t.Errorf("%d of %d decisions differ from one walletguard's (%d made)", differ, len(want), len(got))
	}
}

// TestFindingsGoToOnePartition: the findings topic is one ordered stream,
// whatever its partition count and whichever accounts the findings are
// of. A lead that takes over folds again what the previous lead folded
// after its last checkpoint; read from several partitions it would fold
// them in another interleaving, and an outage's first finding — which
// names its alert — could be another one: support would get the incident
// twice, under two alert ids.
func TestFindingsGoToOnePartition(t *testing.T) {
	a := &App{cfg: testConfig(t, t.TempDir()), spans: &spanning{}}
	a.cfg.Kafka.FindingsTopic = "walletguard.findings"
	var out Outputs
	for i := range 40 {
		out.Decisions = append(out.Decisions, detector.Decision{
			DecisionID: fmt.Sprintf("dec-%d", i), AccountID: fmt.Sprintf("acc-%04d", i), MerchantID: "m-0087",
			TS: time.Date(2026, 3, 1, 12, i, 0, 0, time.UTC), Action: "allow",
			Rules: []detector.Hit{{ID: "merchant_outage", Category: "merchant_outage", Severity: "high", Group: "merchant:m-0087"}},
		})
	}
	msgs, _ := a.encodeOutputs(nil, nil, &out)
	for _, n := range []int{4, 12} {
		parts := map[int]int{} // findings by partition
		accounts := map[int]bool{}
		for _, m := range msgs {
			if m.Topic == a.cfg.Kafka.FindingsTopic {
				parts[ingest.KeyPartition(m.Key, n)]++
				accounts[ingest.KeyPartition([]byte(accountOf(t, m.Value)), n)] = true
			}
		}
		if len(accounts) < 2 {
			t.Fatalf("the findings' accounts fall in %d of %d partitions: the check covers nothing", len(accounts), n)
		}
		if len(parts) != 1 {
			t.Errorf("findings of accounts in %d partitions spread over %d of the findings topic's %d: %v", len(accounts), len(parts), n, parts)
		}
	}
}

// TestLeadRemembersWhatItFoldedBeforeARestart: a decision made again after
// a takeover reaches the findings topic twice under one id. The lead folds
// it once — also when its first copy came before the place the lead starts
// from (after a restart, or taking over from another lead) and its second
// after: it reads back the decisions before that place to remember them.
// Support sees an alert's count as one lead throughout would have kept it.
func TestLeadRemembersWhatItFoldedBeforeARestart(t *testing.T) {
	broker := eventBroker(t, 4)
	cfg := testConfig(t, t.TempDir())
	cfg.Kafka.Brokers = []string{broker.Addr()}
	cfg.Kafka.ChangelogTopic = "walletguard.changelog"
	cfg.Kafka.SharePartitions = true
	msgs, _ := simMessages(t, 400, 17, 9000) // with a credential-stuffing wave
	produce(t, broker.Addr(), "wallet.events", msgs...)

	counts := func(r *running) (alerts, findings int) {
		r.app.procMu.Lock()
		defer r.app.procMu.Unlock()
		for _, al := range r.app.proc.Alerts.All() {
			if al.IsSpanning() {
				alerts++
				findings += al.Count
			}
		}
		return alerts, findings
	}
	read := func(r *running, result string) float64 {
		return metric(t, r.app.HTTPAddr(), `walletguard_findings_read_total{result="`+result+`"}`)
	}
	a := start(t, cfg)
	waitFor(t, 60*time.Second, "every event to be decided", func() bool { return a.app.Snapshot().Consumed == float64(len(msgs)) })
	var folded float64
	waitFor(t, 30*time.Second, "the lead to fold the findings", func() bool {
		n := read(a, "folded")
		settledNow := n > 0 && n == folded
		folded = n
		return settledNow
	})
	alertsBefore, findingsBefore := counts(a)
	a.stop(t)

	// The first finding, written again: as by a member that decided its
	// event again after taking its partition over.
	first := readAll(t, broker.Addr(), cfg.Kafka.FindingsTopic, int(folded), 30*time.Second)[0]
	// A transport of its own: the shared one's metadata, cached when the
	// events were produced, lacks the findings topic for a few seconds.
	w := &kafka.Writer{Addr: kafka.TCP(broker.Addr()), Topic: cfg.Kafka.FindingsTopic, Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll, Transport: &kafka.Transport{}}
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: first.Key, Value: first.Value}); err != nil {
		t.Fatal(err)
	}
	w.Close()

	b := start(t, cfg) // on the same volume: it leads from the place it stopped at
	waitFor(t, 30*time.Second, "the restarted lead to read the finding written again", func() bool {
		return read(b, "repeat")+read(b, "folded") >= 1
	})
	// The copy is the last record of the findings' one partition: what
	// came before it is folded too.
	alertsAfter, findingsAfter := counts(b)
	repeats, refolded := read(b, "repeat"), read(b, "folded")
	b.stop(t) // before the broker
	t.Logf("%v findings folded, into %d alerts that span accounts counting %d; after the restart %d alerts counting %d; read again: %v repeat, %v folded",
		folded, alertsBefore, findingsBefore, alertsAfter, findingsAfter, repeats, refolded)
	if alertsBefore == 0 {
		t.Fatal("the stream raised no alert that spans accounts")
	}
	if alertsAfter != alertsBefore || findingsAfter != findingsBefore {
		t.Errorf("a decision folded before the restart, read again after it, changed the alerts that span accounts: %d counting %d, then %d counting %d",
			alertsBefore, findingsBefore, alertsAfter, findingsAfter)
	}
	if repeats != 1 {
		t.Errorf("the finding written again was not taken for a repeat: %v repeats, %v folded", repeats, refolded)
	}
}
