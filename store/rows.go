package store

import (
	"encoding/json"
	"math"
	"time"
	"unicode/utf8"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/ingest"
)

// Table names and their insert columns (named explicitly: ClickHouse 18.16
// needs the list for batch inserts, and a newer schema with added columns
// keeps accepting old writers).
const (
	TableEvents    = "events"
	TableDecisions = "decisions"
	TableActions   = "actions"
	TableAlerts    = "alerts"
	TableRejected  = "rejected"
)

var columns = map[string][]string{
	TableEvents: {"event_id", "type", "ts", "ts_ms", "account_id", "device_id", "ip", "country", "channel", "app_version",
		"result", "failure_reason", "method", "kind", "amount", "currency", "status", "merchant_id", "counterparty_id",
		"counterparty_country", "balance_after", "payment_id", "attempt", "error_code", "latency_ms", "change", "raw", "written_at"},
	TableDecisions: {"decision_id", "event_id", "account_id", "ts", "ts_ms", "score", "action", "trigger", "event_type",
		"merchant_id", "payment_id", "app_version", "rule_ids", "rule_scores", "rule_reasons", "rule_categories",
		"rule_actions", "shadow_rule_ids", "downgraded_from", "ruleset_version", "written_at"},
	TableActions: {"action_id", "at", "at_ms", "action", "origin", "actor", "account_id", "reason", "decision_id", "command_id",
		"outcome", "written_at"},
	TableAlerts: {"alert_id", "dedup_key", "status", "severity", "category", "account_id", "merchant_id", "app_version", "ip",
		"title", "summary", "reason", "cause", "action", "count", "affected_accounts", "rules", "created_at", "updated_at",
		"updated_ms", "version", "acknowledged_by", "acknowledged_at", "resolved_by", "resolved_at", "resolution", "grouped_under", "written_at"},
	TableRejected: {"source", "source_topic", "source_partition", "source_offset", "rejected_at", "rejected_ms", "reason", "field",
		"detail", "record_key", "event_type", "app_version", "channel", "value", "value_size", "written_at"},
}

// EventRow is one event as analysts see it: common fields as columns, the
// original JSON in raw.
type EventRow struct {
	EventID, Type                                    string
	TS                                               time.Time
	TSms                                             uint64
	AccountID, DeviceID, IP, Country, Channel, AppV  string
	Result, FailureReason, Method, Kind              string
	Amount                                           int64
	Currency, Status, MerchantID, Counterparty, CCty string
	BalanceAfter                                     int64
	PaymentID                                        string
	Attempt                                          uint32
	ErrorCode                                        string
	LatencyMS                                        int64
	Change, Raw                                      string
	WrittenAt                                        time.Time
}

func (r *EventRow) values() []any {
	return []any{r.EventID, r.Type, r.TS, r.TSms, r.AccountID, r.DeviceID, r.IP, r.Country, r.Channel, r.AppV,
		r.Result, r.FailureReason, r.Method, r.Kind, r.Amount, r.Currency, r.Status, r.MerchantID, r.Counterparty,
		r.CCty, r.BalanceAfter, r.PaymentID, r.Attempt, r.ErrorCode, r.LatencyMS, r.Change, r.Raw, r.WrittenAt}
}

// NewEventRow makes the row of a decoded event and its original bytes.
func NewEventRow(ev *event.Event, raw []byte, now time.Time) EventRow {
	return EventRow{EventID: ev.EventID, Type: ev.Type.String(), TS: ev.TS.UTC(), TSms: uint64(ev.TS.UnixMilli()),
		AccountID: ev.AccountID, DeviceID: ev.DeviceID, IP: ev.IP, Country: ev.Country(), Channel: ev.Channel, AppV: ev.AppVersion,
		Result: ev.Result, FailureReason: ev.FailureReason, Method: ev.Method, Kind: ev.Kind, Amount: ev.Amount,
		Currency: ev.Currency, Status: ev.Status, MerchantID: ev.MerchantID, Counterparty: ev.CounterpartyID,
		CCty: ev.CounterpartyCountry, BalanceAfter: ev.BalanceAfter, PaymentID: ev.PaymentID, Attempt: uint32(max(ev.Attempt, 0)),
		ErrorCode: ev.ErrorCode, LatencyMS: ev.LatencyMS, Change: ev.Change, Raw: string(raw), WrittenAt: now.UTC()}
}

// DecisionRow is one decision, its rules as parallel arrays.
type DecisionRow struct {
	DecisionID, EventID, AccountID                          string
	TS                                                      time.Time
	TSms                                                    uint64
	Score                                                   uint8
	Action, Trigger, EventType, MerchantID, PaymentID, AppV string
	RuleIDs                                                 []string
	RuleScores                                              []uint8
	RuleReasons, RuleCategories, RuleActions, ShadowIDs     []string
	DowngradedFrom, RulesetVersion                          string
	WrittenAt                                               time.Time
}

