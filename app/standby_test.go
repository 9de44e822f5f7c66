package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/walletguard/walletguard/api"
)

// TestSecondInstanceStandsByAndTakesOver runs two walletguards in one
// consumer group, the second with standby_follow off. The second must not take partitions (and with them half
// the accounts' state) from the first: it stands by, says so in readiness
// and metrics, and takes every partition over when the first leaves. When
// the first comes back on its data directory, holding far more state than
// the standby built meanwhile, it takes the partitions back. Each event
// gets exactly one decision across the two.
func TestSecondInstanceStandsByAndTakesOver(t *testing.T) {
	broker := eventBroker(t, 4)
	msgs, evs := simMessages(t, 500, 11, 9000)
	// Phases: the first alone; the second standing by; the second alone
	// for a few events; the first back.
	cut := []int{0, 4000, 8000, 8040, len(msgs)}
	phase := func(i int) []kafka.Message { return msgs[cut[i]:cut[i+1]] }
	cfgA, cfgB := testConfig(t, t.TempDir()), testConfig(t, t.TempDir())
	cfgA.Kafka.Brokers = []string{broker.Addr()}
	cfgB.Kafka.Brokers = []string{broker.Addr()}
	// A standby that does not follow: it takes over with no state, and
	// gives the partitions back. cmd/walletguard's standby test follows.
	cfgB.Kafka.StandbyFollow = false
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	standsBy := func(r *running) func() bool {
		return func() bool {
			code, body := readyz(r.app.HTTPAddr())
			return code == http.StatusServiceUnavailable && strings.Contains(body, "standing by")
		}
	}
	owns := func(r *running) func() bool {
		return func() bool {
			code, _ := readyz(r.app.HTTPAddr())
			return code == http.StatusOK && metric(t, r.app.HTTPAddr(), "walletguard_partitions_assigned") == 4
		}
	}

	produce(t, broker.Addr(), "wallet.events", phase(0)...)
	a := start(t, cfgA)
	waitFor(t, 60*time.Second, "the first instance to consume phase 0", func() bool {
		return a.app.Snapshot().Consumed == float64(cut[1])
	})

	appB, err := New(cfgB, quiet, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := launch(t, appB)
	waitFor(t, 30*time.Second, "the second instance to say it stands by", standsBy(b))
	if got := metric(t, b.app.HTTPAddr(), "walletguard_partitions_assigned"); got != 0 {
		t.Errorf("standby holds %v partitions, want 0", got)
	}
	// Changes go to the owner: a standby that froze an account, or took a
	// 2FA code, would hold what the owner — which the gateway asks — does
	// not know. The standby passes them on to the owner's address, which
	// the owner told the group.
	acct := evs[0].AccountID
	change := func(path, token, body string, header map[string]string) (int, http.Header, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest("POST", "http://"+b.app.HTTPAddr()+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, resp.Header, out
	}
	if code, h, body := change("/v1/accounts/"+acct+"/freeze", "admin-token", `{"reason":"reported stolen"}`, nil); code != http.StatusOK ||
		h.Get(api.ForwardedToHeader) != a.app.HTTPAddr() || h.Get("Walletguard-Standby") != "" {
		t.Errorf("freeze on the standby: %d %v, passed on to %q; want 200 from the owner at %s", code, body, h.Get(api.ForwardedToHeader), a.app.HTTPAddr())
	}
	if _, body := call(t, a.app.HTTPAddr(), "GET", "/v1/accounts/"+acct, "viewer-token", ""); body["frozen"] != true {
		t.Errorf("the owner does not show the freeze asked of the standby: %v", body["frozen"])
	}
	scored := strings.Replace(string(msgs[0].Value), evs[0].EventID, "scored-through-the-standby", 1)
	if code, h, _ := change("/v1/score", "gateway-token", scored, nil); code != http.StatusOK || h.Get(api.ForwardedToHeader) == "" {
		t.Errorf("score on the standby: %d, passed on to %q; want the owner's decision", code, h.Get(api.ForwardedToHeader))
	}
	// A request already passed on once is not passed on again: two
	// instances that each take the other for the owner refuse it.
	if code, _, body := change("/v1/accounts/"+acct+"/unfreeze", "admin-token", `{"reason":"customer verified"}`, map[string]string{"Walletguard-Forwarded": "1"}); code != http.StatusServiceUnavailable ||
		!strings.Contains(fmt.Sprint(body["error"]), "standing by") {
		t.Errorf("unfreeze passed on to the standby: %d %v, want 503 standing by", code, body)
	}
	// Credentials go with it, and the owner checks them.
	if code, _, _ := change("/v1/accounts/"+acct+"/unfreeze", "viewer-token", `{"reason":"customer verified"}`, nil); code != http.StatusForbidden {
		t.Errorf("unfreeze by a viewer through the standby: %d, want 403", code)
	}
	req, _ := http.NewRequest("GET", "http://"+b.app.HTTPAddr()+"/v1/accounts/"+acct, nil)
	req.Header.Set("Authorization", "Bearer viewer-token")
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Walletguard-Standby") == "" {
			t.Errorf("GET an account on the standby: %d, Walletguard-Standby %q; want 200 and the header", resp.StatusCode, resp.Header.Get("Walletguard-Standby"))
		}
	}
	// The first kept every partition through the rebalance the second
	// caused, and consumes what comes next alone.
	produce(t, broker.Addr(), "wallet.events", phase(1)...)
	waitFor(t, 60*time.Second, "the first instance to consume phase 1", func() bool {
		return a.app.Snapshot().Consumed == float64(cut[2])
	})
	if !owns(a)() {
		t.Errorf("the first instance does not own every partition with the second standing by")
	}
	if got := b.app.Snapshot().Consumed; got != 0 {
		t.Errorf("the standby consumed %v events", got)
	}

	// The first leaves: the standby takes over from the committed offsets.
	a.stop(t)
	firstRun := a.app.Snapshot().Consumed
	produce(t, broker.Addr(), "wallet.events", phase(2)...)
	waitFor(t, 60*time.Second, "the standby to take over and consume phase 2", func() bool {
		return b.app.Snapshot().Consumed == float64(cut[3]-cut[2])
	})
	waitFor(t, 10*time.Second, "the standby to own every partition", owns(b))

	// The first comes back with its state: it takes the partitions back,
	// from what the standby committed.
	waitFor(t, 30*time.Second, "the standby to commit what it decided", func() bool {
		return committedOffsets(t, broker.Addr()) == int64(cut[3])
	})
	a2 := start(t, cfgA)
	waitFor(t, 30*time.Second, "the second instance to stand by again", standsBy(b))
	produce(t, broker.Addr(), "wallet.events", phase(3)...)
	waitFor(t, 60*time.Second, "the first instance, back, to consume phase 3", func() bool {
		return a2.app.Snapshot().Consumed == float64(cut[4]-cut[3])
	})
	if !owns(a2)() {
		t.Errorf("the first instance, back, does not own every partition")
	}
	a2.stop(t)
	b.stop(t)
	if got := firstRun + b.app.Snapshot().Consumed + a2.app.Snapshot().Consumed; got != float64(len(msgs)) {
		t.Errorf("the instances consumed %v events together, produced %d", got, len(msgs))
	}
	byEvent := eventDecisions(t, readAll(t, broker.Addr(), "walletguard.decisions", len(msgs), 60*time.Second))
	for _, ev := range evs {
		if byEvent[ev.EventID] != 1 {
			t.Fatalf("event %s has %d decisions, want exactly 1", ev.EventID, byEvent[ev.EventID])
		}
	}
}

