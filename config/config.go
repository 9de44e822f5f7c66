// Package config owns walletguard's configuration (CONTRACT §4): the schema,
// its defaults, strict loading (unknown keys are errors that name the key),
// ${ENV} expansion and the cross-checks between keys. Other packages receive
// plain values from here and never read files or the environment themselves.
package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole configuration. Every field has a default (Default), so
// an empty file, or none, is a working setup.
type Config struct {
	DataDir    string     `yaml:"data_dir"`
	Kafka      Kafka      `yaml:"kafka"`
	HTTP       HTTP       `yaml:"http"`
	ClickHouse ClickHouse `yaml:"clickhouse"`
	Alerts     Alerts     `yaml:"alerts"`
	Rules      Rules      `yaml:"rules"`
	Detector   Detector   `yaml:"detector"`
	Enforce    Enforce    `yaml:"enforce"`
	Log        Log        `yaml:"log"`
}

// Enforce configures what walletguard does to accounts: the freeze-storm
// breaker, TOTP step-up and the wallet's account service.
type Enforce struct {
	// Breaker stops automatic freezes when more than MaxFreezes happen
	// within Window (event time): a bad rule or a broken upstream field
	// must not freeze the customer base. Freezes become step-ups until an
	// admin closes it again.
	Breaker Breaker `yaml:"breaker"`
	// UnfreezeGrace: after support unfreezes an account, automatic freezes
	// of it become step-ups for this long (the customer travels on; a
	// thief still has to pass the second factor). 0 turns it off.
	UnfreezeGrace Duration `yaml:"unfreeze_grace"`
	TOTP          TOTP     `yaml:"totp"`
	// AccountService, if URL is set, also receives every account command
	// as a signed HTTP POST, retried until it succeeds.
	AccountService Webhook `yaml:"account_service"`
	// AuditRetention is how long the local audit trail (and its copy in
	// the changelog) keeps an entry, by the entry's time; ClickHouse keeps
	// every one. 0 keeps them all.
	AuditRetention Duration `yaml:"audit_retention"`
}

// Breaker is the freeze-storm breaker.
type Breaker struct {
	MaxFreezes int      `yaml:"max_freezes"`
	Window     Duration `yaml:"window"`
}

// TOTP is two-factor step-up.
type TOTP struct {
	Issuer string `yaml:"issuer"`
	// The AES-256 key that encrypts TOTP secrets at rest: 32 bytes as 64
	// hex characters or base64, from a file or from an environment variable
	// (named here, so the key never sits in the config). Required once any
	// account is enrolled.
	KeyFile string `yaml:"key_file"`
	KeyEnv  string `yaml:"key_env"`
	// MaxWrongCodes in a row lock the account's verification.
	MaxWrongCodes int `yaml:"max_wrong_codes"`
}

// TLS is a client's TLS to a server: the Kafka brokers, ClickHouse, a
// webhook receiver.
type TLS struct {
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM bundle of the authorities that sign the server's
	// certificates; empty: the system's.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate and its key, for
	// servers that authenticate clients by certificate (mutual TLS).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name verified in the server's certificate when it
	// is not the host of its address.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any certificate: for a test server only.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Client makes the TLS configuration t describes, reading its files; nil
// when TLS is not enabled.
func (t TLS) Client() (*tls.Config, error) {
	if !t.Enabled {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls ca_file: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca_file %s: no PEM certificate in it", t.CAFile)
		}
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

func validateWebhookTLS(key string, w *Webhook, bad func(string, ...any)) {
	validateTLS(key+".tls", w.TLS, bad)
	if w.TLS.Enabled && !strings.HasPrefix(w.URL, "https://") {
		bad("%s.tls: the url %q is not https", key, w.URL)
	}
}

func validateTLS(key string, t TLS, bad func(string, ...any)) {
	if !t.Enabled && (t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "" || t.InsecureSkipVerify) {
		bad("%s: settings given but enabled is false", key)
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		bad("%s: cert_file and key_file go together", key)
	}
	for _, f := range [][2]string{{"ca_file", t.CAFile}, {"cert_file", t.CertFile}, {"key_file", t.KeyFile}} {
		if f[1] == "" {
			continue
		}
		if _, err := os.Stat(f[1]); err != nil {
			bad("%s.%s: %v", key, f[0], err)
		}
	}
}

// KafkaSASL is the login to the brokers.
type KafkaSASL struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; empty: none.
	Mechanism string `yaml:"mechanism"`
	Username  string `yaml:"username"`
	Password  string `yaml:"password"`
}

// SASLMechanisms are the values kafka.sasl.mechanism accepts.
var SASLMechanisms = []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}