func (r *DecisionRow) values() []any {
	return []any{r.DecisionID, r.EventID, r.AccountID, r.TS, r.TSms, r.Score, r.Action, r.Trigger, r.EventType,
		r.MerchantID, r.PaymentID, r.AppV, r.RuleIDs, r.RuleScores, r.RuleReasons, r.RuleCategories,
		r.RuleActions, r.ShadowIDs, r.DowngradedFrom, r.RulesetVersion, r.WrittenAt}
}

// NewDecisionRow makes the row of a decision.
func NewDecisionRow(d *detector.Decision, now time.Time) DecisionRow {
	r := DecisionRow{DecisionID: d.DecisionID, EventID: d.EventID, AccountID: d.AccountID, TS: d.TS.UTC(), TSms: uint64(d.TS.UnixMilli()),
		Score: uint8(min(max(d.Score, 0), 100)), Action: d.Action, Trigger: d.Trigger, EventType: d.EventType, MerchantID: d.MerchantID,
		PaymentID: d.PaymentID, AppV: d.AppVersion, DowngradedFrom: d.DowngradedFrom, RulesetVersion: d.RulesetVersion, WrittenAt: now.UTC(),
		RuleIDs: []string{}, RuleScores: []uint8{}, RuleReasons: []string{}, RuleCategories: []string{}, RuleActions: []string{}, ShadowIDs: []string{}}
	for _, h := range d.Rules {
		r.RuleIDs = append(r.RuleIDs, h.ID)
		r.RuleScores = append(r.RuleScores, uint8(min(max(h.Score, 0), 100)))
		r.RuleReasons = append(r.RuleReasons, h.Reason)
		r.RuleCategories = append(r.RuleCategories, h.Category)
		r.RuleActions = append(r.RuleActions, h.Action)
	}
	for _, h := range d.Shadow {
		r.ShadowIDs = append(r.ShadowIDs, h.ID)
	}
	return r
}

// ActionRow is one entry of the audit trail.
type ActionRow struct {
	ActionID                                                      string
	At                                                            time.Time
	AtMs                                                          uint64
	Action, Origin, Actor, AccountID, Reason, DecisionID, Command string
	Outcome                                                       string
	WrittenAt                                                     time.Time
}

func (r *ActionRow) values() []any {
	return []any{r.ActionID, r.At, r.AtMs, r.Action, r.Origin, r.Actor, r.AccountID, r.Reason, r.DecisionID, r.Command, r.Outcome, r.WrittenAt}
}

// NewActionRow makes the row of an audit entry. Its id is derived from the
// entry, so an automatic action re-decided after a crash is the same row.
func NewActionRow(e *enforce.AuditEntry, now time.Time) ActionRow {
	id := detector.StableID("act_", e.At.UTC().Format(time.RFC3339Nano), e.Action, e.AccountID, e.Actor, e.DecisionID, e.CommandID, e.Reason)
	return ActionRow{ActionID: id, At: e.At.UTC(), AtMs: uint64(e.At.UnixMilli()), Action: e.Action,
		Origin: e.Origin, Actor: e.Actor, AccountID: e.AccountID, Reason: e.Reason, DecisionID: e.DecisionID, Command: e.CommandID,
		Outcome: e.Outcome, WrittenAt: now.UTC()}
}

// AlertRow is one state of an alert: every change is a row.
type AlertRow struct {
	AlertID, DedupKey, Status, Severity, Category, AccountID, MerchantID, AppV, IP string
	Title, Summary, Reason, Cause, Action                                          string
	Count, Affected                                                                uint32
	Rules                                                                          []string
	CreatedAt, UpdatedAt                                                           time.Time
	UpdatedMs, Version                                                             uint64
	AckBy                                                                          string
	AckAt                                                                          time.Time
	ResolvedBy                                                                     string
	ResolvedAt                                                                     time.Time
	Resolution, GroupedUnder                                                       string
	WrittenAt                                                                      time.Time
}

func (r *AlertRow) values() []any {
	return []any{r.AlertID, r.DedupKey, r.Status, r.Severity, r.Category, r.AccountID, r.MerchantID, r.AppV, r.IP,
		r.Title, r.Summary, r.Reason, r.Cause, r.Action, r.Count, r.Affected, r.Rules, r.CreatedAt, r.UpdatedAt,
		r.UpdatedMs, r.Version, r.AckBy, r.AckAt, r.ResolvedBy, r.ResolvedAt, r.Resolution, r.GroupedUnder, r.WrittenAt}
}

// epoch stands for "not yet" in DateTime columns, which have no NULL here.
var epoch = time.Unix(0, 0).UTC()

func orEpoch(t time.Time) time.Time {
	if t.IsZero() {
		return epoch
	}
	return t.UTC()
}

