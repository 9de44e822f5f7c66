package event

import (
	"errors"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

const sampleTx = `{"event_id":"e-1","type":"transaction","ts":"2026-11-21T11:59:00+07:00","account_id":"acc-42",` +
	`"device_id":"dev-9","ip":"203.0.113.7","user_agent":"WalletApp/5.2 (Android 14)","app_version":"5.2.0","channel":"app",` +
	`"geo":{"country":"ID","lat":-6.2,"lon":106.8},"tx_id":"tx-77","kind":"transfer","amount":4800000,"currency":"IDR",` +
	`"status":"success","counterparty_id":"acc-999","counterparty_country":"ID","balance_after":120000}`

func TestDecodeValidEvents(t *testing.T) {
	ev, err := Decode([]byte(sampleTx), now)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if ev.Type != TypeTransaction || ev.Amount != 4800000 || ev.BalanceAfter != 120000 || ev.Country() != "ID" {
		t.Fatalf("decoded wrong: %+v", ev)
	}
	if want := time.Date(2026, 11, 21, 4, 59, 0, 0, time.UTC); !ev.TS.Equal(want) {
		t.Fatalf("ts %v, want %v", ev.TS, want)
	}
	login := `{"event_id":"l1","type":"login","ts":"2026-11-21T10:00:00Z","account_id":"a","result":"failure","failure_reason":"bad_password","method":"password"}`
	ev, err = Decode([]byte(login), now)
	if err != nil || ev.Type != TypeLogin || ev.BalanceAfter != -1 {
		t.Fatalf("login: %+v %v", ev, err)
	}
	// Fields the contract does not know yet are accepted: it grows by adding.
	extra := `{"event_id":"x","type":"account_change","ts":"2026-11-21T10:00:00Z","account_id":"a","change":"payee_added","detail":{"payee":"p1"},"future_field":[1,2]}`
	if _, err := Decode([]byte(extra), now); err != nil {
		t.Fatalf("extra field: %v", err)
	}
}

func TestDecodeRejects(t *testing.T) {
	base := func(typ, extra string) string {
		return `{"event_id":"e","type":"` + typ + `","ts":"2026-11-21T10:00:00Z","account_id":"a"` + extra + `}`
	}
	cases := []struct {
		name, in string
		want     Reason
		detail   string
		field    string // what dead letters are grouped by
	}{
		{"not json", `{"event_id":`, ReasonInvalidJSON, "", ""},
		{"array", `[1,2]`, ReasonInvalidJSON, "object", ""},
		{"bad utf8", "{\"event_id\":\"\xff\"}", ReasonInvalidJSON, "UTF-8", ""},
		{"oversize", `{"x":"` + strings.Repeat("a", MaxSize) + `"}`, ReasonOversize, "65536", ""},
		{"no type", `{"event_id":"e","ts":"2026-11-21T10:00:00Z","account_id":"a"}`, ReasonMissingField, "type", "type"},
		{"unknown type", base("refund_request", ""), ReasonUnknownType, "refund_request", "type"},
		{"no event id", `{"type":"login","ts":"2026-11-21T10:00:00Z","account_id":"a","result":"success"}`, ReasonMissingField, "event_id", "event_id"},
		{"long event id", `{"event_id":"` + strings.Repeat("x", 129) + `","type":"login","ts":"2026-11-21T10:00:00Z","account_id":"a","result":"success"}`, ReasonInvalidValue, "event_id", "event_id"},
		{"no account", `{"event_id":"e","type":"login","ts":"2026-11-21T10:00:00Z","result":"success"}`, ReasonMissingField, "account_id", "account_id"},
		{"no ts", `{"event_id":"e","type":"login","account_id":"a","result":"success"}`, ReasonMissingField, "ts", "ts"},
		{"ts without offset", `{"event_id":"e","type":"login","ts":"2026-11-21T10:00:00","account_id":"a","result":"success"}`, ReasonInvalidValue, "ts", "ts"},
		{"future ts", `{"event_id":"e","type":"login","ts":"2026-11-23T10:00:00Z","account_id":"a","result":"success"}`, ReasonFutureTS, "24h", "ts"},
		{"amount is string", base("transaction", `,"tx_id":"t","kind":"payment","amount":"100","currency":"IDR","status":"success"`), ReasonWrongType, "amount", "amount"},
		{"amount is float", base("transaction", `,"tx_id":"t","kind":"payment","amount":1.5,"currency":"IDR","status":"success"`), ReasonWrongType, "amount", "amount"},
		{"negative amount", base("transaction", `,"tx_id":"t","kind":"payment","amount":-5,"currency":"IDR","status":"success"`), ReasonNegativeAmount, "-5", "amount"},
		{"missing amount", base("transaction", `,"tx_id":"t","kind":"payment","currency":"IDR","status":"success"`), ReasonMissingField, "amount", "amount"},
		{"missing tx_id", base("transaction", `,"kind":"payment","amount":5,"currency":"IDR","status":"success"`), ReasonMissingField, "tx_id", "tx_id"},
		{"bad kind", base("transaction", `,"tx_id":"t","kind":"gift","amount":5,"currency":"IDR","status":"success"`), ReasonInvalidValue, "kind", "kind"},
		{"bad currency", base("transaction", `,"tx_id":"t","kind":"payment","amount":5,"currency":"rupiah","status":"success"`), ReasonInvalidValue, "currency", "currency"},
		{"missing result", base("login", ""), ReasonMissingField, "result", "result"},
		{"bad ip", base("login", `,"result":"success","ip":"999.1.1.1"`), ReasonInvalidValue, "ip", "ip"},
		{"bad country", base("login", `,"result":"success","geo":{"country":"Indonesia"}`), ReasonInvalidValue, "country", "geo.country"},
		{"geo wrong type", base("login", `,"result":"success","geo":"ID"`), ReasonWrongType, "geo", "geo"},
		{"attempt zero", base("payment_attempt", `,"payment_id":"p","attempt":0,"status":"retrying"`), ReasonInvalidValue, "attempt", "attempt"},
		{"attempt missing", base("payment_attempt", `,"payment_id":"p","status":"retrying"`), ReasonMissingField, "attempt", "attempt"},
		{"bad attempt status", base("payment_attempt", `,"payment_id":"p","attempt":1,"status":"success"`), ReasonInvalidValue, "status", "status"},
		{"bad change", base("account_change", `,"change":"nickname"`), ReasonInvalidValue, "change", "change"},
		{"ts in 1970", `{"event_id":"e","type":"login","ts":"1970-01-01T00:00:00Z","account_id":"a","result":"success"}`, ReasonInvalidValue, "2020-01-01", "ts"},
		{"ts in 2100", `{"event_id":"e","type":"login","ts":"2100-01-01T00:00:00Z","account_id":"a","result":"success"}`, ReasonFutureTS, "2100", "ts"},
		{"NaN amount", base("transaction", `,"tx_id":"t","kind":"payment","amount":NaN,"currency":"IDR","status":"success"`), ReasonInvalidJSON, "'N'", ""},
		{"amount 1e400", base("transaction", `,"tx_id":"t","kind":"payment","amount":1e400,"currency":"IDR","status":"success"`), ReasonWrongType, "amount", "amount"},
		{"amount past int64", base("transaction", `,"tx_id":"t","kind":"payment","amount":123456789012345678901234567890,"currency":"IDR","status":"success"`), ReasonWrongType, "amount", "amount"},
		{"lat 1e400", base("login", `,"result":"success","geo":{"country":"ID","lat":1e400}`), ReasonWrongType, "geo.lat", "geo.lat"},
		{"deeply nested", base("login", `,"result":"success","x":`+strings.Repeat("[", 30000)+strings.Repeat("]", 30000)), ReasonInvalidJSON, "depth", ""},
		{"truncated", `{"event_id":"e","type":"login","ts":"2026-`, ReasonInvalidJSON, "", ""},
		{"null", `null`, ReasonInvalidJSON, "object", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Decode([]byte(c.in), now)
			if err == nil {
				t.Fatalf("accepted %s", c.in)
			}
			if got := ReasonOf(err); got != c.want {
				t.Fatalf("reason %q, want %q (%v)", got, c.want, err)
			}
			if !strings.Contains(err.Error(), c.detail) {
				t.Fatalf("error %q does not mention %q", err, c.detail)
			}
			if re := (*RejectError)(nil); !errors.As(err, &re) || re.Field != c.field {
				t.Fatalf("field of %v is not %q", err, c.field)
			}
		})
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	ev, err := Decode([]byte(sampleTx), now)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Marshal(&ev)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(b, now)
	if err != nil {
		t.Fatalf("re-decode %s: %v", b, err)
	}
	if back.Amount != ev.Amount || !back.TS.Equal(ev.TS) || back.CounterpartyID != ev.CounterpartyID || back.BalanceAfter != ev.BalanceAfter {
		t.Fatalf("round trip changed the event:\n%+v\n%+v", ev, back)
	}
	login := Event{EventID: "l", Type: TypeLogin, TS: now, AccountID: "a", Result: "success", BalanceAfter: -1}
	b, _ = Marshal(&login)
	if strings.Contains(string(b), "amount") || strings.Contains(string(b), "balance_after") {
		t.Fatalf("login carries transaction fields: %s", b)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(sampleTx))
	f.Add([]byte(`{"event_id":"e","type":"payment_attempt","ts":"2026-11-21T10:00:00Z","account_id":"a","payment_id":"p","attempt":2,"status":"retrying","error_code":"NETWORK_TIMEOUT"}`))
	f.Add([]byte(`{"event_id":"e","type":"account_change","ts":"2026-11-21T10:00:00Z","account_id":"a","change":"mfa_disabled","detail":{"a":[1,{"b":null}]}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`nul`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := Decode(b, now)
		if err != nil {
			if ReasonOf(err) == "" {
				t.Fatalf("rejection without a reason: %v", err)
			}
			return
		}
		// Whatever is accepted survives a round trip.
		out, err := Marshal(&ev)
		if err != nil {
			t.Fatalf("marshal accepted event: %v", err)
		}
		if _, err := Decode(out, now); err != nil {
			t.Fatalf("accepted %q but not its re-encoding %q: %v", b, out, err)
		}
	})
}

func benchDecode(b *testing.B, dec func([]byte, time.Time) (Event, error)) {
	in := []byte(sampleTx)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := dec(in, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecode is Decode as used; BenchmarkDecodeGoJSON and
// BenchmarkDecodeStdlib are its general path on each JSON library, the
// measurement behind the choice of goccy/go-json and of a fast path.
func BenchmarkDecode(b *testing.B)       { benchDecode(b, Decode) }
func BenchmarkDecodeGoJSON(b *testing.B) { benchDecode(b, decodeGoJSON) }
func BenchmarkDecodeStdlib(b *testing.B) { benchDecode(b, decodeStd) }

// TestHintsOfRejectedValues: a value rejected for one field still names
// its producer's build and channel; one that is not a JSON object names none.
func TestHintsOfRejectedValues(t *testing.T) {
	cases := []struct {
		in   string
		want Hints
	}{
		{`{"type":"transaction","amount":"15000","app_version":"5.1.0","channel":"app"}`, Hints{"transaction", "5.1.0", "app"}},
		{`{"type":"login","app_version":5,"channel":["web"]}`, Hints{Type: "login"}},
		{`{"type":"login","ts":"2026-`, Hints{}},
		{`[{"type":"login"}]`, Hints{}},
		{`{"app_version":"` + strings.Repeat("9", 200) + `"}`, Hints{AppVersion: strings.Repeat("9", 64) + "…"}},
	}
	for _, c := range cases {
		if got := HintsOf([]byte(c.in)); got != c.want {
			t.Errorf("HintsOf(%.60s) = %+v, want %+v", c.in, got, c.want)
		}
	}
}
