package app

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/rules"
)

// heldAlerts exports walletguard_alerts_held: the alerts this instance
// holds, by status and severity — support's queue, which
// WalletguardCriticalAlertsWaiting watches. Counting walks every alert
// under the pipeline's lock (a few milliseconds per 100,000 held), so a
// count serves every scrape within heldAlertsEvery.
type heldAlerts struct {
	a    *App
	desc *prometheus.Desc

	mu     sync.Mutex
	at     time.Time
	counts map[string]map[string]int
}

const heldAlertsEvery = 10 * time.Second

func registerHeldAlerts(a *App) {
	a.reg.MustRegister(&heldAlerts{a: a, desc: prometheus.NewDesc("walletguard_alerts_held",
		"Support alerts this instance holds, by status (open: nobody has acknowledged it yet) and severity.",
		[]string{"status", "severity"}, nil)})
}

func (h *heldAlerts) Describe(ch chan<- *prometheus.Desc) { ch <- h.desc }

func (h *heldAlerts) Collect(ch chan<- prometheus.Metric) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.counts == nil || time.Since(h.at) >= heldAlertsEvery {
		h.a.procMu.Lock()
		h.counts = h.a.proc.Alerts.Held()
		h.a.procMu.Unlock()
		h.at = time.Now()
	}
	// Every pair, zeros too: a rule over the queue sees it empty rather
	// than absent.
	for _, st := range alerts.Statuses {
		for _, sev := range rules.Severities() {
			ch <- prometheus.MustNewConstMetric(h.desc, prometheus.GaugeValue, float64(h.counts[st][sev]), st, sev)
		}
	}
}
