package event_test

import (
	"bytes"
	"math/rand/v2"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/sim"
)

var arrival = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

// agree fails t unless Decode and the general decoder give the same event or
// the same error for b.
func agree(t *testing.T, b []byte) {
	t.Helper()
	fast, ferr := event.Decode(b, arrival)
	slow, serr := event.DecodeGoJSON(b, arrival)
	if (ferr == nil) != (serr == nil) || ferr != nil && ferr.Error() != serr.Error() {
		t.Fatalf("decoders disagree on %q:\n fast path: %v\n general:   %v", b, ferr, serr)
	}
	if !reflect.DeepEqual(fast, slow) {
		t.Fatalf("decoders disagree on %q:\n fast path: %+v\n general:   %+v", b, fast, slow)
	}
	owned, oerr := event.DecodeOwned(bytes.Clone(b), arrival)
	if (oerr == nil) != (ferr == nil) || !reflect.DeepEqual(owned, fast) {
		t.Fatalf("DecodeOwned disagrees with Decode on %q:\n owned: %+v, %v\n copy:  %+v, %v", b, owned, oerr, fast, ferr)
	}
}

// TestDecodeKeepsNothingOfItsInput: replay and rule tests decode lines a
// scanner overwrites next, so an event from Decode must not share them.
func TestDecodeKeepsNothingOfItsInput(t *testing.T) {
	for _, b := range generated(t)[:500] {
		want, err := event.Decode(bytes.Clone(b), arrival)
		if err != nil {
			t.Fatal(err)
		}
		got, err := event.Decode(b, arrival)
		if err != nil {
			t.Fatal(err)
		}
		for i := range b {
			b[i] = 'x'
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("an event from Decode changed with its input buffer:\n got  %+v\n want %+v", got, want)
		}
	}
}

