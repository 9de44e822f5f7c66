package app

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	gojson "github.com/goccy/go-json"
	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/ingest"
	"github.com/walletguard/walletguard/outbox"
)

// Alert delivery: every alert record the pipeline, the scoring API or a
// manual action emits is put, rendered for each receiver that routes it,
// into the outbox in the same transaction that makes the alert durable (the
// pipeline's checkpoint, before the events behind it are committed). A
// worker per receiver delivers it; a receiver over its rate limit gets the
// rest of the minute as one digest.

func alertDest(name string) string  { return "alerts:" + name }
func digestDest(name string) string { return "digest:" + name }

// rateWindow counts a receiver's alerts in the current wall-clock minute.
type rateWindow struct {
	start time.Time
	n     int
}

type deliveryMetrics struct {
	deliveries *prometheus.CounterVec
	retries    *prometheus.CounterVec
	digests    *prometheus.CounterVec
}

func newDeliveryMetrics(reg prometheus.Registerer, box *outbox.Box) *deliveryMetrics {
	m := &deliveryMetrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_deliveries_total", Help: "Outbox deliveries by destination and outcome (delivered, failed, dead).",
		}, []string{"destination", "outcome"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_delivery_retries_total", Help: "Delivery attempts after a first failure, by destination.",
		}, []string{"destination"}),
		digests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_alert_digests_total", Help: "Digests sent to receivers over their rate limit, by receiver.",
		}, []string{"receiver"}),
	}
	reg.MustRegister(m.deliveries, m.retries, m.digests, outboxCollector{box})
	return m
}

// outboxCollector reads the outbox's depth, age and dead letters at scrape time.
type outboxCollector struct{ box *outbox.Box }

var (
	outboxPendingDesc = prometheus.NewDesc("walletguard_outbox_pending", "Records waiting for delivery, by destination.", []string{"destination"}, nil)
	outboxAgeDesc     = prometheus.NewDesc("walletguard_outbox_oldest_age_seconds", "Age of the oldest undelivered record, by destination.", []string{"destination"}, nil)
	outboxDeadDesc    = prometheus.NewDesc("walletguard_outbox_dead_letters", "Records given up on (see GET /v1/alerts/dead-letters), by destination.", []string{"destination"}, nil)
)

func (c outboxCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- outboxPendingDesc
	ch <- outboxAgeDesc
	ch <- outboxDeadDesc
}

func (c outboxCollector) Collect(ch chan<- prometheus.Metric) {
	for dest, s := range c.box.Stats() {
		ch <- prometheus.MustNewConstMetric(outboxPendingDesc, prometheus.GaugeValue, float64(s.Pending), dest)
		ch <- prometheus.MustNewConstMetric(outboxAgeDesc, prometheus.GaugeValue, s.OldestAge.Seconds(), dest)
		ch <- prometheus.MustNewConstMetric(outboxDeadDesc, prometheus.GaugeValue, float64(s.Dead), dest)
	}
}

// delivery is one rendered alert for one receiver's outbox.
type delivery struct {
	dest, id string
	alertID  string
	rev      uint64
	body     []byte
}

// directAlerts remembers, per alert, the revision a manual action last
// wrote straight to the outbox. A version still waiting for (or retrying)
// its checkpoint with a lower revision is older than what receivers already
// have: it is dropped rather than delivered after it, where a receiver
// would see an acknowledged alert open again.
type directAlerts struct {
	mu sync.Mutex
	at map[string]uint64 // alert id -> revision written directly
}

// wrote records list as written directly. Call it before a checkpoint
// write can follow the outbox write (with writeMu held).
func (d *directAlerts) wrote(list []alerts.Alert) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.at == nil || len(d.at) > 100000 { // manual actions are few; keep it bounded
		d.at = map[string]uint64{}
	}
	for _, al := range list {
		d.at[al.AlertID] = max(d.at[al.AlertID], al.Revision())
	}
}

// supersedes reports whether a newer version of al was written directly.
func (d *directAlerts) supersedes(al alerts.Alert) bool {
	return d.superseded(al.AlertID, al.Revision())
}

// superseded reports whether a newer revision of the alert was written directly.
func (d *directAlerts) superseded(id string, rev uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.at[id] > rev
}

