package ingest

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/walletguard/walletguard/scratch"
)

// embeddedSegmentBytes is the size of the embedded broker's log segments.
const embeddedSegmentBytes = 8 << 20

// EmbeddedBroker is an in-process, single-node Kafka-protocol broker for
// development, demos and tests. Any Kafka client can reach it on its address.
// It keeps its log in a directory but does not fsync every write, so recent
// messages may be lost if the process dies; it is not for production.
type EmbeddedBroker struct {
	cluster *kfake.Cluster
	addr    string
	tmp     *scratch.Dir // the log's directory if the broker made it, removed on Close
	closing sync.Once
}

// EmbeddedConfig says how to run the embedded broker.
type EmbeddedConfig struct {
	Listen string // host:port; port 0 picks one
	// Dir keeps the broker's log there across restarts. Empty: in a
	// temporary directory removed on Close, so nothing survives a restart.
	// Not in memory: kfake grows an in-memory segment in one buffer,
	// copying it while every client waits (produce acknowledgements of
	// seconds under load), where a file only takes appends.
	Dir        string
	Partitions int // of the topics created up front and of auto-created ones
	Topics     []string
	// MaxMessageBytes is the largest record batch accepted (Kafka's
	// message.max.bytes); 0 keeps Kafka's default of about 1 MB.
	MaxMessageBytes int
	// TLS, if set, makes the broker take only TLS connections; User and
	// Password, if set, only clients logged in as User with any of
	// PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512: a managed cluster's security,
	// to develop and test a config for one.
	TLS            *tls.Config
	User, Password string
}

// StartEmbedded starts the broker with the configured topics created up front.
func StartEmbedded(cfg EmbeddedConfig, log *slog.Logger) (*EmbeddedBroker, error) {
	listen, dir, partitions, topics := cfg.Listen, cfg.Dir, cfg.Partitions, cfg.Topics
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("embedded broker listen %q: %w", listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker listen %q: bad port: %w", listen, err)
	}
	if port == 0 {
		// kfake treats port 0 as "choose one", but on its own fixed host;
		// pick the port here so that host and port are both ours.
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("embedded broker: pick a port on %s: %w", host, err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			return net.Listen(network, net.JoinHostPort(host, strconv.Itoa(port)))
		}),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(partitions),
		kfake.SeedTopics(int32(partitions), topics...),
		kfake.GroupMinSessionTimeout(kafkaMinSession),
	}
	var tmp *scratch.Dir
	if dir == "" {
		if tmp, err = scratch.Make("walletguard-broker-", log); err != nil {
			return nil, fmt.Errorf("embedded broker: %w", err)
		}
		dir = tmp.Path
	}
	opts = append(opts, kfake.DataDir(dir))
	// Segments of 8 MB rather than kfake's 100: retention and compaction
	// work on whole segments, and a development broker's topics are small.
	brokerCfg := map[string]string{"log.segment.bytes": strconv.Itoa(embeddedSegmentBytes)}
	if cfg.MaxMessageBytes > 0 {
		brokerCfg["message.max.bytes"] = strconv.Itoa(cfg.MaxMessageBytes)
	}
	opts = append(opts, kfake.BrokerConfigs(brokerCfg))
	if cfg.TLS != nil {
		opts = append(opts, kfake.TLS(cfg.TLS))
	}
	if cfg.User != "" {
		opts = append(opts, kfake.EnableSASL())
		for _, m := range []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"} {
			opts = append(opts, kfake.Superuser(m, cfg.User, cfg.Password))
		}
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		if tmp != nil {
			tmp.Remove()
		}
		return nil, fmt.Errorf("start embedded broker on %s: %w", listen, err)
	}
	addrs := c.ListenAddrs()
	b := &EmbeddedBroker{cluster: c, addr: addrs[0], tmp: tmp}
	log.Warn("embedded Kafka broker started: for development only; messages not yet flushed are lost if the process dies",
		"addr", b.addr, "topics", topics, "partitions", partitions, "dir", dir)
	return b, nil
}

// Addr is the broker's host:port.
func (b *EmbeddedBroker) Addr() string { return b.addr }

// Close stops the broker; clients connected to it see their connections
// drop. A second call does nothing.
func (b *EmbeddedBroker) Close() {
	b.closing.Do(func() {
		b.cluster.Close()
		if b.tmp != nil {
			b.tmp.Remove()
		}
	})
}
