package app

import (
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/internal/testcert"
)

// TestReceiversOverMutualTLS: the support system and the account service
// sit behind the organisation's own authority and take only clients with a
// certificate it signed. With alerts.webhooks[].tls and
// enforce.account_service.tls naming the authority and walletguard's
// certificate, the takeover's alert and freeze arrive; a receiver
// configured without the certificate gets nothing and its alerts wait in
// the outbox.
func TestReceiversOverMutualTLS(t *testing.T) {
	dir := t.TempDir()
	certs := testcert.New(t, dir)
	var mu sync.Mutex
	got := map[string]int{} // path → requests that passed the handshake
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		got[r.URL.Path]++
		mu.Unlock()
	}), TLSConfig: &tls.Config{Certificates: certs.Server.Certificates, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: certs.CA},
		ErrorLog: log.New(io.Discard, "", 0)} // the refused handshakes
	go srv.ServeTLS(ln, "", "")
	defer srv.Close()
	base := "https://" + ln.Addr().String()
	mtls := config.TLS{Enabled: true, CAFile: certs.CAFile, CertFile: certs.ClientCertFile, KeyFile: certs.ClientKey}

	cfg := enforceConfig(t, dir)
	cfg.Alerts.Webhooks = []config.Webhook{
		{Name: "support", URL: base + "/alerts", Secret: "hook-secret", TLS: mtls},
		{Name: "nocert", URL: base + "/nocert", Secret: "hook-secret", TLS: config.TLS{Enabled: true, CAFile: certs.CAFile}},
	}
	cfg.Enforce.AccountService = config.Webhook{URL: base + "/commands", Secret: "svc-secret", TLS: mtls}
	r := run(t, mustNew(t, cfg, Options{DeliveryBackoff: 50 * time.Millisecond}))
	addr := r.app.HTTPAddr()
	produce(t, r.app.BrokerAddr(), "wallet.events", takeoverEvents(t)...)
	waitFor(t, 30*time.Second, "the alert and the freeze delivered over mutual TLS", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return got["/alerts"] > 0 && got["/commands"] > 0
	})
	waitFor(t, 10*time.Second, "the receiver without a certificate refused", func() bool {
		return metric(t, addr, `walletguard_deliveries_total{destination="alerts:nocert",outcome="failed"}`) > 0
	})
	mu.Lock()
	defer mu.Unlock()
	if got["/nocert"] != 0 {
		t.Errorf("%d deliveries reached the receiver without a client certificate", got["/nocert"])
	}
	if n := metric(t, addr, `walletguard_outbox_pending{destination="alerts:nocert"}`); n == 0 {
		t.Error("the refused receiver's alerts are not waiting in the outbox")
	}
}
