package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/walletguard/walletguard/sim"
)

// TestStandbyTakesOverAfterKill9 runs two daemons as separate processes in
// one consumer group against a broker in a third. The second stands by and
// follows: it reads what the first has committed into its own state. The
// first is killed with SIGKILL in the middle of the stream (no leave-group:
// the group notices when its session times out); the standby takes the
// partition over and decides the rest. Every decision and command must then
// equal an undisturbed single daemon's, by id and content: the standby
// decided as the first would have. Restarted, the first stands by in turn.
func TestStandbyTakesOverAfterKill9(t *testing.T) {
	bin := buildBinary(t)
	brokerAddr := startBroker(t, bin)
	scfg := sim.DefaultConfig(4000)
	scfg.Seed, scfg.HistoryDays, scfg.Duration = 17, 2, 30*time.Hour
	// Both daemons seal TOTP secrets with the same key, as replicas must.
	t.Setenv("WALLETGUARD_TOTP_KEY", strings.Repeat("7", 64))
	// Support and the gateway act on three accounts through the owner,
	// accounts with no event in the stream, so that what is done to them
	// changes none of the reference's decisions.
	quiet := []string{"acc-support-1", "acc-support-2", "acc-support-3"}
	var totpSecret, ackedAlert string

	// Support's webhook and the wallet's account service are down until
	// the end: the alerts and commands the first daemon issues wait in its
	// outbox when it is killed.
	hookAddr, svcAddr := freePort(t), freePort(t)
	svc := fmt.Sprintf("enforce: {account_service: {url: \"http://%s/commands\", secret: svc-s3cret}}\n", svcAddr)
	followed := func(d *member) float64 { return metricSum(d.http, "walletguard_events_followed_total") }

	cfgA := writeMemberConfig(t, "a", brokerAddr, "200ms", "http://"+hookAddr, svc)
	a := startMember(t, bin, cfgA)
	waitUntil(t, "the first daemon to own the partition", 60*time.Second, a.owns)
	b := startMember(t, bin, writeMemberConfig(t, "b", brokerAddr, "200ms", "http://"+hookAddr, svc))
	waitUntil(t, "the second daemon to stand by", 60*time.Second, b.standsBy)
	// The stream arrives in tenths with both up. With nine in, the standby
	// follows nearly all of them (past the first freezes of the stream);
	// then the last tenth goes in, and the first daemon is killed as it
	// decides it, before it has committed it: the standby decides those
	// events again.
	var byA, byB float64
	ref := newReference(t, brokerAddr, scfg, 10, func(part, produced int) {
		switch part {
		case 8:
			waitUntil(t, "the standby to follow nearly all that was produced", 2*time.Minute, func() bool { return followed(b) >= float64(produced)*95/100 })
			// Following is not deciding: the owner counts what it decided.
			for _, m := range []string{"walletguard_events_consumed_total", "walletguard_decisions_total", "walletguard_actions_total", "walletguard_rule_hits_total"} {
				if n := metricSum(b.http, m); n != 0 {
					t.Errorf("the standby counts %v in %s", n, m)
				}
			}
			totpSecret = actOnOwner(t, a.http, quiet)
			ackedAlert = ackOnOwner(t, a.http)
			waitUntil(t, "the standby to adopt the five manual actions", time.Minute, func() bool {
				return metricSum(b.http, "walletguard_manual_actions_adopted_total") >= 5
			})
			return
		case 9:
		default:
			return
		}
		time.Sleep(time.Duration(rand.IntN(100)) * time.Millisecond)
		byA = consumed(a.http)
		if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		a.cmd.Wait()
		byB = followed(b)
	})
	if byB >= byA {
		t.Fatalf("the standby had followed all %v events the first daemon consumed before it was killed: nothing left to decide again", byA)
	}
	waitUntil(t, "the standby to take the partition over", 60*time.Second, b.owns)
	if no := metricSum(b.http, `walletguard_takeovers_total{handover="no"}`); no != 1 {
		t.Errorf("takeovers without a handover counted after a kill -9: %v, want 1", no)
	}

	got := ref.waitDecided(t, brokerAddr, 3*time.Minute, "the standby, now the owner, to decide every event")
	pending, commands := ref.check(t, brokerAddr, got, "after the owner was killed and its standby took over")
	t.Logf("%d events: the first daemon consumed about %v before it was killed, the standby had followed %v; %d decisions and %d commands equal the undisturbed run's (%d timers pending at the end)",
		len(ref.msgs), byA, byB, len(got), commands, pending)

	// The gateway asks the new owner: every account the undisturbed run
	// froze is frozen there, for the same reason — those frozen before the
	// standby's last followed event it knows of only by following.
	learned := ref.checkFrozen(t, b.http, int(byB), "the new owner")
	if learned == 0 {
		t.Fatalf("no account was frozen before the standby's last followed event (%v): the test did not see enforcement state follow", byB)
	}
	t.Logf("of the freezes, %d the new owner knows of only by following", learned)

	// What support and the gateway did on the first daemon holds on the
	// new owner: the manual freeze, the unfreeze (with its grace), the
	// TOTP enrolment — a code from the user's authenticator is accepted.
	checkManualActions(t, b.http, quiet, totpSecret)
	acked := false
	for _, x := range heldAlerts(t, b.http, "all") {
		if x.AlertID == ackedAlert {
			acked = x.AcknowledgedBy == "admin token"
			if !acked {
				t.Errorf("alert %s acknowledged on the first daemon: on the new owner %s, acknowledged by %q", x.AlertID, x.Status, x.AcknowledgedBy)
			}
		}
	}
	if !acked {
		t.Errorf("alert %s, acknowledged on the first daemon, is not acknowledged on the new owner", ackedAlert)
	}

	// Support hears of every alert, those the first daemon raised and never
	// delivered included: the new owner delivers again what it learned of
	// by following.
	checkAlertsDelivered(t, b.http, hookAddr, filepath.Join(ref.dir, "alerts.ndjson"))
	if n := metricSum(b.http, "walletguard_alerts_redelivered_total"); n == 0 {
		t.Error("the new owner delivered no alert it learned of by following")
	} else {
		t.Logf("the new owner delivered again %v alerts it learned of by following", n)
	}
	// And the account service gets every command, those of the manual
	// actions made on the first daemon included.
	checkCommandsDelivered(t, svcAddr, brokerAddr)
	if n := metricSum(b.http, "walletguard_commands_redelivered_total"); n == 0 {
		t.Error("the new owner delivered again no command it learned of by following")
	}

	// Back on its data directory, the first finds an owner with as much
	// state as its own, and stands by.
	a2 := startMember(t, bin, cfgA)
	waitUntil(t, "the restarted first daemon to stand by", 60*time.Second, a2.standsBy)
	if !b.owns() {
		t.Error("the owner lost the partition to a restarted daemon with no more state than its own")
	}
}

