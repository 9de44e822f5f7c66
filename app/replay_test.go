package app

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/rules"
	"github.com/walletguard/walletguard/sim"
)

func writeSim(t *testing.T, accounts int, seed uint64) (string, []*sim.Label) {
	t.Helper()
	cfg := sim.DefaultConfig(accounts)
	cfg.Seed = seed
	cfg.HistoryDays = 3
	cfg.Duration = 36 * time.Hour
	g := sim.New(cfg)
	var b bytes.Buffer
	if _, err := g.WriteNDJSON(&b); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "events.ndjson")
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p, g.Labels()
}

func replayFile(t *testing.T, path, out string, set *rules.Set) ReplaySummary {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sum, err := Replay(config.Default(), set, f, filepath.Base(path), out, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// TestReplayIsDeterministicAndCatchesIncidents replays generated traffic
// twice: the three output files are byte-identical, and the labelled
// takeovers are frozen.
func TestReplayIsDeterministicAndCatchesIncidents(t *testing.T) {
	path, labels := writeSim(t, 3000, 21)
	set, err := rules.Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	a, b := t.TempDir(), t.TempDir()
	s1 := replayFile(t, path, a, set)
	replayFile(t, path, b, set)
	for _, name := range []string{"decisions.ndjson", "alerts.ndjson", "commands.ndjson"} {
		x, _ := os.ReadFile(filepath.Join(a, name))
		y, _ := os.ReadFile(filepath.Join(b, name))
		if len(x) == 0 && name != "commands.ndjson" {
			t.Errorf("%s is empty", name)
		}
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs between two replays of the same events", name)
		}
	}
	if s1.Events == 0 || s1.ByAction["allow"] == 0 {
		t.Fatalf("summary %+v", s1)
	}
	cmds, _ := os.ReadFile(filepath.Join(a, "commands.ndjson"))
	frozen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(cmds)), "\n") {
		var c struct {
			Command   string `json:"command"`
			AccountID string `json:"account_id"`
		}
		if json.Unmarshal([]byte(line), &c) == nil && c.Command == "freeze" {
			frozen[c.AccountID] = true
		}
	}
	var missed []string
	takeovers := 0
	for _, l := range labels {
		if l.Kind == sim.KindTakeover {
			takeovers++
			if !frozen[l.Accounts[0]] {
				missed = append(missed, l.Accounts[0]+" ("+l.Variant+")")
			}
		}
	}
	if len(missed) > 0 {
		decs, _ := os.ReadFile(filepath.Join(a, "decisions.ndjson"))
		for _, l := range strings.Split(string(decs), "\n") {
			if strings.Contains(l, strings.Fields(missed[0])[0]) && !strings.Contains(l, `"rules":[]`) {
				t.Log(l)
			}
		}
	}
	if takeovers == 0 || len(missed) > 0 {
		t.Errorf("%d takeovers in the traffic; not frozen: %v", takeovers, missed)
	}
}

