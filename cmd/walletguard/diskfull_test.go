package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/walletguard/walletguard/sim"
)

// TestDiskFullStopsCommitsAndRecovers fills the filesystem under data_dir
// (a small tmpfs) while events stream in. walletguard must keep deciding,
// stop committing offsets, say why in its log, /readyz and metrics, and
// once space returns write the checkpoint it could not and commit again.
// A kill -9 after that must restore exactly the state it had: the rows
// captured by the failed checkpoints were not dropped.
func TestDiskFullStopsCommitsAndRecovers(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	os.MkdirAll(data, 0o750)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", data).CombinedOutput(); err != nil {
		t.Fatalf("this test mounts a small tmpfs as data_dir and needs root (or CAP_SYS_ADMIN): %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", data).Run() })

	addr := freePort(t)
	broker := runBroker(t, bin, addr, 4, filepath.Join(dir, "broker"))
	defer func() { broker.Process.Signal(syscall.SIGTERM); broker.Wait() }()

	scfg := sim.DefaultConfig(3000)
	scfg.Seed, scfg.HistoryDays, scfg.Duration = 23, 1, 18*time.Hour
	msgs := simMessages(scfg)
	late := map[string]bool{} // accounts with events in the second half
	half := len(msgs) / 2
	for _, m := range msgs[half:] {
		late[string(m.Key)] = true
	}

	httpAddr := freePort(t)
	cfgPath := filepath.Join(dir, "wg.yaml")
	writeFile(t, cfgPath, fmt.Sprintf("data_dir: %s\nkafka: {brokers: [%s], session_timeout: 2s, commit_interval: 200ms}\nhttp: {listen: %s, tokens: [{token: viewer-token, role: viewer}]}\ndetector: {checkpoint_interval: 300ms}\n",
		data, addr, httpAddr))
	var logs syncBuffer
	daemon := startDaemon(t, bin, cfgPath, &logs)
	defer func() { stopDaemon(t, daemon, &logs, "error", "ERROR", "WARN", "checkpoint") }()
	committed := func() int64 { return committedOffsets(t, addr, "walletguard", "wallet.events", 4) }

	produceEvents(t, addr, msgs[:half])
	waitUntil(t, "first half consumed and committed", 60*time.Second, func() bool {
		return consumed(httpAddr) == float64(half) && committed() == int64(half)
	})
	if code, _ := readyz(httpAddr); code != 200 {
		t.Fatalf("/readyz %d before the disk filled", code)
	}

	// Fill the disk, then send the rest.
	filler := filepath.Join(data, "filler")
	fill(t, filler)
	produceEvents(t, addr, msgs[half:])
	waitUntil(t, "/readyz to report the full disk", 30*time.Second, func() bool {
		code, body := readyz(httpAddr)
		return code == 503 && strings.Contains(body, "no space left on device")
	})
	waitUntil(t, "the second half decided while the disk is full", 60*time.Second, func() bool { return consumed(httpAddr) == float64(len(msgs)) })
	stuck := committed()
	time.Sleep(2 * time.Second) // several checkpoint intervals
	if c := committed(); c != stuck || c >= int64(len(msgs)) {
		t.Fatalf("offsets committed while checkpoints fail: %d then %d of %d", stuck, c, len(msgs))
	}
	if metricSum(httpAddr, "walletguard_checkpoint_errors_total") < 2 {
		t.Errorf("walletguard_checkpoint_errors_total does not count the failed checkpoints")
	}
	if free := metricSum(httpAddr, "walletguard_data_dir_free_bytes"); free > 1<<20 {
		t.Errorf("walletguard_data_dir_free_bytes = %v with the disk full", free)
	}
	if !strings.Contains(logs.String(), "no space left on device") {
		t.Errorf("the log does not say the disk is full")
	}

	// Space returns: the checkpoint is written and commits catch up.
	os.Remove(filler)
	waitUntil(t, "/readyz ready and every offset committed after space returned", 30*time.Second, func() bool {
		code, _ := readyz(httpAddr)
		return code == 200 && committed() == int64(len(msgs))
	})
	if d := decisionsByTrigger(t, httpAddr, "event"); d != float64(len(msgs)) {
		t.Errorf("%v event decisions for %d events", d, len(msgs))
	}
	before := profiles(t, httpAddr, late)

	// What is on disk is what was in memory: kill -9 and compare.
	daemon.Process.Kill()
	daemon.Wait()
	daemon = startDaemon(t, bin, cfgPath, &logs)
	waitUntil(t, "the restarted daemon to be ready", 30*time.Second, func() bool { code, _ := readyz(httpAddr); return code == 200 })
	time.Sleep(time.Second)
	if n := consumed(httpAddr); n != 0 {
		t.Errorf("the restarted daemon re-read %v events: the last checkpoint did not include them", n)
	}
	after := profiles(t, httpAddr, late)
	diff := 0
	for id, p := range before {
		if after[id] != p {
			if diff < 3 {
				t.Errorf("account %s after restart:\n%s\nbefore:\n%s", id, after[id], p)
			}
			diff++
		}
	}
	if diff > 0 {
		t.Errorf("%d of %d accounts restored differently from what the daemon held", diff, len(before))
	}
}

// fill writes to path until the filesystem refuses: no space left.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for size := len(buf); size > 0; size /= 2 {
		for {
			if _, err := f.Write(buf[:size]); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("filling the disk: %v", err)
				}
				break
			}
		}
	}
}

func readyz(addr string) (int, string) {
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// committedOffsets sums a consumer group's committed offsets of a topic.
func committedOffsets(t *testing.T, broker, group, topic string, partitions int) int64 {
	t.Helper()
	ps := make([]int, partitions)
	for i := range ps {
		ps[i] = i
	}
	c := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 5 * time.Second}
	resp, err := c.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ps}})
	if err != nil {
		return -1
	}
	var sum int64
	for _, p := range resp.Topics[topic] {
		if p.CommittedOffset > 0 {
			sum += p.CommittedOffset
		}
	}
	return sum
}

// profiles reads the detector's picture of each account from the API.
func profiles(t *testing.T, addr string, ids map[string]bool) map[string]string {
	t.Helper()
	out := map[string]string{}
	for id := range ids {
		req, _ := http.NewRequest("GET", "http://"+addr+"/v1/accounts/"+id, nil)
		req.Header.Set("Authorization", "Bearer viewer-token")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var acc struct {
			Profile json.RawMessage `json:"profile"`
		}
		err = json.NewDecoder(resp.Body).Decode(&acc)
		resp.Body.Close()
		if err != nil || len(acc.Profile) == 0 {
			t.Fatalf("account %s: no profile (%v)", id, err)
		}
		out[id] = string(acc.Profile)
	}
	return out
}
