package app

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
	bolt "go.etcd.io/bbolt"

	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/ingest"
)

// TestChangelogCarriesTheStateToANewStore runs a stream through three
// instances one after the other, on an external broker with a changelog:
// the first on its own store, where support also freezes an account and
// acknowledges an alert; the second on an empty store, which it fills from
// the changelog — detection state, account states and alerts; the third on the second's store, whose last
// checkpoint the changelog is told it lacks. Every event is decided once,
// the second starts with the state the first stopped with, and the third
// writes the whole state to the changelog again, under a new epoch, where
// an instance that trusts its checkpoint is in it writes only what changed.
func TestChangelogCarriesTheStateToANewStore(t *testing.T) {
	broker, withChangelog := changelogBroker(t, 4)
	msgs, evs := simMessages(t, 400, 11, 12000)
	half := len(msgs) / 2
	config := func(dir string) *running { return start(t, withChangelog(dir)) }

	produce(t, broker.Addr(), "wallet.events", msgs[:half]...)
	dirA := t.TempDir()
	a := config(dirA)
	waitFor(t, 60*time.Second, "the first instance to consume the first half", func() bool { return a.app.Snapshot().Consumed == float64(half) })
	// Support acts between checkpoints: a manual freeze of an account with
	// no events, and an alert acknowledged.
	if code, body := call(t, a.app.HTTPAddr(), "POST", "/v1/accounts/acc-quiet/freeze", "admin-token", `{"reason":"customer reported the phone stolen"}`); code != 200 {
		t.Fatalf("manual freeze: %d %v", code, body)
	}
	open := a.app.proc.Alerts.Open()
	if len(open) == 0 {
		t.Fatal("the first half raised no alert: the test does not cover alerts")
	}
	acked := open[0].AlertID
	if code, body := call(t, a.app.HTTPAddr(), "POST", "/v1/alerts/"+acked+"/ack", "admin-token", `{"operator":"rina"}`); code != 200 {
		t.Fatalf("ack: %d %v", code, body)
	}
	a.stop(t)
	want, wantAlerts := a.app.proc.Engine.Stats(), len(a.app.proc.Alerts.All())
	if published(a) == 0 {
		t.Fatal("the first instance published nothing to the changelog")
	}
	wantAudit := auditTrail(t, filepath.Join(dirA, "state", "detector.db"), nil)

	dirB := t.TempDir()
	b := config(dirB)
	if got := b.app.proc.Engine.Stats(); got.Accounts != want.Accounts || got.Devices != want.Devices || got.Payments != want.Payments {
		t.Fatalf("restored from the changelog: %+v, the first instance stopped with %+v", got, want)
	}
	if got := len(b.app.proc.Alerts.All()); got != wantAlerts {
		t.Errorf("restored %d alerts from the changelog, the first instance held %d", got, wantAlerts)
	}
	if al, ok := b.app.proc.Alerts.Get(acked); !ok || al.Status != "acknowledged" || al.AcknowledgedBy == "" {
		t.Errorf("alert %s, acknowledged on the first instance: restored %v, %+v", acked, ok, al)
	}
	if _, acc := call(t, b.app.HTTPAddr(), "GET", "/v1/accounts/acc-quiet", "admin-token", ""); acc["frozen"] != true || acc["frozen_reason"] != "customer reported the phone stolen" {
		t.Errorf("account frozen by hand on the first instance, restored: %v", acc)
	}
	// Support looking the account up finds who froze it and why.
	if _, trail := call(t, b.app.HTTPAddr(), "GET", "/v1/audit?account_id=acc-quiet", "admin-token", ""); !strings.Contains(fmt.Sprint(trail), "customer reported the phone stolen") {
		t.Errorf("audit trail of the account frozen by hand, restored: %v", trail)
	}
	if got := auditTrail(t, "", b.app.store.DB()); !slices.Equal(got, wantAudit) || len(got) < 3 {
		t.Errorf("restored an audit trail of %d entries, the first instance's had %d (want the same, several)", len(got), len(wantAudit))
	}
	produce(t, broker.Addr(), "wallet.events", msgs[half:]...)
	waitFor(t, 60*time.Second, "the second instance to consume the second half", func() bool { return b.app.Snapshot().Consumed == float64(len(msgs)-half) })
	// Checkpoints with nothing new publish nothing new: merchants, which
	// every checkpoint carries whole, go to the changelog only when changed.
	ckpts := metric(t, b.app.HTTPAddr(), "walletguard_checkpoints_total")
	waitFor(t, 10*time.Second, "a checkpoint", func() bool { return metric(t, b.app.HTTPAddr(), "walletguard_checkpoints_total") > ckpts+1 })
	idle := published(b)
	ckpts = metric(t, b.app.HTTPAddr(), "walletguard_checkpoints_total")
	waitFor(t, 10*time.Second, "two more checkpoints", func() bool { return metric(t, b.app.HTTPAddr(), "walletguard_checkpoints_total") > ckpts+1 })
	if n := published(b) - idle; n != 0 {
		t.Errorf("two checkpoints with no new event published %v records", n)
	}
	b.stop(t)
	full := published(b) // the restored state went out whole, then what changed

	byEvent := eventDecisions(t, readAll(t, broker.Addr(), "walletguard.decisions", len(msgs), 60*time.Second))
	for _, ev := range evs {
		if byEvent[ev.EventID] != 1 {
			t.Fatalf("event %s has %d decisions, want exactly 1", ev.EventID, byEvent[ev.EventID])
		}
	}

	// A checkpoint written while the changelog did not take it (a crash
	// between the two): the third instance must not trust the changelog
	// to hold the state its store has.
	db, err := bolt.Open(filepath.Join(dirB, "state", "detector.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bChangelog).Delete(keyPublished) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	c := config(dirB)
	st := c.app.proc.Engine.Stats()
	ckpts = metric(t, c.app.HTTPAddr(), "walletguard_checkpoints_total")
	waitFor(t, 10*time.Second, "a checkpoint", func() bool { return metric(t, c.app.HTTPAddr(), "walletguard_checkpoints_total") > ckpts })
	c.stop(t)
	if n := published(c); n < float64(st.Accounts+st.Devices) {
		t.Errorf("the third instance published %v records: not the whole state of %+v", n, st)
	}
	t.Logf("first instance published %v records; the second, restored, %v; the third, unsure of the changelog, %v", published(a), full, published(c))

	// And the changelog as it is now restores what the third held, its
	// audit trail once, though written again with the new epoch.
	trailC := auditTrail(t, filepath.Join(dirB, "state", "detector.db"), nil)
	d := config(t.TempDir())
	defer d.stop(t)
	if got := d.app.proc.Engine.Stats(); got.Accounts != st.Accounts || got.Devices != st.Devices || got.IPs != st.IPs {
		t.Fatalf("restored from the changelog begun afresh: %+v, want %+v", got, st)
	}
	if got := auditTrail(t, "", d.app.store.DB()); !slices.Equal(got, trailC) || len(got) <= len(wantAudit) {
		t.Errorf("restored an audit trail of %d entries from the changelog begun afresh, the third instance's had %d", len(got), len(trailC))
	}
}

// auditTrail is the audit trail a store holds (at path, or db), each entry
// as JSON, sorted: a restore puts entries in time order, which need not
// be the order they were made in (an automatic action is stamped with its
// event's time, a manual one with the clock's).
func auditTrail(t *testing.T, path string, db *bolt.DB) []string {
	t.Helper()
	if db == nil {
		var err error
		if db, err = bolt.Open(path, 0o600, nil); err != nil {
			t.Fatal(err)
		}
		defer db.Close()
	}
	entries, _, err := enforce.ListAudit(db, "", 1_000_000, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = toJSON(e)
	}
	slices.Sort(out)
	return out
}

// TestChangelogSupersedesAStaleStore: an instance started on an old copy
// of the data directory (a volume restored from last night's backup)
// finds the changelog ahead of its checkpoint and takes the changelog's
// state instead — with what support did since the copy — and goes on
// from where that state was taken. It decides the rest once, and none of
// the events between the copy and the changelog's state again.
func TestChangelogSupersedesAStaleStore(t *testing.T) {
	broker, withChangelog := changelogBroker(t, 3)
	msgs, evs := simMessages(t, 400, 11, 12000)
	third := len(msgs) / 3
	dirA := t.TempDir()

	produce(t, broker.Addr(), "wallet.events", msgs[:third]...)
	a := start(t, withChangelog(dirA))
	waitFor(t, 60*time.Second, "the first third to be decided", func() bool { return a.app.Snapshot().Consumed == float64(third) })
	a.stop(t)
	backup := filepath.Join(t.TempDir(), "backup")
	if err := os.CopyFS(backup, os.DirFS(dirA)); err != nil {
		t.Fatal(err)
	}

	a = start(t, withChangelog(dirA))
	produce(t, broker.Addr(), "wallet.events", msgs[third:2*third]...)
	waitFor(t, 60*time.Second, "the second third to be decided", func() bool { return a.app.Snapshot().Consumed == float64(third) })
	if code, body := call(t, a.app.HTTPAddr(), "POST", "/v1/accounts/acc-quiet/freeze", "admin-token", `{"reason":"customer reported the phone stolen"}`); code != 200 {
		t.Fatalf("manual freeze: %d %v", code, body)
	}
	a.stop(t)
	want, wantAlerts := a.app.State(), len(a.app.proc.Alerts.All())

	b := start(t, withChangelog(backup))
	if got := b.app.State(); got.Accounts != want.Accounts || got.Devices != want.Devices || got.Payments != want.Payments {
		t.Fatalf("started on the old copy: %+v, the changelog's state %+v", got, want)
	}
	if got := len(b.app.proc.Alerts.All()); got != wantAlerts {
		t.Errorf("holds %d alerts, the changelog's state %d", got, wantAlerts)
	}
	if _, acc := call(t, b.app.HTTPAddr(), "GET", "/v1/accounts/acc-quiet", "admin-token", ""); acc["frozen"] != true {
		t.Errorf("account frozen by hand after the copy was taken: %v", acc)
	}
	if n := metric(t, b.app.HTTPAddr(), `walletguard_changelog_restores_total{why="newer"}`); n != 1 {
		t.Errorf("restores counted as newer than the local checkpoint: %v, want 1", n)
	}
	produce(t, broker.Addr(), "wallet.events", msgs[2*third:]...)
	waitFor(t, 60*time.Second, "the last third to be decided", func() bool { return b.app.Snapshot().Consumed >= float64(len(msgs)-2*third) })
	ckpts := metric(t, b.app.HTTPAddr(), "walletguard_checkpoints_total")
	waitFor(t, 10*time.Second, "a checkpoint", func() bool { return metric(t, b.app.HTTPAddr(), "walletguard_checkpoints_total") > ckpts })
	b.stop(t)
	if got := b.app.Snapshot().Consumed; got != float64(len(msgs)-2*third) {
		t.Errorf("consumed %v events, want the last third's %d: it read again what the changelog's state holds", got, len(msgs)-2*third)
	}
	byEvent := eventDecisions(t, readAll(t, broker.Addr(), "walletguard.decisions", len(msgs), 60*time.Second))
	for _, ev := range evs {
		if byEvent[ev.EventID] != 1 {
			t.Fatalf("event %s has %d decisions, want exactly 1", ev.EventID, byEvent[ev.EventID])
		}
	}
	if st := b.app.State(); published(b) < float64(st.Accounts) {
		t.Errorf("published %v records: not the whole state of %+v under a new epoch", published(b), st)
	}

	// Its store now holds that state: started again, it needs the
	// changelog no longer, and holds what it stopped with.
	final := b.app.State()
	c := start(t, withChangelog(backup))
	defer c.stop(t)
	if got := c.app.State(); got != final {
		t.Fatalf("restarted on its store: %+v, stopped with %+v", got, final)
	}
}

// TestColdStandbyRestoresOnTakeover: a standby that does not follow its
// owner (kafka.standby_follow off) holds only the state it started with.
// When the owner stops, hours of events later, it restores the owner's
// newer state from the changelog before it fetches an event, and takes
// over with it — holding what the owner held, a manual freeze included —
// rather than deciding as a new install would. Every event is decided
// once across the two.
func TestColdStandbyRestoresOnTakeover(t *testing.T) {
	broker, withChangelog := changelogBroker(t, 4)
	msgs, evs := simMessages(t, 400, 11, 12000)
	cut := []int{0, 4000, 9000, len(msgs)}

	produce(t, broker.Addr(), "wallet.events", msgs[:cut[1]]...)
	a := start(t, withChangelog(t.TempDir()))
	waitFor(t, 60*time.Second, "the owner to decide the first events", func() bool { return a.app.Snapshot().Consumed == float64(cut[1]) })
	ckpts := metric(t, a.app.HTTPAddr(), "walletguard_checkpoints_total")
	waitFor(t, 10*time.Second, "the owner to publish a checkpoint", func() bool {
		return metric(t, a.app.HTTPAddr(), "walletguard_checkpoints_total") > ckpts+1
	})
	cfgB := withChangelog(t.TempDir())
	cfgB.Kafka.StandbyFollow = false
	// Long enough, in event time, for every alert of the stream: only the
	// owner's handover keeps them from going out again.
	cfgB.Alerts.TakeoverRedeliver = config.Duration(90 * 24 * time.Hour)
	appB, err := New(cfgB, slog.New(slog.DiscardHandler), Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := launch(t, appB)
	atStart := b.app.State()
	if atStart.Accounts == 0 {
		t.Fatal("the standby did not start from the changelog")
	}

	produce(t, broker.Addr(), "wallet.events", msgs[cut[1]:cut[2]]...)
	waitFor(t, 60*time.Second, "the owner to decide the next events", func() bool { return a.app.Snapshot().Consumed == float64(cut[2]) })
	if code, body := call(t, a.app.HTTPAddr(), "POST", "/v1/accounts/acc-quiet/freeze", "admin-token", `{"reason":"customer reported the phone stolen"}`); code != 200 {
		t.Fatalf("manual freeze: %d %v", code, body)
	}
	if got := b.app.State(); got != atStart {
		t.Fatalf("the standby's state changed while it stood by without following: %+v, then %+v", atStart, got)
	}
	a.stop(t)
	want := a.app.State()
	if want.Payees == atStart.Payees && want.Devices == atStart.Devices {
		t.Fatalf("the owner's state did not grow after the standby started (%+v): the test does not cover a takeover", want)
	}

	waitFor(t, 60*time.Second, "the standby to take over", func() bool { code, _ := readyz(b.app.HTTPAddr()); return code == http.StatusOK })
	got := b.app.State()
	got.Timers, want.Timers = 0, 0 // the heaps may hold ended timers yet
	if got != want {
		t.Fatalf("took over with %+v, the owner stopped with %+v", got, want)
	}
	if _, acc := call(t, b.app.HTTPAddr(), "GET", "/v1/accounts/acc-quiet", "admin-token", ""); acc["frozen"] != true {
		t.Errorf("account frozen by hand on the owner, after the takeover: %v", acc)
	}
	// While a restore is under way a change is refused: it would go to the
	// state being replaced.
	b.app.restoring.Store(true)
	if code, body := call(t, b.app.HTTPAddr(), "POST", "/v1/accounts/acc-quiet/unfreeze", "admin-token", `{"reason":"verified owner"}`); code != http.StatusServiceUnavailable ||
		!strings.Contains(fmt.Sprint(body["error"]), "restoring") {
		t.Errorf("unfreeze during a restore: %d %v, want 503 restoring", code, body)
	}
	if code, why := readyz(b.app.HTTPAddr()); code != http.StatusServiceUnavailable || !strings.Contains(why, "restoring") {
		t.Errorf("readiness during a restore: %d %q", code, why)
	}
	b.app.restoring.Store(false)
	for why, want := range map[string]float64{"empty": 1, "takeover": 1, "newer": 0} {
		if n := metric(t, b.app.HTTPAddr(), `walletguard_changelog_restores_total{why="`+why+`"}`); n != want {
			t.Errorf("restores counted as %s: %v, want %v", why, n, want)
		}
	}
	produce(t, broker.Addr(), "wallet.events", msgs[cut[2]:]...)
	waitFor(t, 60*time.Second, "the new owner to decide the rest", func() bool { return b.app.Snapshot().Consumed >= float64(cut[3]-cut[2]) })
	restored := len(b.app.proc.Alerts.All())
	b.stop(t)
	// The owner stopped with its outbox delivered and said so: what the
	// standby restored goes to support no second time.
	if n := testutil.ToFloat64(b.app.amet.alertsRedelivered); n != 0 || restored == 0 {
		t.Errorf("%v of %d alerts held delivered again after a handover, want none of several", n, restored)
	}
	if n := testutil.CollectAndCount(b.app.amet.outboxRestored); n != 0 {
		t.Errorf("outbox records restored delivered again after a handover, to %d destinations, want none", n)
	}
	if n := b.app.Snapshot().Consumed; n != float64(cut[3]-cut[2]) {
		t.Errorf("the new owner decided %v events, want the %d after the takeover", n, cut[3]-cut[2])
	}
	byEvent := eventDecisions(t, readAll(t, broker.Addr(), "walletguard.decisions", len(msgs), 60*time.Second))
	for _, ev := range evs {
		if byEvent[ev.EventID] != 1 {
			t.Fatalf("event %s has %d decisions, want exactly 1", ev.EventID, byEvent[ev.EventID])
		}
	}
}

// TestOnlyTheOwnerWritesTheChangelog: with an owner and a following
// standby both configured with the changelog, the standby publishes
// nothing while it stands by — the changelog is the owner's, and two
// writers' epochs would compact each other's rows away. When it takes
// over it publishes its whole state under a new epoch, which a third
// instance on an empty store then restores.
func TestOnlyTheOwnerWritesTheChangelog(t *testing.T) {
	broker, withChangelog := changelogBroker(t, 2)
	msgs, _ := simMessages(t, 400, 11, 6000)
	config := func() config.Config { return withChangelog(t.TempDir()) }

	produce(t, broker.Addr(), "wallet.events", msgs[:4000]...)
	a := start(t, config())
	waitFor(t, 60*time.Second, "the owner to consume the first events", func() bool { return a.app.Snapshot().Consumed == 4000 })
	appB, err := New(config(), slog.New(slog.DiscardHandler), Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := launch(t, appB) // a standby is never ready
	// It starts from the owner's changelog (its store is empty), then
	// follows the rest.
	waitFor(t, 60*time.Second, "the standby to hold the owner's accounts", func() bool {
		return b.app.State().Accounts == a.app.State().Accounts && metric(t, b.app.HTTPAddr(), "walletguard_standby_follow_lag") == 0
	})
	ckpts := metric(t, b.app.HTTPAddr(), "walletguard_checkpoints_total")
	waitFor(t, 10*time.Second, "the standby to checkpoint", func() bool { return metric(t, b.app.HTTPAddr(), "walletguard_checkpoints_total") > ckpts })
	if n := published(b); n != 0 {
		t.Fatalf("the standby published %v records to the changelog", n)
	}

	a.stop(t)
	produce(t, broker.Addr(), "wallet.events", msgs[4000:]...)
	waitFor(t, 60*time.Second, "the standby to take over and publish", func() bool {
		return b.app.Snapshot().Consumed > 0 && published(b) > 0
	})
	if st := b.app.State(); published(b) < float64(st.Accounts) {
		t.Errorf("the new owner's first publish has %v records, not its whole state (%+v)", published(b), st)
	}
	waitFor(t, 60*time.Second, "the new owner to decide the rest", func() bool {
		return b.app.Snapshot().Consumed >= float64(len(msgs)-4000)
	})
	b.stop(t)
	want := b.app.State()

	c := start(t, config())
	defer c.stop(t)
	if got := c.app.State(); got.Accounts != want.Accounts || got.Devices != want.Devices || got.IPs != want.IPs {
		t.Fatalf("restored from the changelog: %+v, the last owner stopped with %+v", got, want)
	}
}

// changelogBroker starts a broker with partitions for wallet.events, and
// returns it with the config of an instance on it, with a changelog, on
// data_dir dir.
func changelogBroker(t *testing.T, partitions int) (*ingest.EmbeddedBroker, func(dir string) config.Config) {
	t.Helper()
	broker := eventBroker(t, partitions)
	return broker, func(dir string) config.Config {
		cfg := testConfig(t, dir)
		cfg.Kafka.Brokers = []string{broker.Addr()}
		cfg.Kafka.ChangelogTopic = "walletguard.changelog"
		return cfg
	}
}

// published counts the state records r published to its changelog.
func published(r *running) float64 { return testutil.ToFloat64(r.app.amet.changelogRecords) }

// TestTakeoverDeliversWhatTheOwnerOwed: support's webhook and the
// wallet's account service are down while the owner decides a stream and
// a support agent freezes an account by hand, so its outbox holds every
// alert and every command when it stops, without a handover. Its data_dir
// is lost. The instance that takes over on an empty store restores the
// state from the changelog and, with it, what the owner still owed: once
// the receivers are back, support has every alert the owner raised and
// the account service every command it issued, though the new owner
// decides none of those events again.
func TestTakeoverDeliversWhatTheOwnerOwed(t *testing.T) {
	broker, withChangelog := changelogBroker(t, 4)
	msgs, _ := simMessages(t, 400, 17, 6000)
	hookAddr, svcAddr := freePort(t), freePort(t)
	// A second receiver refuses every alert: they go to the dead-letter
	// list, which support reads, and which must survive the lost data_dir.
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "unknown tenant", http.StatusBadRequest)
	}))
	t.Cleanup(refusing.Close)
	instance := func() config.Config {
		cfg := withChangelog(t.TempDir())
		cfg.Kafka.ShutdownTimeout = config.Duration(3 * time.Second)
		cfg.Alerts.Webhooks = []config.Webhook{{URL: "http://" + hookAddr + "/hook", Secret: "hook-secret", Name: "support", Language: "en"},
			{URL: refusing.URL + "/hook", Secret: "desk-secret", Name: "fraud-desk", Language: "en"}}
		cfg.Enforce.AccountService = config.Webhook{URL: "http://" + svcAddr + "/commands", Secret: "svc-secret"}
		return cfg
	}

	produce(t, broker.Addr(), "wallet.events", msgs...)
	a := start(t, instance())
	waitFor(t, 60*time.Second, "the owner to decide the stream", func() bool { return a.app.Snapshot().Consumed == float64(len(msgs)) })
	if code, body := call(t, a.app.HTTPAddr(), "POST", "/v1/accounts/acc-quiet/freeze", "admin-token", `{"reason":"customer reported the phone stolen"}`); code != 200 {
		t.Fatalf("manual freeze: %d %v", code, body)
	}
	waitFor(t, 30*time.Second, "the refusing receiver's alerts to be given up on", func() bool {
		n, _ := a.app.box.Pending(alertDest("fraud-desk"))
		return n == 0
	})
	ckpts := metric(t, a.app.HTTPAddr(), "walletguard_checkpoints_total")
	waitFor(t, 10*time.Second, "the owner to checkpoint what it decided", func() bool {
		return metric(t, a.app.HTTPAddr(), "walletguard_checkpoints_total") > ckpts+1
	})
	owedAlerts, _ := a.app.box.Pending(alertDest("support"))
	deadLetters := func(a *App) map[string]string {
		out := map[string]string{}
		for _, it := range a.deadAlerts(100000) {
			out[it.Dest+" "+it.ID] = it.LastError
		}
		return out
	}
	dead := deadLetters(a.app)
	if n := metric(t, a.app.HTTPAddr(), `walletguard_deliveries_total{destination="alerts:fraud-desk",outcome="dead"}`); n != float64(len(dead)) {
		t.Errorf("walletguard_deliveries_total{outcome=dead} = %v, the dead-letter list holds %d", n, len(dead))
	}
	owedCommands, _ := a.app.box.Pending(destAccountService)
	a.stop(t)
	raised := map[string]bool{}
	for _, al := range a.app.proc.Alerts.All() {
		raised[al.AlertID] = true
	}
	if owedAlerts == 0 || owedCommands == 0 || len(raised) == 0 || len(dead) == 0 {
		t.Fatalf("the owner stopped owing %d alert records and %d commands, of %d alerts, with %d dead letters: the test covers nothing", owedAlerts, owedCommands, len(raised), len(dead))
	}
	// What an operator sees before replacing the instance from the
	// changelog is what the restore brings back.
	st, err := ReadChangelogStatus(context.Background(), a.app.cfg, true, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	held := a.app.proc.Engine.Stats()
	if st.Marker == nil || st.Restore == nil || st.Records == 0 {
		t.Fatalf("changelog status: %+v", st)
	}
	n := st.Restore
	if n.Rows["accounts"] != held.Accounts || n.Rows["devices"] != held.Devices || n.Rows["payees"] != held.Payees || n.Rows["ips"] != held.IPs ||
		n.Alerts != len(raised) || n.Outbox[alertDest("support")] != owedAlerts || n.Outbox[destAccountService] != owedCommands || n.AccountStates == 0 || n.Audit == 0 ||
		n.DeadLetters != len(dead) {
		t.Errorf("changelog status counts %+v; the owner held %+v, %d alerts, and owed %d alert records and %d commands", n, held, len(raised), owedAlerts, owedCommands)
	}
	if !maps.EqualFunc(st.Committed, map[string]map[int]int64(st.Marker.Offsets), maps.Equal) {
		t.Errorf("after a stop the group committed %v, the last state was taken at %v", st.Committed, st.Marker.Offsets)
	}
	commands := map[string]bool{}
	for _, m := range readAll(t, broker.Addr(), a.app.cfg.Kafka.CommandsTopic, owedCommands, 30*time.Second) {
		var c enforce.Command
		if err := json.Unmarshal(m.Value, &c); err != nil {
			t.Fatal(err)
		}
		commands[c.CommandID] = true
	}

	rc := &receiver{secret: "hook-secret", ids: map[string]int{}}
	serveAt(t, hookAddr, rc)
	var mu sync.Mutex
	got := map[string]bool{}
	serveAt(t, svcAddr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var c enforce.Command
		if err := json.NewDecoder(r.Body).Decode(&c); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		got[c.CommandID] = true
		mu.Unlock()
	}))
	b := start(t, instance())
	missing := func() (alerts, cmds int) {
		rc.mu.Lock()
		for id := range raised {
			if rc.ids[id] == 0 {
				alerts++
			}
		}
		rc.mu.Unlock()
		mu.Lock()
		defer mu.Unlock()
		for id := range commands {
			if !got[id] {
				cmds++
			}
		}
		return alerts, cmds
	}
	waitFor(t, 60*time.Second, "every alert and command the owner owed to reach its receiver", func() bool {
		al, c := missing()
		return al == 0 && c == 0
	})
	if n := b.app.Snapshot().Consumed; n != 0 {
		t.Errorf("the new owner decided %v events, want none: the owner decided them all", n)
	}
	for _, dest := range []string{alertDest("support"), destAccountService} {
		if n := testutil.ToFloat64(b.app.amet.outboxRestored.WithLabelValues(dest)); n == 0 {
			t.Errorf("walletguard_outbox_restored_total{destination=%q} is 0", dest)
		}
	}
	if got := deadLetters(b.app); !maps.Equal(got, dead) {
		t.Errorf("the new owner lists %d dead letters, the owner gave up on %d", len(got), len(dead))
	}
	// Past alerts.dead_letter_retention they go, from the changelog too.
	b.app.pruneDead(time.Now().Add(b.app.cfg.Alerts.DeadLetterRetention.D() + time.Minute))
	if got := deadLetters(b.app); len(got) != 0 {
		t.Errorf("%d dead letters past their retention kept", len(got))
	}
	if n := testutil.ToFloat64(b.app.amet.deadPruned); n != float64(len(dead)) {
		t.Errorf("walletguard_dead_letters_pruned_total = %v, want %d", n, len(dead))
	}
	ckpts = metric(t, b.app.HTTPAddr(), "walletguard_checkpoints_total")
	waitFor(t, 10*time.Second, "the new owner to checkpoint", func() bool {
		return metric(t, b.app.HTTPAddr(), "walletguard_checkpoints_total") > ckpts+1
	})
	if st, err := ReadChangelogStatus(context.Background(), b.app.cfg, true, slog.New(slog.DiscardHandler)); err != nil || st.Restore == nil || st.Restore.DeadLetters != 0 {
		t.Errorf("after the prune a restore brings back %+v (%v), want no dead letters", st.Restore, err)
	}
	t.Logf("%d alerts and %d commands, owed as %d alert records and %d commands, all delivered by the new owner; %d dead letters kept", len(raised), len(commands), owedAlerts, owedCommands, len(dead))
}

