package app

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/store/chserver"
)

// TestClickHouseOutageLosesAndDoublesNothing: ClickHouse stops in the middle
// of a run and starts again; in the end every event, decision and rejected
// record is in it exactly once (reading with FINAL, as analysts are told to).
func TestClickHouseOutageLosesAndDoublesNothing(t *testing.T) {
	s := chserver.Start(t)
	cfg := testConfig(t, t.TempDir())
	cfg.ClickHouse.Addr = s.Addr
	cfg.ClickHouse.FlushInterval = cfgDuration(100 * time.Millisecond)
	cfg.ClickHouse.WriteTimeout = cfgDuration(2 * time.Second)
	r := start(t, cfg)
	addr := r.app.HTTPAddr()
	ms, _ := simMessages(t, 2000, 21, 30000)
	half := len(ms) / 2
	// An app build that sends amounts as strings, before and during the outage.
	bad := func(from, n int) (out []kafka.Message) {
		for i := from; i < from+n; i++ {
			out = append(out, kafka.Message{Key: []byte("acc-bad-" + strconv.Itoa(i)), Value: []byte(`{"event_id":"bad-` + strconv.Itoa(i) +
				`","type":"transaction","ts":"` + ts + `","account_id":"acc-bad-` + strconv.Itoa(i) +
				`","app_version":"5.1.0","tx_id":"t","kind":"payment","amount":"100","currency":"IDR","status":"success"}`)})
		}
		return out
	}
	produce(t, r.app.BrokerAddr(), "wallet.events", append(ms[:half:half], bad(0, 20)...)...)
	waitFor(t, 30*time.Second, "first half decided", func() bool { return r.app.Snapshot().Consumed >= float64(half) })
	s.Stop()
	produce(t, r.app.BrokerAddr(), "wallet.events", append(ms[half:], bad(20, 20)...)...)
	waitFor(t, 30*time.Second, "second half decided", func() bool { return r.app.Snapshot().Consumed >= float64(len(ms)) })
	waitFor(t, 30*time.Second, "the bad transactions rejected", func() bool { return r.app.Snapshot().DeadLettered >= 40 })
	waitFor(t, 20*time.Second, "rows spooled while ClickHouse is down", func() bool {
		return metric(t, addr, "walletguard_clickhouse_spool_bytes") > 0
	})
	s.Restart()
	waitFor(t, 60*time.Second, "spool drained", func() bool {
		return metric(t, addr, "walletguard_clickhouse_spool_bytes") == 0
	})
	r.stop(t) // the last rows are written at shutdown
	out, err := s.Query(context.Background(), `SELECT count(), uniqExact(event_id) FROM walletguard.events FINAL;
SELECT count(), uniqExact(decision_id), countIf(trigger = 'event') FROM walletguard.decisions FINAL`)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	n := strconv.Itoa(len(ms))
	if len(f) != 5 || f[0] != n || f[1] != n || f[2] != f[3] || f[4] != n {
		t.Errorf("ClickHouse holds events %v and decisions %v (count, distinct, of events); %s events were sent", f[:2], f[2:], n)
	}
	out, err = s.Query(context.Background(), `SELECT count(), uniqExact(source), countIf(reason = 'wrong_type' AND field = 'amount'
		AND app_version = '5.1.0' AND event_type = 'transaction' AND record_key LIKE 'acc-bad-%' AND value LIKE '{"event_id":"bad-%')
		FROM walletguard.rejected FINAL`)
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(out); strings.Join(f, " ") != "40 40 40" {
		t.Errorf("ClickHouse holds %v rejected records (count, distinct, as sent by the build); 40 were sent", f)
	}
}

func cfgDuration(d time.Duration) config.Duration { return config.Duration(d) }
