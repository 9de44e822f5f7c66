package app

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/enforce"
)

func enforceConfig(t *testing.T, dataDir string) config.Config {
	cfg := testConfig(t, dataDir)
	cfg.HTTP.Tokens = append(cfg.HTTP.Tokens, config.Token{Token: "support-token", Role: "support", Name: "support desk"})
	keyFile := filepath.Join(t.TempDir(), "totp.key")
	if err := os.WriteFile(keyFile, []byte(enforce.NewKey()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Enforce.TOTP.KeyFile = keyFile
	return cfg
}

// takeoverEvents is the reset-2FA takeover rule case: an account with a
// habit, then a password reset, 2FA removal, a new payee and transfers, all
// from an unknown device abroad.
func takeoverEvents(t *testing.T) []kafka.Message {
	t.Helper()
	f, err := os.Open("../rules/testdata/takeover_reset_2fa/events.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ms []kafka.Message
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev struct {
			AccountID string `json:"account_id"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatal(err)
		}
		ms = append(ms, kafka.Message{Key: []byte(ev.AccountID), Value: append([]byte(nil), sc.Bytes()...)})
	}
	return ms
}

func commandsOf(t *testing.T, ms []kafka.Message, account string) []enforce.Command {
	var out []enforce.Command
	for _, m := range ms {
		var c enforce.Command
		if err := json.Unmarshal(m.Value, &c); err != nil {
			t.Fatalf("command record %s: %v", m.Value, err)
		}
		if c.AccountID == account {
			out = append(out, c)
		}
	}
	return out
}

// TestTheftThroughKafkaFreezesAndSupportUnfreezes: a takeover produced to
// Kafka ends with the account frozen, a freeze command on the topic and the
// API saying so, also after a restart; support's unfreeze needs a reason, is
// audited and sends an unfreeze command.
func TestTheftThroughKafkaFreezesAndSupportUnfreezes(t *testing.T) {
	dir := t.TempDir()
	cfg := enforceConfig(t, dir)
	r := start(t, cfg)
	addr := r.app.HTTPAddr()
	produce(t, r.app.BrokerAddr(), "wallet.events", takeoverEvents(t)...)
	waitFor(t, 20*time.Second, "acc-1 frozen", func() bool {
		_, acc := call(t, addr, "GET", "/v1/accounts/acc-1", "gateway-token", "")
		return acc["frozen"] == true
	})
	// The 2FA removal asked for a second factor; the payee added from the
	// attacker's device froze the account, before any money moved.
	cmds := commandsOf(t, readAll(t, r.app.BrokerAddr(), cfg.Kafka.CommandsTopic, 2, 10*time.Second), "acc-1")
	if len(cmds) != 2 || cmds[0].Command != enforce.CmdRequire2FA || cmds[1].Command != enforce.CmdFreeze ||
		cmds[1].DecisionID == "" || !strings.HasPrefix(cmds[1].CommandID, "cmd_") {
		t.Fatalf("commands for acc-1: %+v", cmds)
	}
	r.stop(t)

	r = start(t, cfg)
	addr = r.app.HTTPAddr()
	code, acc := call(t, addr, "GET", "/v1/accounts/acc-1", "gateway-token", "")
	if code != 200 || acc["frozen"] != true || !strings.Contains(acc["frozen_reason"].(string), "payee") {
		t.Fatalf("after restart: %d %v", code, acc)
	}

	// Tokens and roles on the state-changing calls.
	if code, _ := call(t, addr, "POST", "/v1/accounts/acc-1/unfreeze", "", `{"reason":"x"}`); code != 401 {
		t.Errorf("unfreeze without a token: %d, want 401", code)
	}
	if code, _ := call(t, addr, "POST", "/v1/accounts/acc-2/freeze", "viewer-token", `{"reason":"x"}`); code != 403 {
		t.Errorf("viewer freezing: %d, want 403", code)
	}
	if code, m := call(t, addr, "POST", "/v1/accounts/acc-1/unfreeze", "support-token", `{}`); code != 400 || m["error"] == nil {
		t.Errorf("unfreeze without a reason: %d %v, want 400", code, m)
	}
	if code, _ := call(t, addr, "POST", "/v1/accounts/acc-1/unfreeze", "support-token", strings.Repeat("x", 80<<10)); code != 413 && code != 400 {
		t.Errorf("oversized body: %d", code)
	}
	code, m := call(t, addr, "POST", "/v1/accounts/acc-1/unfreeze", "support-token",
		`{"reason":"owner verified by video call; password reset","operator":"rina"}`)
	if code != 200 || m["state"].(map[string]any)["frozen"] != false {
		t.Fatalf("unfreeze: %d %v", code, m)
	}
	if code, m := call(t, addr, "POST", "/v1/accounts/acc-1/unfreeze", "support-token", `{"reason":"again"}`); code != 409 {
		t.Errorf("unfreezing an account that is not frozen: %d %v, want 409", code, m)
	}
	cmds = commandsOf(t, readAll(t, r.app.BrokerAddr(), cfg.Kafka.CommandsTopic, 3, 10*time.Second), "acc-1")
	if len(cmds) != 3 || cmds[2].Command != enforce.CmdUnfreeze || cmds[2].Actor != "support desk (rina)" {
		t.Fatalf("commands after unfreeze: %+v", cmds)
	}
	code, audit := call(t, addr, "GET", "/v1/audit?account_id=acc-1", "viewer-token", "")
	entries, _ := audit["entries"].([]any)
	if code != 200 || len(entries) < 2 {
		t.Fatalf("audit: %d %v", code, audit)
	}
	latest, first := entries[0].(map[string]any), entries[len(entries)-1].(map[string]any)
	if latest["action"] != "unfreeze" || latest["origin"] != "manual" || latest["actor"] != "support desk (rina)" ||
		!strings.Contains(latest["reason"].(string), "video call") {
		t.Errorf("latest audit entry %v", latest)
	}
	if first["action"] != "require_2fa" || first["origin"] != "auto" || first["decision_id"] == "" {
		t.Errorf("first audit entry %v", first)
	}
	// Page by page, one entry a page, the trail is the same: what a
	// script undoing a bad rule's freezes walks when they are thousands.
	var whole, paged []string
	for _, e := range entries {
		whole = append(whole, fmt.Sprint(e.(map[string]any)["action"], " ", e.(map[string]any)["at"]))
	}
	for after, pages := "", 0; ; pages++ {
		path := "/v1/audit?account_id=acc-1&limit=1"
		if after != "" {
			path += "&after=" + after
		}
		code, page := call(t, addr, "GET", path, "viewer-token", "")
		if code != 200 || pages > len(whole)+1 {
			t.Fatalf("GET %s: %d %v after %d pages", path, code, page, pages)
		}
		for _, e := range page["entries"].([]any) {
			paged = append(paged, fmt.Sprint(e.(map[string]any)["action"], " ", e.(map[string]any)["at"]))
		}
		next, _ := page["next"].(string)
		if next == "" {
			break
		}
		after = next
	}
	if !slices.Equal(paged, whole) {
		t.Errorf("the audit trail in pages of 1: %v, want %v", paged, whole)
	}
	if code, m := call(t, addr, "GET", "/v1/audit?after=x", "viewer-token", ""); code != 400 || !strings.Contains(fmt.Sprint(m["error"]), "after") {
		t.Errorf("after=x: %d %v, want 400 naming after", code, m)
	}
	if v := metric(t, addr, `walletguard_actions_total{action="unfreeze",origin="manual"}`); v != 1 {
		t.Errorf("manual unfreezes counted %v", v)
	}
	// The thief — or the customer support just vouched for — moves more
	// money the same way: within the unfreeze grace it asks for the second
	// factor instead of freezing the account again.
	produce(t, r.app.BrokerAddr(), "wallet.events", kafka.Message{Key: []byte("acc-1"), Value: []byte(
		`{"event_id":"t7","type":"transaction","ts":"2026-11-21T18:16:00Z","account_id":"acc-1","device_id":"phone-x","ip":"102.89.1.9","channel":"app",` +
			`"geo":{"country":"NG","lat":6.52,"lon":3.38},"tx_id":"x3","kind":"transfer","amount":15000000,"currency":"IDR","status":"success",` +
			`"counterparty_id":"mule-2","counterparty_country":"ID","balance_after":2500000}`)})
	var d7 map[string]any
	waitFor(t, 20*time.Second, "the decision on t7", func() bool {
		_, m := call(t, addr, "GET", "/v1/decisions?account_id=acc-1", "viewer-token", "")
		ds, _ := m["decisions"].([]any)
		for _, d := range ds {
			if dm := d.(map[string]any); dm["event_id"] == "t7" {
				d7 = dm
				return true
			}
		}
		return false
	})
	if d7["action"] != "step_up" || !strings.Contains(fmt.Sprint(d7["downgraded_from"]), "unfrozen by support desk (rina)") {
		t.Errorf("a freeze-worthy event within the unfreeze grace: %v (downgraded from %v)", d7["action"], d7["downgraded_from"])
	}
	if code, acc := call(t, addr, "GET", "/v1/accounts/acc-1", "viewer-token", ""); code != 200 || acc["frozen"] != false || acc["step_up_required"] != true {
		t.Errorf("within the grace acc-1 must stay unfrozen and need the second factor: %v", acc)
	}

	// Manual freeze is idempotent: one command for two calls.
	for i := 0; i < 2; i++ {
		if code, _ := call(t, addr, "POST", "/v1/accounts/acc-9/freeze", "support-token", `{"reason":"owner reported a stolen phone"}`); code != 200 {
			t.Fatalf("manual freeze: %d", code)
		}
	}
	all := readAll(t, r.app.BrokerAddr(), cfg.Kafka.CommandsTopic, 4, 10*time.Second)
	if c := commandsOf(t, all, "acc-9"); len(c) != 1 || c[0].Command != enforce.CmdFreeze {
		t.Errorf("two manual freezes gave %+v", c)
	}
}

// TestTwoFactorThroughTheAPI enrolls an account, reads the code from
// oathtool and verifies it; the secret is never shown again.
func TestTwoFactorThroughTheAPI(t *testing.T) {
	cfg := enforceConfig(t, t.TempDir())
	r := start(t, cfg)
	addr := r.app.HTTPAddr()
	code, en := call(t, addr, "POST", "/v1/accounts/acc-5/2fa/enroll", "gateway-token", "")
	if code != 200 || en["qr_png_base64"] == "" {
		t.Fatalf("enroll: %d %v", code, en)
	}
	u, _ := url.Parse(en["otpauth_url"].(string))
	secret := u.Query().Get("secret")
	out, err := exec.Command("oathtool", "--totp", "-b", secret).Output()
	if err != nil {
		t.Fatalf("oathtool (Debian package oathtool): %v", err)
	}
	otp := strings.TrimSpace(string(out))
	if code, m := call(t, addr, "POST", "/v1/accounts/acc-5/2fa/verify", "gateway-token", `{"code":"`+otp+`"}`); code != 200 || m["verified"] != true {
		t.Fatalf("verify oathtool's code: %d %v", code, m)
	}
	if code, _ := call(t, addr, "POST", "/v1/accounts/acc-5/2fa/verify", "gateway-token", `{"code":"`+otp+`"}`); code != 422 {
		t.Errorf("the same code again: %d, want 422", code)
	}
	for i := 0; i < 4; i++ {
		call(t, addr, "POST", "/v1/accounts/acc-5/2fa/verify", "gateway-token", `{"code":"000000"}`)
	}
	if code, _ := call(t, addr, "POST", "/v1/accounts/acc-5/2fa/verify", "gateway-token", `{"code":"111111"}`); code != 423 {
		t.Errorf("after five wrong codes in a row: %d, want 423 Locked", code)
	}
	_, acc := call(t, addr, "GET", "/v1/accounts/acc-5", "viewer-token", "")
	b, _ := json.Marshal(acc)
	if strings.Contains(string(b), secret) {
		t.Error("the account view shows the TOTP secret")
	}
	if st := acc["state"].(map[string]any); st["totp_enrolled"] != true || st["totp_locked_at"] == nil {
		t.Errorf("state %v", st)
	}
	_, alerts := call(t, addr, "GET", "/v1/alerts?category=2fa_lockout", "viewer-token", "")
	if l, _ := alerts["alerts"].([]any); len(l) != 1 {
		t.Errorf("lockout alerts: %v", alerts)
	}
	if v := metric(t, addr, "walletguard_2fa_lockouts_total"); v != 1 {
		t.Errorf("lockouts metric %v", v)
	}
	// A restart without the key refuses to start: the secrets could not be opened.
	r.stop(t)
	cfg.Enforce.TOTP.KeyFile, cfg.Enforce.TOTP.KeyEnv = "", ""
	if a, err := New(cfg, discardLog(), Options{}); err == nil || !strings.Contains(err.Error(), "TOTP") {
		if a != nil {
			a.runCleanup()
		}
		t.Errorf("start without the key: %v", err)
	}
}

// TestBreakerOpensUnderAFreezeFlood: a rule that freezes everyone trips the
// breaker; the flood becomes step-ups, readiness and metrics show it, and an
// admin closes it.
func TestBreakerOpensUnderAFreezeFlood(t *testing.T) {
	dir := t.TempDir()
	rulesDir := filepath.Join(dir, "rules")
	os.MkdirAll(rulesDir, 0o755)
	os.WriteFile(filepath.Join(rulesDir, "bad.yaml"), []byte(`rules:
  - id: freeze_everyone
    description: a rule gone wrong
    on: [login]
    when: event.result == "success"
    score: 95
    action: freeze
    category: theft
    severity: critical
`), 0o644)
	cfg := enforceConfig(t, filepath.Join(dir, "data"))
	cfg.Rules.Paths = []string{rulesDir}
	cfg.Enforce.Breaker.MaxFreezes = 5
	r := start(t, cfg)
	addr := r.app.HTTPAddr()
	var ms []kafka.Message
	for i := 0; i < 40; i++ {
		acc := "flood-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		ms = append(ms, kafka.Message{Key: []byte(acc), Value: []byte(`{"event_id":"f` + acc + `","type":"login","ts":"` + ts +
			`","account_id":"` + acc + `","result":"success"}`)})
	}
	produce(t, r.app.BrokerAddr(), "wallet.events", ms...)
	waitFor(t, 20*time.Second, "40 logins decided", func() bool { return r.app.Snapshot().Consumed == 40 })
	all := readAll(t, r.app.BrokerAddr(), cfg.Kafka.CommandsTopic, 40, 10*time.Second)
	n := map[string]int{}
	for _, m := range all {
		var c enforce.Command
		json.Unmarshal(m.Value, &c)
		n[c.Command]++
	}
	if n[enforce.CmdFreeze] != 5 || n[enforce.CmdRequire2FA] != 35 {
		t.Errorf("flood of 40 freezes with a limit of 5: %v", n)
	}
	code, ready := call(t, addr, "GET", "/readyz", "", "")
	if br := ready["freeze_breaker"].(map[string]any); code != 200 || br["open"] != true {
		t.Errorf("readyz: %d %v", code, ready)
	}
	if v := metric(t, addr, "walletguard_freeze_breaker_open"); v != 1 {
		t.Errorf("breaker gauge %v", v)
	}
	_, al := call(t, addr, "GET", "/v1/alerts?category=freeze_storm", "viewer-token", "")
	if l, _ := al["alerts"].([]any); len(l) != 1 || l[0].(map[string]any)["severity"] != "critical" {
		t.Errorf("freeze-storm alert: %v", al)
	}
	if code, _ := call(t, addr, "POST", "/v1/enforce/breaker/reset", "support-token", `{"reason":"x"}`); code != 403 {
		t.Errorf("support closing the breaker: %d, want 403", code)
	}
	if code, m := call(t, addr, "POST", "/v1/enforce/breaker/reset", "admin-token", `{"reason":"freeze_everyone shadowed"}`); code != 200 || m["open"] != false {
		t.Errorf("admin reset: %d %v", code, m)
	}
	if v := metric(t, addr, "walletguard_freeze_breaker_open"); v != 0 {
		t.Errorf("breaker gauge after reset %v", v)
	}
	// The reset goes to the actions topic for a standby, which counted the
	// same freezes; read back here, it changes nothing.
	var reset manualAction
	for _, m := range readAll(t, r.app.BrokerAddr(), cfg.Kafka.ActionsTopic, 1, 10*time.Second) {
		if string(m.Key) == breakerKey {
			json.Unmarshal(m.Value, &reset)
		}
	}
	if !reset.BreakerReset || len(reset.Audit) != 1 || reset.Audit[0].Action != "breaker_reset" || reset.Audit[0].Reason != "freeze_everyone shadowed" {
		t.Errorf("breaker reset in the actions topic: %+v", reset)
	}
	waitFor(t, 10*time.Second, "the reset read back", func() bool { return metric(t, addr, "walletguard_manual_actions_read_total") == 1 })
	// Read records wait for the pipeline's next idle moment, which the
	// empty topic gives it at once.
	waitFor(t, 10*time.Second, "the reset weighed", func() bool {
		r.app.procMu.Lock()
		defer r.app.procMu.Unlock()
		return len(r.app.manualPending) == 0 && !r.app.manualWaiting.Load()
	})
	if v := metric(t, addr, "walletguard_manual_actions_adopted_total"); v != 0 {
		t.Errorf("the owner adopted %v of its own manual actions", v)
	}

	// The cleanup the runbook gives, reading the audit trail two entries a
	// page: every account the rule froze is unfrozen, once.
	var frozen []string
	for _, m := range all {
		var c enforce.Command
		json.Unmarshal(m.Value, &c)
		if c.Command == enforce.CmdFreeze {
			frozen = append(frozen, c.AccountID)
		}
	}
	cmd := exec.Command("bash", "../deploy/ops/unfreeze-by-rule", "freeze_everyone", "frozen by freeze_everyone (INC-1)")
	cmd.Env = append(os.Environ(), "WG=http://"+addr, "TOKEN=support-token", "PAGE=2")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "unfroze 5 accounts frozen by freeze_everyone (0 failed)") {
		t.Errorf("deploy/ops/unfreeze-by-rule: %v\n%s", err, out)
	}
	for _, acc := range frozen {
		if _, st := call(t, addr, "GET", "/v1/accounts/"+acc, "gateway-token", ""); st["frozen"] != false {
			t.Errorf("%s, frozen by the bad rule, after the cleanup: %v", acc, st)
		}
	}
	if v := metric(t, addr, `walletguard_actions_total{action="unfreeze",origin="manual"}`); v != 5 {
		t.Errorf("manual unfreezes counted %v, want the 5", v)
	}
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestAccountServiceGetsEveryCommand: with enforce.account_service set,
// automatic and manual commands reach the wallet's account service as
// signed POSTs, in order, even when it fails at first.
func TestAccountServiceGetsEveryCommand(t *testing.T) {
	var mu sync.Mutex
	var got []enforce.Command
	fails := 2
	srv := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if fails > 0 {
			fails--
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		if !verifySignature("svc-secret", r.Header.Get("Walletguard-Signature"), body, time.Minute) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var c enforce.Command
		json.Unmarshal(body, &c)
		got = append(got, c)
	}))
	cfg := enforceConfig(t, t.TempDir())
	cfg.Enforce.AccountService = config.Webhook{URL: srv + "/commands", Secret: "svc-secret"}
	r := run(t, mustNew(t, cfg, Options{}))
	addr := r.app.HTTPAddr()
	produce(t, r.app.BrokerAddr(), "wallet.events", takeoverEvents(t)...)
	waitFor(t, 20*time.Second, "acc-1 frozen", func() bool {
		_, acc := call(t, addr, "GET", "/v1/accounts/acc-1", "gateway-token", "")
		return acc["frozen"] == true
	})
	if code, _ := call(t, addr, "POST", "/v1/accounts/acc-1/unfreeze", "support-token", `{"reason":"owner verified"}`); code != 200 {
		t.Fatalf("unfreeze: %d", code)
	}
	waitFor(t, 30*time.Second, "three commands at the account service", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= 3
	})
	mu.Lock()
	defer mu.Unlock()
	var seq []string
	for _, c := range got {
		seq = append(seq, c.Command)
	}
	if strings.Join(seq, ",") != "require_2fa,freeze,unfreeze" {
		t.Errorf("account service got %v, want require_2fa,freeze,unfreeze in order", seq)
	}
}

// mustNew validates cfg and builds the daemon on it.
func mustNew(t *testing.T, cfg config.Config, opts Options) *App {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, discardLog(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