// serveAt serves h on addr, a port chosen earlier and left unanswered
// until now: a receiver coming back.
func serveAt(t *testing.T, addr string, h http.Handler) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// A restore takes what it knows of a changelog a later release wrote to
// (a record kind added since), refuses a damaged row, account state, alert
// or outbox record before it replaces anything, and leaves out a damaged
// audit entry.
func TestRestoreChecksEveryRecord(t *testing.T) {
	hdr := []kafka.Header{{Key: hdrEpoch, Value: binary.BigEndian.AppendUint64(nil, 7)}, {Key: hdrSeq, Value: binary.BigEndian.AppendUint64(nil, 3)}}
	r := newClogRestore("walletguard.changelog", 7, 3)
	rows := 0
	apply := func(byte, uint64, []byte) error { rows++; return nil }
	if err := r.take(&kafka.Message{Key: []byte("Zsomething new"), Value: []byte("{}"), Headers: hdr}, apply); err != nil || r.unknown != 1 {
		t.Errorf("a record of an unknown kind: err %v, %d left out, want none and 1", err, r.unknown)
	}
	if err := r.take(&kafka.Message{Key: binary.BigEndian.AppendUint64([]byte{1}, 42), Value: []byte("row"), Headers: hdr}, apply); err != nil || rows != 1 {
		t.Errorf("a detection row: err %v, %d applied", err, rows)
	}
	if err := r.take(&kafka.Message{Key: []byte{1, 2, 3}, Value: []byte("row"), Headers: hdr}, apply); err == nil {
		t.Error("a detection row with a short key was taken")
	}
	for _, key := range []string{"Sacc-1", "B", "Aalt_1", "Ocommands\x00\x00\x00\x00\x00\x00\x00\x00\x01"} {
		if err := r.take(&kafka.Message{Key: []byte(key), Value: []byte(`{"frozen": tru`), Headers: hdr}, apply); err == nil {
			t.Errorf("a damaged record %q was taken", key)
		}
	}
	if len(r.states)+len(r.alerts)+len(r.outbox) != 0 {
		t.Errorf("damaged records kept: %v %v %v", r.states, r.alerts, r.outbox)
	}
	if err := r.take(&kafka.Message{Key: []byte("Uacc-1\x00hash"), Value: []byte(`{"at": 12`), Headers: hdr}, apply); err != nil || r.badAudit != 1 || len(r.audit) != 0 {
		t.Errorf("a damaged audit entry: err %v, %d left out, %d kept; want none, 1, 0", err, r.badAudit, len(r.audit))
	}
	good := []byte(`{"frozen":true,"frozen_reason":"stolen phone"}`)
	if err := r.take(&kafka.Message{Key: []byte("Sacc-1"), Value: good, Headers: hdr}, apply); err != nil || string(r.states["acc-1"]) != string(good) {
		t.Errorf("a good account state: err %v, kept %q", err, r.states["acc-1"])
	}
}

