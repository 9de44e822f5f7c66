package alerts

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var categories = []string{"theft", "stuck_retry", "merchant_outage", "app_fault", "credential_stuffing", "brute_force",
	"impossible_travel", "velocity", "freeze_storm", "2fa_lockout", "analytics_spool", "abnormal"}

// TestEveryLanguageSpeaksEveryCategory: each built-in language has its own
// wording for every category, with the alert's numbers filled in.
func TestEveryLanguageSpeaksEveryCategory(t *testing.T) {
	tpl := DefaultTemplates()
	if got := strings.Join(tpl.Languages(), ","); got != "en,id,zh" {
		t.Fatalf("languages %s, want en,id,zh", got)
	}
	for _, cat := range categories {
		a := &Alert{Category: cat, AccountID: "acc-7", MerchantID: "m-9", AffectedAccounts: 42, Count: 3, Cause: "balance",
			Reason: "payment failed 4 of 4 attempts", Severity: "high", Action: "freeze"}
		if cat == "merchant_outage" {
			a.AccountID = ""
		}
		titles := map[string]string{}
		for _, lang := range tpl.Languages() {
			title, summary, actions := tpl.Render(lang, a)
			if title == "" || len(actions) == 0 || !strings.Contains(summary, "payment failed 4 of 4 attempts") || !strings.Contains(summary, "3") {
				t.Errorf("%s/%s: title %q summary %q actions %v", lang, cat, title, summary, actions)
			}
			if strings.Contains(title+strings.Join(actions, ""), "<no value>") {
				t.Errorf("%s/%s: unfilled placeholder in %q %v", lang, cat, title, actions)
			}
			titles[lang] = title
		}
		if titles["en"] == titles["zh"] || titles["en"] == titles["id"] {
			t.Errorf("%s: languages share a title: %v", cat, titles)
		}
	}
	_, _, actions := tpl.Render("id", &Alert{Category: "stuck_retry", AccountID: "a", Cause: "balance"})
	if !strings.Contains(actions[0], "isi saldo") {
		t.Errorf("Indonesian advice for a balance cause: %q", actions[0])
	}
	title, _, _ := tpl.Render("zh", &Alert{Category: "merchant_outage", MerchantID: "m-1", AffectedAccounts: 12})
	if !strings.Contains(title, "m-1") || !strings.Contains(title, "12") {
		t.Errorf("Chinese outage title %q lacks the merchant or the count", title)
	}
}

func TestEditedTemplatesAreCheckedAtLoad(t *testing.T) {
	dir := t.TempDir()
	en, _ := builtinTemplates.ReadFile("templates/en.yaml")
	edited := strings.Replace(string(en), `title: "Likely account takeover: {{.Subject}}"`, `title: "ATO on {{.Subject}}!"`, 1)
	os.WriteFile(filepath.Join(dir, "en.yaml"), []byte(edited), 0o644)
	tpl, err := LoadTemplates(dir)
	if err != nil {
		t.Fatal(err)
	}
	if title, _, _ := tpl.Render("en", &Alert{Category: "theft", AccountID: "acc-1"}); title != "ATO on acc-1!" {
		t.Errorf("edited title not used: %q", title)
	}
	broken := strings.Replace(string(en), "{{.Subject}}", "{{.Subjekt}}", 1)
	os.WriteFile(filepath.Join(dir, "en.yaml"), []byte(broken), 0o644)
	if _, err := LoadTemplates(dir); err == nil || !strings.Contains(err.Error(), "en.yaml") || !strings.Contains(err.Error(), "Subjekt") {
		t.Errorf("a misspelt placeholder must be refused naming file and field, got %v", err)
	}
}

