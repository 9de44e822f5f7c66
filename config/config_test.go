package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNoFileIsAWorkingSetup(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if c.Kafka.EmbeddedListen != "127.0.0.1:9092" || c.HTTP.Listen != "127.0.0.1:8080" || c.Kafka.Topics[0] != "wallet.events" ||
		c.Kafka.DLQTopic != "walletguard.dlq" || c.ClickHouse.Database != "walletguard" {
		t.Fatalf("defaults differ from CONTRACT §4: %+v", c)
	}
	if c, err := Parse([]byte("# nothing\n")); err != nil || c.Kafka.GroupID != "walletguard" {
		t.Fatalf("empty document: %v", err)
	}
}

func TestContractExampleParses(t *testing.T) {
	t.Setenv("WG_SECRET", "from-env")
	t.Setenv("WG_PARTS", "3")
	doc := `
data_dir: /var/lib/walletguard
kafka:
  brokers: [k1:9092, k2:9092]
  embedded_listen: 127.0.0.1:9092
  embedded_partitions: ${WG_PARTS}
  topics: [wallet.events, wallet.events.eu]
  group_id: walletguard
  session_timeout: 12s
http:
  listen: 127.0.0.1:8080
  tokens:
    - {token: "change-me", role: admin}
    - {token: "${WG_SECRET}", role: gateway}
clickhouse:
  addr: ""
  database: walletguard
alerts:
  webhooks:
    - {url: "http://127.0.0.1:9099/hook", secret: "s3cret"}
rules:
  paths: []
`
	c, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTP.Tokens[1].Token != "from-env" || c.Kafka.EmbeddedPartitions != 3 || c.Kafka.SessionTimeout.D() != 12*time.Second {
		t.Fatalf("parsed wrong: %+v", c)
	}
	if len(c.Kafka.Topics) != 2 || c.Alerts.Webhooks[0].Secret != "s3cret" {
		t.Fatalf("parsed wrong: %+v", c)
	}
}

func TestStrictErrorsNameTheKey(t *testing.T) {
	cases := map[string]string{
		"kafka:\n  brokerz: [x]\n":                         `"kafka.brokerz"`,
		"http:\n  tokens:\n    - {token: a, rol: admin}\n": `"http.tokens[0].rol"`,
		"datadir: x\n": `"datadir"`,
		"http:\n  tokens:\n    - {token: a, role: root}\n":                 "http.tokens[0].role",
		"kafka:\n  session_timeout: soon\n":                                "duration",
		"detector:\n  thresholds: {review: 90, step_up: 60, freeze: 85}\n": "detector.thresholds",
		"alerts:\n  webhooks:\n    - {url: ftp://x}\n":                     "alerts.webhooks[0].url",
		"http:\n  listen: ${WG_NOT_SET_ANYWHERE}\n":                        "WG_NOT_SET_ANYWHERE",
		"kafka: [1, 2]\n":                                             "decode",
		"alerts:\n  takeover_redeliver: -1m\n":                        "alerts.takeover_redeliver",
		"alerts:\n  dead_letter_retention: -24h\n":                    "alerts.dead_letter_retention",
		"enforce:\n  audit_retention: 1.5d\n":                         "duration",
		"alerts:\n  console_url: wg.example.com/console/\n":           "alerts.console_url",
		"alerts:\n  console_url: https://wg.example.com/console/#/\n": "alerts.console_url",
		"clickhouse:\n  addr: ch:9000\n  retention: 12h\n":            "clickhouse.retention",
		"clickhouse:\n  addr: ch:9000\n  audit_retention: -24h\n":     "clickhouse.audit_retention",
		"kafka:\n  compression: brotli\n":                             "kafka.compression",
	}
	for doc, want := range cases {
		_, err := Parse([]byte(doc))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to mention %s", doc, err, want)
		}
	}
}

func TestConsoleURL(t *testing.T) {
	c, err := Parse([]byte("alerts:\n  console_url: https://wg.example.com/console/\n"))
	if err != nil || c.Alerts.ConsoleURL != "https://wg.example.com/console/" {
		t.Errorf("console_url parsed as %q, %v", c.Alerts.ConsoleURL, err)
	}
}

