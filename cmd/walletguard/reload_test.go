package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walletguard/walletguard/rules"
)

// TestSIGHUPAndFileWatchReloadRules runs the daemon binary with a rules
// directory: SIGHUP loads a changed rule set, a broken file is refused and the
// old set stays live, and with rules.watch a file change alone reloads.
func TestSIGHUPAndFileWatchReloadRules(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	rulesDir := filepath.Join(dir, "rules")
	os.MkdirAll(rulesDir, 0o755)
	for _, s := range rules.BuiltinSources() {
		os.WriteFile(filepath.Join(rulesDir, filepath.Base(s.Name)), s.Content, 0o644)
	}
	httpAddr := freePort(t)
	cfgPath := filepath.Join(dir, "walletguard.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`data_dir: %s
kafka:
  embedded_listen: %s
  session_timeout: 2s
http:
  listen: %s
  tokens: [{token: viewer-token, role: viewer}]
rules:
  paths: [%s]
  watch: true
`, filepath.Join(dir, "data"), freePort(t), httpAddr, rulesDir)), 0o600)
	cmd := exec.Command(bin, "run", "--config", cfgPath)
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs.String())
		}
	}()
	version := func() string {
		req, _ := http.NewRequest("GET", "http://"+httpAddr+"/v1/rules", nil)
		req.Header.Set("Authorization", "Bearer viewer-token")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		var body struct {
			Version string `json:"version"`
		}
		b, _ := io.ReadAll(resp.Body)
		json.Unmarshal(b, &body)
		return body.Version
	}
	waitUntil(t, "the API", 20*time.Second, func() bool { return version() != "" })
	v1 := version()

	// A new rule file: the watcher (or SIGHUP) picks it up.
	os.WriteFile(filepath.Join(rulesDir, "extra.yaml"), []byte("rules:\n  - id: shadow_night\n    on: [login]\n    when: event.hour < 5\n    mode: shadow\n"), 0o644)
	cmd.Process.Signal(syscall.SIGHUP)
	waitUntil(t, "a new rule-set version", 20*time.Second, func() bool { return version() != v1 })
	v2 := version()

	// A broken file is refused as a whole, on SIGHUP and by the watcher.
	os.WriteFile(filepath.Join(rulesDir, "broken.yaml"), []byte("rules:\n  - id: typo\n    on: [login]\n    when: event.reslt == \"failure\"\n"), 0o644)
	cmd.Process.Signal(syscall.SIGHUP)
	waitUntil(t, "the refusal in the log", 20*time.Second, func() bool { return strings.Contains(logs.String(), "rule reload refused") })
	time.Sleep(2500 * time.Millisecond) // a watcher poll too
	if got := version(); got != v2 {
		t.Fatalf("version %s after a broken file, want the previous %s", got, v2)
	}
	if !strings.Contains(logs.String(), "reslt") {
		t.Errorf("the refusal does not name the bad field")
	}

	// Fixing the file is picked up by the watcher alone.
	os.Remove(filepath.Join(rulesDir, "broken.yaml"))
	os.WriteFile(filepath.Join(rulesDir, "extra.yaml"), []byte("rules:\n  - id: shadow_dawn\n    on: [login]\n    when: event.hour < 6\n    mode: shadow\n"), 0o644)
	waitUntil(t, "the watcher to load the fixed set", 20*time.Second, func() bool { v := version(); return v != v2 && v != "" })
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
