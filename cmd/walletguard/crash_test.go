package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/walletguard/walletguard/app"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/ingest"
	"github.com/walletguard/walletguard/rules"
	"github.com/walletguard/walletguard/sim"
)

// startBroker runs `walletguard broker` with one-partition topics and
// returns its address.
func startBroker(t *testing.T, bin string) string {
	t.Helper()
	addr := freePort(t)
	cmd := runBroker(t, bin, addr, 1, "")
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	return addr
}

// runBroker starts `walletguard broker` on addr (its log in dir, if set)
// and waits until it accepts connections.
func runBroker(t *testing.T, bin, addr string, partitions int, dir string, flags ...string) *exec.Cmd {
	t.Helper()
	args := append([]string{"broker", "--listen", addr, "--partitions", fmt.Sprint(partitions)}, flags...)
	if dir != "" {
		args = append(args, "--dir", dir)
	}
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return cmd
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("broker did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "walletguard")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// readTopic reads every message currently in a topic.
func readTopic(t *testing.T, broker, topic string) []kafka.Message {
	t.Helper()
	conn, err := kafka.Dial("tcp", broker)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions(topic)
	if err != nil {
		return nil
	}
	var out []kafka.Message
	for _, p := range parts {
		pc, err := kafka.DialLeader(context.Background(), "tcp", broker, topic, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		last, err := pc.ReadLastOffset()
		pc.Close()
		if err != nil || last == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: p.ID, MaxWait: ingest.FetchMaxWait})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatalf("read %s/%d: %v", topic, p.ID, err)
			}
			out = append(out, m)
			if m.Offset == last-1 {
				break
			}
		}
		cancel()
		r.Close()
	}
	return out
}

func byID(t *testing.T, ms [][]byte, idField string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, v := range ms {
		var m map[string]any
		if err := json.Unmarshal(v, &m); err != nil {
			t.Fatalf("bad record %s: %v", v, err)
		}
		id, _ := m[idField].(string)
		if prev, ok := out[id]; ok && prev != string(v) {
			t.Fatalf("%s %s was written twice with different content — state was counted twice or lost:\nfirst:  %s\nsecond: %s", idField, id, prev, v)
		}
		out[id] = string(v)
	}
	return out
}