// readyz is what a load balancer or Kubernetes sees of readiness; 0 when
// nothing answers yet.
func readyz(addr string) (int, string) {
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// committedOffsets adds up the group's committed offsets on wallet.events.
func committedOffsets(t *testing.T, broker string) int64 {
	t.Helper()
	client := &kafka.Client{Addr: kafka.TCP(broker)}
	resp, err := client.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{
		GroupID: "walletguard", Topics: map[string][]int{"wallet.events": {0, 1, 2, 3}}})
	if err != nil {
		t.Fatalf("committed offsets: %v", err)
	}
	var n int64
	for _, p := range resp.Topics["wallet.events"] {
		n += max(p.CommittedOffset, 0)
	}
	return n
}

// A standby whose owner does not answer at the address it advertised
// refuses the change with 503 and says why, within seconds; nothing is
// changed anywhere.
func TestStandbyRefusesWhatItCannotPassOn(t *testing.T) {
	broker := eventBroker(t, 1)
	cfgA, cfgB := testConfig(t, t.TempDir()), testConfig(t, t.TempDir())
	cfgA.Kafka.Brokers, cfgB.Kafka.Brokers = []string{broker.Addr()}, []string{broker.Addr()}
	cfgA.HTTP.Advertise = freePort(t) // nothing listens there
	a := start(t, cfgA)
	appB, err := New(cfgB, slog.New(slog.DiscardHandler), Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := launch(t, appB)
	waitFor(t, 30*time.Second, "the second to stand by", func() bool {
		code, body := readyz(b.app.HTTPAddr())
		return code == http.StatusServiceUnavailable && strings.Contains(body, "standing by")
	})
	began := time.Now()
	code, body := call(t, b.app.HTTPAddr(), "POST", "/v1/accounts/acc-1/freeze", "admin-token", `{"reason":"reported stolen"}`)
	if msg := fmt.Sprint(body["error"]); code != http.StatusServiceUnavailable || !strings.Contains(msg, "standing by") || !strings.Contains(msg, "did not answer") {
		t.Errorf("freeze through a standby whose owner does not answer: %d %v, want 503 saying so", code, body)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("the refusal took %s", took)
	}
	if _, body := call(t, a.app.HTTPAddr(), "GET", "/v1/accounts/acc-1", "viewer-token", ""); body["frozen"] == true {
		t.Error("the owner froze the account all the same")
	}
}
