package app

import (
	"encoding/json"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/outbox"
)

// On taking over, a standby delivers again the latest version of each
// alert it followed within alerts.takeover_redeliver, and nothing older:
// support gets no stale copy of an alert that has changed since, and no
// burst of alerts from long ago.
func TestTakeoverRedeliversRecentAlertsOnce(t *testing.T) {
	cfg := config.Default()
	cfg.Alerts.TakeoverRedeliver = config.Duration(10 * time.Minute)
	a := bareApp(t, cfg)

	t0 := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	alert := func(id, status string) alerts.Alert { return alerts.Alert{AlertID: id, Status: status} }
	at := func(offset int64) eventPlace { return eventPlace{"wallet.events", 0, offset} }
	a.learnAlerts([]alerts.Alert{alert("old", "open")}, at(10), t0)
	a.learnAlerts([]alerts.Alert{alert("takeover", "open"), alert("stuck", "open")}, at(20), t0.Add(15*time.Minute))
	a.learnAlerts([]alerts.Alert{alert("takeover", "acknowledged")}, at(30), t0.Add(16*time.Minute))
	a.redeliverLearned(t0.Add(17 * time.Minute))

	got := map[string]string{}
	for _, al := range a.alertQ.take() {
		if _, dup := got[al.AlertID]; dup {
			t.Errorf("alert %s queued twice", al.AlertID)
		}
		got[al.AlertID] = al.Status
	}
	want := map[string]string{"takeover": "acknowledged", "stuck": "open"}
	if len(got) != len(want) || got["takeover"] != want["takeover"] || got["stuck"] != want["stuck"] {
		t.Errorf("delivered again %v, want %v", got, want)
	}

	// Taken over once, the standby owns: nothing is left to deliver again.
	a.redeliverLearned(t0.Add(18 * time.Minute))
	if left := a.alertQ.take(); len(left) != 0 {
		t.Errorf("a second takeover check delivered %d alerts again", len(left))
	}

	// With the window at 0 nothing is kept.
	a.cfg.Alerts.TakeoverRedeliver = 0
	a.learnAlerts([]alerts.Alert{alert("late", "open")}, at(40), t0.Add(20*time.Minute))
	if a.learned != nil {
		t.Errorf("kept %d alerts with takeover_redeliver 0", len(a.learned))
	}
}

// A handover from an owner that stopped with its outbox delivered covers
// the alerts of the events before the offsets it names, on the partitions
// where the group's committed offset is exactly there: taking over, the
// standby delivers again just the rest.
func TestHandoverForgetsWhatTheOwnerDelivered(t *testing.T) {
	cfg := config.Default()
	a := bareApp(t, cfg)
	now := time.Now()
	learn := func(id, topic string, partition int, offset int64) {
		a.learnAlerts([]alerts.Alert{{AlertID: id, Status: "open"}}, eventPlace{topic, partition, offset}, now)
	}
	learn("p0-before", "wallet.events", 0, 5)
	learn("p0-after", "wallet.events", 0, 15)
	learn("p1-before", "wallet.events", 1, 7)
	learn("p2-unnamed", "wallet.events", 2, 1)
	learn("other-topic", "wallet.logins", 0, 3)

	h, _ := json.Marshal(manualAction{Handover: true, At: now, After: map[string]map[int]int64{"wallet.events": {0: 10, 1: 8}}})
	a.received(0, 41, h)
	a.adoptManual(map[string]map[int]int64{"wallet.events": {0: 2}}) // a handover is no change to adopt
	learn("p0-late-follow", "wallet.events", 0, 9)                   // followed after the handover was read
	if got := a.handedOver("wallet.events", 0, 10); got != 10 {
		t.Errorf("partition 0, committed where the handover says: handed over below %d, want 10", got)
	}
	if got := a.handedOver("wallet.events", 1, 9); got != -1 {
		t.Errorf("partition 1, committed past the handover (decided since): %d, want -1", got)
	}
	if got := a.handedOver("wallet.events", 2, 4); got != -1 {
		t.Errorf("partition 2, which no handover names: %d, want -1", got)
	}
	a.takeOver()

	got := map[string]bool{}
	for _, al := range a.alertQ.take() {
		got[al.AlertID] = true
	}
	want := map[string]bool{"p0-after": true, "p1-before": true, "p2-unnamed": true, "other-topic": true}
	if !maps.Equal(got, want) {
		t.Errorf("delivered again after a handover: %v, want %v", got, want)
	}
}

// TestPlannedHandoverSendsNothingTwice: the owner is stopped (a rolling
// restart), with support's receiver up, while a standby follows it some
// way behind. The owner delivers everything and hands over; the standby
// follows up to where the owner stopped, takes over, and sends support no
// alert again and decides no event the owner decided: every event has one
// decision, and the new owner decides only what came after the stop.
func TestPlannedHandoverSendsNothingTwice(t *testing.T) {
	t.Run("standby behind", func(t *testing.T) { plannedHandover(t, false) })
	// The owner never commits before it stops, so the standby has followed
	// nothing: it must start from where its following started, not from
	// the committed offset with an empty picture of what came before.
	t.Run("standby followed nothing yet", func(t *testing.T) { plannedHandover(t, true) })
}