// TestReloadRefusesBadRulesAndKeepsOldSet reloads through the API: a valid
// change goes live with a new version, a broken file is refused as a whole.
func TestReloadRefusesBadRulesAndKeepsOldSet(t *testing.T) {
	dir := t.TempDir()
	rulesDir := filepath.Join(dir, "rules")
	os.MkdirAll(rulesDir, 0o755)
	for _, s := range rules.BuiltinSources() {
		os.WriteFile(filepath.Join(rulesDir, filepath.Base(s.Name)), s.Content, 0o644)
	}
	cfg := testConfig(t, filepath.Join(dir, "data"))
	cfg.Rules.Paths = []string{rulesDir}
	r := start(t, cfg)
	v1 := r.app.proc.Engine.Rules().Version

	call := func(method, path, token string) (int, map[string]any) {
		req, _ := http.NewRequest(method, "http://"+r.app.HTTPAddr()+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	if code, _ := call("POST", "/v1/rules/reload", ""); code != http.StatusUnauthorized {
		t.Errorf("reload without a token: %d", code)
	}
	if code, _ := call("POST", "/v1/rules/reload", "viewer-token"); code != http.StatusForbidden {
		t.Errorf("reload as viewer: %d", code)
	}
	os.WriteFile(filepath.Join(rulesDir, "extra.yaml"), []byte("rules:\n  - id: shadow_night_login\n    on: [login]\n    when: event.hour < 5\n    score: 5\n    mode: shadow\n"), 0o644)
	code, body := call("POST", "/v1/rules/reload", "admin-token")
	v2, _ := body["version"].(string)
	if code != 200 || v2 == v1 || v2 == "" {
		t.Fatalf("valid reload: %d %v", code, body)
	}
	os.WriteFile(filepath.Join(rulesDir, "broken.yaml"), []byte("rules:\n  - id: typo\n    on: [login]\n    when: event.reslt == \"failure\"\n"), 0o644)
	code, body = call("POST", "/v1/rules/reload", "admin-token")
	if code != http.StatusUnprocessableEntity || !strings.Contains(body["error"].(string), "reslt") {
		t.Fatalf("broken reload: %d %v", code, body)
	}
	if got := r.app.proc.Engine.Rules().Version; got != v2 {
		t.Fatalf("live version %s after a refused reload, want %s", got, v2)
	}
	if got := metric(t, r.app.HTTPAddr(), "walletguard_rules_last_reload_successful"); got != 0 {
		t.Errorf("last_reload_successful = %v after a refused reload", got)
	}
	if got := metric(t, r.app.HTTPAddr(), `walletguard_ruleset_info{version="`+v2+`"}`); got != 1 {
		t.Errorf("ruleset_info for the live version = %v", got)
	}
	code, body = call("GET", "/v1/rules", "viewer-token")
	if code != 200 || body["version"] != v2 {
		t.Errorf("GET /v1/rules: %d %v", code, body["version"])
	}
}

// TestReplaySkipsBadLinesAndKeepsOrder: malformed and blank lines between
// events are counted and skipped, and every valid event is decided, in the
// order of the file, whatever lies around it.
func TestReplaySkipsBadLinesAndKeepsOrder(t *testing.T) {
	base := time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)
	var b strings.Builder
	var want []string
	for i := range 9 {
		id := "ev-" + string(rune('a'+i))
		want = append(want, id)
		ev := event.Event{EventID: id, Type: event.TypeLogin, TypeName: "login", TS: base.Add(time.Duration(i) * time.Minute),
			AccountID: "acc-1", DeviceID: "phone", IP: "198.51.100.7", Result: "success", BalanceAfter: -1}
		j, err := event.Marshal(&ev)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(j)
		b.WriteByte('\n')
		switch i % 3 {
		case 0:
			b.WriteString(`{"event_id": "broken", "type": "login"` + "\n") // truncated
		case 1:
			b.WriteString("   \n")
		}
	}
	in := filepath.Join(t.TempDir(), "events.ndjson")
	if err := os.WriteFile(in, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	set, err := rules.Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	sum := replayFile(t, in, out, set)
	if sum.Lines != 15 || sum.Events != 9 || sum.Rejected != 3 {
		t.Fatalf("summary: %d lines, %d events, %d rejected; want 15, 9, 3", sum.Lines, sum.Events, sum.Rejected)
	}
	raw, err := os.ReadFile(filepath.Join(out, "decisions.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var d struct {
			EventID string `json:"event_id"`
		}
		if err := json.Unmarshal([]byte(line), &d); err != nil {
			t.Fatal(err)
		}
		got = append(got, d.EventID)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("decisions for %v, want %v in file order", got, want)
	}
}

// TestReplayKeepsTheLinesItRejects: a backtest file with bad lines among
// good ones decides the good ones and keeps each bad one in
// rejected.ndjson — the line number, why, and the line itself (in base64
// when it is not UTF-8) — and the summary counts them by reason and field.
func TestReplayKeepsTheLinesItRejects(t *testing.T) {
	ts := time.Now().UTC().Add(-time.Hour).Format(time.RFC3339)
	good := `{"event_id":"g1","type":"login","account_id":"acc-1","ts":"` + ts + `","device_id":"d1","ip":"10.0.0.1","result":"success"}`
	lines := []string{
		good,
		`{"event_id":"b1","type":"transaction","account_id":"acc-2","ts":"` + ts + `","amount":"100"}`,
		`{"event_id":"b2","type":"login",`,
		"",
		`{"event_id":"b3","type":"login","account_id":"acc-` + "\xff\xfe" + `","ts":"` + ts + `"}`,
		`{"event_id":"b4","type":"transaction","account_id":"acc-3","ts":"` + ts + `","amount":"7"}`,
	}
	set, err := rules.Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	sum, err := Replay(config.Default(), set, strings.NewReader(strings.Join(lines, "\n")+"\n"), "backtest.ndjson", out, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if sum.Events != 1 || sum.Rejected != 4 || sum.RejectedBy["wrong_type amount"] != 2 || sum.RejectedBy["invalid_json"] != 2 {
		t.Errorf("events %d, rejected %d by %v; want 1 event, 4 rejected: 2 wrong_type amount, 2 invalid_json", sum.Events, sum.Rejected, sum.RejectedBy)
	}
	var text strings.Builder
	sum.Print(&text)
	if !strings.Contains(text.String(), "2  wrong_type amount") {
		t.Errorf("the summary does not count the rejected lines by reason:\n%s", text.String())
	}

	type rejected struct {
		Source      string  `json:"source"`
		Reason      string  `json:"reason"`
		Field       string  `json:"field"`
		Detail      string  `json:"detail"`
		Value       *string `json:"value"`
		ValueBase64 []byte  `json:"value_base64"`
	}
	raw, err := os.ReadFile(filepath.Join(out, "rejected.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	var got []rejected
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var r rejected
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("rejected.ndjson line %q: %v", l, err)
		}
		got = append(got, r)
	}
	wantLine := map[string]int{"wrong_type": 0, "invalid_json": 0}
	if len(got) != 4 {
		t.Fatalf("rejected.ndjson holds %d lines, want 4:\n%s", len(got), raw)
	}
	for i, n := range []int{2, 3, 5, 6} {
		r := got[i]
		if r.Source != "backtest.ndjson:"+strconv.Itoa(n) || r.Reason == "" || r.Detail == "" {
			t.Errorf("rejected line %d: source %q reason %q detail %q", n, r.Source, r.Reason, r.Detail)
		}
		var v []byte
		if r.Value != nil {
			v = []byte(*r.Value)
		} else {
			v = r.ValueBase64
		}
		if string(v) != lines[n-1] {
			t.Errorf("rejected line %d holds %q, the file had %q", n, v, lines[n-1])
		}
		wantLine[r.Reason]++
	}
	if wantLine["wrong_type"] != 2 || wantLine["invalid_json"] != 2 || got[0].Field != "amount" {
		t.Errorf("reasons %v, first field %q", wantLine, got[0].Field)
	}
}