// statusOrder orders an alert's states that share one update time: an
// acknowledgement, then a resolution, come after the evidence they answer.
var statusOrder = map[string]uint64{"open": 0, "grouped": 1, "acknowledged": 2, "resolved": 3}

// NewAlertRow makes the row of one alert state. Its version orders the
// states of one alert: queries take argMax(…, version).
func NewAlertRow(a *alerts.Alert, now time.Time) AlertRow {
	rules := a.Rules
	if rules == nil {
		rules = []string{}
	}
	return AlertRow{AlertID: a.AlertID, DedupKey: a.DedupKey, Status: a.Status, Severity: a.Severity, Category: a.Category,
		AccountID: a.AccountID, MerchantID: a.MerchantID, AppV: a.AppVersion, IP: a.IP, Title: a.Title, Summary: a.Summary,
		Reason: a.Reason, Cause: a.Cause, Action: a.Action, Count: uint32(max(a.Count, 0)), Affected: uint32(max(a.AffectedAccounts, 0)),
		Rules: rules, CreatedAt: orEpoch(a.CreatedAt), UpdatedAt: orEpoch(a.UpdatedAt), UpdatedMs: uint64(max(a.UpdatedAt.UnixMilli(), 0)),
		Version: uint64(max(a.UpdatedAt.UnixMilli(), 0))*4 + statusOrder[a.Status],
		AckBy:   a.AcknowledgedBy, AckAt: orEpoch(a.AcknowledgedAt), ResolvedBy: a.ResolvedBy, ResolvedAt: orEpoch(a.ResolvedAt),
		Resolution: a.Resolution, GroupedUnder: a.GroupedUnder, WrittenAt: now.UTC()}
}

// maxRejectedValue bounds the start of a rejected record a row keeps:
// enough to see what was wrong (an event is at most 64 KiB), not the 10 MB
// a broken producer may send.
const maxRejectedValue = 16 << 10

// RejectedRow is one record rejected as invalid (and dead-lettered): why,
// where it came from, what it says of its producer, and its start.
type RejectedRow struct {
	Source, SourceTopic      string
	SourcePartition          uint32
	SourceOffset             uint64
	RejectedAt               time.Time
	RejectedMs               uint64
	Reason, Field, Detail    string
	Key                      Bytes
	EventType, AppV, Channel string
	Value                    Bytes
	ValueSize                uint32
	WrittenAt                time.Time
}

func (r *RejectedRow) values() []any {
	return []any{r.Source, r.SourceTopic, r.SourcePartition, r.SourceOffset, r.RejectedAt, r.RejectedMs, r.Reason, r.Field,
		r.Detail, string(r.Key), r.EventType, r.AppV, r.Channel, string(r.Value), r.ValueSize, r.WrittenAt}
}

// NewRejectedRow makes the row of a rejected record. Its place in Kafka
// is its id: the same record rejected again after a crash is the same row.
func NewRejectedRow(rec *ingest.Record, reason, field, detail string, now time.Time) RejectedRow {
	h := event.HintsOf(rec.Value)
	v := rec.Value[:min(len(rec.Value), maxRejectedValue)]
	return RejectedRow{Source: ingest.Place(rec.Topic, rec.Partition, rec.Offset), SourceTopic: rec.Topic,
		SourcePartition: uint32(max(rec.Partition, 0)), SourceOffset: uint64(max(rec.Offset, 0)),
		RejectedAt: rec.Arrived.UTC(), RejectedMs: uint64(max(rec.Arrived.UnixMilli(), 0)), Reason: reason, Field: field, Detail: detail,
		Key: Bytes(rec.Key[:min(len(rec.Key), ingest.MaxDeadLetterKey)]), EventType: h.Type, AppV: h.AppVersion, Channel: h.Channel,
		Value: Bytes(v), ValueSize: uint32(min(len(rec.Value), math.MaxUint32)), WrittenAt: now.UTC()}
}

// Bytes is a column of any bytes — a rejected record's key and value may be
// invalid UTF-8 — that keeps them exact through the spool: a JSON string
// when they are valid UTF-8 (as a person reading the spool expects), else
// {"base64": …}, where a plain string would turn each bad byte into U+FFFD.
type Bytes string

type bytesBase64 struct {
	Base64 []byte `json:"base64"`
}

// MarshalJSON implements json.Marshaler.
func (b Bytes) MarshalJSON() ([]byte, error) {
	if utf8.ValidString(string(b)) {
		return json.Marshal(string(b))
	}
	return json.Marshal(bytesBase64{[]byte(b)})
}

// UnmarshalJSON implements json.Unmarshaler.
func (b *Bytes) UnmarshalJSON(data []byte) error {
	if len(data) > 0 && data[0] == '{' {
		var x bytesBase64
		if err := json.Unmarshal(data, &x); err != nil {
			return err
		}
		*b = Bytes(x.Base64)
		return nil
	}
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	*b = Bytes(s)
	return nil
}
