package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/walletguard/walletguard/app"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/rules"
)

// metricNames are the series walletguard's code exports.
func metricNames(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	re := regexp.MustCompile(`"(walletguard_[a-z0-9_]+)"`)
	filepath.WalkDir("../..", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() && (d.Name() == ".git" || d.Name() == "deploy") {
			return filepath.SkipDir
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, _ := os.ReadFile(path)
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			names[m[1]] = true
		}
		return nil
	})
	if len(names) < 30 {
		t.Fatalf("found only %d metric names in the code", len(names))
	}
	return names
}

// checkMetrics fails for a walletguard_ series in text that the code does not export.
func checkMetrics(t *testing.T, file, text string, names map[string]bool) {
	t.Helper()
	for _, m := range regexp.MustCompile(`walletguard_[a-z0-9_]+`).FindAllString(text, -1) {
		base := m
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if strings.HasSuffix(m, suf) && names[strings.TrimSuffix(m, suf)] {
				base = strings.TrimSuffix(m, suf)
			}
		}
		if !names[base] {
			t.Errorf("%s names %s, which walletguard does not export", file, m)
		}
	}
}

func yamlDocs(t *testing.T, file string) []map[string]any {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var docs []map[string]any
	dec := yaml.NewDecoder(f)
	for {
		var d map[string]any
		if err := dec.Decode(&d); err != nil {
			if err.Error() == "EOF" {
				return docs
			}
			t.Fatalf("%s is not valid YAML: %v", file, err)
		}
		docs = append(docs, d)
	}
}

// checkArgs fails unless args are a walletguard command with flags it has.
func checkArgs(t *testing.T, where string, args []string) string {
	t.Helper()
	if len(args) < 1 || args[0] != "run" {
		t.Fatalf("%s runs %v, want walletguard run", where, args)
	}
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	cfg := fs.String("config", "", "")
	fs.SetOutput(new(strings.Builder))
	if err := fs.Parse(args[1:]); err != nil {
		t.Fatalf("%s passes flags walletguard run does not have: %v", where, err)
	}
	return *cfg
}

func setSecrets(t *testing.T) {
	for _, n := range []string{"WALLETGUARD_ADMIN_TOKEN", "WALLETGUARD_SUPPORT_TOKEN", "WALLETGUARD_GATEWAY_TOKEN", "WALLETGUARD_VIEWER_TOKEN",
		"WALLETGUARD_WEBHOOK_SECRET", "WALLETGUARD_ACCOUNT_SERVICE_SECRET"} {
		t.Setenv(n, "x-"+strings.ToLower(n))
	}
	t.Setenv("POD_IP", "10.1.2.3") // the StatefulSet's, from the pod's status
}

func get(m map[string]any, path ...string) any {
	var v any = m
	for _, p := range path {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[p]
	}
	return v
}

