package console_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestConsoleInChromium runs console/e2e/console.test.mjs — playwright-core
// driving Debian's headless Chromium — against `walletguard demo`: sign in,
// a theft alert in the queue, the account's takeover chain, unfreeze with a
// reason, the audit entry, the overview and rules pages. Screenshots go to
// console/e2e/screenshots (or $WG_SCREENSHOTS).
func TestConsoleInChromium(t *testing.T) {
	for _, need := range []string{"node", "/usr/bin/chromium"} {
		if _, err := exec.LookPath(need); err != nil {
			t.Fatalf("%s is required (Debian packages nodejs and chromium; the test script installs them)", need)
		}
	}
	if _, err := os.Stat("e2e/node_modules/playwright-core"); err != nil {
		t.Fatal("playwright-core is not installed: npm ci --prefix console/e2e (the test script does it)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "walletguard")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/walletguard").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "demo.yaml")
	os.WriteFile(cfg, []byte(`kafka: {embedded_listen: "127.0.0.1:0"}
http:
  listen: "127.0.0.1:0"
  tokens: [{token: "e2e-admin-token", role: admin, name: e2e}]
`), 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	demo := exec.CommandContext(ctx, bin, "demo", "--accounts", "3000", "--config", cfg, "--data-dir", filepath.Join(dir, "data"))
	stdout, _ := demo.StdoutPipe()
	var demoErr bytes.Buffer
	demo.Stderr = &demoErr
	if err := demo.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { demo.Process.Signal(os.Interrupt); demo.Wait() }()
	// The demo prints the console's address first.
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		re := regexp.MustCompile(`support console: (http://\S+/console/)`)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				urls <- m[1]
			}
		}
	}()
	var url string
	select {
	case url = <-urls:
	case <-time.After(60 * time.Second):
		t.Fatalf("the demo did not print the console address:\n%s", demoErr.String())
	}
	shots := os.Getenv("WG_SCREENSHOTS")
	if shots == "" {
		shots, _ = filepath.Abs("e2e/screenshots")
	}
	node := exec.CommandContext(ctx, "node", "console.test.mjs")
	node.Dir = "e2e"
	node.Env = append(os.Environ(), "WG_URL="+url, "WG_TOKEN=e2e-admin-token", "WG_SCREENSHOTS="+shots)
	out, err := node.CombinedOutput()
	t.Logf("browser test against %s:\n%s", url, out)
	if err != nil || strings.Contains(string(out), "FAIL") {
		t.Fatalf("the console failed in Chromium (%v); screenshots in %s", err, shots)
	}
	for _, f := range []string{"alerts.png", "account.png", "unfrozen.png", "overview.png", "rules.png"} {
		if st, err := os.Stat(filepath.Join(shots, f)); err != nil || st.Size() < 10000 {
			t.Errorf("screenshot %s missing or empty", f)
		}
	}
}
