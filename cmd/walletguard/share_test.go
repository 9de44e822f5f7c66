package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/api"
	"github.com/walletguard/walletguard/rules"
	"github.com/walletguard/walletguard/sim"
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

// accountViews reads a decisions topic: by decision id, what of each
// decision its account's own history decides — the rules that fired, but
// those that count over many accounts — and, by event, how many decisions
// it has. A decision written twice (decided again after a takeover) must
// read the same both times.
func accountViews(t *testing.T, broker, topic string) (views map[string]string, perEvent map[string]int) {
	t.Helper()
	views, perEvent = map[string]string{}, map[string]int{}
	for _, m := range readTopic(t, broker, topic) {
		var d struct {
			DecisionID string `json:"decision_id"`
			EventID    string `json:"event_id"`
			Trigger    string `json:"trigger"`
			Rules      []struct {
				ID string `json:"id"`
			} `json:"rules"`
		}
		if err := json.Unmarshal(m.Value, &d); err != nil {
			t.Fatalf("decision %s: %v", m.Value, err)
		}
		view := d.EventID + " " + d.Trigger
		n := 0
		for _, r := range d.Rules {
			if !acrossAccounts[r.ID] {
				view += " | " + r.ID
				n++
			}
		}
		if d.Trigger == "event" {
			perEvent[d.EventID]++
		} else if n == 0 {
			continue // a timer of rules across accounts alone
		}
		if prev, ok := views[d.DecisionID]; ok && prev != view {
			t.Fatalf("decision %s written twice, otherwise: %q and %q", d.DecisionID, prev, view)
		}
		views[d.DecisionID] = view
	}
	return views, perEvent
}

