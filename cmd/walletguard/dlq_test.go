package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDeadLettersAreSummedUpFixedAndSentAgain is the path of a producer bug
// as an SRE meets it: an app release sends amounts as strings, another
// producer sends timestamps without an offset. `walletguard dlq` must say
// which fault, how many, from which app build; its export, fixed with jq
// and produced again with kcat exactly as the README shows, must get every
// one of those payments decided.
func TestDeadLettersAreSummedUpFixedAndSentAgain(t *testing.T) {
	for _, tool := range []string{"kcat", "jq", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required (scripts/test installs it)", tool)
		}
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	broker := freePort(t)
	b := runBroker(t, bin, broker, 4, "")
	t.Cleanup(func() { b.Process.Kill(); b.Wait() })
	httpAddr := freePort(t)
	cfgPath := filepath.Join(dir, "wg.yaml")
	writeFile(t, cfgPath, fmt.Sprintf("data_dir: %s\nkafka: {brokers: [%s], session_timeout: 2s, commit_interval: 200ms}\nhttp: {listen: %s}\n",
		filepath.Join(dir, "data"), broker, httpAddr))
	var logs syncBuffer
	daemon := startDaemon(t, bin, cfgPath, &logs)
	defer func() { stopDaemon(t, daemon, &logs, "ERROR", "panic") }()

	ts := time.Now().UTC().Format(time.RFC3339)
	var in bytes.Buffer
	sent := map[string]string{} // key → value of the bad payments
	const badPayments, badLogins, good = 30, 5, 10
	for i := range badPayments {
		key := fmt.Sprintf("acc-%d", i)
		v := fmt.Sprintf(`{"event_id":"pay-%d","type":"transaction","ts":"%s","account_id":"%s","app_version":"5.1.0","channel":"app","tx_id":"tx-%d","kind":"payment","merchant_id":"m-1","amount":"%d","currency":"IDR","status":"success"}`,
			i, ts, key, i, 15000+i)
		sent[key] = v
		fmt.Fprintf(&in, "%s\t%s\n", key, v)
	}
	for i := range badLogins {
		fmt.Fprintf(&in, "acc-%d\t{\"event_id\":\"login-%d\",\"type\":\"login\",\"ts\":\"2026-12-03 10:00:00\",\"account_id\":\"acc-%d\",\"result\":\"success\",\"app_version\":\"2.0.1\"}\n", 100+i, i, 100+i)
	}
	fmt.Fprintf(&in, "acc-200\t{\"event_id\":\"cut\n")
	for i := range good {
		fmt.Fprintf(&in, "acc-%d\t{\"event_id\":\"ok-%d\",\"type\":\"login\",\"ts\":\"%s\",\"account_id\":\"acc-%d\",\"result\":\"success\"}\n", 300+i, i, ts, 300+i)
	}
	kcatP := exec.Command("kcat", "-P", "-b", broker, "-t", "wallet.events", "-K", "\t")
	kcatP.Stdin = &in
	if out, err := kcatP.CombinedOutput(); err != nil {
		t.Fatalf("kcat -P: %v: %s", err, out)
	}
	const bad = badPayments + badLogins + 1
	waitUntil(t, "the events handled", time.Minute, func() bool {
		return consumed(httpAddr) == good && metricSum(httpAddr, "walletguard_events_dead_lettered_total") == bad
	})

	dlq := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append([]string{"dlq", "--config", cfgPath}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("walletguard dlq %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	sum := dlq()
	for _, want := range []string{
		fmt.Sprintf(`(?m)^walletguard\.dlq: %d dead letters selected of %d held$`, bad, bad),
		fmt.Sprintf(`(?m)^ +%d +wrong_type +amount +\d{4}-`, badPayments),
		fmt.Sprintf(`(?m)^ +%d +invalid_value +ts +\d{4}-`, badLogins),
		`(?m)^ +1 +invalid_json +- +\d{4}-`,
		`(?m)^wrong_type amount: field "amount": string is not int64$`,
		fmt.Sprintf(`(?m)^  from wallet\.events; type transaction \(%d\); app_version 5\.1\.0 \(%d\); channel app \(%d\)$`, badPayments, badPayments, badPayments),
		fmt.Sprintf(`(?m)^  from wallet\.events; type login \(%d\); app_version 2\.0\.1 \(%d\)$`, badLogins, badLogins),
		`(?m)^  wallet\.events/\d+/\d+ key acc-\d+: \{"event_id":"pay-`,
	} {
		if !regexp.MustCompile(want).MatchString(sum) {
			t.Errorf("walletguard dlq does not show %s:\n%s", want, sum)
		}
	}
	if strings.Index(sum, "wrong_type amount:") > strings.Index(sum, "invalid_value ts:") {
		t.Errorf("the largest fault is not listed first:\n%s", sum)
	}
	if got := dlq("--reason", "invalid_value,invalid_json", "--samples", "0"); strings.Contains(got, "wrong_type") ||
		!strings.Contains(got, fmt.Sprintf("%d dead letters selected of %d held", badLogins+1, bad)) {
		t.Errorf("--reason invalid_value,invalid_json:\n%s", got)
	}
	if got := dlq("--since", "1h"); !strings.Contains(got, fmt.Sprintf("%d dead letters selected", bad)) {
		t.Errorf("--since 1h leaves out dead letters of a moment ago:\n%s", got)
	}
	if got := dlq("--since", "2100-01-01T00:00:00Z"); !strings.Contains(got, fmt.Sprintf("no dead letters selected of %d held", bad)) {
		t.Errorf("--since in the future:\n%s", got)
	}

	// The export holds every bad payment as it was sent, keyed as sent.
	exported := filepath.Join(dir, "payments.ndjson")
	dlq("--reason", "wrong_type", "--field", "amount", "--export", exported)
	f, err := os.ReadFile(exported)
	if err != nil {
		t.Fatal(err)
	}
	lines := 0
	for sc := bufio.NewScanner(bytes.NewReader(f)); sc.Scan(); lines++ {
		var x struct {
			Key, Value, Reason, Field, Source string
			DeadLetter                        string `json:"dead_letter"`
		}
		if err := json.Unmarshal(sc.Bytes(), &x); err != nil {
			t.Fatalf("export line %d: %v: %s", lines+1, err, sc.Bytes())
		}
		if sent[x.Key] != x.Value || x.Reason != "wrong_type" || x.Field != "amount" ||
			!strings.HasPrefix(x.Source, "wallet.events/") || !strings.HasPrefix(x.DeadLetter, "walletguard.dlq/") {
			t.Errorf("export line %d: %+v; sent under that key: %s", lines+1, x, sent[x.Key])
		}
	}
	if lines != badPayments {
		t.Errorf("%d payments exported, want %d", lines, badPayments)
	}

	// Fixed and produced again, as the README shows: the payments are decided.
	fix := fmt.Sprintf(`%q dlq --config %q --reason wrong_type --field amount --export - 2>/dev/null |
  jq -r '"\(.key)\t\(.value | fromjson | .amount |= tonumber | tojson)"' |
  kcat -P -b %s -t wallet.events -K $'\t'`, bin, cfgPath, broker)
	if out, err := exec.Command("bash", "-o", "pipefail", "-c", fix).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", fix, err, out)
	}
	waitUntil(t, "the fixed payments decided", time.Minute, func() bool {
		return metricSum(httpAddr, `walletguard_events_consumed_total{type="transaction"}`) == badPayments
	})
	decided := map[string]bool{}
	for _, m := range readTopic(t, broker, "walletguard.decisions") {
		var d struct {
			EventID string `json:"event_id"`
		}
		json.Unmarshal(m.Value, &d)
		decided[d.EventID] = true
	}
	for i := range badPayments {
		if !decided[fmt.Sprintf("pay-%d", i)] {
			t.Errorf("payment pay-%d, fixed and sent again, has no decision", i)
		}
	}
	// The account's profile holds the payment, at the amount sent.
	var acc struct {
		Profile struct {
			Transactions  int   `json:"transactions"`
			TypicalAmount int64 `json:"typical_amount"`
		} `json:"profile"`
	}
	if code := callAPI(t, httpAddr, "GET", "/v1/accounts/acc-7", "", &acc); code != 200 || acc.Profile.Transactions != 1 || acc.Profile.TypicalAmount != 15007 {
		t.Errorf("GET /v1/accounts/acc-7: %d %+v", code, acc)
	}
}
