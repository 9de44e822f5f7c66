package app

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/walletguard/walletguard/config"
)

// receiver is a support system's webhook endpoint under test: it checks
// each delivery's signature the way the README tells receivers to.
type receiver struct {
	mu       sync.Mutex
	secret   string
	fail     int // answer 500 to this many requests
	bodies   [][]byte
	ids      map[string]int // alert_id -> deliveries
	badSigs  int
	requests int
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.requests++
	if rc.fail > 0 {
		rc.fail--
		http.Error(w, "database is down", http.StatusInternalServerError)
		return
	}
	if !verifySignature(rc.secret, r.Header.Get("Walletguard-Signature"), body, 5*time.Minute) {
		rc.badSigs++
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	rc.bodies = append(rc.bodies, body)
	var a struct {
		AlertID string `json:"alert_id"`
	}
	json.Unmarshal(body, &a)
	rc.ids[a.AlertID]++
}

// verifySignature is the receiver-side check from the README.
func verifySignature(secret, header string, body []byte, tolerance time.Duration) bool {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	t, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || time.Since(time.Unix(t, 0)).Abs() > tolerance {
		return false
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts + "."))
	m.Write(body)
	want := hex.EncodeToString(m.Sum(nil))
	return hmac.Equal([]byte(sig), []byte(want))
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func alertIDs(t *testing.T, addr string) map[string]bool {
	_, m := call(t, addr, "GET", "/v1/alerts?status=all", "viewer-token", "")
	ids := map[string]bool{}
	for _, a := range m["alerts"].([]any) {
		ids[a.(map[string]any)["alert_id"].(string)] = true
	}
	return ids
}

// TestAlertsSurviveAReceiverOutage: the webhook is down (connection
// refused), then fails with 500, then accepts; walletguard is restarted in
// the middle. Every alert arrives, signed, and no alert_id is lost.
func TestAlertsSurviveAReceiverOutage(t *testing.T) {
	dir := t.TempDir()
	hookAddr := freePort(t)
	cfg := enforceConfig(t, dir)
	cfg.Alerts.Webhooks = []config.Webhook{{URL: "http://" + hookAddr + "/hook", Secret: "hook-secret", Name: "support"}}
	opts := Options{DeliveryBackoff: 50 * time.Millisecond}
	a := mustNew(t, cfg, opts)
	r := run(t, a)
	addr := r.app.HTTPAddr()
	ms, _ := simMessages(t, 400, 11, 12000)
	produce(t, r.app.BrokerAddr(), "wallet.events", append(ms, takeoverEvents(t)...)...)
	waitFor(t, 30*time.Second, "events decided", func() bool { return r.app.Snapshot().Consumed >= float64(len(ms)) })
	waitFor(t, 10*time.Second, "alerts queued for the dead receiver", func() bool {
		return metric(t, addr, `walletguard_outbox_pending{destination="alerts:support"}`) > 0
	})
	if metric(t, addr, `walletguard_deliveries_total{destination="alerts:support",outcome="failed"}`) == 0 {
		t.Error("no failed delivery counted while the receiver was down")
	}
	r.stop(t) // a restart in the middle of the outage

	a = mustNew(t, cfg, opts)
	r = run(t, a)
	addr = r.app.HTTPAddr()
	want := alertIDs(t, addr)
	if len(want) < 3 {
		t.Fatalf("only %d alerts raised; the traffic should hold several incidents", len(want))
	}
	rc := &receiver{secret: "hook-secret", fail: 3, ids: map[string]int{}}
	srv := &http.Server{Addr: hookAddr, Handler: rc}
	ln, err := net.Listen("tcp", hookAddr)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	waitFor(t, 30*time.Second, "the outbox drained", func() bool {
		return metric(t, addr, `walletguard_outbox_pending{destination="alerts:support"}`) == 0
	})
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.badSigs > 0 {
		t.Errorf("%d deliveries with a bad signature", rc.badSigs)
	}
	for id := range want {
		if rc.ids[id] == 0 {
			t.Errorf("alert %s never delivered", id)
		}
	}
	t.Logf("%d alerts, %d deliveries (versions of them), %d requests", len(want), len(rc.bodies), rc.requests)
}

func run(t *testing.T, a *App) *running {
	t.Helper()
	r := launch(t, a)
	waitFor(t, 30*time.Second, "daemon ready", func() bool {
		code, _ := readyz(a.HTTPAddr())
		return code == http.StatusOK
	})
	return r
}

// launch runs a without waiting for it to be ready.
func launch(t *testing.T, a *App) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{app: a, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// TestAlertLifecycleAndRateLimit: support acknowledges and resolves with
// who and when; a receiver over its rate limit gets a digest; a Slack-style
// receiver gets chat messages in its language.
func TestAlertLifecycleAndRateLimit(t *testing.T) {
	limited := &receiver{secret: "s1", ids: map[string]int{}}
	chat := &receiver{ids: map[string]int{}}
	var chatBodies [][]byte
	limitedSrv := httptestServer(t, limited)
	chatSrv := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		chat.mu.Lock()
		chatBodies = append(chatBodies, b)
		chat.mu.Unlock()
	}))
	cfg := enforceConfig(t, t.TempDir())
	cfg.Alerts.Webhooks = []config.Webhook{
		{URL: limitedSrv + "/hook", Secret: "s1", Name: "limited", RateLimit: 2, Categories: []string{"stuck_retry"}},
		{URL: chatSrv + "/slack", Name: "chat", Format: "slack", Language: "id", MinSeverity: "critical"},
	}
	cfg.Alerts.ConsoleURL = "https://wg.example.com/console/"
	a := mustNew(t, cfg, Options{DeliveryBackoff: 50 * time.Millisecond, DigestEvery: 300 * time.Millisecond})
	r := run(t, a)
	addr := r.app.HTTPAddr()
	// Six users' payments stuck at six merchants, and a takeover.
	var ms []kafka.Message
	for u := 0; u < 6; u++ {
		acc := "stuck-" + strconv.Itoa(u)
		for k := 1; k <= 4; k++ {
			ms = append(ms, kafka.Message{Key: []byte(acc), Value: []byte(`{"event_id":"` + acc + `-` + strconv.Itoa(k) + `","type":"payment_attempt","ts":"` + ts +
				`","account_id":"` + acc + `","payment_id":"p-` + acc + `","attempt":` + strconv.Itoa(k) + `,"status":"retrying","error_code":"NETWORK_TIMEOUT","merchant_id":"m-` + acc + `","amount":100,"currency":"IDR"}`)})
		}
	}
	produce(t, r.app.BrokerAddr(), "wallet.events", append(ms, takeoverEvents(t)...)...)
	waitFor(t, 20*time.Second, "stuck payments alerted", func() bool {
		_, m := call(t, addr, "GET", "/v1/alerts?category=stuck_retry", "viewer-token", "")
		l, _ := m["alerts"].([]any)
		return len(l) == 6
	})
	// Listing: filters pick, limit pages the newest, in a stable order.
	ids := func(path string) []string {
		t.Helper()
		code, m := call(t, addr, "GET", path, "viewer-token", "")
		if code != 200 {
			t.Fatalf("GET %s: %d %v", path, code, m)
		}
		var out []string
		for _, a := range m["alerts"].([]any) {
			out = append(out, a.(map[string]any)["alert_id"].(string))
		}
		return out
	}
	all := ids("/v1/alerts?status=all")
	if len(all) < 6 {
		t.Fatalf("%d alerts held, want at least the 6 stuck payments", len(all))
	}
	if got := ids("/v1/alerts?status=all&limit=3"); !slices.Equal(got, all[:3]) {
		t.Errorf("limit=3 gave %v, want the newest three of %v", got, all)
	}
	if got := walkAlertPages(t, addr, "status=all", 4); !slices.Equal(got, all) {
		t.Errorf("pages of 4 walked with next gave %v, want the whole listing %v", got, all)
	}
	if code, m := call(t, addr, "GET", "/v1/alerts?limit=2&after=not-a-token", "viewer-token", ""); code != 400 || !strings.Contains(fmt.Sprint(m["error"]), "after") {
		t.Errorf("after=not-a-token: %d %v, want 400 naming after", code, m)
	}
	if got := ids("/v1/alerts?merchant_id=m-stuck-2"); len(got) != 1 || !slices.Contains(all, got[0]) {
		t.Errorf("alerts at merchant m-stuck-2: %v, want one", got)
	}
	_, m := call(t, addr, "GET", "/v1/alerts?account_id=stuck-4&status=all", "viewer-token", "")
	if l := m["alerts"].([]any); len(l) != 1 || l[0].(map[string]any)["account_id"] != "stuck-4" {
		t.Errorf("alerts of account stuck-4: %v", l)
	}
	for _, bad := range []string{"0", "-1", "ten"} {
		if code, m := call(t, addr, "GET", "/v1/alerts?limit="+bad, "viewer-token", ""); code != 400 || m["error"] == nil {
			t.Errorf("limit=%s: %d %v, want 400 with an error", bad, code, m)
		}
	}
	waitFor(t, 20*time.Second, "limited receiver got individual alerts and a digest", func() bool {
		limited.mu.Lock()
		defer limited.mu.Unlock()
		digests := 0
		for _, b := range limited.bodies {
			if strings.Contains(string(b), `"digest":true`) {
				digests++
			}
		}
		return digests >= 1
	})
	limited.mu.Lock()
	single := 0
	for _, b := range limited.bodies {
		if !strings.Contains(string(b), `"digest":true`) {
			single++
			if !strings.Contains(string(b), `"category":"stuck_retry"`) {
				t.Errorf("a stuck_retry-only receiver got %s", b)
			}
			var al struct {
				AlertID string `json:"alert_id"`
				URL     string `json:"url"`
			}
			if json.Unmarshal(b, &al) != nil || al.URL != "https://wg.example.com/console/#/alert/"+al.AlertID {
				t.Errorf("an alert does not link to its page in the console: %s", b)
			}
		}
	}
	limited.mu.Unlock()
	if single > 2 {
		t.Errorf("%d single alerts within a minute to a receiver limited to 2", single)
	}
	waitFor(t, 20*time.Second, "the chat room heard of the takeover, linked to its page in the console", func() bool {
		chat.mu.Lock()
		defer chat.mu.Unlock()
		for _, b := range chatBodies {
			if strings.Contains(string(b), "pengambilalihan akun") && strings.Contains(string(b), `"blocks"`) &&
				strings.Contains(string(b), `\u003chttps://wg.example.com/console/#/alert/alt_`) { // "<url|title>", JSON-escaped
				return true
			}
		}
		return false
	})

	// The critical ones, however many newer alerts there are.
	var critical []string
	_, m = call(t, addr, "GET", "/v1/alerts?status=all", "viewer-token", "")
	for _, a := range m["alerts"].([]any) {
		if a := a.(map[string]any); a["severity"] == "critical" {
			critical = append(critical, a["alert_id"].(string))
		}
	}
	if got := ids("/v1/alerts?status=all&min_severity=critical"); len(critical) == 0 || !slices.Equal(got, critical) {
		t.Errorf("min_severity=critical listed %v, want %v", got, critical)
	}
	// The queue's size, for Prometheus: what the API lists, by status
	// and severity, zeros too.
	want := map[string]int{}
	for _, a := range m["alerts"].([]any) {
		a := a.(map[string]any)
		want[a["status"].(string)+"/"+a["severity"].(string)]++
	}
	for _, st := range []string{"open", "acknowledged", "grouped", "resolved"} {
		for _, sev := range []string{"low", "medium", "high", "critical"} {
			series := `walletguard_alerts_held{severity="` + sev + `",status="` + st + `"}`
			if got := metric(t, addr, series); got != float64(want[st+"/"+sev]) {
				t.Errorf("%s = %v, want %d (GET /v1/alerts?status=all)", series, got, want[st+"/"+sev])
			}
		}
	}
	if want["open/critical"] == 0 || want["open/medium"] == 0 {
		t.Errorf("alerts held %v: want open critical and medium ones to count", want)
	}

	for _, bad := range []string{"min_severity=urgent", "status=opne"} {
		if code, m := call(t, addr, "GET", "/v1/alerts?"+bad, "viewer-token", ""); code != 400 || m["error"] == nil {
			t.Errorf("%s: %d %v, want 400 with an error", bad, code, m)
		}
	}

	// Lifecycle.
	_, m = call(t, addr, "GET", "/v1/alerts?category=theft", "viewer-token", "")
	theft := m["alerts"].([]any)[0].(map[string]any)
	id := theft["alert_id"].(string)
	if code, _ := call(t, addr, "POST", "/v1/alerts/"+id+"/ack", "viewer-token", ""); code != 403 {
		t.Errorf("viewer acknowledging: %d", code)
	}
	if code, _ := call(t, addr, "POST", "/v1/alerts/alt_nope/ack", "support-token", ""); code != 404 {
		t.Errorf("unknown alert: %d", code)
	}
	code, al := call(t, addr, "POST", "/v1/alerts/"+id+"/ack", "support-token", `{"operator":"rina"}`)
	if code != 200 || al["status"] != "acknowledged" || al["acknowledged_by"] != "support desk (rina)" || al["acknowledged_at"] == nil {
		t.Fatalf("ack: %d %v", code, al)
	}
	code, al = call(t, addr, "GET", "/v1/alerts/"+id, "viewer-token", "")
	if code != 200 || al["alert_id"] != id || al["status"] != "acknowledged" || al["acknowledged_by"] != "support desk (rina)" {
		t.Errorf("GET the acknowledged alert: %d %v", code, al)
	}
	if code, m := call(t, addr, "GET", "/v1/alerts/alt_nope", "viewer-token", ""); code != 404 || !strings.Contains(fmt.Sprint(m["error"]), "alt_nope") {
		t.Errorf("GET an unknown alert: %d %v, want 404 naming it", code, m)
	}
	if code, _ := call(t, addr, "GET", "/v1/alerts/"+id, "gateway-token", ""); code != 403 {
		t.Errorf("the gateway reading an alert: %d, want 403", code)
	}
	code, al = call(t, addr, "POST", "/v1/alerts/"+id+"/resolve", "support-token", `{"reason":"owner confirmed; account recovered"}`)
	if code != 200 || al["status"] != "resolved" || al["resolution"] != "owner confirmed; account recovered" {
		t.Fatalf("resolve: %d %v", code, al)
	}
	if _, al := call(t, addr, "GET", "/v1/alerts/"+id, "viewer-token", ""); al["status"] != "resolved" || al["resolution"] != "owner confirmed; account recovered" {
		t.Errorf("GET the resolved alert: %v", al)
	}
	_, m = call(t, addr, "GET", "/v1/alerts?status=resolved", "viewer-token", "")
	if l := m["alerts"].([]any); len(l) != 1 || l[0].(map[string]any)["alert_id"] != id {
		t.Errorf("resolved alerts: %v", l)
	}
	_, m = call(t, addr, "GET", "/v1/alerts?category=theft", "viewer-token", "")
	if l := m["alerts"].([]any); len(l) != 0 {
		t.Errorf("the queue still shows the resolved alert: %v", l)
	}
	_, audit := call(t, addr, "GET", "/v1/audit", "viewer-token", "")
	if !strings.Contains(toJSON(audit), `"action":"alert_resolve"`) {
		t.Errorf("resolve not audited: %v", audit)
	}
}

