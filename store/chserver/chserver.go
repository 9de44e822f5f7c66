// Package chserver starts a throwaway ClickHouse server as a plain process
// on 127.0.0.1, in a temporary directory: the store's tests, the app's and
// the analyst query pack's run against a real server this way.
package chserver

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Server is a running ClickHouse.
type Server struct {
	Addr   string // native protocol, host:port
	Secure string // native protocol over TLS, host:port; empty unless StartTLS
	HTTP   string // host:port
	dir    string
	cmd    *exec.Cmd
	t      testing.TB
}

const users = `<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>::1</ip><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
`

const config = `<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <tcp_port>%d</tcp_port>
  <http_port>%d</http_port>
  <listen_host>127.0.0.1</listen_host>%[4]s
  <path>%[3]s/data/</path>
  <tmp_path>%[3]s/tmp/</tmp_path>
  <user_files_path>%[3]s/user_files/</user_files_path>
  <format_schema_path>%[3]s/format_schemas/</format_schema_path>
  <users_config>%[3]s/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
`

// Binary finds the server: clickhouse-server (Debian) or clickhouse server.
func Binary() ([]string, error) {
	if p, err := exec.LookPath("clickhouse-server"); err == nil {
		return []string{p}, nil
	}
	if p, err := exec.LookPath("clickhouse"); err == nil {
		return []string{p, "server"}, nil
	}
	return nil, fmt.Errorf("clickhouse-server not found (Debian package clickhouse-server; the test script installs it)")
}

// secure is the config of a native port over TLS, as a managed ClickHouse
// serves it.
const secure = `
  <tcp_port_secure>%d</tcp_port_secure>
  <openSSL><server><certificateFile>%s</certificateFile><privateKeyFile>%s</privateKeyFile>
    <verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile>
    <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols></server></openSSL>`

// Start runs a server for the test and stops it when the test ends. A test
// that needs ClickHouse fails without one: it never skips.
func Start(t testing.TB) *Server { return start(t, "", "") }

// StartTLS is Start with a native port over TLS too (Secure), serving the
// certificate and key in the PEM files.
func StartTLS(t testing.TB, certFile, keyFile string) *Server { return start(t, certFile, keyFile) }

func start(t testing.TB, certFile, keyFile string) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{dir: t.TempDir(), t: t}
	tcp, http := freePort(t), freePort(t)
	s.Addr, s.HTTP = "127.0.0.1:"+strconv.Itoa(tcp), "127.0.0.1:"+strconv.Itoa(http)
	if err := os.WriteFile(filepath.Join(s.dir, "users.xml"), []byte(users), 0o644); err != nil {
		t.Fatal(err)
	}
	extra := ""
	if certFile != "" {
		port := freePort(t)
		s.Secure = "127.0.0.1:" + strconv.Itoa(port)
		extra = fmt.Sprintf(secure, port, certFile, keyFile)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "config.xml"), []byte(fmt.Sprintf(config, tcp, http, s.dir, extra)), 0o644); err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(bin[0], append(bin[1:], "--config-file="+filepath.Join(s.dir, "config.xml"))...)
	log, _ := os.Create(filepath.Join(s.dir, "server.log"))
	s.cmd.Stdout, s.cmd.Stderr = log, log
	s.start()
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start clickhouse: %v", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, addr := range []string{s.Addr, s.Secure} {
		for addr != "" {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				b, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
				s.t.Fatalf("clickhouse did not listen on %s within 60s:\n%s", addr, b)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// Stop stops the server (its data stays for Restart).
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil || s.cmd.ProcessState != nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
}

// Restart starts the stopped server again on the same ports and data.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.cmd = exec.Command(s.cmd.Path, s.cmd.Args[1:]...)
	log, _ := os.OpenFile(filepath.Join(s.dir, "server.log"), os.O_APPEND|os.O_WRONLY, 0o644)
	s.cmd.Stdout, s.cmd.Stderr = log, log
	s.start()
}

// Query runs SQL through clickhouse-client (an independent client) and
// returns its TabSeparated output.
func (s *Server) Query(ctx context.Context, sql string) (string, error) {
	_, port, _ := net.SplitHostPort(s.Addr)
	out, err := exec.CommandContext(ctx, "clickhouse-client", "--host", "127.0.0.1", "--port", port, "--multiquery", "-q", sql).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("clickhouse-client: %v: %s", err, out)
	}
	return string(out), nil
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
