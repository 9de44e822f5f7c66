package detector

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"

	gojson "github.com/goccy/go-json"

	"github.com/walletguard/walletguard/event"
)

// TestDecisionJSONMatchesTheLibrary: AppendJSON writes the same bytes as
// goccy/go-json for random decisions — every byte value and awkward rune in
// the strings, nil and empty rule lists, times in several zones — and for
// the decisions of generated traffic.
func TestDecisionJSONMatchesTheLibrary(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	pieces := []string{"", "a", "acc-42", `"`, `\`, "<script>", "&amp;", ">", "\x00", "\x1f", "\b\f\n\r\t", "\x7f",
		"é", "☕", "😀", "\u2028", "\u2029", "\xff", "\xe2\x82", "transfer 4,800,000 IDR is 23× this account's typical 210,000 IDR"}
	str := func() string {
		var s []byte
		for n := rng.IntN(4); n > 0; n-- {
			if rng.IntN(4) == 0 {
				s = append(s, byte(rng.IntN(256)))
			} else {
				s = append(s, pieces[rng.IntN(len(pieces))]...)
			}
		}
		return string(s)
	}
	hits := func() []Hit {
		switch rng.IntN(4) {
		case 0:
			return nil
		case 1:
			return []Hit{}
		}
		h := make([]Hit, 1+rng.IntN(3))
		for i := range h {
			h[i] = Hit{ID: str(), Score: rng.IntN(200) - 50, Reason: str(), Category: str(), Severity: str(), Action: str(), Group: str()}
		}
		return h
	}
	zones := []*time.Location{time.UTC, time.FixedZone("WIB", 7*3600), time.FixedZone("", -90*60)}
	check := func(d *Decision) {
		t.Helper()
		want, err := gojson.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if got := d.AppendJSON(nil); !bytes.Equal(got, want) {
			t.Fatalf("AppendJSON differs from the library:\n got %s\nwant %s", got, want)
		}
	}
	for i := 0; i < 20000; i++ {
		ts := time.Unix(1_700_000_000+rng.Int64N(1e8), rng.Int64N(1e9)*int64(rng.IntN(2))).In(zones[rng.IntN(len(zones))])
		check(&Decision{DecisionID: str(), EventID: str(), AccountID: str(), TS: ts, Score: rng.IntN(101), Action: str(),
			Rules: hits(), RulesetVersion: str(), EventType: str(), Trigger: str(), Shadow: hits(),
			DowngradedFrom: str(), MerchantID: str(), PaymentID: str(), AppVersion: str()})
	}

	e := newEngine(t, 5*time.Minute)
	now := time.Now()
	seen := 0
	for _, raw := range genRaw(t, 2000, 3, 0.5) {
		ev, err := event.Decode(raw, now)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := e.Process(&ev, nil)
		for i := range out {
			check(&out[i])
			seen++
		}
	}
	if seen == 0 {
		t.Fatal("generated traffic gave no decisions")
	}
}

func BenchmarkDecisionJSON(b *testing.B) {
	d := Decision{DecisionID: "dec_3f9a1c2b7d4e5f60", EventID: "e-000123", AccountID: "acc-42", TS: time.Now(), Score: 72,
		Action: "step_up", RulesetVersion: "64b0dfbae16f", EventType: "transaction", Trigger: "event",
		Rules: []Hit{{ID: "amount_far_above_habit", Score: 40, Reason: "transfer 4,800,000 IDR is 23× this account's typical 210,000 IDR", Category: "abnormal", Severity: "high", Group: "account:acc-42"}}}
	b.Run("AppendJSON", func(b *testing.B) {
		buf := make([]byte, 0, 1024)
		for b.Loop() {
			buf = d.AppendJSON(buf[:0])
		}
	})
	b.Run("goccy", func(b *testing.B) {
		for b.Loop() {
			gojson.Marshal(&d)
		}
	})
}