// TestDeployManifestsMatchTheCode: every manifest is valid YAML (or JSON)
// and names only commands, flags, ports, paths, probes and metrics that
// exist; the probes answer on a running daemon.
func TestDeployManifestsMatchTheCode(t *testing.T) {
	setSecrets(t)
	names := metricNames(t)

	// Kubernetes.
	var cfg config.Config
	probes := map[string]bool{"/metrics": true}
	mounts := map[string]string{}
	var containerPort int
	for _, d := range yamlDocs(t, "../../deploy/kubernetes/walletguard.yaml") {
		switch d["kind"] {
		case "ConfigMap":
			data := d["data"].(map[string]any)
			var err error
			if cfg, err = config.Parse([]byte(data["walletguard.yaml"].(string))); err != nil {
				t.Fatalf("ConfigMap walletguard.yaml: %v", err)
			}
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "rules.yaml"), []byte(data["rules.yaml"].(string)), 0o644)
			if _, err := rules.Load([]string{dir}); err != nil {
				t.Errorf("ConfigMap rules.yaml: %v", err)
			}
		case "StatefulSet":
			c := get(d, "spec", "template", "spec")
			ctr := c.(map[string]any)["containers"].([]any)[0].(map[string]any)
			var args []string
			for _, a := range ctr["args"].([]any) {
				args = append(args, a.(string))
			}
			mounts["config"] = checkArgs(t, "StatefulSet", args)
			containerPort = ctr["ports"].([]any)[0].(map[string]any)["containerPort"].(int)
			podIP := false
			for _, e := range ctr["env"].([]any) {
				podIP = podIP || e.(map[string]any)["name"] == "POD_IP" && get(e.(map[string]any), "valueFrom", "fieldRef", "fieldPath") == "status.podIP"
			}
			if !podIP {
				t.Error("StatefulSet: no POD_IP from status.podIP, which http.advertise names")
			}
			for _, p := range []string{"readinessProbe", "livenessProbe"} {
				probes[get(ctr, p, "httpGet", "path").(string)] = true
			}
			for _, v := range ctr["volumeMounts"].([]any) {
				vm := v.(map[string]any)
				mounts[vm["name"].(string)+":mount"] = vm["mountPath"].(string)
			}
		case "ServiceMonitor":
			ep := get(d, "spec", "endpoints").([]any)[0].(map[string]any)
			probes[ep["path"].(string)] = true
		}
	}
	if mounts["config"] != mounts["config:mount"] {
		t.Errorf("walletguard reads %s, the ConfigMap is mounted at %s", mounts["config"], mounts["config:mount"])
	}
	if cfg.DataDir != mounts["data:mount"] || len(cfg.Rules.Paths) != 1 || cfg.Rules.Paths[0] != mounts["rules:mount"] ||
		filepath.Dir(cfg.Enforce.TOTP.KeyFile) != mounts["secrets:mount"] {
		t.Errorf("config paths (data %s, rules %v, TOTP key %s) do not match the mounts %v", cfg.DataDir, cfg.Rules.Paths, cfg.Enforce.TOTP.KeyFile, mounts)
	}
	if host, port, _ := net.SplitHostPort(cfg.HTTP.Advertise); host != "10.1.2.3" || port != "8080" {
		t.Errorf("http.advertise %q: want the pod's IP and the container port", cfg.HTTP.Advertise)
	}
	if _, port, _ := net.SplitHostPort(cfg.HTTP.Listen); port != "8080" || containerPort != 8080 {
		t.Errorf("http.listen %s vs containerPort %d", cfg.HTTP.Listen, containerPort)
	}

	// systemd, container, compose.
	unit, _ := os.ReadFile("../../deploy/systemd/walletguard.service")
	exec := regexp.MustCompile(`(?m)^ExecStart=/usr/local/bin/walletguard (.*)$`).FindSubmatch(unit)
	if exec == nil || !strings.Contains(string(unit), "ExecReload=/bin/kill -HUP $MAINPID") {
		t.Fatal("walletguard.service lacks ExecStart or the SIGHUP reload")
	}
	checkArgs(t, "walletguard.service", strings.Fields(string(exec[1])))
	for _, want := range []string{"NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=walletguard", "User=walletguard"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("walletguard.service lacks %s", want)
		}
	}
	docker, _ := os.ReadFile("../../deploy/container/Dockerfile")
	cmdLine := regexp.MustCompile(`(?m)^CMD (\[.*\])$`).FindSubmatch(docker)
	var dockerArgs []string
	if cmdLine == nil || json.Unmarshal(cmdLine[1], &dockerArgs) != nil {
		t.Fatal("Dockerfile lacks a JSON CMD")
	}
	checkArgs(t, "Dockerfile", dockerArgs)
	if !strings.Contains(string(docker), "EXPOSE 8080") || !strings.Contains(string(docker), "USER nonroot") {
		t.Error("Dockerfile must expose 8080 and run as nonroot")
	}
	compose := yamlDocs(t, "../../deploy/compose/compose.yaml")[0]
	var composeArgs []string
	for _, a := range get(compose, "services", "walletguard", "command").([]any) {
		composeArgs = append(composeArgs, a.(string))
	}
	checkArgs(t, "compose.yaml", composeArgs)
	t.Setenv("WALLETGUARD_TOTP_KEY", strings.Repeat("0", 64))
	if _, err := config.Load("../../deploy/compose/walletguard.yaml"); err != nil {
		t.Errorf("compose walletguard.yaml: %v", err)
	}

	// Prometheus rules and the Grafana dashboard use exported series only.
	prom, _ := os.ReadFile("../../deploy/prometheus/walletguard.rules.yml")
	yamlDocs(t, "../../deploy/prometheus/walletguard.rules.yml")
	checkMetrics(t, "walletguard.rules.yml", string(prom), names)
	dash, _ := os.ReadFile("../../deploy/grafana/walletguard.json")
	var d map[string]any
	if err := json.Unmarshal(dash, &d); err != nil {
		t.Fatalf("walletguard.json: %v", err)
	}
	checkMetrics(t, "walletguard.json", string(dash), names)
	checkPanels(t, d)
	// Every alert has a runbook section.
	runbook, _ := os.ReadFile("../../docs/runbook.md")
	for _, m := range regexp.MustCompile(`alert: (\w+)`).FindAllStringSubmatch(string(prom), -1) {
		if !strings.Contains(string(runbook), "## "+m[1]) {
			t.Errorf("docs/runbook.md has no section for %s", m[1])
		}
	}

	// The probes and the metrics path answer on a running daemon.
	rc := config.Default()
	rc.DataDir = t.TempDir()
	rc.Kafka.EmbeddedListen, rc.HTTP.Listen = "127.0.0.1:0", "127.0.0.1:0"
	rc.Alerts.Webhooks = []config.Webhook{{URL: "http://127.0.0.1:1/hook", Secret: "s", Name: "support"}}
	if err := rc.Validate(); err != nil {
		t.Fatal(err)
	}
	a, err := app.New(rc, slog.New(slog.DiscardHandler), app.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for p := range probes {
		deadline := time.Now().Add(20 * time.Second)
		for {
			resp, err := http.Get("http://" + a.HTTPAddr() + p)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Errorf("probe %s does not answer 200", p)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// promtool lints a live scrape: names, types, help texts.
	promtool, err := osexec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is required (Debian package prometheus; the test script installs it)")
	}
	resp, err := http.Get("http://" + a.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	scrape, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	lint := osexec.Command(promtool, "check", "metrics")
	lint.Stdin = bytes.NewReader(scrape)
	if out, err := lint.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(scrape), "\n") {
		if strings.HasPrefix(line, "# TYPE walletguard_") {
			if n := strings.Fields(line)[2]; !names[n] {
				t.Errorf("the daemon exports %s, which the name scan of the code missed", n)
			}
		}
	}
}

// TestBenchRuns runs `walletguard bench` small, on its embedded broker and
// on a broker process of its own (--brokers, where it creates the run's
// topic first): every stage reports a number.
func TestBenchRuns(t *testing.T) {
	bin := buildBinary(t)
	// A setting the daemon would refuse is refused before minutes of
	// traffic are generated.
	out, err := osexec.Command(bin, "bench", "--checkpoint-interval", "0s").CombinedOutput()
	var exit *osexec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "--checkpoint-interval") {
		t.Errorf("bench --checkpoint-interval 0s: %v\n%s", err, out)
	}
	// Checkpoints every 50 ms on the embedded broker: the run reports what
	// they wrote. Any decision counts as a stall there, so the first is
	// traced.
	stallTrace := filepath.Join(t.TempDir(), "stall.trace")
	for _, extra := range [][]string{{"--checkpoint-interval", "50ms", "--stall-trace", stallTrace, "--stall-over", "1ns"}, {"--brokers", startBroker(t, bin), "--partitions", "4"}} {
		args := append([]string{"bench", "--accounts", "5000", "--events", "30000", "--latency-seconds", "3"}, extra...)
		out, err := osexec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("walletguard %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		for _, want := range []string{"bare kafka-go reader + decode:", "of CPU per event (this process", "walletguard end to end", "event-to-decision latency at", "p99.9", "bytes per account"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("bench %v output lacks %q:\n%s", extra, want, out)
			}
		}
		if m := regexp.MustCompile(`detection state: (\d+) bytes per account`).FindSubmatch(out); m == nil {
			t.Errorf("no positive state size in:\n%s", out)
		}
		// Where the run's time went: shares of the run that add up to at
		// most all of it (each rounded), and a process that used some CPU.
		m := regexp.MustCompile(`pipeline deciding (\d+)% of the run, waiting for its outputs to be written (\d+)%; the process used ([0-9.]+) of \d+ CPUs`).FindSubmatch(out)
		if m == nil {
			t.Errorf("bench %v does not say what limited the run:\n%s", extra, out)
			continue
		}
		deciding, _ := strconv.Atoi(string(m[1]))
		waiting, _ := strconv.Atoi(string(m[2]))
		cpus, _ := strconv.ParseFloat(string(m[3]), 64)
		if deciding+waiting > 102 || cpus <= 0 {
			t.Errorf("bench %v: pipeline deciding %d%% and waiting %d%% of the run, with %v CPUs used", extra, deciding, waiting, cpus)
		}
		m = regexp.MustCompile(`checkpoints wrote \d+ MB of state files, and merging them \d+ MB more: (\d+) bytes per event`).FindSubmatch(out)
		if m == nil {
			t.Errorf("bench %v does not say what checkpoints wrote:\n%s", extra, out)
		} else if n, _ := strconv.Atoi(string(m[1])); extra[0] == "--checkpoint-interval" && n == 0 {
			t.Errorf("bench %v: checkpoints every 50 ms wrote nothing:\n%s", extra, out)
		}
		if slices.Contains(extra, "--stall-trace") {
			if !strings.Contains(string(out), "first stall: an event produced") || !strings.Contains(string(out), "go tool trace "+stallTrace) {
				t.Errorf("bench %v does not name its stall trace:\n%s", extra, out)
			}
			// An execution trace opens with its Go version.
			if b, err := os.ReadFile(stallTrace); err != nil || !bytes.HasPrefix(b, []byte("go 1.")) {
				t.Errorf("stall trace: %v, %d bytes, starting %q", err, len(b), b[:min(len(b), 16)])
			}
		}
	}
}