// renderAlerts renders list for every receiver that routes it (counting
// receivers' rate limits). Called with procMu held.
func (a *App) renderAlerts(list []alerts.Alert) ([]delivery, error) {
	if len(list) == 0 || len(a.cfg.Alerts.Webhooks) == 0 {
		return nil, nil
	}
	now := time.Now()
	var out []delivery
	for i := range a.cfg.Alerts.Webhooks {
		w := &a.cfg.Alerts.Webhooks[i]
		for j := range list {
			al := &list[j]
			if !alerts.Routes(w, al) {
				continue
			}
			dest := alertDest(w.Name)
			if w.RateLimit > 0 && al.Severity != "critical" {
				rw := a.rates[w.Name]
				if now.Sub(rw.start) >= time.Minute {
					rw = rateWindow{start: now}
				}
				rw.n++
				a.rates[w.Name] = rw
				if rw.n > w.RateLimit {
					dest = digestDest(w.Name)
				}
			}
			var body []byte
			var err error
			if dest == digestDest(w.Name) {
				body, err = gojson.Marshal(al) // the digest is rendered when the minute ends
			} else {
				body, err = alerts.Payload(w.Format, a.tpl, w.Language, []alerts.Alert{*al}, false, a.cfg.Alerts.ConsoleURL)
			}
			if err != nil {
				return nil, fmt.Errorf("render alert %s for %s: %w", al.AlertID, w.Name, err)
			}
			// Each version of an alert (it grows, is acknowledged, resolved)
			// is one delivery; its alert_id stays the same.
			out = append(out, delivery{dest, fmt.Sprintf("%s/%d/%s", al.AlertID, al.UpdatedAt.UnixMilli(), al.Status), al.AlertID, al.Revision(), body})
		}
	}
	return out, nil
}

func (a *App) putDeliveries(tx *bolt.Tx, ds []delivery) error {
	now := time.Now()
	for _, d := range ds {
		if err := a.box.Put(tx, d.dest, d.id, d.body, now); err != nil {
			return err
		}
	}
	return nil
}

// enqueueAlerts renders list and puts it into the outbox, inside tx.
func (a *App) enqueueAlerts(tx *bolt.Tx, list []alerts.Alert) error {
	ds, err := a.renderAlerts(list)
	if err != nil {
		return err
	}
	return a.putDeliveries(tx, ds)
}

// prepareAlerts renders the alerts waiting for the checkpoint; the returned
// function puts them into the outbox inside the checkpoint's transaction.
func (a *App) prepareAlerts() (write func(*bolt.Tx) error, undo func(), err error) {
	list := a.alertQ.take()
	ds, err := a.renderAlerts(list)
	if err != nil {
		a.alertQ.putBack(list) // retried with the next checkpoint
		return nil, nil, err
	}
	write = func(tx *bolt.Tx) error {
		// With writeMu held: a manual action's write is wholly before or after.
		return a.putDeliveries(tx, slices.DeleteFunc(slices.Clone(ds), func(d delivery) bool { return a.direct.superseded(d.alertID, d.rev) }))
	}
	undo = func() {
		a.alertQ.putBack(slices.DeleteFunc(list, a.direct.supersedes))
	}
	return write, undo, nil
}

func (a *App) notifyReceivers() {
	for _, w := range a.cfg.Alerts.Webhooks {
		a.box.Notify(alertDest(w.Name))
	}
}

// deliverAlerts runs a worker per receiver, and the digests, until ctx ends.
func (a *App) deliverAlerts(ctx context.Context) {
	for i := range a.cfg.Alerts.Webhooks {
		w := a.cfg.Alerts.Webhooks[i]
		p := &outbox.Poster{URL: w.URL, Client: a.receivers[alertDest(w.Name)]}
		if w.Format == "json" || w.Secret != "" {
			p.Secret = w.Secret
		}
		// Support hears of a theft at most a minute after its receiver is
		// back, however long it was down.
		go a.box.Deliver(ctx, alertDest(w.Name), p.Send, outbox.Policy{
			MinBackoff: a.deliveryBackoff, MaxBackoff: time.Minute, GiveUpAfter: w.GiveUpAfter.D(),
			Observe: a.observeDelivery(alertDest(w.Name)),
		})
	}
	if !hasRateLimit(a.cfg.Alerts.Webhooks) {
		return
	}
	every(ctx, a.digestEvery, a.sendDigests)
}

// every calls f each period until ctx ends.
func every(ctx context.Context, period time.Duration, f func()) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

