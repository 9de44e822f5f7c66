package event

import (
	"time"

	gojson "github.com/goccy/go-json"
)

// outWire is the JSON shape of an event as producers send it: only the fields
// that belong to its type, integers omitted when unset.
type outWire struct {
	EventID    string `json:"event_id"`
	Type       string `json:"type"`
	TS         string `json:"ts"`
	AccountID  string `json:"account_id"`
	DeviceID   string `json:"device_id,omitempty"`
	IP         string `json:"ip,omitempty"`
	UserAgent  string `json:"user_agent,omitempty"`
	AppVersion string `json:"app_version,omitempty"`
	Channel    string `json:"channel,omitempty"`
	Geo        *Geo   `json:"geo,omitempty"`

	Result        string `json:"result,omitempty"`
	FailureReason string `json:"failure_reason,omitempty"`
	Method        string `json:"method,omitempty"`

	TxID                string `json:"tx_id,omitempty"`
	Kind                string `json:"kind,omitempty"`
	Amount              *int64 `json:"amount,omitempty"`
	Currency            string `json:"currency,omitempty"`
	Status              string `json:"status,omitempty"`
	MerchantID          string `json:"merchant_id,omitempty"`
	CounterpartyID      string `json:"counterparty_id,omitempty"`
	CounterpartyCountry string `json:"counterparty_country,omitempty"`
	BalanceAfter        *int64 `json:"balance_after,omitempty"`

	PaymentID string `json:"payment_id,omitempty"`
	Attempt   *int64 `json:"attempt,omitempty"`
	ErrorCode string `json:"error_code,omitempty"`
	LatencyMS *int64 `json:"latency_ms,omitempty"`

	Change string         `json:"change,omitempty"`
	Detail map[string]any `json:"detail,omitempty"`
}

// Marshal renders ev as the contract's JSON, the inverse of Decode.
func Marshal(ev *Event) ([]byte, error) {
	typ := ev.TypeName
	if typ == "" {
		typ = ev.Type.String()
	}
	w := outWire{
		EventID: ev.EventID, Type: typ, TS: ev.TS.Format(time.RFC3339Nano), AccountID: ev.AccountID,
		DeviceID: ev.DeviceID, IP: ev.IP, UserAgent: ev.UserAgent, AppVersion: ev.AppVersion, Channel: ev.Channel,
		Result: ev.Result, FailureReason: ev.FailureReason, Method: ev.Method,
		TxID: ev.TxID, Kind: ev.Kind, Currency: ev.Currency, Status: ev.Status, MerchantID: ev.MerchantID,
		CounterpartyID: ev.CounterpartyID, CounterpartyCountry: ev.CounterpartyCountry,
		PaymentID: ev.PaymentID, ErrorCode: ev.ErrorCode,
		Change: ev.Change, Detail: ev.Detail,
	}
	if ev.Geo != (Geo{}) {
		g := ev.Geo
		w.Geo = &g
	}
	switch ParseType(typ) {
	case TypeTransaction:
		w.Amount = &ev.Amount
		if ev.BalanceAfter >= 0 {
			w.BalanceAfter = &ev.BalanceAfter
		}
	case TypePaymentAttempt:
		w.Attempt = &ev.Attempt
		if ev.Amount > 0 {
			w.Amount = &ev.Amount
		}
		if ev.LatencyMS > 0 {
			w.LatencyMS = &ev.LatencyMS
		}
	}
	return gojson.Marshal(&w)
}