// generated is a day of simulated traffic from many accounts: every event
// type, with and without geo, balances and devices.
func generated(t *testing.T) [][]byte {
	cfg := sim.DefaultConfig(2000)
	cfg.Seed = 11
	cfg.HistoryDays = 1
	cfg.Duration = 12 * time.Hour
	g := sim.New(cfg)
	var out [][]byte
	for {
		it, ok := g.Next()
		if !ok {
			return out
		}
		b, err := event.Marshal(&it.Event)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
}

func TestFastPathAgreesWithGeneralDecoder(t *testing.T) {
	evs := generated(t)
	fast := 0
	for _, b := range evs {
		agree(t, b)
		if event.DecodesFast(b) {
			fast++
		}
	}
	// The fast path is for what producers send: nearly every generated event
	// takes it (account changes carrying detail do not).
	if fast < len(evs)*9/10 {
		t.Fatalf("only %d of %d generated events took the fast path", fast, len(evs))
	}

	// Variations of real events, valid and not: each must be read the same
	// way by both paths, whichever of them handles it.
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 20000; i++ {
		b := mutate(rng, evs[rng.IntN(len(evs))])
		agree(t, b)
	}
}

// mutate changes one thing in a record the way a buggy or hostile producer
// would, or the way a legitimate but unusual encoder would.
func mutate(rng *rand.Rand, in []byte) []byte {
	b := append([]byte(nil), in...)
	pick := func(vals ...string) string { return vals[rng.IntN(len(vals))] }
	// a value position: just after a colon
	colon := func() int {
		var at []int
		for i, c := range b {
			if c == ':' {
				at = append(at, i+1)
			}
		}
		if len(at) == 0 {
			return len(b) / 2
		}
		return at[rng.IntN(len(at))]
	}
	replaceValue := func(v string) []byte {
		i := colon()
		j := i
		if j < len(b) && b[j] == '"' {
			j = bytes.IndexByte(b[j+1:], '"') + j + 2
		} else {
			for j < len(b) && b[j] != ',' && b[j] != '}' {
				j++
			}
		}
		if j < i || j > len(b) {
			return b
		}
		return append(append(append([]byte(nil), b[:i]...), v...), b[j:]...)
	}
	switch rng.IntN(14) {
	case 0: // truncated anywhere
		return b[:rng.IntN(len(b))]
	case 1: // whitespace between tokens
		i := colon()
		return append(append(append([]byte(nil), b[:i]...), pick(" ", "\n\t ", "\r\n")...), b[i:]...)
	case 2:
		return replaceValue(pick("null", "true", "{}", "[]", `""`, `"x"`, "0", "-0", "01", "1.5", "1e3", "-1", "NaN"))
	case 3: // integers at and past the fast path's limit
		return replaceValue(pick("999999999999999999", "-999999999999999999", "1000000000000000000",
			"9223372036854775807", "9223372036854775808", "123456789012345678901234567890", strconv.Itoa(rng.IntN(1e9))))
	case 4: // escapes, control characters and non-ASCII text
		return replaceValue(pick(`"a\"b"`, `"\u00e9"`, `"acc\\1"`, "\"tab\there\"", `"Jakarta Selatan ☕"`, "\"\xff\xfe\"", `"\/"`))
	case 5: // a repeated key
		return append([]byte(`{"account_id":"twice",`), b[1:]...)
	case 6: // an unknown or differently spelt key
		return append([]byte(pick(`{"Account_ID":"x",`, `{"extra":{"a":[1,2]},`, `{"detail":{"k":"v"},`, `{"geo":null,`)), b[1:]...)
	case 7: // geo in other shapes
		return append([]byte(pick(`{"geo":{},`, `{"geo":{"lat":1e400},`, `{"geo":{"lat":-6.2,"lon":106.8,"alt":3},`,
			`{"geo":{"country":"ID","lat":-6.175392,"lon":106.827153},`, `{"geo":{"lat":-0.0,"lon":1E-5},`, `{"geo":{"lat":91},`,
			`{"geo":{"lat":.5},`, `{"geo":{"lat":5.},`, `{"geo":{"lat":-},`)), b[1:]...)
	case 8: // trailing bytes
		return append(b, pick(" ", "x", "}", "\n", "{}")...)
	case 9: // a random float coordinate, as producers print them
		f := (rng.Float64() - 0.5) * 360
		return append([]byte(`{"geo":{"country":"SG","lat":`+strconv.FormatFloat(f/2, 'g', -1, 64)+`,"lon":`+strconv.FormatFloat(f, 'f', rng.IntN(12), 64)+`},`), b[1:]...)
	case 10: // one byte flipped
		i := rng.IntN(len(b))
		b[i] ^= byte(1 << rng.IntN(8))
		return b
	case 11: // wrapped or replaced by another JSON value
		return []byte(pick(`[`+string(b)+`]`, `"`+string(b)+`"`, `null`, ` `+string(b)))
	case 12: // an empty string where a value was
		return replaceValue(`""`)
	default: // unchanged
		return b
	}
}

func FuzzFastPathAgrees(f *testing.F) {
	f.Add([]byte(`{"event_id":"e","type":"payment_attempt","ts":"2026-11-21T10:00:00Z","account_id":"a","payment_id":"p","attempt":2,"status":"retrying","error_code":"NETWORK_TIMEOUT","latency_ms":812}`))
	f.Add([]byte(`{"event_id":"e","type":"login","ts":"2026-11-21T10:00:00Z","account_id":"a","result":"success","geo":{"country":"ID","lat":-6.2,"lon":106.8}}`))
	f.Add([]byte(` { "event_id" : "e" , "type":"login","ts":"2026-11-21T10:00:00Z","account_id":"a","result":"success"} `))
	f.Fuzz(func(t *testing.T, b []byte) { agree(t, b) })
}

// BenchmarkDecodeGenerated decodes a day of generated traffic;
// BenchmarkDecodeGeneratedOwned the same as the daemon's fetchers do, on
// buffers handed over.
func BenchmarkDecodeGenerated(b *testing.B)      { benchGenerated(b, event.Decode) }
func BenchmarkDecodeGeneratedOwned(b *testing.B) { benchGenerated(b, event.DecodeOwned) }

func benchGenerated(b *testing.B, decode func([]byte, time.Time) (event.Event, error)) {
	evs := generated(&testing.T{})
	var n int64
	for _, e := range evs {
		n += int64(len(e))
	}
	b.SetBytes(n / int64(len(evs)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := decode(evs[i], arrival); err != nil {
			b.Fatal(err)
		}
		if i++; i == len(evs) {
			i = 0
		}
	}
}
