package app

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/internal/testcert"
)

// TestSecuredClusters: managed clusters take only TLS connections, most
// of them logged in. walletguard, configured with kafka.tls (and
// kafka.sasl), consumes in its group, decides, dead-letters and writes its
// decisions there, while an outside client connected the same way produces
// the events and reads what came out. kcat (librdkafka) is that client over
// TLS; for TLS with a SCRAM login it is franz-go, because librdkafka asks
// for a SASL handshake version the test broker does not serve.
func TestSecuredClusters(t *testing.T) {
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatal("kcat is required (Debian package kcat; the test script installs it)")
	}
	dir := t.TempDir()
	certs := testcert.New(t, dir)
	caFile, serverTLS := certs.CAFile, certs.Server
	pool := certs.CA
	var in []string
	in = append(append(in, validEvents...), invalidEvents...)

	t.Run("TLS, kcat", func(t *testing.T) {
		broker := securedBroker(t, kfake.TLS(serverTLS))
		tlsArgs := []string{"-b", broker, "-X", "security.protocol=SSL", "-X", "ssl.ca.location=" + caFile}
		kcatRun := func(stdin string, args ...string) (string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, kcat, append(args, tlsArgs...)...)
			cmd.Stdin = strings.NewReader(stdin)
			out, err := cmd.CombinedOutput()
			return string(out), err
		}
		checkSecured(t, broker, config.TLS{Enabled: true, CAFile: caFile}, config.KafkaSASL{},
			func() {
				if out, err := kcatRun(strings.Join(in, "\n")+"\n", "-P", "-t", "wallet.events"); err != nil {
					t.Fatalf("kcat -P over TLS: %v: %s", err, out)
				}
			},
			func(topic string) string {
				out, _ := kcatRun("", "-C", "-t", topic, "-o", "beginning", "-e", "-q")
				return out
			})
		// A client that does not speak TLS gets nothing from it.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, kcat, "-C", "-b", broker, "-t", "walletguard.decisions", "-o", "beginning", "-e", "-q").CombinedOutput(); err == nil && strings.Contains(string(out), "decision_id") {
			t.Errorf("kcat read decisions in plaintext:\n%s", out)
		}
	})

	t.Run("TLS and SCRAM-SHA-512, franz-go", func(t *testing.T) {
		broker := securedBroker(t, kfake.TLS(serverTLS), kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", "walletguard", "s3cret"))
		client := func(pass string, opts ...kgo.Opt) *kgo.Client {
			cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(broker), kgo.DialTLSConfig(&tls.Config{RootCAs: pool}),
				kgo.SASL(scram.Auth{User: "walletguard", Pass: pass}.AsSha512Mechanism())}, opts...)...)
			if err != nil {
				t.Fatal(err)
			}
			return cl
		}
		read := func(pass, topic string) string {
			cl := client(pass, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
			defer cl.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			var out strings.Builder
			for ctx.Err() == nil {
				cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) { out.Write(r.Value); out.WriteByte('\n') })
			}
			return out.String()
		}
		checkSecured(t, broker, config.TLS{Enabled: true, CAFile: caFile},
			config.KafkaSASL{Mechanism: "SCRAM-SHA-512", Username: "walletguard", Password: "s3cret"},
			func() {
				cl := client("s3cret", kgo.DefaultProduceTopic("wallet.events"))
				defer cl.Close()
				var recs []*kgo.Record
				for _, v := range in {
					recs = append(recs, &kgo.Record{Value: []byte(v)})
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
					t.Fatalf("franz-go produce over TLS with SCRAM: %v", err)
				}
			},
			func(topic string) string { return read("s3cret", topic) })
		// With a wrong password the cluster gives nothing, and a walletguard
		// configured with one says why it is not ready.
		if out := read("wrong", "walletguard.decisions"); strings.Contains(out, "decision_id") {
			t.Errorf("a wrong password read decisions:\n%s", out)
		}
		cfg := testConfig(t, t.TempDir())
		cfg.Kafka.Brokers = []string{broker}
		cfg.Kafka.TLS = config.TLS{Enabled: true, CAFile: caFile}
		cfg.Kafka.SASL = config.KafkaSASL{Mechanism: "SCRAM-SHA-512", Username: "walletguard", Password: "wrong"}
		a, err := New(cfg, slog.New(slog.DiscardHandler), Options{})
		if err != nil {
			t.Fatal(err)
		}
		r := launch(t, a)
		defer r.stop(t)
		var body string
		waitFor(t, 20*time.Second, "readiness to name the refused login", func() bool {
			var code int
			code, body = readyz(a.HTTPAddr())
			return code == http.StatusServiceUnavailable && strings.Contains(body, "SASL Authentication failed")
		})
		if strings.Contains(body, "wrong") {
			t.Errorf("readiness shows the password: %s", body)
		}
	})
}

// securedBroker starts a one-broker cluster with opts on a free port.
func securedBroker(t *testing.T, opts ...kfake.Opt) string {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.Ports(0), kfake.AllowAutoTopicCreation(),
		kfake.SeedTopics(4, "wallet.events"), kfake.GroupMinSessionTimeout(time.Second)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()[0]
}

// checkSecured runs walletguard against broker with tlsCfg and saslCfg,
// has produce send validEvents and invalidEvents, and checks through read
// (an outside client's view of a topic) that the decisions and dead letters
// came out there, and that the group committed its offsets.
func checkSecured(t *testing.T, broker string, tlsCfg config.TLS, saslCfg config.KafkaSASL, produce func(), read func(topic string) string) {
	t.Helper()
	cfg := testConfig(t, t.TempDir())
	cfg.Kafka.Brokers = []string{broker}
	cfg.Kafka.TLS, cfg.Kafka.SASL = tlsCfg, saslCfg
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	r := start(t, cfg)
	defer r.stop(t)
	produce()
	waitFor(t, 30*time.Second, "the 3 valid events decided and the 2 invalid ones dead-lettered", func() bool {
		s := r.app.Snapshot()
		return s.Consumed == 3 && s.DeadLettered == 2
	})
	waitFor(t, 20*time.Second, "the outside client to read 3 decisions", func() bool {
		return strings.Count(read("walletguard.decisions"), `"decision_id"`) == 3
	})
	// One read is a few seconds of polling; a client that is slow to sign
	// in on a busy machine gets another go.
	waitFor(t, 20*time.Second, "the outside client to read the 2 dead letters", func() bool {
		return strings.Count(read("walletguard.dlq"), `"event_id":"bad`) == 2
	})
	waitFor(t, 10*time.Second, "offsets committed", func() bool {
		return metric(t, r.app.HTTPAddr(), "walletguard_offset_commits_total") > 0
	})
}
