package store

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Config configures the Writer.
type Config struct {
	Addr, Database, Username, Password string
	TLS                                *tls.Config // nil: plaintext
	// SpoolDir holds batches ClickHouse could not take; SpoolLimit bounds
	// it (bytes): past it rows are refused, Sync fails and the daemon's
	// checkpoints with it, so the events behind them are read again later.
	SpoolDir   string
	SpoolLimit int64
	BatchRows  int
	FlushEvery time.Duration
	// WriteTimeout bounds one insert: a slow ClickHouse spills instead of
	// holding detection up.
	WriteTimeout time.Duration
	// Retention drops the partitions of events, decisions, alerts and
	// rejected records once all of their rows are older than it;
	// AuditRetention those of actions. 0 keeps them.
	Retention, AuditRetention time.Duration
}

// Batch is rows for the four tables.
type Batch struct {
	Events    []EventRow    `json:"events,omitempty"`
	Decisions []DecisionRow `json:"decisions,omitempty"`
	Actions   []ActionRow   `json:"actions,omitempty"`
	Alerts    []AlertRow    `json:"alerts,omitempty"`
	Rejected  []RejectedRow `json:"rejected,omitempty"`
}

// Len is the number of rows.
func (b *Batch) Len() int {
	return len(b.Events) + len(b.Decisions) + len(b.Actions) + len(b.Alerts) + len(b.Rejected)
}

// ErrSpoolFull means rows were refused because the spool reached its limit.
var ErrSpoolFull = errors.New("analytics spool is full")

// Writer writes batches to ClickHouse from its own goroutine.
type Writer struct {
	cfg Config
	log *slog.Logger
	m   *metrics

	mu      sync.Mutex
	cur     Batch
	room    *sync.Cond // Add waits on it while the batch in memory is too big
	refused error      // rows were refused since the last Sync (spool full)

	kick    chan struct{}
	syncReq chan chan error
	stop    chan struct{}
	done    chan struct{}

	conn       driver.Conn // owned by the loop
	migrated   bool
	spoolSeq   uint64
	spoolBytes atomic.Int64
	spoolFiles atomic.Int64
	lastErr    atomic.Value // string
}

type metrics struct {
	rows     *prometheus.CounterVec
	batchSec prometheus.Histogram
	failures prometheus.Counter
	spooled  prometheus.Counter
	dropped  *prometheus.CounterVec
}

// Open starts a writer. ClickHouse need not be up: rows spool until it is.
func Open(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Writer, error) {
	if cfg.BatchRows <= 0 {
		cfg.BatchRows = 10000
	}
	if cfg.FlushEvery <= 0 {
		cfg.FlushEvery = time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.SpoolLimit <= 0 {
		cfg.SpoolLimit = 2 << 30
	}
	if err := os.MkdirAll(cfg.SpoolDir, 0o750); err != nil {
		return nil, fmt.Errorf("analytics spool: %w", err)
	}
	w := &Writer{cfg: cfg, log: log, kick: make(chan struct{}, 1), syncReq: make(chan chan error), stop: make(chan struct{}), done: make(chan struct{})}
	w.room = sync.NewCond(&w.mu)
	w.lastErr.Store("")
	files, err := w.spoolList()
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		if st, err := os.Stat(f); err == nil {
			w.spoolBytes.Add(st.Size())
			w.spoolFiles.Add(1)
		}
		var seq uint64
		fmt.Sscanf(filepath.Base(f), "%d.json", &seq)
		w.spoolSeq = max(w.spoolSeq, seq)
	}
	f := promauto.With(reg)
	w.m = &metrics{
		rows: f.NewCounterVec(prometheus.CounterOpts{Name: "walletguard_clickhouse_rows_total", Help: "Rows written to ClickHouse, by table."}, []string{"table"}),
		batchSec: f.NewHistogram(prometheus.HistogramOpts{Name: "walletguard_clickhouse_batch_seconds", Help: "Time to write one batch to ClickHouse.",
			Buckets: prometheus.ExponentialBuckets(0.002, 3, 9)}),
		failures: f.NewCounter(prometheus.CounterOpts{Name: "walletguard_clickhouse_write_failures_total", Help: "Batches ClickHouse did not take (they spool)."}),
		dropped: f.NewCounterVec(prometheus.CounterOpts{Name: "walletguard_clickhouse_partitions_dropped_total",
			Help: "Partitions (days; months of rejected records) dropped for being past clickhouse.retention or audit_retention, by table."}, []string{"table"}),
		spooled: f.NewCounter(prometheus.CounterOpts{Name: "walletguard_clickhouse_spooled_batches_total", Help: "Batches written to the local spool."}),
	}
	f.NewGaugeFunc(prometheus.GaugeOpts{Name: "walletguard_clickhouse_spool_bytes", Help: "Bytes waiting in the local spool for ClickHouse."},
		func() float64 { return float64(w.spoolBytes.Load()) })
	f.NewGaugeFunc(prometheus.GaugeOpts{Name: "walletguard_clickhouse_spool_limit_bytes", Help: "Spool size at which rows are refused."},
		func() float64 { return float64(cfg.SpoolLimit) })
	for _, t := range []string{TableEvents, TableDecisions, TableActions, TableAlerts, TableRejected} {
		w.m.rows.WithLabelValues(t)
	}
	go w.loop()
	return w, nil
}

