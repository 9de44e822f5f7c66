package detector

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walletguard/walletguard/event"
)

// TestStoreOpensUnderAnAddressSpaceLimit: where `ulimit -v` forbids the
// address space the store reserves up front, it still opens, checkpoints and
// restores. The check runs in a child process under the limit.
func TestStoreOpensUnderAnAddressSpaceLimit(t *testing.T) {
	if dir := os.Getenv("WALLETGUARD_STORE_CHILD"); dir != "" {
		st, err := OpenStore(dir)
		if err != nil {
			t.Fatalf("open under the limit: %v", err)
		}
		e := newEngine(t, time.Minute)
		ev := event.Event{Type: event.TypeLogin, TypeName: "login", TS: time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC),
			Result: "success", AccountID: "a-1", EventID: "e-1", BalanceAfter: -1}
		e.Process(&ev, nil)
		if _, err := e.Checkpoint(st, Offsets{}); err != nil {
			t.Fatalf("checkpoint under the limit: %v", err)
		}
		r := newEngine(t, time.Minute)
		if _, err := r.Restore(st); err != nil || r.Stats().Accounts != 1 {
			t.Fatalf("restore under the limit: %v, %d accounts", err, r.Stats().Accounts)
		}
		return
	}
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "state")
	// 12 GiB: room for the Go runtime and the race detector, not for the
	// store's 16 GiB reservation.
	cmd := exec.Command("sh", "-c", `ulimit -v 12582912 && exec "$0" -test.run '^TestStoreOpensUnderAnAddressSpaceLimit$' -test.v`, bin)
	cmd.Env = append(os.Environ(), "WALLETGUARD_STORE_CHILD="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS") {
		t.Fatalf("child under ulimit -v: %v\n%s", err, out)
	}
}

// TestSymbolsPastCapacity: names past the table's capacity read as one
// placeholder, and the ones recorded before keep theirs.
func TestSymbolsPastCapacity(t *testing.T) {
	s := newSymbols(slog.New(slog.DiscardHandler))
	s.max = 1000
	first := s.id("NETWORK_TIMEOUT")
	for i := len(s.names); i < s.max; i++ {
		s.id(fmt.Sprint("m-", i))
	}
	if got := s.name(s.id("one-too-many")); got != symOtherName {
		t.Fatalf("a name past capacity reads %q, want %q", got, symOtherName)
	}
	if s.id("NETWORK_TIMEOUT") != first || s.name(first) != "NETWORK_TIMEOUT" {
		t.Fatal("a name recorded before capacity lost its symbol")
	}
}
