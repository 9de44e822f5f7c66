package detector

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends d as the contract's JSON (CONTRACT §2): byte for byte
// what goccy/go-json and encoding/json write for it
// (TestDecisionJSONMatchesTheLibrary), without reflection. Every event's
// decision is encoded on the pipeline goroutine, where the library's
// encoder cost about a microsecond.
func (d *Decision) AppendJSON(b []byte) []byte {
	b = append(b, `{"decision_id":`...)
	b = appendJSONString(b, d.DecisionID)
	b = append(b, `,"event_id":`...)
	b = appendJSONString(b, d.EventID)
	b = append(b, `,"account_id":`...)
	b = appendJSONString(b, d.AccountID)
	b = append(b, `,"ts":"`...)
	b = d.TS.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","score":`...)
	b = strconv.AppendInt(b, int64(d.Score), 10)
	b = append(b, `,"action":`...)
	b = appendJSONString(b, d.Action)
	b = append(b, `,"rules":`...)
	b = appendHits(b, d.Rules)
	b = append(b, `,"ruleset_version":`...)
	b = appendJSONString(b, d.RulesetVersion)
	b = append(b, `,"event_type":`...)
	b = appendJSONString(b, d.EventType)
	b = append(b, `,"trigger":`...)
	b = appendJSONString(b, d.Trigger)
	if len(d.Shadow) > 0 {
		b = append(b, `,"shadow_rules":`...)
		b = appendHits(b, d.Shadow)
	}
	b = appendOptional(b, `,"downgraded_from":`, d.DowngradedFrom)
	b = appendOptional(b, `,"merchant_id":`, d.MerchantID)
	b = appendOptional(b, `,"payment_id":`, d.PaymentID)
	b = appendOptional(b, `,"app_version":`, d.AppVersion)
	return append(b, '}')
}

func appendHits(b []byte, hits []Hit) []byte {
	if hits == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i := range hits {
		if i > 0 {
			b = append(b, ',')
		}
		h := &hits[i]
		b = append(b, `{"id":`...)
		b = appendJSONString(b, h.ID)
		b = append(b, `,"score":`...)
		b = strconv.AppendInt(b, int64(h.Score), 10)
		b = append(b, `,"reason":`...)
		b = appendJSONString(b, h.Reason)
		b = appendOptional(b, `,"category":`, h.Category)
		b = appendOptional(b, `,"severity":`, h.Severity)
		b = appendOptional(b, `,"action":`, h.Action)
		b = appendOptional(b, `,"group":`, h.Group)
		b = append(b, '}')
	}
	return append(b, ']')
}

// appendOptional is an omitempty string field.
func appendOptional(b []byte, key, v string) []byte {
	if v == "" {
		return b
	}
	return appendJSONString(append(b, key...), v)
}

// appendJSONString quotes s as encoding/json does with HTML escaping on:
// <, > and & as \u escapes, invalid UTF-8 as U+FFFD, and U+2028 and U+2029
// escaped for JavaScript.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if jsonSafe[c] {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// jsonSafe marks the bytes written as they are: printable ASCII but for the
// quote, the backslash and the HTML-special <, > and &.
var jsonSafe = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()