// Add queues rows; it blocks while the rows in memory are far beyond a
// batch (ClickHouse and the spool both slow): back-pressure, not growth.
func (w *Writer) Add(b Batch) {
	if b.Len() == 0 {
		return
	}
	w.mu.Lock()
	for w.cur.Len() >= 8*w.cfg.BatchRows {
		w.room.Wait()
	}
	w.cur.Events = append(w.cur.Events, b.Events...)
	w.cur.Decisions = append(w.cur.Decisions, b.Decisions...)
	w.cur.Actions = append(w.cur.Actions, b.Actions...)
	w.cur.Alerts = append(w.cur.Alerts, b.Alerts...)
	w.cur.Rejected = append(w.cur.Rejected, b.Rejected...)
	full := w.cur.Len() >= w.cfg.BatchRows
	w.mu.Unlock()
	if full {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
}

// Sync returns once every row added before it is in ClickHouse or the
// spool; an error means some were refused (spool full) since the last Sync.
func (w *Writer) Sync(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case w.syncReq <- reply:
	case <-ctx.Done():
		return ctx.Err()
	case <-w.done:
		return errors.New("analytics writer is closed")
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SpoolBytes is the size of the spool.
func (w *Writer) SpoolBytes() int64 { return w.spoolBytes.Load() }

// LastError is the last write failure ("" after a success).
func (w *Writer) LastError() string { return w.lastErr.Load().(string) }

// Close writes what is queued (or spools it) and stops.
func (w *Writer) Close(ctx context.Context) error {
	err := w.Sync(ctx)
	close(w.stop)
	<-w.done
	if w.conn != nil {
		w.conn.Close()
	}
	return err
}

func (w *Writer) loop() {
	defer close(w.done)
	t := time.NewTicker(w.cfg.FlushEvery)
	defer t.Stop()
	var expired time.Time // when partitions were last looked over
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
			w.flush()
			if w.conn != nil && time.Since(expired) >= retentionEvery {
				expired = time.Now()
				w.dropExpired(expired)
			}
		case <-w.kick:
			w.flush()
		case reply := <-w.syncReq:
			err := w.flush()
			w.mu.Lock()
			if w.refused != nil {
				err = w.refused
				w.refused = nil
			}
			w.mu.Unlock()
			reply <- err
		}
	}
}

// flush writes the spool (oldest first) and then the rows in memory; what
// ClickHouse does not take goes to the spool, keeping the order.
func (w *Writer) flush() error {
	w.mu.Lock()
	b := w.cur
	w.cur = Batch{}
	w.room.Broadcast()
	w.mu.Unlock()
	if w.spoolFiles.Load() > 0 {
		if err := w.drainSpool(); err != nil {
			return w.spill(&b)
		}
	}
	if b.Len() == 0 {
		return nil
	}
	if err := w.write(&b); err != nil {
		return w.spill(&b)
	}
	return nil
}

// dial opens a connection to cfg's server, waiting up to readTimeout for
// an answer (0: the driver's default). The database may not exist yet:
// it connects to default, and queries name tables in full.
func dial(cfg Config, readTimeout time.Duration) (driver.Conn, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        []string{cfg.Addr},
		Auth:        clickhouse.Auth{Database: "default", Username: cfg.Username, Password: cfg.Password},
		DialTimeout: 3 * time.Second, ReadTimeout: readTimeout, TLS: cfg.TLS,
		// Blocks travel LZ4-compressed both ways, as clickhouse-client sends
		// them: rows of events and decisions are repetitive text, and the
		// server may be a network away.
		Compression: &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse %s: %w", cfg.Addr, err)
	}
	return conn, nil
}

func (w *Writer) connect(ctx context.Context) error {
	if w.conn == nil {
		conn, err := dial(w.cfg, w.cfg.WriteTimeout)
		if err != nil {
			return err
		}
		w.conn = conn
	}
	if !w.migrated {
		applied, err := Migrate(ctx, w.conn, w.cfg.Database)
		if err != nil {
			return err
		}
		if len(applied) > 0 {
			w.log.Info("clickhouse schema migrated", "database", w.cfg.Database, "applied", strings.Join(applied, "; "))
		}
		w.migrated = true
	}
	return nil
}