// Retentions are written in days.
func TestDurationsInDays(t *testing.T) {
	c, err := Parse([]byte("enforce:\n  audit_retention: 400d\n"))
	if err != nil || c.Enforce.AuditRetention.D() != 400*24*time.Hour {
		t.Errorf("audit_retention: 400d parsed as %v, %v", c.Enforce.AuditRetention.D(), err)
	}
	if c, err := Parse([]byte("clickhouse:\n  addr: ch:9000\n  retention: 90d\n")); err != nil || c.ClickHouse.Retention.D() != 90*24*time.Hour {
		t.Errorf("clickhouse.retention: 90d parsed as %v, %v", c.ClickHouse.Retention.D(), err)
	}
	if c, err := Parse([]byte("enforce:\n  audit_retention: 0d\n")); err != nil || c.Enforce.AuditRetention != 0 {
		t.Errorf("audit_retention: 0d parsed as %v, %v", c.Enforce.AuditRetention.D(), err)
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "wg.yaml")
	if err := os.WriteFile(p, []byte("nope: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("error %v does not name %s", err, p)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("kafka:\n  brokers: [a:1]\n"))
	f.Add([]byte("http: {tokens: [{token: x, role: admin}]}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err == nil {
			if verr := c.Validate(); verr != nil {
				t.Fatalf("Parse accepted an invalid config: %v", verr)
			}
		}
	})
}

// TestDeployExampleIsValid keeps deploy/walletguard.example.yaml loadable.
func TestDeployExampleIsValid(t *testing.T) {
	for _, name := range []string{"WALLETGUARD_ADMIN_TOKEN", "WALLETGUARD_SUPPORT_TOKEN", "WALLETGUARD_GATEWAY_TOKEN", "WALLETGUARD_VIEWER_TOKEN", "WALLETGUARD_WEBHOOK_SECRET", "WALLETGUARD_ACCOUNT_SERVICE_SECRET"} {
		t.Setenv(name, "test-"+strings.ToLower(name))
	}
	c, err := Load("../deploy/walletguard.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Kafka.Brokers) != 3 || len(c.HTTP.Tokens) != 4 || c.HTTP.Tokens[2].Role != "gateway" || !c.Rules.Watch {
		t.Fatalf("example parsed wrong: %+v", c)
	}
}

// TestKafkaSecurity: a managed cluster's TLS and SASL settings (and the TLS
// of a managed ClickHouse and of receivers) parse, and a half-given or
// contradictory one is refused with the key that is wrong.
func TestKafkaSecurity(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, []byte("-"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WG_KAFKA_PASSWORD", "s3cret")
	good := "kafka:\n  brokers: [b1:9093]\n  tls: {enabled: true, ca_file: " + ca + "}\n" +
		"  sasl:\n    mechanism: SCRAM-SHA-512\n    username: walletguard\n    password: ${WG_KAFKA_PASSWORD}\n"
	c, err := Parse([]byte(good))
	if err != nil || !c.Kafka.TLS.Enabled || c.Kafka.TLS.CAFile != ca || c.Kafka.SASL.Password != "s3cret" {
		t.Errorf("parsed %+v %+v, %v", c.Kafka.TLS, c.Kafka.SASL, err)
	}
	bad := map[string]string{
		"kafka:\n  tls: {enabled: true}\n":                                                                          "kafka.brokers, which is empty",
		"kafka:\n  brokers: [b]\n  tls: {ca_file: " + ca + "}\n":                                                    "enabled is false",
		"kafka:\n  brokers: [b]\n  tls: {enabled: true, cert_file: " + ca + "}\n":                                   "cert_file and key_file go together",
		"kafka:\n  brokers: [b]\n  tls: {enabled: true, ca_file: /nonexistent/ca.pem}\n":                            "kafka.tls.ca_file",
		"kafka:\n  brokers: [b]\n  sasl: {mechanism: GSSAPI, username: u, password: p}\n":                           "kafka.sasl.mechanism",
		"kafka:\n  brokers: [b]\n  sasl: {mechanism: SCRAM-SHA-256, username: u}\n":                                 "needs username and password",
		"kafka:\n  brokers: [b]\n  sasl: {username: u, password: p}\n":                                              "without a mechanism",
		"clickhouse:\n  tls: {enabled: true}\n":                                                                     "clickhouse.addr, which is empty",
		"alerts:\n  webhooks:\n    - {url: http://h/x, secret: s, tls: {enabled: true}}\n":                          "alerts.webhooks[0].tls: the url",
		"enforce:\n  account_service: {url: https://a/c, secret: s, tls: {enabled: true, cert_file: " + ca + "}}\n": "enforce.account_service.tls: cert_file and key_file",
		"clickhouse:\n  addr: ch:9440\n  tls: {enabled: true, key_file: " + ca + "}\n":                              "clickhouse.tls: cert_file and key_file",
	}
	for doc, want := range bad {
		if _, err := Parse([]byte(doc)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to mention %q", doc, err, want)
		}
	}
}
