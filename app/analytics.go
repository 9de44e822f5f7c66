package app

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/store"
)

// openSink starts the ClickHouse writer when clickhouse.addr is set.
func (a *App) openSink() error {
	ch := a.cfg.ClickHouse
	if ch.Addr == "" {
		return nil
	}
	w, err := openStore(ch, filepath.Join(a.cfg.DataDir, "spool"), a.log, a.reg)
	if err != nil {
		return err
	}
	a.sink = w
	return nil
}

// openStore starts a ClickHouse writer as ch says, spooling in spoolDir.
func openStore(ch config.ClickHouse, spoolDir string, log *slog.Logger, reg prometheus.Registerer) (*store.Writer, error) {
	cfg, err := StoreConfig(ch)
	if err != nil {
		return nil, err
	}
	cfg.SpoolDir = spoolDir
	w, err := store.Open(cfg, log, reg)
	if err != nil {
		return nil, fmt.Errorf("clickhouse: %w", err)
	}
	return w, nil
}

// StoreConfig is the analytics store's side of the clickhouse settings.
func StoreConfig(ch config.ClickHouse) (store.Config, error) {
	tlsCfg, err := ch.TLS.Client()
	if err != nil {
		return store.Config{}, fmt.Errorf("clickhouse.%w", err)
	}
	return store.Config{Addr: ch.Addr, Database: ch.Database, Username: ch.Username, Password: ch.Password, TLS: tlsCfg,
		SpoolLimit: int64(ch.SpoolLimitMB) << 20, BatchRows: ch.BatchRows,
		FlushEvery: ch.FlushInterval.D(), WriteTimeout: ch.WriteTimeout.D(),
		Retention: ch.Retention.D(), AuditRetention: ch.AuditRetention.D()}, nil
}

// toSink hands what one event (or action) produced to the analytics
// writer. Called with procMu held, so the planner's audit is ours to take.
func (a *App) toSink(ev *event.Event, raw []byte, ds []detector.Decision, als []alerts.Alert, audit []enforce.AuditEntry) {
	if a.sink == nil {
		return
	}
	b := sinkBatch(ev, raw, ds, als, append(audit, a.proc.Planner.TakeAudit()...))
	a.sink.Add(b)
}

// syncSink makes the rows of everything a checkpoint covers durable (in
// ClickHouse or the spool) before the checkpoint is written, and raises an
// alert when the spool grows past its threshold.
func (a *App) syncSink(ctx context.Context) error {
	if a.sink == nil {
		return nil
	}
	if err := a.sink.Sync(ctx); err != nil {
		return fmt.Errorf("analytics: %w", err)
	}
	spool, limit := a.sink.SpoolBytes(), int64(a.cfg.ClickHouse.SpoolAlertMB)<<20
	switch {
	case spool > limit && !a.spoolAlerted:
		a.spoolAlerted = true
		a.procMu.Lock()
		out := a.proc.Alerts.Raise("system|analytics-spool", "analytics_spool", "high", "",
			fmt.Sprintf("ClickHouse has not taken rows for a while (%s); %d MB wait in the local spool (alert at %d MB, rows refused at %d MB)",
				a.sink.LastError(), spool>>20, a.cfg.ClickHouse.SpoolAlertMB, a.cfg.ClickHouse.SpoolLimitMB), time.Now(), nil)
		a.toSink(nil, nil, nil, out, nil)
		a.procMu.Unlock()
		a.countAlerts(out)
		a.alertQ.add(out)
	case spool < limit/2:
		a.spoolAlerted = false
	}
	return nil
}