func toJSON(v any) string { b, _ := json.Marshal(v); return string(b) }

func httptestServer(t *testing.T, h http.Handler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// TestAlertsReachAlertmanager sends alerts to a real Prometheus
// Alertmanager and reads them back with amtool.
func TestAlertsReachAlertmanager(t *testing.T) {
	am, err := exec.LookPath("prometheus-alertmanager")
	if err != nil {
		t.Fatal("prometheus-alertmanager is required (Debian package prometheus-alertmanager; the test script installs it)")
	}
	dir := t.TempDir()
	amAddr := freePort(t)
	conf := filepath.Join(dir, "am.yml")
	os.WriteFile(conf, []byte("route:\n  receiver: support\n  group_by: [category]\nreceivers:\n  - name: support\n"), 0o644)
	cmd := exec.Command(am, "--config.file="+conf, "--storage.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+amAddr, "--cluster.listen-address=")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	waitFor(t, 20*time.Second, "alertmanager ready", func() bool {
		resp, err := http.Get("http://" + amAddr + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	cfg := enforceConfig(t, filepath.Join(dir, "wg"))
	cfg.Alerts.Webhooks = []config.Webhook{{URL: "http://" + amAddr + "/api/v2/alerts", Name: "oncall", Format: "alertmanager", MinSeverity: "high"}}
	cfg.Alerts.ConsoleURL = "https://wg.example.com/console/"
	a := mustNew(t, cfg, Options{DeliveryBackoff: 50 * time.Millisecond})
	r := run(t, a)
	produce(t, r.app.BrokerAddr(), "wallet.events", takeoverEvents(t)...)
	var out []byte
	// The alert grows as the takeover goes on; its last version, after the
	// freeze, is critical.
	waitFor(t, 30*time.Second, "amtool to show the critical theft alert", func() bool {
		out, err = exec.Command("amtool", "alert", "query", "--alertmanager.url=http://"+amAddr, "-o", "json", "alertname=walletguard_theft").Output()
		return err == nil && strings.Contains(string(out), `"account_id":"acc-1"`) && strings.Contains(string(out), `"severity":"critical"`)
	})
	if !strings.Contains(string(out), "Likely account takeover") ||
		!strings.Contains(string(out), `"generatorURL":"https://wg.example.com/console/#/alert/alt_`) {
		t.Errorf("amtool shows %s; want the takeover, linked to its page in the console", out)
	}
}

// TestAnAcknowledgedAlertIsNotDeliveredOpenAfterwards: support acknowledges
// an alert before the checkpoint that would deliver its first version. The
// acknowledgement reaches the receiver at once; the older, open version must
// not follow it (a pager would fire again for an incident someone has).
func TestAnAcknowledgedAlertIsNotDeliveredOpenAfterwards(t *testing.T) {
	dir := t.TempDir()
	rc := &receiver{secret: "hook-secret", ids: map[string]int{}}
	hook := httptestServer(t, rc)
	cfg := enforceConfig(t, dir)
	cfg.Alerts.Webhooks = []config.Webhook{{URL: hook + "/hook", Secret: "hook-secret", Name: "support"}}
	// No checkpoint until shutdown: the alert's first version waits for it.
	cfg.Detector.CheckpointInterval = config.Duration(time.Hour)
	opts := Options{DeliveryBackoff: 50 * time.Millisecond}
	a := mustNew(t, cfg, opts)
	r := run(t, a)
	addr := r.app.HTTPAddr()
	produce(t, r.app.BrokerAddr(), "wallet.events", takeoverEvents(t)...)
	var id string
	waitFor(t, 20*time.Second, "the takeover alerted", func() bool {
		_, m := call(t, addr, "GET", "/v1/alerts?category=theft", "viewer-token", "")
		l, _ := m["alerts"].([]any)
		if len(l) == 0 {
			return false
		}
		id = l[0].(map[string]any)["alert_id"].(string)
		return true
	})
	if code, al := call(t, addr, "POST", "/v1/alerts/"+id+"/ack", "support-token", `{"operator":"rina"}`); code != 200 {
		t.Fatalf("ack: %d %v", code, al)
	}
	waitFor(t, 10*time.Second, "the acknowledgement delivered", func() bool {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		return rc.ids[id] > 0
	})
	r.stop(t) // the final checkpoint writes what was queued before the ack

	a = mustNew(t, cfg, opts)
	r = run(t, a)
	waitFor(t, 10*time.Second, "the outbox drained", func() bool {
		return metric(t, r.app.HTTPAddr(), `walletguard_outbox_pending{destination="alerts:support"}`) == 0
	})
	rc.mu.Lock()
	defer rc.mu.Unlock()
	acked := false
	for _, b := range rc.bodies {
		var al struct {
			AlertID string `json:"alert_id"`
			Status  string `json:"status"`
		}
		json.Unmarshal(b, &al)
		if al.AlertID != id {
			continue
		}
		if al.Status == "acknowledged" {
			acked = true
		} else if acked {
			t.Errorf("after the acknowledgement the receiver got the alert %s again", al.Status)
		}
	}
	if !acked {
		t.Error("the acknowledgement was never delivered")
	}
}

// walkAlertPages lists the alerts query picks page by page, each asked
// with the next token of the one before, as a console pages back through a
// large queue; it returns their ids in order.
func walkAlertPages(t *testing.T, addr, query string, limit int) []string {
	t.Helper()
	var ids []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > 1000 {
			t.Fatalf("GET /v1/alerts?%s: more than 1,000 pages of %d", query, limit)
		}
		path := fmt.Sprintf("/v1/alerts?%s&limit=%d", query, limit)
		if after != "" {
			path += "&after=" + url.QueryEscape(after)
		}
		code, m := call(t, addr, "GET", path, "viewer-token", "")
		if code != 200 {
			t.Fatalf("GET %s: %d %v", path, code, m)
		}
		page := m["alerts"].([]any)
		for _, a := range page {
			ids = append(ids, a.(map[string]any)["alert_id"].(string))
		}
		next, _ := m["next"].(string)
		if (next != "") != (len(page) == limit) {
			t.Fatalf("GET %s: %d alerts listed, next %q: want a next token exactly when the page is full", path, len(page), next)
		}
		if next == "" {
			return ids
		}
		after = next
	}
}
