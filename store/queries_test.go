package store_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walletguard/walletguard/app"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/ingest"
	"github.com/walletguard/walletguard/rules"
	"github.com/walletguard/walletguard/sim"
	"github.com/walletguard/walletguard/store"
	"github.com/walletguard/walletguard/store/chserver"
)

// table is a TSVWithNames result.
type table struct {
	cols []string
	rows [][]string
}

func (t table) col(name string) int {
	for i, c := range t.cols {
		if c == name {
			return i
		}
	}
	return -1
}

func query(t *testing.T, s *chserver.Server, sql string) table {
	t.Helper()
	out, err := s.Query(context.Background(), sql+" FORMAT TSVWithNames")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	tb := table{cols: strings.Split(lines[0], "\t")}
	for _, l := range lines[1:] {
		tb.rows = append(tb.rows, strings.Split(l, "\t"))
	}
	return tb
}

func num(s string) float64 { f, _ := strconv.ParseFloat(s, 64); return f }

// TestReplayLandsInClickHouseAndTheQueryPackAnswers replays labelled
// traffic into a real ClickHouse, checks that every event and decision
// landed once, and runs each analyst query of deploy/clickhouse/queries
// against it, checking its answer against the labels.
func TestReplayLandsInClickHouseAndTheQueryPackAnswers(t *testing.T) {
	s := chserver.Start(t)
	scfg := sim.DefaultConfig(3000)
	scfg.Seed, scfg.Duration, scfg.HistoryDays = 5, 48*time.Hour, 3
	scfg.Start = time.Now().UTC().Add(-60 * time.Hour).Truncate(time.Hour)
	g := sim.New(scfg)
	var in bytes.Buffer
	if _, err := g.WriteNDJSON(&in); err != nil {
		t.Fatal(err)
	}
	// Two lines from a build that sends an event type the contract does
	// not know: the replay keeps them in the rejected table too.
	for i := range 2 {
		in.WriteString(`{"event_id":"u` + strconv.Itoa(i) + `","type":"refund","account_id":"acc-u","ts":"` + scfg.Start.Format(time.RFC3339) + `","app_version":"6.0.0-beta"}` + "\n")
	}
	cfg := config.Default()
	cfg.ClickHouse.Addr = s.Addr
	set, _ := rules.Load(nil)
	out := t.TempDir()
	sum, err := app.Replay(cfg, set, &in, "events.ndjson", out, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if sum.Rejected != 2 {
		t.Fatalf("replay rejected %d lines, want the 2 refunds", sum.Rejected)
	}
	rej := query(t, s, "SELECT source, reason, field, app_version FROM walletguard.rejected FINAL WHERE source_topic = 'events.ndjson' ORDER BY source")
	if len(rej.rows) != 2 || !strings.HasPrefix(rej.rows[0][0], "events.ndjson:") || strings.Join(rej.rows[0][1:], " ") != "unknown_type type 6.0.0-beta" {
		t.Fatalf("the replay's rejected lines in ClickHouse: %v, want 2 of unknown_type type from 6.0.0-beta", rej.rows)
	}
	decisions := strings.Count(readFile(t, filepath.Join(out, "decisions.ndjson")), "\n")
	got := query(t, s, "SELECT (SELECT count() FROM walletguard.events FINAL) AS events, (SELECT uniqExact(event_id) FROM walletguard.events) AS event_ids, "+
		"(SELECT count() FROM walletguard.decisions FINAL) AS decisions, (SELECT uniqExact(decision_id) FROM walletguard.decisions) AS decision_ids")
	want := []string{strconv.Itoa(sum.Events), strconv.Itoa(sum.Events), strconv.Itoa(decisions), strconv.Itoa(decisions)}
	if strings.Join(got.rows[0], " ") != strings.Join(want, " ") {
		t.Fatalf("ClickHouse holds %v (events, ids, decisions, ids); the replay had %v", got.rows[0], want)
	}

	// Support unfreezes one automatically frozen account: a false positive.
	frozen := query(t, s, "SELECT account_id, decision_id FROM walletguard.actions FINAL WHERE action = 'freeze' AND origin = 'auto' ORDER BY account_id LIMIT 1")
	if len(frozen.rows) == 0 {
		t.Fatal("the replay froze nobody; the traffic holds takeovers")
	}
	w, err := store.Open(store.Config{Addr: s.Addr, Database: "walletguard", Username: "default", SpoolDir: t.TempDir()}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	e := enforce.AuditEntry{At: time.Now(), Action: "unfreeze", Origin: "manual", Actor: "support desk", AccountID: frozen.rows[0][0], Reason: "owner verified"}
	w.Add(store.Batch{Actions: []store.ActionRow{store.NewActionRow(&e, time.Now())}})
	// A build that sends amounts as strings (12 records of 6 accounts), and
	// 3 records that are not JSON, one of them rejected again after a crash.
	var rejected []store.RejectedRow
	for i := range 12 {
		acc := "acc-" + strconv.Itoa(i%6)
		rec := ingest.Record{Topic: "wallet.events", Partition: i % 4, Offset: int64(100 + i), Key: []byte(acc), Arrived: time.Now(),
			Value: []byte(`{"event_id":"b` + strconv.Itoa(i) + `","type":"transaction","account_id":"` + acc + `","app_version":"5.1.0","channel":"app","amount":"100"}`)}
		rejected = append(rejected, store.NewRejectedRow(&rec, "wrong_type", "amount", `field "amount": string is not int64`, time.Now()))
	}
	for i := range 4 {
		rec := ingest.Record{Topic: "wallet.events", Partition: 1, Offset: int64(200 + min(i, 2)), Key: []byte("x"), Value: []byte(`{"event_id":`),
			Arrived: time.Now().Add(time.Duration(i) * time.Second)}
		rejected = append(rejected, store.NewRejectedRow(&rec, "invalid_json", "", "unexpected end of JSON input", time.Now()))
	}
	w.Add(store.Batch{Rejected: rejected})
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	unfrozenRule := query(t, s, "SELECT rule_ids, rule_actions, rule_scores FROM walletguard.decisions FINAL WHERE decision_id = '"+frozen.rows[0][1]+"'")

	labels := g.Labels()
	count := func(kind string) int {
		n := 0
		for _, l := range labels {
			if l.Kind == kind {
				n++
			}
		}
		return n
	}
	stuffingIP := ""
	for _, l := range labels {
		if l.Kind == sim.KindStuffing {
			stuffingIP = l.IP
		}
	}
	pack := map[string]func(tb table){
		"stuck_retries_by_merchant.sql": func(tb table) {
			total := 0.0
			for _, r := range tb.rows {
				total += num(r[tb.col("stuck_payments")])
				switch c := r[tb.col("cause")]; c {
				case "network", "balance", "verification", "app", "merchant", "limit":
				default:
					t.Errorf("stuck payments with cause %q", c)
				}
			}
			if int(total) < count(sim.KindStuckRetry) {
				t.Errorf("%v stuck payments, the traffic holds %d", total, count(sim.KindStuckRetry))
			}
		},
		"rule_freeze_outcomes.sql": func(tb table) {
			frozenSum, unfrozen := 0.0, 0.0
			for _, r := range tb.rows {
				frozenSum += num(r[tb.col("frozen")])
				unfrozen += num(r[tb.col("unfrozen_by_support")])
			}
			if frozenSum < float64(count(sim.KindTakeover)) || unfrozen != 1 {
				t.Errorf("freezes %v (takeovers %d), unfrozen by support %v (want 1); decision of the unfrozen account: %v\n%v",
					frozenSum, count(sim.KindTakeover), unfrozen, unfrozenRule.rows, tb.rows)
			}
		},
		"takeover_time_to_freeze.sql": func(tb table) {
			if len(tb.rows) < count(sim.KindTakeover) {
				t.Errorf("%d accounts with a time to freeze; %d takeovers", len(tb.rows), count(sim.KindTakeover))
			}
			for _, r := range tb.rows {
				if m := num(r[tb.col("minutes_to_freeze")]); m < 0 || m > 24*60 {
					t.Errorf("time to freeze %v min for %s", m, r[0])
				}
			}
		},
		"risky_ips_and_devices.sql": func(tb table) {
			if len(tb.rows) == 0 || tb.rows[0][tb.col("id")] != stuffingIP {
				t.Errorf("the stuffing IP %s is not the riskiest: %v", stuffingIP, tb.rows)
			}
		},
		"rejected_by_producer.sql": func(tb table) {
			got := map[string]string{}
			for _, r := range tb.rows {
				got[r[tb.col("reason")]+" "+r[tb.col("field")]+" "+r[tb.col("app_version")]] = r[tb.col("records")] + " " + r[tb.col("accounts")]
			}
			if len(tb.rows) != 3 || got["wrong_type amount 5.1.0"] != "12 6" || got["invalid_json  "] != "3 1" || got["unknown_type type 6.0.0-beta"] != "2 1" ||
				tb.rows[0][tb.col("reason")] != "wrong_type" {
				t.Errorf("rejected records by fault and producer: %v, want wrong_type amount from 5.1.0: 12 records of 6 accounts, then 3 invalid_json of 1, and the replay's 2 unknown_type", tb.rows)
			}
		},
		"alerts_by_category.sql": func(tb table) {
			cats := map[string]float64{}
			for _, r := range tb.rows {
				cats[r[tb.col("category")]] = num(r[tb.col("alerts")])
			}
			for _, c := range []string{"theft", "stuck_retry", "merchant_outage", "credential_stuffing"} {
				if cats[c] == 0 {
					t.Errorf("no %s alerts in %v", c, cats)
				}
			}
		},
	}
	// The latest hour's matches per rule, and the same hour a day before,
	// counted from the replay's own decisions.
	type ruleHour struct{ last, yesterday int }
	byRule := map[string]*ruleHour{}
	var latest time.Time
	type decision struct {
		TS    time.Time `json:"ts"`
		Rules []struct {
			ID string `json:"id"`
		} `json:"rules"`
	}
	var decs []decision
	for _, line := range strings.Split(strings.TrimSpace(readFile(t, filepath.Join(out, "decisions.ndjson"))), "\n") {
		var d decision
		if err := json.Unmarshal([]byte(line), &d); err != nil {
			t.Fatal(err)
		}
		decs = append(decs, d)
		if d.TS.After(latest) {
			latest = d.TS
		}
	}
	for _, d := range decs {
		for _, h := range d.Rules {
			if byRule[h.ID] == nil {
				byRule[h.ID] = &ruleHour{}
			}
			switch age := latest.Truncate(time.Second).Sub(d.TS.Truncate(time.Second)); {
			case age < time.Hour:
				byRule[h.ID].last++
			case age >= 24*time.Hour && age < 25*time.Hour:
				byRule[h.ID].yesterday++
			}
		}
	}
	pack["rule_surges.sql"] = func(tb table) {
		got := map[string]*ruleHour{}
		for _, r := range tb.rows {
			id := r[tb.col("rule")]
			if got[id] == nil {
				got[id] = &ruleHour{}
			}
			got[id].last += int(num(r[tb.col("last_hour")]))
			got[id].yesterday += int(num(r[tb.col("same_hour_yesterday")]))
		}
		matched := 0
		for id, want := range byRule {
			if want.last == 0 {
				continue
			}
			matched++
			if g := got[id]; g == nil || *g != *want {
				t.Errorf("rule %s: the query counts %+v in the latest hour and the same hour yesterday, the replay's decisions %+v", id, g, *want)
			}
		}
		if matched == 0 || len(got) != matched {
			t.Errorf("%d rules matched in the latest hour, the query lists %d", matched, len(got))
		}
	}
	files, _ := filepath.Glob("../deploy/clickhouse/queries/*.sql")
	if len(files) != len(pack) {
		t.Errorf("%d queries in the pack, %d checked here", len(files), len(pack))
	}
	for _, f := range files {
		check := pack[filepath.Base(f)]
		if check == nil {
			t.Errorf("query %s has no check", f)
			continue
		}
		tb := query(t, s, strings.TrimRight(strings.TrimSpace(readFile(t, f)), ";"))
		t.Logf("%s: %d rows, first %v", filepath.Base(f), len(tb.rows), first(tb.rows))
		check(tb)
	}
}

func first(rows [][]string) []string {
	if len(rows) == 0 {
		return nil
	}
	return rows[0]
}

func readFile(t *testing.T, name string) string {
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
