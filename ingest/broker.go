package ingest

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
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
	tmp     string   // the log's directory if the broker made it, removed on Close
	lock    *os.File // held while the broker runs, so that others know tmp is in use
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
	var tmp string
	var lock *os.File
	if dir == "" {
		removeAbandonedLogs(os.TempDir(), log)
		if tmp, lock, err = makeLockedTemp(); err != nil {
			return nil, fmt.Errorf("embedded broker: %w", err)
		}
		dir = tmp
	}
	opts = append(opts, kfake.DataDir(dir))
	// Segments of 8 MB rather than kfake's 100: retention and compaction
	// work on whole segments, and a development broker's topics are small.
	brokerCfg := map[string]string{"log.segment.bytes": strconv.Itoa(embeddedSegmentBytes)}
	if cfg.MaxMessageBytes > 0 {
		brokerCfg["message.max.bytes"] = strconv.Itoa(cfg.MaxMessageBytes)
	}
	opts = append(opts, kfake.BrokerConfigs(brokerCfg))
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		if tmp != "" {
			os.RemoveAll(tmp)
			lock.Close()
		}
		return nil, fmt.Errorf("start embedded broker on %s: %w", listen, err)
	}
	addrs := c.ListenAddrs()
	b := &EmbeddedBroker{cluster: c, addr: addrs[0], tmp: tmp, lock: lock}
	log.Warn("embedded Kafka broker started: for development only; messages not yet flushed are lost if the process dies",
		"addr", b.addr, "topics", topics, "partitions", partitions, "dir", dir)
	return b, nil
}

// Addr is the broker's host:port.
func (b *EmbeddedBroker) Addr() string { return b.addr }

// Close stops the broker; clients connected to it see their connections drop.
func (b *EmbeddedBroker) Close() {
	b.cluster.Close()
	if b.tmp != "" {
		os.RemoveAll(b.tmp)
		b.lock.Close()
	}
}

const (
	tempLogPattern = "walletguard-broker-*"
	tempLogLock    = "owner.lock"
)

// makeLockedTemp makes a temporary directory for a broker's log and takes
// an exclusive lock on a file in it. The kernel drops the lock when the
// process ends, however it ends, which is how a later broker tells a log
// left by a killed one from a log in use. The directory gets its final
// name only once locked, so that no one sees it unlocked meanwhile.
func makeLockedTemp() (string, *os.File, error) {
	making, err := os.MkdirTemp("", "."+tempLogPattern)
	if err != nil {
		return "", nil, err
	}
	f, err := os.OpenFile(filepath.Join(making, tempLogLock), os.O_CREATE|os.O_RDWR, 0o600)
	if err == nil {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	}
	dir := filepath.Join(filepath.Dir(making), filepath.Base(making)[1:])
	if err == nil {
		err = os.Rename(making, dir)
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		os.RemoveAll(making)
		return "", nil, fmt.Errorf("lock log directory %s: %w", making, err)
	}
	return dir, f, nil
}

// removeAbandonedLogs removes the temporary logs in tmpDir of embedded
// brokers whose process is gone: a demo or bench killed with SIGKILL
// cannot remove its own, and a bench leaves gigabytes. A log whose lock
// someone holds is in use and stays; so does a directory without a lock
// file, which this code did not make.
func removeAbandonedLogs(tmpDir string, log *slog.Logger) {
	dirs, _ := filepath.Glob(filepath.Join(tmpDir, tempLogPattern))
	for _, dir := range dirs {
		f, err := os.OpenFile(filepath.Join(dir, tempLogLock), os.O_RDWR, 0)
		if err != nil {
			continue
		}
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			err = os.RemoveAll(dir)
			if err == nil {
				log.Info("removed the log of an embedded broker whose process is gone", "dir", dir)
			}
		} else if errors.Is(err, syscall.EWOULDBLOCK) {
			err = nil
		}
		f.Close()
		if err != nil {
			log.Warn("could not remove an abandoned embedded broker log", "dir", dir, "err", err)
		}
	}
}