// memberConfig is the config file and HTTP address of one walletguard of a
// pair in one consumer group; a restart starts it again on the same.
type memberConfig struct{ path, http string }

// writeMemberConfig writes the config of the pair member name: its own data
// directory and port, broker, the commit interval, and support's webhook at
// hookURL/hook.
func writeMemberConfig(t *testing.T, name, broker, commit, hookURL string, more ...string) memberConfig {
	t.Helper()
	c := memberConfig{path: filepath.Join(t.TempDir(), name+".yaml"), http: freePort(t)}
	writeFile(t, c.path, fmt.Sprintf("data_dir: %s\nkafka: {brokers: [%s], session_timeout: 2s, commit_interval: %s}\nhttp: {listen: %s}\ndetector: {checkpoint_interval: 300ms}\n"+
		"alerts: {webhooks: [{url: \"%s/hook\", secret: s3cret, name: support}]}\n", filepath.Join(t.TempDir(), name), broker, commit, c.http, hookURL)+strings.Join(more, ""))
	return c
}

// member is a running walletguard of a pair.
type member struct {
	cmd  *exec.Cmd
	http string
	logs *syncBuffer
}

// startMember runs walletguard on c; at the test's end it is stopped with
// SIGTERM, and its log shown if the test failed.
func startMember(t *testing.T, bin string, c memberConfig) *member {
	t.Helper()
	d := &member{http: c.http, logs: &syncBuffer{}}
	d.cmd = startDaemon(t, bin, c.path, d.logs)
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			stopDaemon(t, d.cmd, d.logs, "partition", "hand", "standing by", "standby", "follow", "restored", "error", "failed", "WARN")
		}
	})
	return d
}

