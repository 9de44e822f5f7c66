package app

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

func call(t *testing.T, addr, method, path, token, body string) (int, map[string]any) {
	t.Helper()
	code, m, _ := callH(t, addr, method, path, token, body)
	return code, m
}

// callH is call that returns the answer's headers too.
func callH(t *testing.T, addr, method, path, token, body string) (int, map[string]any, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if json.Unmarshal(b, &m) != nil && !bytes.HasPrefix(b, []byte("#")) && resp.StatusCode != 200 {
		t.Fatalf("%s %s: %d non-JSON body %q", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode, m, resp.Header
}

// TestAPIRolesAndScoring: probes and metrics are open, /v1 needs a token of
// a fitting role, and the gateway scores an event synchronously.
func TestAPIRolesAndScoring(t *testing.T) {
	r := start(t, testConfig(t, t.TempDir()))
	addr := r.app.HTTPAddr()
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		if code, _ := call(t, addr, "GET", p, "", ""); code != 200 {
			t.Errorf("GET %s without a token: %d", p, code)
		}
	}
	if code, m := call(t, addr, "GET", "/v1/accounts/acc-1", "", ""); code != 401 || m["error"] == nil {
		t.Errorf("no token: %d %v", code, m)
	}
	if code, _ := call(t, addr, "GET", "/v1/accounts/acc-1", "wrong", ""); code != 401 {
		t.Errorf("unknown token: %d", code)
	}
	if code, _ := call(t, addr, "POST", "/v1/score", "viewer-token", validEvents[0]); code != 403 {
		t.Errorf("viewer scoring: %d", code)
	}
	code, d := call(t, addr, "POST", "/v1/score", "gateway-token", validEvents[1])
	if code != 200 || d["event_id"] != "v2" || d["action"] != "allow" || d["decision_id"] == nil {
		t.Fatalf("score: %d %v", code, d)
	}
	if code, _ := call(t, addr, "POST", "/v1/score", "gateway-token", validEvents[1]); code != 409 {
		t.Errorf("scoring the same event again: %d, want 409", code)
	}
	if code, m := call(t, addr, "POST", "/v1/score", "gateway-token", invalidEvents[1]); code != 400 || m["reason"] != "negative_amount" || m["field"] != "amount" {
		t.Errorf("invalid event: %d %v", code, m)
	}
	code, acc := call(t, addr, "GET", "/v1/accounts/acc-1", "gateway-token", "")
	if code != 200 || acc["account_id"] != "acc-1" || acc["frozen"] != false || acc["step_up_required"] != false {
		t.Fatalf("account: %d %v", code, acc)
	}
	for _, k := range []string{"frozen_reason", "risk_score", "recent_decisions"} {
		if _, ok := acc[k]; !ok {
			t.Errorf("account view lacks %s", k)
		}
	}
	if code, _ := call(t, addr, "GET", "/v1/alerts?status=open", "viewer-token", ""); code != 200 {
		t.Errorf("alerts: %d", code)
	}
	if code, _ := call(t, addr, "GET", "/v1/decisions?account_id=acc-1", "viewer-token", ""); code != 200 {
		t.Errorf("decisions: %d", code)
	}
	for _, p := range []string{"/v1/decisions", "/v1/audit", "/v1/alerts", "/v1/alerts/dead-letters"} {
		for _, bad := range []string{"0", "-3", "ten", "1.5"} {
			if code, m := call(t, addr, "GET", p+"?limit="+bad, "viewer-token", ""); code != 400 || !strings.Contains(fmt.Sprint(m["error"]), "limit") {
				t.Errorf("GET %s?limit=%s: %d %v, want 400 naming the limit", p, bad, code, m)
			}
		}
		if code, _ := call(t, addr, "GET", p+"?limit=5000", "viewer-token", ""); code != 200 {
			t.Errorf("GET %s?limit=5000: %d, want 200 (at most 1,000 listed)", p, code)
		}
	}
	if code, _ := call(t, addr, "GET", "/v1/nope", "viewer-token", ""); code != 404 {
		t.Errorf("unknown endpoint: %d", code)
	}
}

// TestLogLevelSwitchesAtRuntime: an admin turns debug logging on and off
// without a restart; others may not.
func TestLogLevelSwitchesAtRuntime(t *testing.T) {
	lv := new(slog.LevelVar)
	cfg := testConfig(t, t.TempDir())
	a, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: lv})), Options{LogLevel: lv})
	if err != nil {
		t.Fatal(err)
	}
	r := run(t, a)
	addr := r.app.HTTPAddr()
	if code, _ := call(t, addr, "PUT", "/v1/log/level", "viewer-token", `{"level":"debug"}`); code != 403 {
		t.Errorf("viewer switching the log level: %d", code)
	}
	if code, m := call(t, addr, "PUT", "/v1/log/level", "admin-token", `{"level":"debug"}`); code != 200 || m["level"] != "debug" || lv.Level() != slog.LevelDebug {
		t.Errorf("admin to debug: %d %v, level now %v", code, m, lv.Level())
	}
	if code, _ := call(t, addr, "PUT", "/v1/log/level", "admin-token", `{"level":"loud"}`); code != 400 {
		t.Errorf("unknown level: %d", code)
	}
	if _, m := call(t, addr, "GET", "/v1/log/level", "admin-token", ""); m["level"] != "debug" {
		t.Errorf("GET level: %v", m)
	}
}