// TestKill9RestartLosesAndDoublesNothing kills the daemon with SIGKILL at
// random moments while it works through a stream, restarts it each time, and
// checks that what it produced in the end equals an undisturbed replay of the
// same events: every decision and command present, none duplicated with
// different content (state and timers neither lost nor counted twice).
func TestKill9RestartLosesAndDoublesNothing(t *testing.T) {
	bin := buildBinary(t)
	// The broker runs in its own process: it must outlive the daemon's kills,
	// and stay fast when this test is built with -race.
	brokerAddr := startBroker(t, bin)

	// One partition: the daemon sees the events in file order, like replay.
	scfg := sim.DefaultConfig(4000)
	scfg.Seed, scfg.HistoryDays, scfg.Duration = 99, 2, 30*time.Hour
	ref := newReference(t, brokerAddr, scfg, 1, nil)
	msgs := ref.msgs

	dir := t.TempDir()
	httpAddr := freePort(t)
	// The support webhook is down for every run that gets killed: its
	// alerts wait in the outbox across the kills.
	hookAddr := freePort(t)
	cfgPath := filepath.Join(dir, "walletguard.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`data_dir: %s
kafka:
  brokers: [%s]
  session_timeout: 2s
  commit_interval: 200ms
http:
  listen: %s
alerts:
  webhooks: [{url: "http://%s/hook", secret: s3cret, name: support}]
detector:
  checkpoint_interval: 300ms
log:
  level: info
`, filepath.Join(dir, "data"), brokerAddr, httpAddr, hookAddr)), 0o600)

	startDaemon := func() *exec.Cmd {
		cmd := exec.Command(bin, "run", "--config", cfgPath)
		var logs bytes.Buffer
		cmd.Stderr, cmd.Stdout = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				cmd.Process.Kill()
				cmd.Wait()
			}
			if t.Failed() {
				t.Logf("daemon log:\n%s", grepLines(logs.String(), "partition assigned", "restored", "error", "failed", "skipping", "WARN"))
			}
		})
		return cmd
	}
	wantEvents := ref.events
	decided := func() int {
		n := 0
		for _, m := range readTopic(t, brokerAddr, "walletguard.decisions") {
			if bytes.Contains(m.Value, []byte(`"trigger":"event"`)) {
				n++
			}
		}
		return n
	}
	rng := rand.New(rand.NewPCG(7, 7))
	kills, midStream := 0, 0
	var progress []int
	const nkills = 5
	for i := 0; i < nkills; i++ {
		cmd := startDaemon()
		// Kill while it works, at a random point of this run's share of the
		// stream (2–15% of it, so that every kill comes before the end
		// however fast the machine): a random moment would find the
		// stream done on a fast one. Polling its own counter is cheap
		// even when this test is built with -race.
		target := float64(wantEvents) * (0.02 + 0.13*rng.Float64())
		waitUntil := time.Now().Add(30 * time.Second)
		for consumed(httpAddr) < target && time.Now().Before(waitUntil) {
			time.Sleep(2 * time.Millisecond)
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		kills++
		n := decided()
		progress = append(progress, n)
		if n < wantEvents {
			midStream++
		}
	}
	if midStream < min(2, nkills) {
		t.Fatalf("only %d of %d kills came before the stream was done (decisions written after each: %v of %d)", midStream, kills, progress, wantEvents)
	}
	cmd := startDaemon()

	got := ref.waitDecided(t, brokerAddr, 3*time.Minute, fmt.Sprintf("the daemon, after %d kills, to decide every event", kills))
	checkAlertsDelivered(t, httpAddr, hookAddr, filepath.Join(ref.dir, "alerts.ndjson"))
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("SIGTERM: daemon exited with %v, want 0", err)
	}

	missingTimers, commands := ref.check(t, brokerAddr, got, "after kills")
	t.Logf("decision records after each kill (with repeats): %v", progress)
	t.Logf("%d events, %d kills: %d decisions (%d timer decisions still pending at the end), %d commands, all equal to the undisturbed run",
		len(msgs), kills, len(got), missingTimers, commands)
}

// reference is a stream of generated events on a one-partition topic and
// an undisturbed replay of it: what a daemon, however disturbed, must
// produce from that topic.
type reference struct {
	msgs      []kafka.Message // in the topic's order
	dir       string          // the replay's output files
	decisions []string
	events    int            // decisions triggered by an event: one per event
	pos       map[string]int // event id → position in msgs
}

// newReference produces the sim's events to wallet.events on broker and
// replays them in the order the broker holds them: a producer's retries
// may have reordered batches, and a daemon sees the broker's order.
// The events go in parts equal parts, and after, if set, runs as soon as
// each part is in the broker, with how many events are.
func newReference(t *testing.T, broker string, scfg sim.Config, parts int, after func(part, produced int)) *reference {
	t.Helper()
	msgs := simMessages(scfg)
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: "wallet.events", BatchSize: 5000, BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll}
	for i := range parts {
		if err := w.WriteMessages(context.Background(), msgs[i*len(msgs)/parts:(i+1)*len(msgs)/parts]...); err != nil {
			t.Fatal(err)
		}
		if after != nil {
			after(i, (i+1)*len(msgs)/parts)
		}
	}
	w.Close()
	inTopic := readTopic(t, broker, "wallet.events")
	if len(inTopic) != len(msgs) {
		t.Fatalf("input topic has %d messages, produced %d", len(inTopic), len(msgs))
	}
	r := &reference{msgs: inTopic, dir: t.TempDir(), pos: map[string]int{}}
	var file bytes.Buffer
	for i, m := range inTopic {
		file.Write(m.Value)
		file.WriteByte('\n')
		var e struct {
			EventID string `json:"event_id"`
		}
		json.Unmarshal(m.Value, &e)
		r.pos[e.EventID] = i
	}
	set, _ := rules.Load(nil)
	sum, err := app.Replay(config.Default(), set, bytes.NewReader(file.Bytes()), "stream", r.dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("reference replay: %d events, %d rejected, %d duplicates", sum.Events, sum.Rejected, sum.Duplicates)
	r.decisions = readLines(t, filepath.Join(r.dir, "decisions.ndjson"))
	for _, d := range r.decisions {
		if strings.Contains(d, `"trigger":"event"`) {
			r.events++
		}
	}
	return r
}

// waitDecided waits until every event has its decision on broker's
// decisions topic and returns the decisions by id; one written twice with
// different content fails the test.
func (r *reference) waitDecided(t *testing.T, broker string, within time.Duration, what string) map[string]string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var vals [][]byte
		for _, m := range readTopic(t, broker, "walletguard.decisions") {
			vals = append(vals, m.Value)
		}
		got := byID(t, vals, "decision_id")
		n := 0
		for _, v := range got {
			if strings.Contains(v, `"trigger":"event"`) {
				n++
			}
		}
		if n >= r.events {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %d of %d events decided", within, what, n, r.events)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// check compares the decisions got and the commands on broker with the
// undisturbed replay: each the same, none missing but the timers the
// replay fired at the end of its input, which a daemon fires only when
// later events move event time on. It returns how many those were, and the
// commands.
func (r *reference) check(t *testing.T, broker string, got map[string]string, how string) (pendingTimers, commands int) {
	t.Helper()
	ref := map[string]string{}
	for _, d := range r.decisions {
		var m map[string]any
		json.Unmarshal([]byte(d), &m)
		ref[m["decision_id"].(string)] = d
	}
	// Report the earliest divergence in input order: later ones follow from it.
	first, firstID := -1, ""
	for id, v := range got {
		if rv, ok := ref[id]; ok && rv == v {
			continue
		}
		var m struct {
			EventID string `json:"event_id"`
		}
		json.Unmarshal([]byte(v), &m)
		if p := r.pos[m.EventID]; first < 0 || p < first {
			first, firstID = p, id
		}
	}
	if first >= 0 {
		t.Fatalf("decision %s (input position %d) differs from the undisturbed run:\n%s: %s\nundisturbed: %s", firstID, first, how, got[firstID], ref[firstID])
	}
	for id, rv := range ref {
		if _, ok := got[id]; !ok {
			if strings.Contains(rv, `"trigger":"timer"`) {
				pendingTimers++
				continue
			}
			t.Fatalf("decision %s of the undisturbed run is missing %s: %s", id, how, rv)
		}
	}
	var cmdVals [][]byte
	for _, m := range readTopic(t, broker, "walletguard.account-commands") {
		cmdVals = append(cmdVals, m.Value)
	}
	gotCmds := byID(t, cmdVals, "command_id")
	// Commands of manual actions (an operator's, not walletguard's) have
	// no counterpart in a replay: the test that makes them checks them.
	for id, v := range gotCmds {
		var c struct {
			Actor string `json:"actor"`
		}
		json.Unmarshal([]byte(v), &c)
		if c.Actor != enforce.Auto {
			delete(gotCmds, id)
		}
	}
	refCmds := map[string]bool{}
	for _, c := range readLines(t, filepath.Join(r.dir, "commands.ndjson")) {
		var m map[string]any
		json.Unmarshal([]byte(c), &m)
		refCmds[m["command_id"].(string)] = true
		if _, ok := gotCmds[m["command_id"].(string)]; !ok {
			t.Errorf("command missing %s: %s", how, c)
		}
	}
	for id := range gotCmds {
		if !refCmds[id] {
			t.Errorf("command %s was issued %s but not in the undisturbed run", id, how)
		}
	}
	return pendingTimers, len(gotCmds)
}

// checkFrozen asks the daemon at addr, as the gateway does, about every
// account the undisturbed run froze: each must be frozen, for the same
// reason. It returns how many of those freezes were decided before input
// position before.
func (r *reference) checkFrozen(t *testing.T, addr string, before int, who string) int {
	t.Helper()
	decidedAt := map[string]int{}
	for _, d := range r.decisions {
		var m struct {
			DecisionID string `json:"decision_id"`
			EventID    string `json:"event_id"`
		}
		json.Unmarshal([]byte(d), &m)
		decidedAt[m.DecisionID] = r.pos[m.EventID]
	}
	n := 0
	for _, line := range readLines(t, filepath.Join(r.dir, "commands.ndjson")) {
		var c struct {
			Command    string `json:"command"`
			AccountID  string `json:"account_id"`
			Reason     string `json:"reason"`
			DecisionID string `json:"decision_id"`
		}
		json.Unmarshal([]byte(line), &c)
		if c.Command != "freeze" {
			continue
		}
		var acc struct {
			Frozen       bool   `json:"frozen"`
			FrozenReason string `json:"frozen_reason"`
		}
		callAPI(t, addr, "GET", "/v1/accounts/"+c.AccountID, "", &acc)
		if !acc.Frozen || acc.FrozenReason != c.Reason {
			t.Errorf("account %s: %s says frozen=%v (%q), the undisturbed run froze it (%q)", c.AccountID, who, acc.Frozen, acc.FrozenReason, c.Reason)
		}
		// Support, looking the account up, finds the decision that froze it.
		var trail struct {
			Entries []enforce.AuditEntry `json:"entries"`
		}
		callAPI(t, addr, "GET", "/v1/audit?account_id="+c.AccountID, "", &trail)
		if !slices.ContainsFunc(trail.Entries, func(e enforce.AuditEntry) bool { return e.Action == "freeze" && e.DecisionID == c.DecisionID }) {
			t.Errorf("account %s: %s's audit trail lacks the freeze by decision %s: %+v", c.AccountID, who, c.DecisionID, trail.Entries)
		}
		if decidedAt[c.DecisionID] < before {
			n++
		}
	}
	return n
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func grepLines(s string, words ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// consumed reads walletguard_events_consumed_total (all types) from a
// daemon's /metrics; 0 while it is not up.
func consumed(addr string) float64 { return metricSum(addr, "walletguard_events_consumed_total") }

// metricSum adds up every series of a metric the daemon at addr exports.
func metricSum(addr, name string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	total := 0.0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name+"{") || strings.HasPrefix(l, name+" ") {
			var v float64
			fmt.Sscanf(l[strings.LastIndexByte(l, ' ')+1:], "%g", &v)
			total += v
		}
	}
	return total
}

// idReceiver is a receiver brought up after an outage (support's webhook,
// the wallet's account service): it records the ids of what it is sent,
// and how many deliveries came unsigned.
type idReceiver struct {
	mu       sync.Mutex
	got      map[string]bool
	unsigned int
}

// receiveIDs serves at addr, taking each delivery's JSON field as its id.
func receiveIDs(t *testing.T, addr, field string) *idReceiver {
	t.Helper()
	rc := &idReceiver{got: map[string]bool{}}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var m map[string]any
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		defer rc.mu.Unlock()
		rc.got[fmt.Sprint(m[field])] = true
		if !strings.Contains(r.Header.Get("Walletguard-Signature"), "v1=") {
			rc.unsigned++
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return rc
}

// await waits until every id of want has arrived. Retries back off for
// minutes after an outage of a minute or two.
func (rc *idReceiver) await(t *testing.T, want map[string]bool, what string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		rc.mu.Lock()
		missing := 0
		for id := range want {
			if !rc.got[id] {
				missing++
			}
		}
		rc.mu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d %s not delivered three minutes after the receiver came back", missing, len(want), what)
		}
		time.Sleep(200 * time.Millisecond)
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.unsigned > 0 {
		t.Errorf("%d deliveries of %s without a signature", rc.unsigned, what)
	}
	t.Logf("%d %s delivered once the receiver came back", len(want), what)
}

// checkAlertsDelivered brings the support webhook up and waits until every
// alert the daemon holds has arrived, signed; none may be unknown to the
// undisturbed run.
func checkAlertsDelivered(t *testing.T, httpAddr, hookAddr, refAlerts string) {
	t.Helper()
	rc := receiveIDs(t, hookAddr, "alert_id")
	ref := map[string]bool{}
	for _, l := range readLines(t, refAlerts) {
		var a struct {
			AlertID string `json:"alert_id"`
		}
		json.Unmarshal([]byte(l), &a)
		ref[a.AlertID] = true
	}
	held := heldAlerts(t, httpAddr, "all")
	if len(held) == 0 {
		t.Fatal("the daemon holds no alerts; the stream should raise several")
	}
	want := map[string]bool{}
	for _, a := range held {
		want[a.AlertID] = true
	}
	rc.await(t, want, "alerts")
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for id := range rc.got {
		if !ref[id] {
			t.Errorf("delivered alert %s is not one of the undisturbed run's", id)
		}
	}
}

// checkCommandsDelivered brings the wallet's account service up at svcAddr
// and waits until every command on walletguard.account-commands has
// arrived there, signed.
func checkCommandsDelivered(t *testing.T, svcAddr, broker string) {
	t.Helper()
	rc := receiveIDs(t, svcAddr, "command_id")
	want := map[string]bool{}
	for _, m := range readTopic(t, broker, "walletguard.account-commands") {
		var c enforce.Command
		if err := json.Unmarshal(m.Value, &c); err != nil {
			t.Fatal(err)
		}
		want[c.CommandID] = true
	}
	if len(want) == 0 {
		t.Fatal("no command on walletguard.account-commands; the stream should freeze and step up several accounts")
	}
	rc.await(t, want, "commands")
}