// Kafka is where events come from and where walletguard's own records go.
type Kafka struct {
	// Brokers of an external cluster; empty starts the embedded broker.
	Brokers []string `yaml:"brokers"`
	// TLS and SASL secure the connections to Brokers (a managed cluster
	// takes nothing else); the embedded broker speaks plaintext.
	TLS            TLS       `yaml:"tls"`
	SASL           KafkaSASL `yaml:"sasl"`
	EmbeddedListen string    `yaml:"embedded_listen"`
	// EmbeddedPartitions is the partition count of topics the embedded broker creates.
	EmbeddedPartitions int      `yaml:"embedded_partitions"`
	Topics             []string `yaml:"topics"`
	GroupID            string   `yaml:"group_id"`
	DLQTopic           string   `yaml:"dlq_topic"`
	DecisionsTopic     string   `yaml:"decisions_topic"`
	CommandsTopic      string   `yaml:"commands_topic"`
	// ActionsTopic carries what support and the gateway change through the
	// API (freezes, unfreezes, 2FA enrolments and codes), with the
	// account's resulting state, so that a standby takes over with them.
	// Every instance reads it whole; empty: manual actions stay local.
	ActionsTopic string `yaml:"actions_topic"`
	// ChangelogTopic, if set, receives every checkpoint's detection state
	// and account states, compacted by key, so that an instance that starts
	// without its data_dir (a lost volume, a new machine) restores them
	// from Kafka instead of starting cold. Created compacted when missing.
	ChangelogTopic string `yaml:"changelog_topic"`
	// SessionTimeout is the consumer-group session timeout: how long a dead
	// instance holds its partitions before the group moves them.
	SessionTimeout Duration `yaml:"session_timeout"`
	// CommitInterval bounds how long handled offsets wait before they are committed.
	CommitInterval Duration `yaml:"commit_interval"`
	// ShutdownTimeout bounds the graceful drain on SIGTERM.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// StandbyFollow makes an instance that stands by (another walletguard
	// in the group owns every partition) read the events the owner has
	// committed into its own state, so that it decides as the owner would
	// have when it takes over. It costs the standby what deciding costs.
	StandbyFollow bool `yaml:"standby_follow"`
	// SharePartitions makes the instances of the group share the
	// partitions instead of one owning them all: each decides those the
	// group assigns it and observes the rest for what spans accounts
	// (devices, IPs, payees, merchants); a partition's state moves with it
	// through the changelog (docs/scaling.md). Every instance of a group
	// must say the same.
	SharePartitions bool `yaml:"share_partitions"`
	// FindingsTopic carries, when instances share the partitions, the
	// decisions whose findings span accounts (a merchant outage, a faulty
	// app version, an address stuffing credentials, a mule payee, stuck
	// payments at a merchant): the member that decides partition 0 raises
	// their alerts from every member's, once (docs/scaling.md).
	FindingsTopic string `yaml:"findings_topic"`
	// PartitionSkew bounds how far apart in event time the partitions are
	// read: catching up on a backlog, a record waits while another
	// partition with records to read is older by more than this, so that
	// what spans accounts is counted in order (ingest.DefaultSkew). 0 reads
	// each partition as fast as it is fetched.
	PartitionSkew Duration `yaml:"partition_skew"`
	// Compression is the codec of every batch walletguard produces
	// (decisions, commands, dead letters, changelog): none, gzip, snappy,
	// lz4 or zstd, as Kafka's compression.type. Decisions are JSON, one per
	// event: compressed they take a fraction of the brokers' disk and
	// network, for some CPU here.
	Compression string `yaml:"compression"`
}

// HTTP is the API and metrics listener.
type HTTP struct {
	Listen string `yaml:"listen"`
	// Advertise is where the other instances of the consumer group reach
	// this one's API (host:port): a standby passes the changes it is asked
	// for on to the owner there. Empty: listen's address when that names
	// a host, else nowhere (a standby then refuses changes).
	Advertise string  `yaml:"advertise"`
	Tokens    []Token `yaml:"tokens"`
}

