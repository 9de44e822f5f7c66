package store

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
	"time"
)

// ReadEvents writes the events of the events table whose time lies in
// [from, to) to w as NDJSON, each line the event as its producer sent it,
// in event-time order (ties by event id): the input of a backtest
// (walletguard replay) over traffic the daemon saw. It reads a day at a
// time, so ClickHouse sorts at most a day of events at once, and returns
// how many it wrote.
func ReadEvents(ctx context.Context, cfg Config, from, to time.Time, w io.Writer) (int, error) {
	conn, err := dial(cfg, 0)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	out := bufio.NewWriterSize(w, 1<<20)
	q := "SELECT raw FROM " + quoteIdent(cfg.Database) + ".events FINAL WHERE ts >= toDateTime(?) AND ts < toDateTime(?) " +
		"AND ts_ms >= ? AND ts_ms < ? ORDER BY ts_ms, event_id"
	// Only the days that hold events: "since" may reach back years.
	var first, last uint32
	if err := conn.QueryRow(ctx, "SELECT toUInt32(min(ts)), toUInt32(max(ts)) FROM "+quoteIdent(cfg.Database)+".events "+
		"WHERE ts >= toDateTime(?) AND ts < toDateTime(?)", from.Unix(), to.Unix()+1).Scan(&first, &last); err != nil {
		return 0, fmt.Errorf("read events from clickhouse %s: %w", cfg.Addr, err)
	}
	if first == 0 && last == 0 {
		return 0, nil // none in the range
	}
	if t := time.Unix(int64(first), 0); t.After(from) {
		from = t
	}
	if t := time.Unix(int64(last)+1, 0); t.Before(to) {
		to = t
	}
	n := 0
	for day := from.UTC().Truncate(24 * time.Hour); day.Before(to); day = day.Add(24 * time.Hour) {
		lo, hi := max(day.UnixMilli(), from.UnixMilli()), min(day.Add(24*time.Hour).UnixMilli(), to.UnixMilli())
		// Seconds bound the partitions read; milliseconds, the events.
		rows, err := conn.Query(ctx, q, lo/1000, (hi+999)/1000, uint64(max(lo, 0)), uint64(max(hi, 0)))
		if err != nil {
			return n, fmt.Errorf("read events of %s from clickhouse %s: %w", day.Format(time.DateOnly), cfg.Addr, err)
		}
		var raw string
		for rows.Next() {
			if err := rows.Scan(&raw); err != nil {
				rows.Close()
				return n, fmt.Errorf("read events of %s: %w", day.Format(time.DateOnly), err)
			}
			// A producer may have sent an event over several lines; JSON
			// allows no raw line break inside a string, so outside them a
			// space reads the same.
			if strings.ContainsAny(raw, "\r\n") {
				raw = strings.NewReplacer("\r", " ", "\n", " ").Replace(raw)
			}
			out.WriteString(raw)
			if err := out.WriteByte('\n'); err != nil { // the reader stopped
				rows.Close()
				return n, fmt.Errorf("write events: %w", err)
			}
			n++
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return n, fmt.Errorf("read events of %s: %w", day.Format(time.DateOnly), err)
		}
	}
	if err := out.Flush(); err != nil {
		return n, fmt.Errorf("write events: %w", err)
	}
	return n, nil
}