func TestReceiverPayloads(t *testing.T) {
	tpl := DefaultTemplates()
	a := Alert{AlertID: "alt_1", DedupKey: "theft|account:acc-1", Category: "theft", Severity: "critical", AccountID: "acc-1",
		Reason: "92% of the balance moved out", Count: 1, Status: "open", Action: "freeze",
		CreatedAt: time.Now(), UpdatedAt: time.Now(), Evidence: []string{"e1"}}
	b, err := Payload("alertmanager", tpl, "en", []Alert{a}, false, "")
	if err != nil {
		t.Fatal(err)
	}
	var am []struct {
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
		EndsAt      time.Time         `json:"endsAt"`
	}
	if err := json.Unmarshal(b, &am); err != nil || len(am) != 1 {
		t.Fatalf("alertmanager payload %s: %v", b, err)
	}
	if am[0].Labels["alertname"] != "walletguard_theft" || am[0].Labels["severity"] != "critical" || am[0].Labels["account_id"] != "acc-1" ||
		am[0].Annotations["alert_id"] != "alt_1" || !am[0].EndsAt.After(time.Now()) {
		t.Errorf("alertmanager alert %+v", am[0])
	}
	b, _ = Payload("slack", tpl, "zh", []Alert{a}, false, "")
	var sl struct {
		Text   string           `json:"text"`
		Blocks []map[string]any `json:"blocks"`
	}
	if err := json.Unmarshal(b, &sl); err != nil || !strings.Contains(sl.Text, "疑似账户被盗") || len(sl.Blocks) < 2 {
		t.Errorf("slack payload %s", b)
	}
	b, _ = Payload("json", tpl, "id", []Alert{a, a}, true, "")
	var dg struct {
		Digest bool    `json:"digest"`
		Alerts []Alert `json:"alerts"`
	}
	if err := json.Unmarshal(b, &dg); err != nil || !dg.Digest || len(dg.Alerts) != 2 || !strings.Contains(dg.Alerts[0].Title, "pengambilalihan") {
		t.Errorf("json digest %s", b)
	}
}

// TestReceiverPayloadsLinkToTheConsole: with alerts.console_url set, every
// format links each alert to its page in the console; without it, none
// links. Text from events is escaped
// for Slack, so it can neither break the link nor mention anyone.
func TestReceiverPayloadsLinkToTheConsole(t *testing.T) {
	tpl := DefaultTemplates()
	const console = "https://wg.example.com/console/"
	theft := Alert{AlertID: "alt_1", Category: "theft", Severity: "critical", AccountID: "acc 7/<x>", Count: 1, Status: "open",
		Reason: "balance moved out <!here> & more", CreatedAt: time.Now(), UpdatedAt: time.Now()}
	outage := Alert{AlertID: "alt_2", Category: "merchant_outage", Severity: "high", MerchantID: "m-1", Count: 1, Status: "open",
		CreatedAt: time.Now(), UpdatedAt: time.Now()}
	wantTheft, wantOutage := console+"#/alert/alt_1", console+"#/alert/alt_2"

	for _, c := range []struct {
		a    Alert
		want string
	}{{theft, wantTheft}, {outage, wantOutage}} {
		b, err := Payload("json", tpl, "en", []Alert{c.a}, false, console)
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			AlertID string `json:"alert_id"`
			URL     string `json:"url"`
		}
		if err := json.Unmarshal(b, &got); err != nil || got.URL != c.want || got.AlertID != c.a.AlertID {
			t.Errorf("json payload of %s: url %q, want %q (%s)", c.a.AlertID, got.URL, c.want, b)
		}
		b, _ = Payload("alertmanager", tpl, "en", []Alert{c.a}, false, console)
		var am []struct {
			GeneratorURL string `json:"generatorURL"`
		}
		if err := json.Unmarshal(b, &am); err != nil || len(am) != 1 || am[0].GeneratorURL != c.want {
			t.Errorf("alertmanager payload of %s: %s, want generatorURL %q", c.a.AlertID, b, c.want)
		}
	}
	b, _ := Payload("json", tpl, "en", []Alert{theft, outage}, true, console)
	var dg struct {
		Alerts []struct {
			URL string `json:"url"`
		} `json:"alerts"`
	}
	if err := json.Unmarshal(b, &dg); err != nil || len(dg.Alerts) != 2 || dg.Alerts[0].URL != wantTheft || dg.Alerts[1].URL != wantOutage {
		t.Errorf("json digest: %s", b)
	}

	b, _ = Payload("slack", tpl, "en", []Alert{theft}, false, console)
	var sl struct {
		Blocks []struct {
			Text struct {
				Text string `json:"text"`
			} `json:"text"`
		} `json:"blocks"`
	}
	if err := json.Unmarshal(b, &sl); err != nil || len(sl.Blocks) == 0 {
		t.Fatalf("slack payload %s: %v", b, err)
	}
	head := sl.Blocks[0].Text.Text
	if !strings.Contains(head, "<"+wantTheft+"|") || !strings.Contains(head, "acc 7/&lt;x&gt;") || strings.Contains(head, "<!here>") ||
		!strings.Contains(head, "&lt;!here&gt; &amp; more") {
		t.Errorf("slack section %q: want the title linked to %s, and the event's text escaped", head, wantTheft)
	}

	for _, format := range []string{"json", "alertmanager", "slack"} {
		b, _ := Payload(format, tpl, "en", []Alert{theft}, false, "")
		if strings.Contains(string(b), "wg.example.com") || strings.Contains(string(b), `"url"`) || strings.Contains(string(b), "generatorURL\":\"h") {
			t.Errorf("%s payload links without a console: %s", format, b)
		}
	}
}
