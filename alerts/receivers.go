package alerts

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/rules"
)

// Routes reports whether receiver w takes alert a: severe enough and of a
// category it asked for.
func Routes(w *config.Webhook, a *Alert) bool {
	if rules.SeverityRank(a.Severity) < rules.SeverityRank(w.MinSeverity) {
		return false
	}
	if len(w.Categories) == 0 {
		return true
	}
	for _, c := range w.Categories {
		if c == a.Category {
			return true
		}
	}
	return false
}

// Localize returns a copy of a with title, summary and actions in lang.
func (t *Templates) Localize(lang string, a Alert) Alert {
	a.Title, a.Summary, a.RecommendedActions = t.Render(lang, &a)
	return a
}

// Link is the alert's page in the support console at console (its
// address, alerts.console_url): what to do, the evidence, the account,
// and the buttons to acknowledge and resolve. Empty without a console.
func Link(console string, a *Alert) string {
	if console == "" {
		return ""
	}
	return console + "#/alert/" + url.PathEscape(a.AlertID)
}

// linked is an alert as a json receiver gets it: with its console link.
type linked struct {
	Alert
	URL string `json:"url,omitempty"`
}

// Payload renders alerts for a receiver's format: json (one alert, or a
// digest of several), slack, or alertmanager (always an array). console is
// the support console's address for links (Link); empty, none.
func Payload(format string, t *Templates, lang string, list []Alert, digest bool, console string) ([]byte, error) {
	loc := make([]linked, len(list))
	for i := range list {
		loc[i].Alert = t.Localize(lang, list[i])
		loc[i].URL = Link(console, &loc[i].Alert)
	}
	switch format {
	case "slack":
		return slackPayload(loc, digest)
	case "alertmanager":
		return alertmanagerPayload(loc)
	default:
		if digest {
			return json.Marshal(struct {
				Digest bool     `json:"digest"`
				Count  int      `json:"count"`
				Alerts []linked `json:"alerts"`
			}{true, len(loc), loc})
		}
		if len(loc) != 1 {
			return nil, fmt.Errorf("json payload of %d alerts without digest", len(loc))
		}
		return json.Marshal(loc[0])
	}
}

var severityEmoji = map[string]string{"critical": ":rotating_light:", "high": ":warning:", "medium": ":large_orange_diamond:", "low": ":information_source:"}

func slackPayload(list []linked, digest bool) ([]byte, error) {
	type text struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	type block struct {
		Type     string `json:"type"`
		Text     *text  `json:"text,omitempty"`
		Elements []text `json:"elements,omitempty"`
	}
	var blocks []block
	var fallback []string
	if digest {
		blocks = append(blocks, block{Type: "header", Text: &text{"plain_text", fmt.Sprintf("walletguard: %d more alerts this minute", len(list))}})
	}
	for _, a := range list {
		title := slackEscape(a.Title)
		if a.URL != "" {
			title = "<" + a.URL + "|" + title + ">"
		}
		line := fmt.Sprintf("%s *%s* [%s, %s]", severityEmoji[a.Severity], title, a.Severity, a.Status)
		fallback = append(fallback, fmt.Sprintf("[%s] %s", strings.ToUpper(a.Severity), a.Title))
		if digest {
			blocks = append(blocks, block{Type: "section", Text: &text{"mrkdwn", line}})
			continue
		}
		blocks = append(blocks, block{Type: "section", Text: &text{"mrkdwn", line + "\n" + slackEscape(a.Summary)}})
		if len(a.RecommendedActions) > 0 {
			blocks = append(blocks, block{Type: "section", Text: &text{"mrkdwn", "• " + slackEscape(strings.Join(a.RecommendedActions, "\n• "))}})
		}
		blocks = append(blocks, block{Type: "context", Elements: []text{{"mrkdwn", fmt.Sprintf("`%s` · %s · %d findings · %s",
			a.AlertID, a.Category, a.Count, a.UpdatedAt.UTC().Format("2006-01-02 15:04Z"))}}})
	}
	return json.Marshal(map[string]any{"text": strings.Join(fallback, "\n"), "blocks": blocks})
}

// alertmanagerPayload is the body of Alertmanager's POST /api/v2/alerts. An
// open alert stays firing for a day unless re-sent or resolved; a resolved
// one ends when it was resolved.
// slackEscape escapes the three characters Slack's mrkdwn reads as
// control characters: text from events (an account id, a merchant's name,
// a reason) must not open a link or a mention.
var slackEscape = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace

func alertmanagerPayload(list []linked) ([]byte, error) {
	type amAlert struct {
		Labels       map[string]string `json:"labels"`
		Annotations  map[string]string `json:"annotations"`
		StartsAt     time.Time         `json:"startsAt"`
		EndsAt       time.Time         `json:"endsAt"`
		GeneratorURL string            `json:"generatorURL,omitempty"`
	}
	out := make([]amAlert, 0, len(list))
	for _, a := range list {
		labels := map[string]string{"alertname": "walletguard_" + a.Category, "severity": a.Severity, "category": a.Category,
			"dedup_key": a.DedupKey, "source": "walletguard"}
		for k, v := range map[string]string{"account_id": a.AccountID, "merchant_id": a.MerchantID, "app_version": a.AppVersion, "ip": a.IP} {
			if v != "" {
				labels[k] = v
			}
		}
		end := a.UpdatedAt
		if now := time.Now(); now.After(end) {
			end = now // a replayed or late alert still fires for a day from now
		}
		end = end.Add(24 * time.Hour)
		if a.Status == "resolved" && !a.ResolvedAt.IsZero() {
			end = a.ResolvedAt
		}
		out = append(out, amAlert{
			Labels: labels,
			Annotations: map[string]string{"summary": a.Title, "description": a.Summary, "alert_id": a.AlertID, "status": a.Status,
				"recommended_actions": strings.Join(a.RecommendedActions, "\n"), "evidence": strings.Join(a.Evidence, "\n")},
			StartsAt: a.CreatedAt.UTC(), EndsAt: end.UTC(), GeneratorURL: a.URL,
		})
	}
	return json.Marshal(out)
}
