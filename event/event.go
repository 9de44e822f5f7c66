// Package event owns the input contract (CONTRACT §1): the typed wallet event,
// its strict decoding from JSON and its validation. It knows nothing about
// Kafka, state or rules; ingest, replay and the scoring API all decode through
// Decode so that every path accepts and rejects exactly the same bytes.
package event

import (
	"time"
)

// Type is the event's kind, the contract's `type` field.
type Type uint8

// The event types of CONTRACT §1.
const (
	TypeUnknown Type = iota
	TypeLogin
	TypeTransaction
	TypePaymentAttempt
	TypeAccountChange
	numTypes
)

// NumTypes is the number of valid event types plus the unknown slot, for
// arrays indexed by Type.
const NumTypes = int(numTypes)

var typeNames = [...]string{"unknown", "login", "transaction", "payment_attempt", "account_change"}

func (t Type) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return "unknown"
}

// ParseType maps the contract's type name to a Type; TypeUnknown if none.
func ParseType(s string) Type {
	for i, n := range typeNames {
		if i > 0 && n == s {
			return Type(i)
		}
	}
	return TypeUnknown
}

// Types lists the valid event types in order.
func Types() []Type {
	return []Type{TypeLogin, TypeTransaction, TypePaymentAttempt, TypeAccountChange}
}

// Geo is where the event happened, when the producer knows.
type Geo struct {
	Country string  `json:"country,omitempty"`
	Lat     float64 `json:"lat"`
	Lon     float64 `json:"lon"`
}

// Event is one wallet event. It is a flat union of the four event types: the
// fields of the other types stay zero. A flat struct decodes without
// interfaces or per-type allocations and gives rule expressions one shape.
type Event struct {
	EventID    string    `json:"event_id"`
	TypeName   string    `json:"type"`
	TS         time.Time `json:"-"`
	AccountID  string    `json:"account_id"`
	DeviceID   string    `json:"device_id,omitempty"`
	IP         string    `json:"ip,omitempty"`
	UserAgent  string    `json:"user_agent,omitempty"`
	AppVersion string    `json:"app_version,omitempty"`
	Channel    string    `json:"channel,omitempty"`
	Geo        Geo       `json:"geo,omitzero"` // zero when the event has none

	// login
	Result        string `json:"result,omitempty"`
	FailureReason string `json:"failure_reason,omitempty"`
	Method        string `json:"method,omitempty"`

	// transaction
	TxID                string `json:"tx_id,omitempty"`
	Kind                string `json:"kind,omitempty"`
	Amount              int64  `json:"amount"`
	Currency            string `json:"currency,omitempty"`
	Status              string `json:"status,omitempty"`
	MerchantID          string `json:"merchant_id,omitempty"`
	CounterpartyID      string `json:"counterparty_id,omitempty"`
	CounterpartyCountry string `json:"counterparty_country,omitempty"`
	// BalanceAfter is -1 when the producer did not report it.
	BalanceAfter int64 `json:"balance_after"`

	// payment_attempt
	PaymentID string `json:"payment_id,omitempty"`
	Attempt   int64  `json:"attempt"`
	ErrorCode string `json:"error_code,omitempty"`
	LatencyMS int64  `json:"latency_ms"`

	// account_change
	Change string         `json:"change,omitempty"`
	Detail map[string]any `json:"detail,omitempty"`

	Type Type `json:"-"`
}

// Country is the event's geo country, or "" when unknown.
func (e *Event) Country() string { return e.Geo.Country }

// HasGeo reports whether the event carries coordinates.
func (e *Event) HasGeo() bool { return e.Geo.Lat != 0 || e.Geo.Lon != 0 }