// Token is one bearer token and the role it grants. Name says whose it is
// in the audit trail (the token itself never appears there).
type Token struct {
	Token string `yaml:"token"`
	Role  string `yaml:"role"`
	Name  string `yaml:"name"`
}

// Roles a token may hold (CONTRACT §3).
var Roles = []string{"viewer", "support", "gateway", "admin"}

// ClickHouse is the analytics sink; an empty Addr disables it.
type ClickHouse struct {
	Addr     string `yaml:"addr"` // native protocol, host:9000
	Database string `yaml:"database"`
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// TLS to the server (its secure native port, 9440 by default): what a
	// managed ClickHouse takes.
	TLS TLS `yaml:"tls"`
	// Rows are written in batches of BatchRows or every FlushInterval.
	BatchRows     int      `yaml:"batch_rows"`
	FlushInterval Duration `yaml:"flush_interval"`
	// WriteTimeout bounds one insert; a slower ClickHouse spills to the spool.
	WriteTimeout Duration `yaml:"write_timeout"`
	// The spool in data_dir/spool holds rows while ClickHouse is down:
	// past SpoolAlertMB an alert is raised, at SpoolLimitMB rows are refused
	// and checkpoints wait (the events are read again later).
	SpoolAlertMB int `yaml:"spool_alert_mb"`
	SpoolLimitMB int `yaml:"spool_limit_mb"`
	// Retention, if set, drops the days of events, decisions, alerts and
	// rejected records older than it: raw events hold personal data (IPs,
	// devices) that a privacy policy keeps only so long. AuditRetention
	// does the same for actions, the audit trail, which is usually kept
	// longer. 0 keeps everything.
	Retention      Duration `yaml:"retention"`
	AuditRetention Duration `yaml:"audit_retention"`
}

// Alerts configures support-alert delivery.
type Alerts struct {
	Webhooks []Webhook `yaml:"webhooks"`
	// TemplatesDir holds edited copies of the alert wording (one YAML file
	// per language); empty uses the built-in English, Chinese and Indonesian.
	TemplatesDir string `yaml:"templates_dir"`
	// TakeoverRedeliver: when a following standby takes the partitions
	// over, it delivers again the alerts (and, with an account service,
	// the commands) it learned of by following in this long before. The owner that died may have held them in its
	// outbox, undelivered (a receiver down); receivers deduplicate by
	// alert_id. 0 delivers none again. (An instance that restores the
	// owner's state from the changelog gets the owner's undelivered
	// outbox records with it instead, whatever this says.)
	TakeoverRedeliver Duration `yaml:"takeover_redeliver"`
	// DeadLetterRetention is how long records a receiver was given up on
	// stay on the dead-letter list (GET /v1/alerts/dead-letters; the
	// account service's too) before they are deleted, with their copy in
	// the changelog. 0 keeps them all.
	DeadLetterRetention Duration `yaml:"dead_letter_retention"`
	// ConsoleURL is the support console's address as agents reach it
	// (e.g. https://walletguard.example.com/console/). Alerts sent to
	// receivers then link to the account they are about, or to the
	// queue: the generator URL of Alertmanager, the title in chat, a
	// "url" field in JSON. Empty: no links.
	ConsoleURL string `yaml:"console_url"`
}

// Webhook is one receiver: of support alerts (alerts.webhooks) or of
// account commands (enforce.account_service, which uses URL, Secret and TLS).
type Webhook struct {
	URL    string `yaml:"url"`
	Secret string `yaml:"secret"`
	// TLS adds to an https URL an authority of the organisation's own
	// (ca_file) and a client certificate for a receiver that requires one
	// (cert_file, key_file): mutual TLS.
	TLS TLS `yaml:"tls"`
	// Name labels the receiver in metrics and the API; default receiver-N.
	Name string `yaml:"name"`
	// Format: json (signed, CONTRACT §2), slack (incoming-webhook message)
	// or alertmanager (POST /api/v2/alerts of Prometheus Alertmanager).
	Format string `yaml:"format"`
	// Language of titles, summaries and actions: en, zh, id, or one from templates_dir.
	Language string `yaml:"language"`
	// Routing: only alerts at least this severe, and of these categories (empty: all).
	MinSeverity string   `yaml:"min_severity"`
	Categories  []string `yaml:"categories"`
	// RateLimit caps alerts a minute (critical ones always pass); the rest
	// arrive as one digest at the end of the minute. 0: no limit.
	RateLimit int `yaml:"rate_limit"`
	// GiveUpAfter moves an alert not delivered for this long to the
	// dead-letter list (GET /v1/alerts/dead-letters).
	GiveUpAfter Duration `yaml:"give_up_after"`
}