// checkPanels: Grafana places a panel by its gridPos, four numbers on a
// 24-column grid; anything else there (a value mapping pasted into "w" once)
// leaves the panel without a place. Panels must not overlap either.
func checkPanels(t *testing.T, dash map[string]any) {
	t.Helper()
	panels, _ := dash["panels"].([]any)
	if len(panels) == 0 {
		t.Fatal("walletguard.json: no panels")
	}
	type box struct{ x, y, w, h float64 }
	var placed []box
	ids := map[float64]bool{}
	for _, p := range panels {
		p := p.(map[string]any)
		title, _ := p["title"].(string)
		id, _ := p["id"].(float64)
		if ids[id] {
			t.Errorf("walletguard.json: panel %q reuses id %v", title, id)
		}
		ids[id] = true
		g, _ := p["gridPos"].(map[string]any)
		var b box
		for k, dst := range map[string]*float64{"x": &b.x, "y": &b.y, "w": &b.w, "h": &b.h} {
			v, ok := g[k].(float64)
			if !ok {
				t.Errorf("walletguard.json: panel %q has gridPos.%s = %v, want a number", title, k, g[k])
			}
			*dst = v
		}
		if b.w <= 0 || b.h <= 0 || b.x < 0 || b.x+b.w > 24 {
			t.Errorf("walletguard.json: panel %q at %+v does not fit the 24-column grid", title, b)
		}
		for _, o := range placed {
			if b.x < o.x+o.w && o.x < b.x+b.w && b.y < o.y+o.h && o.y < b.y+b.h {
				t.Errorf("walletguard.json: panel %q at %+v overlaps another at %+v", title, b, o)
			}
		}
		placed = append(placed, b)
	}
}