func plannedHandover(t *testing.T, followedNothing bool) {
	actions := config.Default().Kafka.ActionsTopic
	broker := eventBroker(t, 4, actions)
	rc := &receiver{secret: "hook-secret", ids: map[string]int{}}
	hook := httptestServer(t, rc)
	instance := func() config.Config {
		cfg := testConfig(t, t.TempDir())
		cfg.Kafka.Brokers = []string{broker.Addr()}
		cfg.Alerts.Webhooks = []config.Webhook{{URL: hook + "/hook", Secret: "hook-secret", Name: "support", Language: "en"}}
		return cfg
	}
	msgs, _ := simMessages(t, 400, 11, 12000)
	msgs = append(msgs, takeoverEvents(t)...)
	// The owner alone; then followed; then stopped right after deciding
	// more, which the standby has not followed yet; the rest after.
	cut := []int{len(msgs) * 3 / 4, len(msgs) * 7 / 8}
	produce(t, broker.Addr(), "wallet.events", msgs[:cut[0]]...)

	cfgA := instance()
	// Commits seconds apart: the standby, which follows only what is
	// committed, is that far behind when the owner stops.
	cfgA.Kafka.CommitInterval = config.Duration(3 * time.Second)
	if followedNothing {
		cfgA.Kafka.CommitInterval = config.Duration(time.Minute)
	}
	a := start(t, cfgA)
	if !followedNothing {
		waitFor(t, 60*time.Second, "the owner to commit the first part", func() bool { return committedOffsets(t, broker.Addr()) == int64(cut[0]) })
	}
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	cfgB := instance()
	// The standby reads the committed offsets when it starts and then only
	// every 30 s: it follows the first part at once, and none of the
	// second before the owner stops.
	cfgB.Kafka.CommitInterval = config.Duration(30 * time.Second)
	appB, err := New(cfgB, quiet, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := launch(t, appB)
	if followedNothing {
		waitFor(t, 60*time.Second, "the second instance to stand by", func() bool {
			code, body := readyz(b.app.HTTPAddr())
			return code == http.StatusServiceUnavailable && strings.Contains(body, "standing by")
		})
	} else {
		waitFor(t, 60*time.Second, "the standby to follow the first part", func() bool {
			return metric(t, b.app.HTTPAddr(), "walletguard_events_followed_total") == float64(cut[0])
		})
	}
	produce(t, broker.Addr(), "wallet.events", msgs[cut[0]:cut[1]]...)
	waitFor(t, 60*time.Second, "the owner to decide the second part", func() bool { return a.app.Snapshot().Consumed == float64(cut[1]) })
	raised := alertIDs(t, a.app.HTTPAddr())
	if len(raised) < 3 {
		t.Fatalf("only %d alerts raised; the traffic should hold several incidents", len(raised))
	}
	behind := float64(cut[1]) - metric(t, b.app.HTTPAddr(), "walletguard_events_followed_total")

	a.stop(t) // SIGTERM
	rc.mu.Lock()
	beforeStop := len(rc.bodies) // deliveries by the old owner, for a failure to say whose a repeat was
	rc.mu.Unlock()
	waitFor(t, 30*time.Second, "the standby to take over", func() bool {
		code, _ := readyz(b.app.HTTPAddr())
		return code == http.StatusOK
	})
	produce(t, broker.Addr(), "wallet.events", msgs[cut[1]:]...)
	waitFor(t, 60*time.Second, "the new owner to decide the rest", func() bool {
		return b.app.Snapshot().Consumed >= float64(len(msgs)-cut[1])
	})
	waitFor(t, 30*time.Second, "the new owner's outbox to drain", func() bool {
		return metric(t, b.app.HTTPAddr(), `walletguard_outbox_pending{destination="alerts:support"}`) == 0
	})
	if got := b.app.Snapshot().Consumed; got != float64(len(msgs)-cut[1]) {
		t.Errorf("the new owner decided %v events, want only the %d produced after the handover", got, len(msgs)-cut[1])
	}
	if got := metric(t, b.app.HTTPAddr(), "walletguard_events_followed_total"); got != float64(cut[1]) {
		t.Errorf("the new owner followed %v events, want the %d the old one decided", got, cut[1])
	}
	if got := metric(t, b.app.HTTPAddr(), "walletguard_alerts_redelivered_total"); got != 0 {
		t.Errorf("the new owner delivered %v alerts again after a handover", got)
	}
	if yes, no := metric(t, b.app.HTTPAddr(), `walletguard_takeovers_total{handover="yes"}`), metric(t, b.app.HTTPAddr(), `walletguard_takeovers_total{handover="no"}`); yes != 4 || no != 0 {
		t.Errorf("takeovers counted: %v handed over, %v not; want all 4 partitions handed over", yes, no)
	}
	b.stop(t)

	byEvent := eventDecisions(t, readAll(t, broker.Addr(), "walletguard.decisions", len(msgs), 60*time.Second))
	twice := 0
	for _, n := range byEvent {
		if n > 1 {
			twice++
		}
	}
	if len(byEvent) != len(msgs) || twice > 0 {
		t.Errorf("%d events decided, %d of them more than once; want each of %d once", len(byEvent), twice, len(msgs))
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	seen := map[string]int{}
	for i, body := range rc.bodies {
		if first, ok := seen[string(body)]; ok {
			t.Errorf("support got the same alert record twice, as deliveries %d and %d of %d (the old owner made the first %d): %.2000s",
				first, i, len(rc.bodies), beforeStop, body)
		}
		seen[string(body)] = i
	}
	for id := range raised {
		if rc.ids[id] == 0 {
			t.Errorf("alert %s the old owner raised never reached support", id)
		}
	}
	t.Logf("standby %v events behind at the stop; %d alerts raised before it, %d deliveries in all", behind, len(raised), len(rc.bodies))
}

// The commands of a manual action adopted from the owner are kept for a
// takeover, unless a handover read with the partition covers where the
// owner stood when it made the change.
func TestManualCommandsAreLearnedUnlessHandedOver(t *testing.T) {
	a := bareApp(t, config.Default())
	cmd := func(id string) []enforce.Command {
		return []enforce.Command{{CommandID: id, Command: enforce.CmdUnfreeze}}
	}
	a.learnManualCommands(&manualAction{Commands: cmd("before"), After: map[string]map[int]int64{"wallet.events": {1: 30, 0: 10}}}, time.Now())
	a.learnManualCommands(&manualAction{Commands: cmd("after"), After: map[string]map[int]int64{"wallet.events": {0: 25}}}, time.Now())
	a.manualMu.Lock()
	a.handedOverTo = map[string]map[int]int64{"wallet.events": {0: 20}}
	a.manualMu.Unlock()
	a.learnManualCommands(&manualAction{Commands: cmd("covered"), After: map[string]map[int]int64{"wallet.events": {0: 15}}}, time.Now())
	a.forgetDelivered(a.handedOverTo)
	var kept []string
	for _, l := range a.learned {
		if l.command == nil || !l.manual {
			t.Fatalf("learned %+v, want manual commands only", l)
		}
		kept = append(kept, l.command.CommandID)
	}
	if strings.Join(kept, ",") != "after" {
		t.Errorf("kept %v for the takeover, want [after]: the others were made before the handover's offsets", kept)
	}
}

// What a restored owner's outbox held goes into this instance's outbox on
// taking over — with its ids and ages, for the destinations this instance
// has — unless the owner handed over past the restored state.
func TestOwedRecordsGoOutUnlessHandedOver(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Alerts.Webhooks = []config.Webhook{{URL: "http://127.0.0.1:1/hook", Secret: "s", Name: "support"}}
	a := mustNew(t, cfg, Options{})
	t.Cleanup(a.runCleanup)
	added := time.Date(2026, 11, 30, 23, 0, 0, 0, time.UTC)
	stored := func(id string) []byte {
		b, _ := json.Marshal(outbox.Item{ID: id, Payload: json.RawMessage(`{"alert_id":"` + id + `"}`), AddedAt: added})
		return b
	}
	owed := func() *owedOutbox {
		return &owedOutbox{offsets: detector.Offsets{"wallet.events": {0: 100, 1: 50}}, records: []owedRecord{
			{dest: alertDest("support"), stored: stored("alt_1")},
			{dest: alertDest("support"), stored: stored("alt_2")},
			{dest: alertDest("gone-receiver"), stored: stored("alt_3")},
		}}
	}

	// The owner handed over past the state: it delivered all of them.
	a.handoverAt = map[string]map[int]int64{"wallet.events": {0: 100, 1: 60}}
	a.owed = owed()
	a.deliverOwed()
	if n, _ := a.box.Pending(alertDest("support")); n != 0 || a.owed != nil {
		t.Errorf("after a handover past the state, %d records put in the outbox, want none", n)
	}

	// A handover short of the state on one partition covers nothing.
	a.handoverAt = map[string]map[int]int64{"wallet.events": {0: 100, 1: 49}}
	a.owed = owed()
	a.deliverOwed()
	items, _ := a.box.Waiting(alertDest("support"))
	if len(items) != 2 || items[0].ID != "alt_1" || items[1].ID != "alt_2" || !items[0].AddedAt.Equal(added) {
		t.Fatalf("outbox for support holds %+v, want alt_1 then alt_2, added when the owner added them", items)
	}
	if n, _ := a.box.Pending(alertDest("gone-receiver")); n != 0 {
		t.Errorf("%d records put for a receiver this instance does not have", n)
	}
	if n := testutil.ToFloat64(a.amet.outboxRestored.WithLabelValues(alertDest("support"))); n != 2 {
		t.Errorf("walletguard_outbox_restored_total{destination=alerts:support} = %v, want 2", n)
	}
}
