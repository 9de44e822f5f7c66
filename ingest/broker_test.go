package ingest

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// TestEmbeddedBrokerWithoutDirLeavesNothing: a broker not given a directory
// keeps its log in one it made, serves what was produced from it, and
// removes it on Close.
func TestEmbeddedBrokerWithoutDirLeavesNothing(t *testing.T) {
	b, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", Partitions: 1, Topics: []string{"t"}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if b.tmp == "" {
		t.Fatal("no directory made for the log")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	w := &kafka.Writer{Addr: kafka.TCP(b.Addr()), Topic: "t", RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	if err := w.WriteMessages(ctx, kafka.Message{Value: []byte("hello")}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{b.Addr()}, Topic: "t", Partition: 0, MaxWait: 100 * time.Millisecond})
	m, err := r.ReadMessage(ctx)
	r.Close()
	if err != nil || string(m.Value) != "hello" {
		t.Fatalf("read back %q, %v; want hello", m.Value, err)
	}
	entries, err := os.ReadDir(b.tmp)
	if err != nil || len(entries) == 0 {
		t.Fatalf("log directory %s: %d entries, %v; want the topic's log there", b.tmp, len(entries), err)
	}
	b.Close()
	if _, err := os.Stat(b.tmp); !os.IsNotExist(err) {
		t.Errorf("log directory %s still there after Close (%v)", b.tmp, err)
	}
}

// TestEmbeddedBrokerRemovesLogsOfKilledBrokers: a broker process killed
// with SIGKILL cannot remove its temporary log; the next embedded broker
// started on the machine does, and leaves alone the log of one still
// running.
func TestEmbeddedBrokerRemovesLogsOfKilledBrokers(t *testing.T) {
	if os.Getenv("WALLETGUARD_TEST_BROKER_CHILD") == "1" {
		b, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", Partitions: 1, Topics: []string{"t"}}, slog.New(slog.DiscardHandler))
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println(b.tmp)
		select {} // until killed
	}
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	child := func() (*exec.Cmd, string) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestEmbeddedBrokerRemovesLogsOfKilledBrokers$")
		cmd.Env = append(os.Environ(), "WALLETGUARD_TEST_BROKER_CHILD=1")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, tmp) {
			t.Fatalf("child broker said %q, %v; want its log directory under %s", line, err, tmp)
		}
		return cmd, strings.TrimSpace(line)
	}
	killed, killedDir := child()
	_, runningDir := child()
	foreign := filepath.Join(tmp, "walletguard-broker-foreign")
	if err := os.Mkdir(foreign, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := killed.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed.Wait()
	if _, err := os.Stat(killedDir); err != nil {
		t.Fatalf("the killed broker's log should still be there before the next start: %v", err)
	}

	b, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", Partitions: 1, Topics: []string{"t"}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := os.Stat(killedDir); !os.IsNotExist(err) {
		t.Errorf("log of the killed broker %s still there (%v)", killedDir, err)
	}
	for _, dir := range []string{runningDir, foreign, b.tmp} {
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("%s was removed (%v); it is in use or not a broker's log", dir, err)
		}
	}
}
