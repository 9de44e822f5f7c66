package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/walletguard/walletguard/internal/testcert"
)

// TestSecuredBrokerDaemonAndDLQ runs, as processes, a broker that takes
// only TLS connections logged in with SCRAM (`walletguard broker --tls-cert
// … --sasl-user …`, as a developer reproduces a managed cluster), the
// daemon configured for it with the password from the environment, and
// `walletguard dlq` with the same config; and `walletguard dlq` with a
// wrong password, which must fail saying so.
func TestSecuredBrokerDaemonAndDLQ(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	certs := testcert.New(t, dir)
	addr := freePort(t)
	broker := runBroker(t, bin, addr, 4, "", "--tls-cert", certs.CertFile, "--tls-key", certs.KeyFile,
		"--sasl-user", "walletguard", "--sasl-password", "s3cret")
	defer func() { broker.Process.Signal(syscall.SIGTERM); broker.Wait() }()

	t.Setenv("WG_TEST_KAFKA_PASSWORD", "s3cret")
	httpAddr := freePort(t)
	config := func(name, password string) string {
		p := filepath.Join(dir, name)
		writeFile(t, p, fmt.Sprintf(`data_dir: %s
kafka:
  brokers: [%s]
  session_timeout: 2s
  commit_interval: 200ms
  tls: {enabled: true, ca_file: %s}
  sasl:
    mechanism: SCRAM-SHA-256
    username: walletguard
    password: %s
http: {listen: %s}
`, filepath.Join(dir, "data"), addr, certs.CAFile, password, httpAddr))
		return p
	}
	cfgPath := config("wg.yaml", "${WG_TEST_KAFKA_PASSWORD}")
	var logs syncBuffer
	daemon := startDaemon(t, bin, cfgPath, &logs)
	defer func() { stopDaemon(t, daemon, &logs, "ERROR", "WARN", "panic") }()

	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.DialTLSConfig(&tls.Config{RootCAs: certs.CA}),
		kgo.SASL(scram.Auth{User: "walletguard", Pass: "s3cret"}.AsSha256Mechanism()), kgo.DefaultProduceTopic("wallet.events"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ts := time.Now().UTC().Format(time.RFC3339)
	var recs []*kgo.Record
	for i := range 5 {
		recs = append(recs, &kgo.Record{Key: []byte(fmt.Sprint("acc-", i)), Value: []byte(fmt.Sprintf(
			`{"event_id":"ok-%d","type":"login","ts":"%s","account_id":"acc-%d","result":"success"}`, i, ts, i))})
	}
	for i := range 3 {
		recs = append(recs, &kgo.Record{Key: []byte(fmt.Sprint("acc-", i)), Value: []byte(fmt.Sprintf(
			`{"event_id":"bad-%d","type":"login","ts":"%s","account_id":"acc-%d","result":"maybe"}`, i, ts, i))})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce over TLS with SCRAM-SHA-256: %v", err)
	}
	waitUntil(t, "the daemon to decide 5 events and dead-letter 3", time.Minute, func() bool {
		return consumed(httpAddr) == 5 && metricSum(httpAddr, "walletguard_events_dead_lettered_total") == 3
	})

	out, err := exec.Command(bin, "dlq", "--config", cfgPath).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "3 dead letters selected of 3 held") ||
		!regexp.MustCompile(`(?m)^ +3 +invalid_value +result `).Match(out) {
		t.Errorf("walletguard dlq over TLS with SCRAM: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "dlq", "--config", config("wrong.yaml", "wrong")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "SASL") {
		t.Errorf("walletguard dlq with a wrong password: %v\n%s", err, out)
	}
}
