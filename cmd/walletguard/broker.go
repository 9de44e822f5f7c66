package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/walletguard/walletguard/ingest"
)

// cmdBroker runs only the embedded Kafka-protocol broker: a local Kafka for
// development and for tests that restart or kill the daemon beside it.
func cmdBroker(args []string) int {
	fs := flag.NewFlagSet("broker", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:9092", "host:port to listen on")
	dir := fs.String("dir", "", "directory for the broker's log, kept across restarts (empty: a temporary one, removed on exit)")
	partitions := fs.Int("partitions", 8, "partitions of created topics")
	maxMessage := fs.Int("max-message-bytes", 0, "largest record batch accepted (0: Kafka's default, about 1 MB)")
	topics := fs.String("topics", "wallet.events,walletguard.dlq,walletguard.decisions,walletguard.account-commands,walletguard.account-actions", "topics to create")
	tlsCert := fs.String("tls-cert", "", "serve only TLS, with this certificate (PEM; with --tls-key)")
	tlsKey := fs.String("tls-key", "", "the key of --tls-cert (PEM)")
	user := fs.String("sasl-user", "", "take only clients logged in as this user (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)")
	password := fs.String("sasl-password", "", "the password of --sasl-user")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if (*tlsCert == "") != (*tlsKey == "") || (*user == "") != (*password == "") {
		fmt.Fprintln(os.Stderr, "broker: --tls-cert and --tls-key go together, as do --sasl-user and --sasl-password")
		return 2
	}
	cfg := ingest.EmbeddedConfig{Listen: *listen, Dir: *dir, Partitions: *partitions,
		Topics: strings.Split(*topics, ","), MaxMessageBytes: *maxMessage, User: *user, Password: *password}
	if *tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			fmt.Fprintf(os.Stderr, "broker: %v\n", err)
			return 2
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	log := newLogger("text", "info")
	b, err := ingest.StartEmbedded(cfg, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "broker: %v\n", err)
		return 1
	}
	fmt.Println(b.Addr()) // the first line of output is the address, for scripts
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	b.Close()
	return 0
}