// Audit entries past enforce.audit_retention leave the store and, with the
// next checkpoint, the changelog: an instance restored from it has the
// recent trail only.
func TestAuditPastRetentionLeavesTheChangelogToo(t *testing.T) {
	broker, withChangelog := changelogBroker(t, 2)
	msgs, _ := simMessages(t, 400, 11, 8000)
	produce(t, broker.Addr(), "wallet.events", msgs...)
	dirA := t.TempDir()
	a := start(t, withChangelog(dirA))
	waitFor(t, 60*time.Second, "the owner to decide the stream", func() bool { return a.app.Snapshot().Consumed == float64(len(msgs)) })
	if code, body := call(t, a.app.HTTPAddr(), "POST", "/v1/accounts/acc-quiet/freeze", "admin-token", `{"reason":"customer reported the phone stolen"}`); code != 200 {
		t.Fatalf("manual freeze: %d %v", code, body)
	}
	ckpts := metric(t, a.app.HTTPAddr(), "walletguard_checkpoints_total")
	waitFor(t, 10*time.Second, "a checkpoint", func() bool { return metric(t, a.app.HTTPAddr(), "walletguard_checkpoints_total") > ckpts+1 })
	before := len(auditTrail(t, "", a.app.store.DB()))
	// A day's retention: the stream's automatic actions, stamped with its
	// events' times days ago, go; the freeze made just now stays.
	a.app.cfg.Enforce.AuditRetention = config.Duration(24 * time.Hour)
	a.app.pruneAudit(time.Now())
	kept := auditTrail(t, "", a.app.store.DB())
	if before < 3 || len(kept) != 1 || !strings.Contains(kept[0], "customer reported the phone stolen") {
		t.Fatalf("of %d audit entries, kept %v; want the manual freeze only", before, kept)
	}
	if n := testutil.ToFloat64(a.app.amet.auditPruned); n != float64(before-1) {
		t.Errorf("walletguard_audit_entries_pruned_total = %v, want %d", n, before-1)
	}
	a.stop(t)

	b := start(t, withChangelog(t.TempDir()))
	if got := auditTrail(t, "", b.app.store.DB()); !slices.Equal(got, kept) {
		t.Errorf("restored an audit trail of %d entries, want the %d the owner kept", len(got), len(kept))
	}
}
