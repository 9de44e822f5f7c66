package main

import (
	"context"
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
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := newLogger("text", "info")
	b, err := ingest.StartEmbedded(ingest.EmbeddedConfig{Listen: *listen, Dir: *dir, Partitions: *partitions,
		Topics: strings.Split(*topics, ","), MaxMessageBytes: *maxMessage}, log)
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