func hasRateLimit(ws []config.Webhook) bool {
	for _, w := range ws {
		if w.RateLimit > 0 {
			return true
		}
	}
	return false
}

// sendDigests folds each receiver's held alerts into one delivery.
func (a *App) sendDigests() {
	for i := range a.cfg.Alerts.Webhooks {
		w := &a.cfg.Alerts.Webhooks[i]
		if w.RateLimit == 0 {
			continue
		}
		var sent bool
		err := a.store.DB().Update(func(tx *bolt.Tx) error {
			items, err := a.box.Drain(tx, digestDest(w.Name))
			if err != nil || len(items) == 0 {
				return err
			}
			list := make([]alerts.Alert, 0, len(items))
			for _, it := range items {
				var al alerts.Alert
				if err := gojson.Unmarshal(it.Payload, &al); err != nil {
					return fmt.Errorf("held alert %s: %w", it.ID, err)
				}
				list = append(list, al)
			}
			body, err := alerts.Payload(w.Format, a.tpl, w.Language, list, true, a.cfg.Alerts.ConsoleURL)
			if err != nil {
				return err
			}
			sent = true
			return a.box.Put(tx, alertDest(w.Name), fmt.Sprintf("digest/%s/%d", w.Name, time.Now().UnixNano()), body, time.Now())
		})
		if err != nil {
			a.log.Error("alert digest not built; the held alerts stay queued", "receiver", w.Name, "err", err)
			continue
		}
		if sent {
			a.dlv.digests.WithLabelValues(w.Name).Inc()
			a.box.Notify(alertDest(w.Name))
		}
	}
}

// deadLettered is the outbox's OnDead: it counts the record given up on
// and puts it in the changelog.
func (a *App) deadLettered(k, v []byte) {
	if dest, ok := outbox.KeyDest(k); ok {
		a.dlv.deliveries.WithLabelValues(dest, "dead").Inc()
	}
	if a.clog != nil {
		a.clog.noteDead(v)
	}
}

// pruneDead deletes the dead letters older than alerts.dead_letter_retention
// from the store, and from the changelog with the next checkpoint.
func (a *App) pruneDead(now time.Time) {
	keep := a.cfg.Alerts.DeadLetterRetention.D()
	if keep <= 0 {
		return
	}
	var gone []ingest.Message
	var n int
	err := a.store.DB().Update(func(tx *bolt.Tx) error {
		var err error
		n, err = a.box.PruneDead(tx, now.Add(-keep), 100_000, func(v []byte) {
			if a.clog != nil {
				gone = append(gone, deadRecord(a.clog.topic, v, true))
			}
		})
		return err
	})
	if err != nil {
		a.log.Error("dead letters past their retention not deleted", "err", err)
		return
	}
	if a.clog != nil {
		a.clog.dead.add(gone...)
	}
	a.amet.deadPruned.Add(float64(n))
}

// deadAlerts lists alerts receivers gave up on.
func (a *App) deadAlerts(limit int) []outbox.Item {
	var out []outbox.Item
	for _, it := range a.box.Dead("", 100000) {
		if strings.HasPrefix(it.Dest, "alerts:") {
			out = append(out, it)
			if len(out) == limit {
				break
			}
		}
	}
	return out
}

// receiverClients makes the HTTP client of each webhook and of the account
// service, keyed by outbox destination: a receiver's own TLS (an authority
// of the organisation's, a client certificate) on the system's defaults.
func receiverClients(cfg config.Config) (map[string]*http.Client, error) {
	clients := map[string]*http.Client{}
	add := func(dest, key string, w config.Webhook) error {
		c := &http.Client{Timeout: 10 * time.Second}
		tlsCfg, err := w.TLS.Client()
		if err != nil {
			return fmt.Errorf("%s.%w", key, err)
		}
		if tlsCfg != nil {
			t := http.DefaultTransport.(*http.Transport).Clone()
			t.TLSClientConfig = tlsCfg
			c.Transport = t
		}
		clients[dest] = c
		return nil
	}
	for i, w := range cfg.Alerts.Webhooks {
		if err := add(alertDest(w.Name), fmt.Sprintf("alerts.webhooks[%d]", i), w); err != nil {
			return nil, err
		}
	}
	if svc := cfg.Enforce.AccountService; svc.URL != "" {
		if err := add(destAccountService, "enforce.account_service", svc); err != nil {
			return nil, err
		}
	}
	return clients, nil
}