// Rules says where rule files come from.
type Rules struct {
	// Paths of rule files or directories; empty means the built-in packs.
	Paths []string `yaml:"paths"`
	// Watch reloads rule files when they change on disk.
	Watch bool `yaml:"watch"`
}

// Detector tunes scoring and state.
type Detector struct {
	// AllowedLateness is how far behind the newest event time an event may
	// arrive and still be placed in its windows; the watermark trails the
	// newest event time by this much.
	AllowedLateness Duration `yaml:"allowed_lateness"`
	// IdleExpiry drops the state of accounts and entities not seen for this long (event time).
	IdleExpiry Duration `yaml:"idle_expiry"`
	// MaxAccounts caps the accounts held in detection state, and the
	// devices, IPs and payees (each kind on its own): past it the entries seen
	// longest ago are dropped first, so memory stays bounded whatever the input.
	MaxAccounts int `yaml:"max_accounts"`
	// CheckpointInterval is how often state, timers and offsets are saved together.
	CheckpointInterval Duration `yaml:"checkpoint_interval"`
	// Thresholds map a 0–100 score to an action.
	Thresholds Thresholds `yaml:"thresholds"`
	// AllowList accounts are never frozen automatically.
	AllowList []string `yaml:"allow_list"`
}

// Thresholds are the lowest scores that lead to each action.
type Thresholds struct {
	Review int `yaml:"review"`
	StepUp int `yaml:"step_up"`
	Freeze int `yaml:"freeze"`
}

// Log selects the log format and level.
type Log struct {
	Format string `yaml:"format"` // json or text; empty picks per command
	Level  string `yaml:"level"`  // debug, info, warn, error
}