// owns reports whether d is ready and holds the partition.
func (d *member) owns() bool {
	code, _ := readyz(d.http)
	return code == http.StatusOK && metricSum(d.http, "walletguard_partitions_assigned") == 1
}

// standsBy reports whether d says it stands by.
func (d *member) standsBy() bool {
	code, body := readyz(d.http)
	return code == http.StatusServiceUnavailable && strings.Contains(body, "standing by")
}

// actOnOwner freezes accts[0], freezes and unfreezes accts[1] and enrolls
// accts[2] in TOTP through addr, and returns the enrolment's secret.
func actOnOwner(t *testing.T, addr string, accts []string) string {
	t.Helper()
	if len(accts) != 3 {
		t.Fatalf("want three quiet accounts, have %v", accts)
	}
	for _, c := range []struct{ path, body string }{
		{"/v1/accounts/" + accts[0] + "/freeze", `{"reason":"customer reported the phone stolen"}`},
		{"/v1/accounts/" + accts[1] + "/freeze", `{"reason":"suspicious call"}`},
		{"/v1/accounts/" + accts[1] + "/unfreeze", `{"reason":"customer verified by phone"}`},
	} {
		var body map[string]any
		if code := callAPI(t, addr, "POST", c.path, c.body, &body); code != http.StatusOK {
			t.Fatalf("POST %s on the owner: %d %v", c.path, code, body)
		}
	}
	var body map[string]any
	if code := callAPI(t, addr, "POST", "/v1/accounts/"+accts[2]+"/2fa/enroll", "", &body); code != http.StatusOK {
		t.Fatalf("enroll on the owner: %d %v", code, body)
	}
	key, err := otp.NewKeyFromURL(fmt.Sprint(body["otpauth_url"]))
	if err != nil {
		t.Fatalf("otpauth_url %v: %v", body["otpauth_url"], err)
	}
	return key.Secret()
}

// ackOnOwner acknowledges the newest open alert on addr and returns its id.
func ackOnOwner(t *testing.T, addr string) string {
	t.Helper()
	open := heldAlerts(t, addr, "open")
	if len(open) == 0 {
		t.Fatal("the owner holds no open alert to acknowledge")
	}
	id := open[0].AlertID
	var body map[string]any
	if code := callAPI(t, addr, "POST", "/v1/alerts/"+id+"/ack", `{"reason":"on it"}`, &body); code != http.StatusOK {
		t.Fatalf("ack %s on the owner: %d %v", id, code, body)
	}
	return id
}