// TestSharingMembersSurviveAKill runs three walletguards that share the
// four partitions of a stream (kafka.share_partitions), as separate
// processes against one broker, and kills one with SIGKILL mid-stream. The
// survivors take its partitions over with their state from the changelog
// and decide on, and a fourth joins later on an empty volume: every event
// is decided, and every decision equals — in what the account's own
// history decides — that of one walletguard deciding the same events
// alone. What the killed member decided after its last published state is
// decided again, under the same ids.
func TestSharingMembersSurviveAKill(t *testing.T) {
	fail := newRecap(t)
	bin := buildBinary(t)
	brokerAddr := freePort(t)
	brokerCmd := runBroker(t, bin, brokerAddr, 4, "")
	t.Cleanup(func() { brokerCmd.Process.Signal(syscall.SIGTERM); brokerCmd.Wait() })
	scfg := sim.DefaultConfig(3000)
	scfg.Seed, scfg.HistoryDays, scfg.Duration = 31, 2, 24*time.Hour
	msgs := simMessages(scfg)

	// Support's webhooks: the members' and the lone walletguard's.
	hooks, refHook := receiveAlerts(t), receiveAlerts(t)
	configOf := func(name, kafkaExtra string) memberConfig {
		hook := hooks
		if name == "ref" {
			hook = refHook
		}
		c := memberConfig{path: filepath.Join(t.TempDir(), name+".yaml"), http: freePort(t)}
		writeFile(t, c.path, fmt.Sprintf("data_dir: %s\nkafka: {brokers: [%s], session_timeout: 2s, commit_interval: 200ms%s}\n"+
			"http: {listen: %s}\ndetector: {checkpoint_interval: 300ms}\nalerts: {webhooks: [{url: \"%s/hook\", secret: s3cret, name: support}]}\n",
			filepath.Join(t.TempDir(), name), brokerAddr, kafkaExtra, c.http, hook.url))
		return c
	}
	shared := ", changelog_topic: walletguard.changelog, share_partitions: true"
	members := []*member{
		startMember(t, bin, configOf("a", shared)),
		startMember(t, bin, configOf("b", shared)),
		startMember(t, bin, configOf("c", shared)),
	}
	assigned := func(m *member) float64 { return metricSum(m.http, "walletguard_partitions_assigned") }
	waitUntil(t, "the three to share the four partitions", time.Minute, func() bool {
		return assigned(members[0]) >= 1 && assigned(members[1]) >= 1 && assigned(members[2]) >= 1 &&
			assigned(members[0])+assigned(members[1])+assigned(members[2]) == 4
	})
	// The member killed is the lead: the one deciding partition 0, which
	// raises the alerts that span accounts from every member's findings.
	var victim *member
	waitUntil(t, "one member to lead", time.Minute, func() bool {
		victim = nil
		for _, m := range members {
			if metricSum(m.http, "walletguard_spanning_alerts_lead") == 1 {
				if victim != nil {
					return false
				}
				victim = m
			}
		}
		return victim != nil
	})

	w := &kafka.Writer{Addr: kafka.TCP(brokerAddr), Topic: "wallet.events", Balancer: &kafka.Murmur2Balancer{}, BatchSize: 5000, BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll}
	const parts = 10
	var killedAt float64
	var joined *member
	var joinedAt int // events produced when it joined
	for i := range parts {
		if err := w.WriteMessages(context.Background(), msgs[i*len(msgs)/parts:(i+1)*len(msgs)/parts]...); err != nil {
			t.Fatal(err)
		}
		if i == parts/2 {
			produced := float64((i + 1) * len(msgs) / parts)
			waitUntil(t, "the members to decide most of what was produced", 2*time.Minute, func() bool {
				var n float64
				for _, m := range members {
					n += consumed(m.http)
				}
				return n >= produced*0.8
			})
			killedAt = consumed(victim.http)
			if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			victim.cmd.Wait()
		}
		if i == parts/2+2 {
			// A fourth joins on an empty volume: it takes partitions
			// from the survivors, what spans accounts with them.
			joined = startMember(t, bin, configOf("d", shared))
			members = append(members, joined)
			joinedAt = (i + 1) * len(msgs) / parts
			waitUntil(t, "the member joining to decide a partition", time.Minute, func() bool { return assigned(joined) >= 1 })
		}
	}
	w.Close()

	var got map[string]string
	var perEvent map[string]int
	waitUntil(t, "the survivors to decide every event", 3*time.Minute, func() bool {
		got, perEvent = accountViews(t, brokerAddr, "walletguard.decisions")
		return len(perEvent) == len(msgs)
	})
	again := 0
	for _, n := range perEvent {
		again += n - 1
	}

	// One walletguard alone, in a group of its own, on the same events.
	ref := startMember(t, bin, configOf("ref", ", group_id: ref, decisions_topic: ref.decisions, commands_topic: ref.commands, dlq_topic: ref.dlq, actions_topic: ref.actions"))
	var want map[string]string
	waitUntil(t, "one walletguard alone to decide every event", 3*time.Minute, func() bool {
		var n map[string]int
		want, n = accountViews(t, brokerAddr, "ref.decisions")
		return len(n) == len(msgs)
	})
	_ = ref

	differ, missing := 0, 0
	for id, v := range want {
		g, ok := got[id]
		switch {
		case !ok:
			missing++
			t.Logf("not made by the members: %s %s", id, v)
		case g != v:
			differ++
			t.Logf("decision %s: alone %q, shared %q", id, v, g)
		}
	}
	extra := len(got) - (len(want) - missing)
	t.Logf("%d events; the member killed had decided %v; %d events decided again after the kill; %d decisions, %d differ from one walletguard's, %d missing, %d more",
		len(msgs), killedAt, again, len(want), differ, missing, extra)
	if killedAt == 0 {
		fail.Errorf("the member killed had decided nothing: the test does not cover a takeover")
	}
	// The member that joined on an empty volume took what spans accounts
	// from the changelog with its partitions: in the end every member holds
	// the same devices, IPs, payees and merchants. (Had it observed the
	// other partitions from their beginning instead, it would lack the
	// history of its own.)
	alive := []*member{}
	for _, m := range members {
		if m != victim {
			alive = append(alive, m)
		}
	}
	var counts []map[string]float64
	sameEntities := func() bool {
		counts = counts[:0]
		for _, m := range alive {
			counts = append(counts, entityCounts(m.http))
		}
		for _, c := range counts[1:] {
			if !maps.Equal(c, counts[0]) || len(c) != 4 {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(30 * time.Second)
	for !sameEntities() && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("the member joining after %d events observed %v; devices, IPs, payees, merchants held by each member alive: %v",
		joinedAt, metricSum(joined.http, "walletguard_events_observed_total"), counts)
	if !sameEntities() {
		fail.Errorf("the members alive hold different entity state, the one that joined on an empty volume last: %v", counts)
	}
	if differ+missing+extra != 0 {
		fail.Errorf("the members' decisions differ from one walletguard's: %d otherwise, %d missing, %d more", differ, missing, extra)
	}

	// The gateway may ask any member about any account: each answers
	// what the member deciding it holds, the killed member's accounts
	// included. The commands tell which accounts were frozen.
	frozen := map[string]bool{}
	for _, m := range readTopic(t, brokerAddr, "walletguard.account-commands") {
		var c struct {
			Command   string `json:"command"`
			AccountID string `json:"account_id"`
		}
		if err := json.Unmarshal(m.Value, &c); err != nil {
			t.Fatalf("command %s: %v", m.Value, err)
		}
		switch c.Command {
		case "freeze":
			frozen[c.AccountID] = true
		case "unfreeze":
			frozen[c.AccountID] = false
		}
	}
	asked := map[string]bool{}
	for id := range frozen {
		asked[id] = true
	}
	for _, m := range msgs[:200] {
		asked[string(m.Key)] = true // and some that were not
	}
	nFrozen, passed := 0, 0
	for id := range asked {
		if frozen[id] {
			nFrozen++
		}
		for _, m := range members {
			if m == victim {
				continue
			}
			got, to := accountFrozen(t, m.http, id)
			if got != frozen[id] {
				fail.Errorf("asked of the member at %s, account %s reads frozen=%v; its commands say %v", m.http, id, got, frozen[id])
			}
			if to != "" {
				passed++
			}
		}
	}
	t.Logf("%d accounts asked of every member alive (%d frozen); %d answers passed on to the member deciding the account", len(asked), nFrozen, passed)
	if nFrozen == 0 || passed == 0 {
		fail.Errorf("%d frozen accounts, %d answers passed on: the check covers nothing", nFrozen, passed)
	}

	// Support hears of each incident that spans accounts (a merchant
	// outage, credential stuffing from one address) once, as from one
	// walletguard — not once per member, nor again from the member that
	// took the lead over from the one killed.
	// Which merchants, payees and addresses cross a threshold can differ
	// with how the partitions interleave, for one walletguard too (see
	// "Limits" in docs/scaling.md); an incident told twice shows as two
	// alerts with one key within one incident.
	gotAlerts, wantAlerts := hooks.spanning(t), refHook.spanning(t)
	byKey := func(list []alerts.Alert) map[string]int {
		out := map[string]int{}
		for _, al := range list {
			out[al.DedupKey]++
		}
		return out
	}
	gotKeys, wantKeys := byKey(gotAlerts), byKey(wantAlerts)
	t.Logf("alerts that span accounts, incidents by dedup key: members %v; one walletguard %v", gotKeys, wantKeys)
	if r := alerts.Repeats(gotAlerts); len(r) > 0 {
		fail.Errorf("the members told support of one incident more than once: %v", r)
	}
	if r := alerts.Repeats(wantAlerts); len(r) > 0 {
		fail.Errorf("one walletguard told support of one incident more than once: %v", r)
	}
	// Catching up on the backlog, each reads the partitions in step in
	// event time (ingest.DefaultSkew): support hears of the merchant
	// outages and faulty app versions the traffic has, and of no merchant
	// failing where none did (windows read out of order, or judging events
	// decided again after the kill).
	g := sim.New(scfg)
	for _, ok := g.Next(); ok; _, ok = g.Next() {
	}
	incidents := map[string]bool{} // dedup keys
	for _, l := range g.Labels() {
		switch l.Kind {
		case sim.KindMerchantOutage:
			incidents["merchant_outage|merchant:"+l.MerchantID] = true
		case sim.KindAppFault:
			incidents["app_fault|app:"+l.AppVersion] = true
		}
	}
	for who, keys := range map[string]map[string]int{"the members": gotKeys, "one walletguard": wantKeys} {
		for key := range incidents {
			if keys[key] == 0 {
				fail.Errorf("%s did not tell support of %s", who, key)
			}
		}
		for key := range keys {
			if strings.HasPrefix(key, sim.KindMerchantOutage+"|") && !incidents[key] {
				fail.Errorf("%s told support of %s; the traffic's outages and faults: %v", who, key, slices.Sorted(maps.Keys(incidents)))
			}
		}
	}
	both := 0
	for key := range gotKeys {
		if wantKeys[key] > 0 {
			both++
		}
	}
	if both == 0 {
		fail.Errorf("no alert that spans accounts was raised both by the members and by one walletguard: the check covers nothing")
	}
	if n := metricSum(victim.http, "walletguard_spanning_alerts_lead"); n != 0 {
		fail.Errorf("the member killed still leads: %v", n)
	}
}

// recap repeats a test's failures at its end, after the logs of the
// daemons its cleanups print: an excerpt of a long output that keeps its
// head and tail still shows what failed.
type recap struct {
	t    *testing.T
	msgs []string
}

// newRecap is called first in a test, so that its cleanup runs last.
func newRecap(t *testing.T) *recap {
	r := &recap{t: t}
	t.Cleanup(func() {
		if len(r.msgs) > 0 {
			t.Logf("what failed, again:\n%s", strings.Join(r.msgs, "\n"))
		}
	})
	return r
}

func (r *recap) Errorf(format string, args ...any) {
	r.t.Helper()
	msg := fmt.Sprintf(format, args...)
	r.msgs = append(r.msgs, msg)
	r.t.Error(msg)
}

// alertReceiver is support's webhook: the alerts it was sent, by id.
type alertReceiver struct {
	url  string
	mu   sync.Mutex
	keys map[string]alerts.Alert // by alert_id, the last version
	last time.Time               // when the last one came
}

func receiveAlerts(t *testing.T) *alertReceiver {
	t.Helper()
	rc := &alertReceiver{keys: map[string]alerts.Alert{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rc.url = "http://" + ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var al alerts.Alert
		if err := json.NewDecoder(r.Body).Decode(&al); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		defer rc.mu.Unlock()
		rc.keys[al.AlertID] = al
		rc.last = time.Now()
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return rc
}

// spanning waits until nothing new came for three seconds, and lists the
// alerts that span accounts, each id's last version.
func (rc *alertReceiver) spanning(t *testing.T) []alerts.Alert {
	t.Helper()
	waitUntil(t, "the alerts to be delivered", time.Minute, func() bool {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		return time.Since(rc.last) > 3*time.Second
	})
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []alerts.Alert
	for _, al := range rc.keys {
		if al.IsSpanning() {
			out = append(out, al)
		}
	}
	return out
}

// entityCounts reads what a member holds of what spans accounts, by kind.
func entityCounts(addr string) map[string]float64 {
	out := map[string]float64{}
	for _, kind := range []string{"device", "ip", "payee", "merchant"} {
		if v := metricSum(addr, `walletguard_state_entries{kind="`+kind+`"}`); v > 0 {
			out[kind] = v
		}
	}
	return out
}

// accountFrozen asks a member whether an account is frozen, as the gateway
// does, and which member answered if it passed the question on.
func accountFrozen(t *testing.T, addr, id string) (frozen bool, forwardedTo string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addr+"/v1/accounts/"+id, nil)
	req.Header.Set("Authorization", "Bearer change-me")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var acc struct {
		Frozen bool `json:"frozen"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&acc); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET account %s of %s: %d %v", id, addr, resp.StatusCode, err)
	}
	return acc.Frozen, resp.Header.Get(api.ForwardedToHeader)
}