// Duration is a time.Duration written as "10s", "5m" in YAML.
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalYAML parses Go duration syntax, and whole days as "400d" (for
// retentions, which Go's syntax would write in hours).
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if v, err := strconv.ParseUint(days, 10, 16); err == nil {
			*d = Duration(time.Duration(v) * 24 * time.Hour)
			return nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration like 30s, 5m or 400d", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration back in Go syntax.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Default is the configuration used when a key is absent.
func Default() Config {
	return Config{
		DataDir: "./walletguard-data",
		Kafka: Kafka{
			EmbeddedListen:     "127.0.0.1:9092",
			EmbeddedPartitions: 8,
			Topics:             []string{"wallet.events"},
			GroupID:            "walletguard",
			DLQTopic:           "walletguard.dlq",
			DecisionsTopic:     "walletguard.decisions",
			CommandsTopic:      "walletguard.account-commands",
			ActionsTopic:       "walletguard.account-actions",
			FindingsTopic:      "walletguard.findings",
			PartitionSkew:      Duration(time.Minute), // ingest.DefaultSkew
			Compression:        "none",
			SessionTimeout:     Duration(10 * time.Second),
			CommitInterval:     Duration(time.Second),
			ShutdownTimeout:    Duration(15 * time.Second),
			StandbyFollow:      true,
		},
		Alerts: Alerts{TakeoverRedeliver: Duration(15 * time.Minute), DeadLetterRetention: Duration(30 * 24 * time.Hour)},
		HTTP: HTTP{
			Listen: "127.0.0.1:8080",
			Tokens: []Token{{Token: "change-me", Role: "admin"}},
		},
		ClickHouse: ClickHouse{Database: "walletguard", Username: "default", BatchRows: 10000, FlushInterval: Duration(time.Second),
			WriteTimeout: Duration(10 * time.Second), SpoolAlertMB: 512, SpoolLimitMB: 2048},
		Detector: Detector{
			AllowedLateness:    Duration(5 * time.Minute),
			IdleExpiry:         Duration(30 * 24 * time.Hour),
			MaxAccounts:        2_000_000,
			CheckpointInterval: Duration(5 * time.Second),
			Thresholds:         Thresholds{Review: 40, StepUp: 60, Freeze: 85},
		},
		Enforce: Enforce{
			Breaker:       Breaker{MaxFreezes: 30, Window: Duration(time.Minute)},
			UnfreezeGrace: Duration(24 * time.Hour),
			// Longer than a year: disputes and chargebacks come back months later.
			AuditRetention: Duration(400 * 24 * time.Hour),
			TOTP:           TOTP{Issuer: "walletguard", KeyEnv: "WALLETGUARD_TOTP_KEY", MaxWrongCodes: 5},
		},
	}
}

// Load reads and validates a config file; an empty path yields the defaults.
func Load(path string) (Config, error) {
	if path == "" {
		c := Default()
		return c, c.Validate()
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// Parse decodes YAML over the defaults, strictly, then validates.
func Parse(b []byte) (Config, error) {
	c := Default()
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return Config{}, fmt.Errorf("parse yaml: %w", err)
	}
	if len(root.Content) == 0 { // empty document: all defaults
		return c, c.Validate()
	}
	var missing []string
	expandEnv(&root, &missing)
	if len(missing) > 0 {
		return Config{}, fmt.Errorf("environment variables not set: %s", strings.Join(missing, ", "))
	}
	if err := checkKeys(root.Content[0], "", typeOfConfig); err != nil {
		return Config{}, err
	}
	if err := root.Content[0].Decode(&c); err != nil {
		return Config{}, fmt.Errorf("decode: %w", err)
	}
	return c, c.Validate()
}

// expandEnv replaces ${NAME} in scalar values with the environment's value,
// collecting the names that are not set.
func expandEnv(n *yaml.Node, missing *[]string) {
	if n.Kind == yaml.ScalarNode && strings.Contains(n.Value, "${") {
		n.Value = envRef.ReplaceAllStringFunc(n.Value, func(ref string) string {
			name := ref[2 : len(ref)-1]
			v, ok := os.LookupEnv(name)
			if !ok {
				*missing = append(*missing, name)
			}
			return v
		})
		// Let the expanded text resolve as if written in place, so a number
		// from the environment can fill an integer key.
		n.Tag, n.Style = "", 0
	}
	for _, c := range n.Content {
		expandEnv(c, missing)
	}
}

// Validate checks values and the relations between them.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.DataDir == "" {
		bad("data_dir: must not be empty")
	}
	if len(c.Kafka.Brokers) == 0 {
		if _, _, err := net.SplitHostPort(c.Kafka.EmbeddedListen); err != nil {
			bad("kafka.embedded_listen: %q is not host:port", c.Kafka.EmbeddedListen)
		}
	}
	c.validateKafkaSecurity(bad)
	validateTLS("clickhouse.tls", c.ClickHouse.TLS, bad)
	if c.ClickHouse.TLS.Enabled && c.ClickHouse.Addr == "" {
		bad("clickhouse.tls: it secures clickhouse.addr, which is empty")
	}
	if c.Kafka.EmbeddedPartitions < 1 || c.Kafka.EmbeddedPartitions > 1024 {
		bad("kafka.embedded_partitions: %d is not between 1 and 1024", c.Kafka.EmbeddedPartitions)
	}
	if len(c.Kafka.Topics) == 0 {
		bad("kafka.topics: at least one topic is needed")
	}
	for name, v := range map[string]string{"group_id": c.Kafka.GroupID, "dlq_topic": c.Kafka.DLQTopic,
		"decisions_topic": c.Kafka.DecisionsTopic, "commands_topic": c.Kafka.CommandsTopic} {
		if v == "" {
			bad("kafka.%s: must not be empty", name)
		}
	}
	if c.Kafka.SessionTimeout.D() < time.Second {
		bad("kafka.session_timeout: %s is below 1s", c.Kafka.SessionTimeout.D())
	}
	if c.Kafka.PartitionSkew.D() < 0 {
		bad("kafka.partition_skew must not be negative (0 reads the partitions unaligned)")
	}
	if !slices.Contains([]string{"none", "gzip", "snappy", "lz4", "zstd"}, c.Kafka.Compression) {
		bad("kafka.compression: %q is not one of none, gzip, snappy, lz4 and zstd", c.Kafka.Compression)
	}
	if c.Kafka.CommitInterval.D() <= 0 || c.Kafka.ShutdownTimeout.D() <= 0 {
		bad("kafka.commit_interval and kafka.shutdown_timeout must be positive")
	}
	if c.Kafka.SharePartitions && c.Kafka.ChangelogTopic == "" {
		bad("kafka.share_partitions: needs kafka.changelog_topic, through which a partition's state moves to its next owner")
	}
	if c.Kafka.SharePartitions && c.Kafka.FindingsTopic == "" {
		bad("kafka.share_partitions: needs kafka.findings_topic, through which the alerts that span accounts are raised once")
	}
	if _, _, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
		bad("http.listen: %q is not host:port", c.HTTP.Listen)
	}
	if h, _, err := net.SplitHostPort(c.HTTP.Advertise); c.HTTP.Advertise != "" && (err != nil || h == "") {
		bad("http.advertise: %q is not host:port", c.HTTP.Advertise)
	}
	seen := map[string]bool{}
	for i, t := range c.HTTP.Tokens {
		if t.Token == "" {
			bad("http.tokens[%d].token: must not be empty", i)
		}
		if seen[t.Token] {
			bad("http.tokens[%d].token: the same token is listed twice", i)
		}
		seen[t.Token] = true
		if !validRole(t.Role) {
			bad("http.tokens[%d].role: %q is not one of %s", i, t.Role, strings.Join(Roles, ", "))
		}
	}
	if ch := c.ClickHouse; ch.Addr != "" {
		if ch.Database == "" {
			bad("clickhouse.database: must not be empty when clickhouse.addr is set")
		}
		if _, _, err := net.SplitHostPort(ch.Addr); err != nil {
			bad("clickhouse.addr: %q is not host:port (the native protocol port, 9000 by default)", ch.Addr)
		}
		if ch.BatchRows < 1 || ch.FlushInterval.D() <= 0 || ch.WriteTimeout.D() <= 0 {
			bad("clickhouse: batch_rows, flush_interval and write_timeout must be positive")
		}
		if ch.SpoolLimitMB < 1 || ch.SpoolAlertMB < 1 || ch.SpoolAlertMB > ch.SpoolLimitMB {
			bad("clickhouse: need 1 ≤ spool_alert_mb (%d) ≤ spool_limit_mb (%d)", ch.SpoolAlertMB, ch.SpoolLimitMB)
		}
		for name, d := range map[string]Duration{"retention": ch.Retention, "audit_retention": ch.AuditRetention} {
			if d.D() != 0 && d.D() < 24*time.Hour {
				bad("clickhouse.%s: %s is less than a day; the tables are dropped a day at a time (0 keeps everything)", name, d.D())
			}
		}
	}
	names := map[string]bool{}
	for i := range c.Alerts.Webhooks {
		w := &c.Alerts.Webhooks[i]
		if w.Name == "" {
			w.Name = fmt.Sprintf("receiver-%d", i)
		}
		if w.Format == "" {
			w.Format = "json"
		}
		if w.Language == "" {
			w.Language = "en"
		}
		if w.MinSeverity == "" {
			w.MinSeverity = "low"
		}
		if w.GiveUpAfter == 0 {
			w.GiveUpAfter = Duration(24 * time.Hour)
		}
		if names[w.Name] {
			bad("alerts.webhooks[%d].name: %q is used twice", i, w.Name)
		}
		names[w.Name] = true
		if !strings.HasPrefix(w.URL, "http://") && !strings.HasPrefix(w.URL, "https://") {
			bad("alerts.webhooks[%d].url: %q is not an http(s) URL", i, w.URL)
		}
		switch w.Format {
		case "json":
			if w.Secret == "" {
				bad("alerts.webhooks[%d].secret: must not be empty (json alerts are signed)", i)
			}
		case "slack", "alertmanager":
		default:
			bad("alerts.webhooks[%d].format: %q is not json, slack or alertmanager", i, w.Format)
		}
		switch w.MinSeverity {
		case "low", "medium", "high", "critical":
		default:
			bad("alerts.webhooks[%d].min_severity: %q is not low, medium, high or critical", i, w.MinSeverity)
		}
		if w.RateLimit < 0 || w.GiveUpAfter.D() < 0 {
			bad("alerts.webhooks[%d]: rate_limit and give_up_after must not be negative", i)
		}
		validateWebhookTLS(fmt.Sprintf("alerts.webhooks[%d]", i), w, bad)
	}
	if c.Alerts.TakeoverRedeliver.D() < 0 {
		bad("alerts.takeover_redeliver: must not be negative")
	}
	if c.Alerts.DeadLetterRetention.D() < 0 {
		bad("alerts.dead_letter_retention: must not be negative (0 keeps every dead letter)")
	}
	if u := c.Alerts.ConsoleURL; u != "" {
		if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" || p.Fragment != "" {
			bad("alerts.console_url: %q is not an http(s) URL without a #fragment", u)
		}
	}
	d := c.Detector
	if d.MaxAccounts < 1000 {
		bad("detector.max_accounts: must be at least 1000 (it is %d)", d.MaxAccounts)
	}
	if d.AllowedLateness.D() < 0 || d.IdleExpiry.D() <= 0 || d.CheckpointInterval.D() <= 0 {
		bad("detector: allowed_lateness must be ≥ 0, idle_expiry and checkpoint_interval > 0")
	}
	th := d.Thresholds
	if !(0 < th.Review && th.Review <= th.StepUp && th.StepUp <= th.Freeze && th.Freeze <= 100) {
		bad("detector.thresholds: need 0 < review (%d) ≤ step_up (%d) ≤ freeze (%d) ≤ 100", th.Review, th.StepUp, th.Freeze)
	}
	e := c.Enforce
	if e.Breaker.MaxFreezes < 1 || e.Breaker.Window.D() <= 0 {
		bad("enforce.breaker: max_freezes must be ≥ 1 and window > 0")
	}
	if e.UnfreezeGrace.D() < 0 {
		bad("enforce.unfreeze_grace: must not be negative")
	}
	if e.AuditRetention.D() < 0 {
		bad("enforce.audit_retention: must not be negative (0 keeps every entry)")
	}
	if e.TOTP.MaxWrongCodes < 1 {
		bad("enforce.totp.max_wrong_codes: must be ≥ 1")
	}
	if e.TOTP.Issuer == "" {
		bad("enforce.totp.issuer: must not be empty (authenticator apps show it)")
	}
	if u := e.AccountService.URL; u != "" {
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			bad("enforce.account_service.url: %q is not an http(s) URL", u)
		}
		if e.AccountService.Secret == "" {
			bad("enforce.account_service.secret: must not be empty (commands are signed)")
		}
		validateWebhookTLS("enforce.account_service", &e.AccountService, bad)
	}
	switch c.Log.Format {
	case "", "json", "text":
	default:
		bad("log.format: %q is not json or text", c.Log.Format)
	}
	switch strings.ToLower(c.Log.Level) {
	case "", "debug", "info", "warn", "error":
	default:
		bad("log.level: %q is not debug, info, warn or error", c.Log.Level)
	}
	return errors.Join(errs...)
}

func validRole(r string) bool {
	for _, v := range Roles {
		if v == r {
			return true
		}
	}
	return false
}

func (c *Config) validateKafkaSecurity(bad func(string, ...any)) {
	t, sl := c.Kafka.TLS, c.Kafka.SASL
	secured := t.Enabled || sl.Mechanism != ""
	if secured && len(c.Kafka.Brokers) == 0 {
		bad("kafka.tls, kafka.sasl: they secure kafka.brokers, which is empty; the embedded broker speaks plaintext")
	}
	validateTLS("kafka.tls", t, bad)
	if sl.Mechanism == "" {
		if sl.Username != "" || sl.Password != "" {
			bad("kafka.sasl: username or password given without a mechanism (%s)", strings.Join(SASLMechanisms, ", "))
		}
		return
	}
	if !slices.Contains(SASLMechanisms, sl.Mechanism) {
		bad("kafka.sasl.mechanism: %q is not one of %s", sl.Mechanism, strings.Join(SASLMechanisms, ", "))
	}
	if sl.Username == "" || sl.Password == "" {
		bad("kafka.sasl: %s needs username and password", sl.Mechanism)
	}
}
