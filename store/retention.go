package store

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// retentionEvery is how often the writer looks for partitions past their
// retention: a day's partition expires once a day.
const retentionEvery = time.Hour

// dropExpired drops the partitions of each table whose rows are all older
// than its retention. A partition is a day of the server's time zone (a
// month for rejected records), so one is dropped only a day after its end
// in UTC would allow: no zone is that far off, and nothing younger than the
// retention goes. A failure is logged and tried again at the next look.
func (w *Writer) dropExpired(now time.Time) {
	for _, t := range []struct {
		table string
		keep  time.Duration
	}{
		{TableEvents, w.cfg.Retention}, {TableDecisions, w.cfg.Retention}, {TableAlerts, w.cfg.Retention},
		{TableRejected, w.cfg.Retention}, {TableActions, w.cfg.AuditRetention},
	} {
		if t.keep <= 0 {
			continue
		}
		dropped, err := w.dropBefore(t.table, now.Add(-t.keep))
		if len(dropped) > 0 {
			w.m.dropped.WithLabelValues(t.table).Add(float64(len(dropped)))
			w.log.Info("clickhouse partitions past their retention dropped", "table", t.table, "partitions", dropped, "retention", t.keep.String())
		}
		if err != nil {
			w.log.Warn("clickhouse partitions past their retention not dropped; trying again in an hour", "table", t.table, "err", err)
		}
	}
}

// dropBefore drops the partitions of table that end a day or more before
// cutoff, and returns them.
func (w *Writer) dropBefore(table string, cutoff time.Time) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.WriteTimeout)
	defer cancel()
	rows, err := w.conn.Query(ctx, "SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = ? AND active", w.cfg.Database, table)
	if err != nil {
		return nil, fmt.Errorf("list partitions of %s: %w", table, err)
	}
	var parts []string
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			rows.Close()
			return nil, fmt.Errorf("list partitions of %s: %w", table, err)
		}
		parts = append(parts, p)
	}
	rows.Close()
	var dropped []string
	for _, p := range parts {
		end, ok := partitionEnd(p)
		if !ok || end.Add(24*time.Hour).After(cutoff) {
			continue
		}
		if err := w.conn.Exec(ctx, "ALTER TABLE "+quoteIdent(w.cfg.Database)+"."+quoteIdent(table)+" DROP PARTITION "+p); err != nil {
			return dropped, fmt.Errorf("drop partition %s of %s: %w", p, table, err)
		}
		dropped = append(dropped, p)
	}
	return dropped, nil
}

// partitionEnd reads a partition of the schema's keys — toYYYYMMDD (a day)
// or toYYYYMM (a month) — and returns when it ends, as if in UTC.
func partitionEnd(p string) (time.Time, bool) {
	if _, err := strconv.ParseUint(p, 10, 32); err != nil {
		return time.Time{}, false
	}
	switch len(p) {
	case 8:
		d, err := time.Parse("20060102", p)
		return d.AddDate(0, 0, 1), err == nil
	case 6:
		m, err := time.Parse("200601", p)
		return m.AddDate(0, 1, 0), err == nil
	}
	return time.Time{}, false
}