// checkManualActions checks on addr what actOnOwner did elsewhere.
func checkManualActions(t *testing.T, addr string, accts []string, secret string) {
	t.Helper()
	var acc map[string]any
	callAPI(t, addr, "GET", "/v1/accounts/"+accts[0], "", &acc)
	if acc["frozen"] != true || acc["frozen_reason"] != "customer reported the phone stolen" {
		t.Errorf("%s: frozen=%v (%v), want the manual freeze", accts[0], acc["frozen"], acc["frozen_reason"])
	}
	acc = nil
	callAPI(t, addr, "GET", "/v1/accounts/"+accts[1], "", &acc)
	st, _ := acc["state"].(map[string]any)
	if acc["frozen"] != false || st["unfrozen_by"] == nil || st["trusted_until"] == nil {
		t.Errorf("%s: frozen=%v, state %v; want unfrozen by support, trusted for the grace", accts[1], acc["frozen"], st)
	}
	code, err := totp.GenerateCode(secret, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	if status := callAPI(t, addr, "POST", "/v1/accounts/"+accts[2]+"/2fa/verify", `{"code":"`+code+`"}`, &body); status != http.StatusOK || body["verified"] != true {
		t.Errorf("%s: a code of the enrolment made on the first daemon: %d %v, want verified", accts[2], status, body)
	}
}

// TestRollingRestartHandsOver stops the owner of a following pair with
// SIGTERM, as a rolling restart does, while support's webhook is up and the
// standby follows some way behind (the owner commits every 3 s). The owner
// delivers what it holds and hands over; the standby takes the partition
// over. Nothing reaches anyone twice: no decision record on the decisions
// topic, no alert record at the webhook; and every decision equals an
// undisturbed run's.
func TestRollingRestartHandsOver(t *testing.T) {
	bin := buildBinary(t)
	brokerAddr := startBroker(t, bin)
	scfg := sim.DefaultConfig(3000)
	scfg.Seed, scfg.HistoryDays, scfg.Duration = 23, 2, 24*time.Hour
	t.Setenv("WALLETGUARD_TOTP_KEY", strings.Repeat("7", 64))

	var mu sync.Mutex
	records := map[string]int{} // alert record (body) -> deliveries
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		records[string(b)]++
		mu.Unlock()
	}))
	defer hook.Close()

	a := startMember(t, bin, writeMemberConfig(t, "a", brokerAddr, "3s", hook.URL))
	waitUntil(t, "the first daemon to own the partition", 60*time.Second, a.owns)
	b := startMember(t, bin, writeMemberConfig(t, "b", brokerAddr, "200ms", hook.URL))
	waitUntil(t, "the second daemon to stand by", 60*time.Second, b.standsBy)
	var behind, stoppedAt float64
	ref := newReference(t, brokerAddr, scfg, 4, func(part, produced int) {
		if part != 2 {
			return
		}
		stoppedAt = float64(produced)
		waitUntil(t, "the owner to decide three quarters", 2*time.Minute, func() bool { return consumed(a.http) == float64(produced) })
		behind = float64(produced) - metricSum(b.http, "walletguard_events_followed_total")
		stopDaemon(t, a.cmd, a.logs)
	})
	if !strings.Contains(a.logs.String(), "handed over") {
		t.Errorf("the stopped owner did not hand over:\n%s", lastLines(grepLines(a.logs.String(), "hand", "pending", "WARN", "error"), 20))
	}
	waitUntil(t, "the standby to take the partition over", 60*time.Second, b.owns)
	if yes := metricSum(b.http, `walletguard_takeovers_total{handover="yes"}`); yes != 1 {
		t.Errorf("takeovers after a handover counted: %v, want 1", yes)
	}
	got := ref.waitDecided(t, brokerAddr, 3*time.Minute, "the new owner to decide every event")
	ref.check(t, brokerAddr, got, "after a rolling restart handed over")

	written := map[string]int{}
	for _, m := range readTopic(t, brokerAddr, "walletguard.decisions") {
		var d struct {
			DecisionID string `json:"decision_id"`
		}
		json.Unmarshal(m.Value, &d)
		written[d.DecisionID]++
	}
	twice := 0
	for _, n := range written {
		if n > 1 {
			twice++
		}
	}
	if twice > 0 {
		t.Errorf("%d of %d decisions written twice across the handover", twice, len(written))
	}
	if n := metricSum(b.http, "walletguard_alerts_redelivered_total"); n != 0 {
		t.Errorf("the new owner delivered again %v alerts after a handover", n)
	}
	if n := metricSum(b.http, "walletguard_events_followed_total"); n != stoppedAt {
		t.Errorf("the new owner followed %v events, want the %v the old one decided before it stopped", n, stoppedAt)
	}
	waitUntil(t, "the new owner's alerts to be delivered", time.Minute, func() bool {
		return metricSum(b.http, `walletguard_outbox_pending`) == 0
	})
	mu.Lock()
	defer mu.Unlock()
	for body, n := range records {
		if n > 1 {
			t.Errorf("support got an alert record %d times: %.160s", n, body)
		}
	}
	t.Logf("standby %v events behind at the stop; %d decisions, each written once; %d alert records delivered", behind, len(written), len(records))
}
