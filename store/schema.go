// Package store owns walletguard's analytics sink in ClickHouse: the schema
// and its versioned migrations, and a Writer that batches events,
// decisions, actions, alert changes and rejected records in its own
// goroutine, spills them to a local spool while ClickHouse is down or slow,
// and writes the spool back in order when it returns. Tables are ReplacingMergeTree keyed by the
// records' own ids, so a row written twice (a redelivery after a crash, a
// spool retried after a timeout that had in fact succeeded) collapses to one:
// queries read with FINAL (or count distinct ids). The schema works on the
// ClickHouse Debian ships (18.16: no LowCardinality, no DateTime64, JOINs
// need ANY/ALL and USING) and on current releases.
package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// migration is one schema step; statements use {db} for the database.
type migration struct {
	version    uint32
	name       string
	statements []string
}

var migrations = []migration{
	{1, "events, decisions, actions, alerts", []string{
		`CREATE TABLE IF NOT EXISTS {db}.events (
			event_id String, type String, ts DateTime, ts_ms UInt64, account_id String,
			device_id String, ip String, country String, channel String, app_version String,
			result String, failure_reason String, method String,
			kind String, amount Int64, currency String, status String, merchant_id String,
			counterparty_id String, counterparty_country String, balance_after Int64,
			payment_id String, attempt UInt32, error_code String, latency_ms Int64,
			change String, raw String, written_at DateTime
		) ENGINE = ReplacingMergeTree(written_at) PARTITION BY toYYYYMMDD(ts) ORDER BY (account_id, ts, event_id)`,
		`CREATE TABLE IF NOT EXISTS {db}.decisions (
			decision_id String, event_id String, account_id String, ts DateTime, ts_ms UInt64,
			score UInt8, action String, trigger String, event_type String,
			merchant_id String, payment_id String, app_version String,
			rule_ids Array(String), rule_scores Array(UInt8), rule_reasons Array(String), rule_categories Array(String),
			rule_actions Array(String), shadow_rule_ids Array(String), downgraded_from String, ruleset_version String, written_at DateTime
		) ENGINE = ReplacingMergeTree(written_at) PARTITION BY toYYYYMMDD(ts) ORDER BY (account_id, ts, decision_id)`,
		`CREATE TABLE IF NOT EXISTS {db}.actions (
			action_id String, at DateTime, at_ms UInt64, action String, origin String, actor String,
			account_id String, reason String, decision_id String, command_id String, outcome String, written_at DateTime
		) ENGINE = ReplacingMergeTree(written_at) PARTITION BY toYYYYMMDD(at) ORDER BY (account_id, at, action_id)`,
		`CREATE TABLE IF NOT EXISTS {db}.alerts (
			alert_id String, dedup_key String, status String, severity String, category String,
			account_id String, merchant_id String, app_version String, ip String,
			title String, summary String, reason String, cause String, action String,
			count UInt32, affected_accounts UInt32, rules Array(String),
			created_at DateTime, updated_at DateTime, updated_ms UInt64, version UInt64,
			acknowledged_by String, acknowledged_at DateTime, resolved_by String, resolved_at DateTime,
			resolution String, grouped_under String, written_at DateTime
		) ENGINE = ReplacingMergeTree(written_at) PARTITION BY toYYYYMMDD(created_at) ORDER BY (alert_id, version)`,
	}},
	// Monthly, keyed by the record's place in Kafka: a record rejected
	// again after a crash has a later rejected_at but the same place.
	{2, "rejected", []string{
		`CREATE TABLE IF NOT EXISTS {db}.rejected (
			source String, source_topic String, source_partition UInt32, source_offset UInt64,
			rejected_at DateTime, rejected_ms UInt64, reason String, field String, detail String,
			record_key String, event_type String, app_version String, channel String,
			value String, value_size UInt32, written_at DateTime
		) ENGINE = ReplacingMergeTree(written_at) PARTITION BY toYYYYMM(rejected_at) ORDER BY (source_topic, source_partition, source_offset)`,
	}},
}

// Migrate creates the database and brings the schema to the newest version,
// recording each step in {db}.schema_migrations. Running it again does
// nothing.
func Migrate(ctx context.Context, conn driver.Conn, db string) (applied []string, err error) {
	q := func(s string) error {
		return conn.Exec(ctx, strings.ReplaceAll(s, "{db}", quoteIdent(db)))
	}
	if err := q("CREATE DATABASE IF NOT EXISTS {db}"); err != nil {
		return nil, fmt.Errorf("create database %s: %w", db, err)
	}
	if err := q(`CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, applied_at DateTime)
		ENGINE = MergeTree() ORDER BY version`); err != nil {
		return nil, fmt.Errorf("create schema_migrations: %w", err)
	}
	var current uint32
	row := conn.QueryRow(ctx, "SELECT toUInt32(max(version)) FROM "+quoteIdent(db)+".schema_migrations")
	if err := row.Scan(&current); err != nil {
		return nil, fmt.Errorf("read schema version: %w", err)
	}
	for _, m := range migrations {
		if m.version <= current {
			continue
		}
		for _, s := range m.statements {
			if err := q(s); err != nil {
				return applied, fmt.Errorf("migration %d (%s): %w", m.version, m.name, err)
			}
		}
		// A batch, not INSERT … VALUES through Exec: ClickHouse 18.16
		// waits for a data block the driver does not send that way.
		if err := recordMigration(ctx, conn, db, m); err != nil {
			return applied, fmt.Errorf("record migration %d: %w", m.version, err)
		}
		applied = append(applied, fmt.Sprintf("%d %s", m.version, m.name))
	}
	return applied, nil
}

// quoteIdent quotes a database name for SQL.
func quoteIdent(s string) string { return "`" + strings.ReplaceAll(s, "`", "") + "`" }

func recordMigration(ctx context.Context, conn driver.Conn, db string, m migration) error {
	b, err := conn.PrepareBatch(ctx, "INSERT INTO "+quoteIdent(db)+".schema_migrations (version, name, applied_at)")
	if err != nil {
		return err
	}
	if err := b.Append(m.version, m.name, time.Now().UTC()); err != nil {
		b.Abort()
		return err
	}
	return b.Send()
}