func (w *Writer) write(b *Batch) error {
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.WriteTimeout)
	defer cancel()
	start := time.Now()
	err := w.connect(ctx)
	if err == nil {
		err = errors.Join(
			insert(ctx, w, TableEvents, b.Events),
			insert(ctx, w, TableDecisions, b.Decisions),
			insert(ctx, w, TableActions, b.Actions),
			insert(ctx, w, TableAlerts, b.Alerts),
			insert(ctx, w, TableRejected, b.Rejected))
	}
	if err != nil {
		w.m.failures.Inc()
		if msg := err.Error(); msg != w.LastError() {
			w.log.Warn("clickhouse write failed; rows spool locally until it is back", "err", err)
			w.lastErr.Store(msg)
		}
		if w.conn != nil {
			w.conn.Close() // reconnect next time: the old connection may be half dead
			w.conn = nil
		}
		return err
	}
	if w.LastError() != "" {
		w.log.Info("clickhouse writes succeed again")
		w.lastErr.Store("")
	}
	w.m.batchSec.Observe(time.Since(start).Seconds())
	return nil
}

type row interface{ values() []any }

func insert[T any, P interface {
	*T
	row
}](ctx context.Context, w *Writer, table string, rows []T) error {
	if len(rows) == 0 {
		return nil
	}
	q := fmt.Sprintf("INSERT INTO %s.%s (%s)", quoteIdent(w.cfg.Database), table, strings.Join(columns[table], ", "))
	batch, err := w.conn.PrepareBatch(ctx, q)
	if err != nil {
		return fmt.Errorf("insert into %s: %w", table, err)
	}
	for i := range rows {
		if err := batch.Append(P(&rows[i]).values()...); err != nil {
			batch.Abort()
			return fmt.Errorf("insert into %s: row %d: %w", table, i, err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("insert into %s: %w", table, err)
	}
	w.m.rows.WithLabelValues(table).Add(float64(len(rows)))
	return nil
}

func (w *Writer) spoolList() ([]string, error) {
	files, err := filepath.Glob(filepath.Join(w.cfg.SpoolDir, "*.json"))
	if err != nil {
		return nil, err
	}
	slices.Sort(files) // zero-padded sequence numbers: oldest first
	return files, nil
}

// spill writes b to the spool (fsynced, then renamed into place).
func (w *Writer) spill(b *Batch) error {
	if b.Len() == 0 {
		return nil
	}
	data, err := json.Marshal(b)
	if err != nil {
		return fmt.Errorf("encode spool batch: %w", err)
	}
	if w.spoolBytes.Load()+int64(len(data)) > w.cfg.SpoolLimit {
		w.mu.Lock()
		w.refused = fmt.Errorf("%w (%d bytes, limit %d): %d rows refused", ErrSpoolFull, w.spoolBytes.Load(), w.cfg.SpoolLimit, b.Len())
		err := w.refused
		w.mu.Unlock()
		w.log.Error("analytics spool full: rows refused; checkpoints wait until ClickHouse takes the spool", "rows", b.Len())
		return err
	}
	w.spoolSeq++
	name := filepath.Join(w.cfg.SpoolDir, fmt.Sprintf("%020d.json", w.spoolSeq))
	if err := writeFileSync(name, data); err != nil {
		w.mu.Lock()
		w.refused = fmt.Errorf("write analytics spool: %w", err)
		err = w.refused
		w.mu.Unlock()
		return err
	}
	w.spoolBytes.Add(int64(len(data)))
	w.spoolFiles.Add(1)
	w.m.spooled.Inc()
	return nil
}

func writeFileSync(name string, data []byte) error {
	tmp := name + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}

// drainSpool writes spooled batches, oldest first, removing each once
// ClickHouse took it; it stops at the first failure.
func (w *Writer) drainSpool() error {
	files, err := w.spoolList()
	if err != nil {
		return err
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var b Batch
		if err := json.Unmarshal(data, &b); err != nil {
			// A damaged file cannot be retried into shape: keep it aside
			// for a person, and go on with the rest.
			w.log.Error("damaged analytics spool file set aside", "file", f, "err", err)
			os.Rename(f, f+".damaged")
			w.spoolBytes.Add(-int64(len(data)))
			w.spoolFiles.Add(-1)
			continue
		}
		if err := w.write(&b); err != nil {
			return err
		}
		if err := os.Remove(f); err != nil {
			return err
		}
		w.spoolBytes.Add(-int64(len(data)))
		w.spoolFiles.Add(-1)
	}
	return nil
}
