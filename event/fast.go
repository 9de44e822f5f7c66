package event

import (
	"encoding/binary"
	"strconv"
	"unicode/utf8"
	"unsafe"
)

// The fast path reads the shape producers send nearly always: one flat
// object whose keys are the contract's field names, spelled exactly and each
// at most once, with plain strings (no escapes), integers where integers
// belong and a geo object of country, lat and lon. Anything else — an escape,
// a null, an unknown or repeated key, `detail`, a float amount, trailing
// bytes — is left to the general decoder, so both paths accept, reject and
// fill exactly the same events (TestFastPathAgreesWithGeneralDecoder).
//
// The string fields of an accepted event share one copy of the record: one
// allocation instead of one per field. Anything that keeps an id beyond the
// event (interned names, payment chains, enforcement and alert state) clones
// it, so the record is not held for the id's sake.

// field numbers for the flat keys; bit i of fastDecoder.seen is field i.
const (
	fEventID = iota
	fType
	fTS
	fAccountID
	fDeviceID
	fIP
	fUserAgent
	fAppVersion
	fChannel
	fResult
	fFailureReason
	fMethod
	fTxID
	fKind
	fCurrency
	fStatus
	fMerchantID
	fCounterpartyID
	fCounterpartyCountry
	fPaymentID
	fErrorCode
	fChange
	numStringFields
)

// integer and object fields follow the strings.
const (
	fAmountBit = numStringFields + iota
	fAttemptBit
	fBalanceBit
	fLatencyBit
	fGeoBit
	fGeoCountryBit
	fGeoLatBit
	fGeoLonBit
)

func stringField(key []byte) int {
	switch string(key) {
	case "event_id":
		return fEventID
	case "type":
		return fType
	case "ts":
		return fTS
	case "account_id":
		return fAccountID
	case "device_id":
		return fDeviceID
	case "ip":
		return fIP
	case "user_agent":
		return fUserAgent
	case "app_version":
		return fAppVersion
	case "channel":
		return fChannel
	case "result":
		return fResult
	case "failure_reason":
		return fFailureReason
	case "method":
		return fMethod
	case "tx_id":
		return fTxID
	case "kind":
		return fKind
	case "currency":
		return fCurrency
	case "status":
		return fStatus
	case "merchant_id":
		return fMerchantID
	case "counterparty_id":
		return fCounterpartyID
	case "counterparty_country":
		return fCounterpartyCountry
	case "payment_id":
		return fPaymentID
	case "error_code":
		return fErrorCode
	case "change":
		return fChange
	}
	return -1
}

type span struct{ from, to int32 }

type fastDecoder struct {
	b    []byte
	i    int
	seen uint64
	// nonASCII is set when a string holds a byte past ASCII; only then is
	// the record checked for valid UTF-8 (outside strings, only ASCII passes).
	nonASCII bool
	strs     [numStringFields]span
	geo      span // country
	ints     [4]int64
	lat      float64
	lon      float64
}

// decodeFast fills w from b if b has the common shape, and reports whether
// it did. It allocates one copy of b for the strings (none if the caller
// hands b over: owned), nothing else.
func decodeFast(b []byte, w *wire, owned bool) bool {
	d := fastDecoder{b: b}
	if !d.object() {
		return false
	}
	d.ws()
	if d.i != len(b) || d.nonASCII && !utf8.Valid(b) {
		return false
	}
	var s string
	if owned {
		s = unsafe.String(unsafe.SliceData(b), len(b))
	} else {
		s = string(b)
	}
	at := func(f int) string { sp := d.strs[f]; return s[sp.from:sp.to] }
	w.EventID, w.TypeName, w.TS, w.AccountID = at(fEventID), at(fType), at(fTS), at(fAccountID)
	w.DeviceID, w.IP, w.UserAgent, w.AppVersion, w.Channel = at(fDeviceID), at(fIP), at(fUserAgent), at(fAppVersion), at(fChannel)
	w.Result, w.FailureReason, w.Method = at(fResult), at(fFailureReason), at(fMethod)
	w.TxID, w.Kind, w.Currency, w.Status = at(fTxID), at(fKind), at(fCurrency), at(fStatus)
	w.MerchantID, w.CounterpartyID, w.CounterpartyCountry = at(fMerchantID), at(fCounterpartyID), at(fCounterpartyCountry)
	w.PaymentID, w.ErrorCode, w.Change = at(fPaymentID), at(fErrorCode), at(fChange)
	w.Amount, w.Attempt, w.BalanceAfter, w.LatencyMS = missingInt, missingInt, missingInt, missingInt
	for k, p := range [...]*int64{&w.Amount, &w.Attempt, &w.BalanceAfter, &w.LatencyMS} {
		if d.seen&(1<<(fAmountBit+k)) != 0 {
			*p = d.ints[k]
		}
	}
	if d.seen&(1<<fGeoBit) != 0 {
		w.Geo = Geo{Country: s[d.geo.from:d.geo.to], Lat: d.lat, Lon: d.lon}
	}
	return true
}

func (d *fastDecoder) ws() {
	b, i := d.b, d.i
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r') {
		i++
	}
	d.i = i
}

// consume skips whitespace and then c, reporting whether c was there.
func (d *fastDecoder) consume(c byte) bool {
	if d.i < len(d.b) && d.b[d.i] == c { // compact JSON: no whitespace to skip
		d.i++
		return true
	}
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

// str reads a string without escapes or control characters.
func (d *fastDecoder) str() (span, bool) {
	if !d.consume('"') {
		return span{}, false
	}
	b, i := d.b, d.i
	i = skipPlain(b, i)
	for i < len(b) {
		switch c := b[i]; {
		case c == '"':
			sp := span{int32(d.i), int32(i)}
			d.i = i + 1
			return sp, true
		case c == '\\' || c < 0x20:
			return span{}, false
		default: // past ASCII
			d.nonASCII = true
		}
		i = skipPlain(b, i+1)
	}
	return span{}, false
}

// skipPlain returns the index of the first byte from i on that is not plain,
// or len(b). It tests eight bytes at a time: a word is all plain when none of
// its bytes is the quote, the backslash, below 0x20 or past 0x7f.
func skipPlain(b []byte, i int) int {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for ; i+8 <= len(b); i += 8 {
		w := binary.LittleEndian.Uint64(b[i:])
		q, bs := w^(ones*'"'), w^(ones*'\\')
		if ((q-ones)&^q|(bs-ones)&^bs|(w-ones*0x20)&^w|w)&highs != 0 {
			break
		}
	}
	for i < len(b) && plain[b[i]] {
		i++
	}
	return i
}

// plain marks the bytes a string holds without a closer look: not the quote,
// the backslash, a control character or a byte past ASCII.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// integer reads a JSON integer of at most 18 digits, which cannot overflow.
func (d *fastDecoder) integer() (int64, bool) {
	d.ws()
	neg := d.i < len(d.b) && d.b[d.i] == '-'
	if neg {
		d.i++
	}
	from := d.i
	var v int64
	for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
		v = v*10 + int64(d.b[d.i]-'0')
		d.i++
	}
	n := d.i - from
	if n == 0 || n > 18 || n > 1 && d.b[from] == '0' {
		return 0, false
	}
	if d.i < len(d.b) {
		if c := d.b[d.i]; c == '.' || c == 'e' || c == 'E' {
			return 0, false
		}
	}
	if neg {
		v = -v
	}
	return v, true
}

// float reads a JSON number as strconv does for encoding/json-style
// decoders: correctly rounded, out-of-range left to the general decoder.
func (d *fastDecoder) float() (float64, bool) {
	d.ws()
	from := d.i
	if d.i < len(d.b) && d.b[d.i] == '-' {
		d.i++
	}
	digits := func() int {
		n := 0
		for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
			d.i++
			n++
		}
		return n
	}
	start := d.i
	n := digits()
	if n == 0 || n > 1 && d.b[start] == '0' {
		return 0, false
	}
	if d.i < len(d.b) && d.b[d.i] == '.' {
		d.i++
		if digits() == 0 {
			return 0, false
		}
	}
	if d.i < len(d.b) && (d.b[d.i] == 'e' || d.b[d.i] == 'E') {
		d.i++
		if d.i < len(d.b) && (d.b[d.i] == '+' || d.b[d.i] == '-') {
			d.i++
		}
		if digits() == 0 {
			return 0, false
		}
	}
	v, err := strconv.ParseFloat(string(d.b[from:d.i]), 64)
	return v, err == nil
}

// members reads `"key": value` pairs up to the closing brace, calling value
// with each key; the opening brace is already consumed.
func (d *fastDecoder) members(value func(key []byte) bool) bool {
	if d.consume('}') {
		return true
	}
	for {
		k, ok := d.str()
		if !ok || !d.consume(':') || !value(d.b[k.from:k.to]) {
			return false
		}
		if d.consume(',') {
			continue
		}
		return d.consume('}')
	}
}

// mark records that bit was seen and reports whether it was new.
func (d *fastDecoder) mark(bit int) bool {
	m := uint64(1) << bit
	if d.seen&m != 0 {
		return false
	}
	d.seen |= m
	return true
}

func (d *fastDecoder) object() bool {
	return d.consume('{') && d.members(d.member)
}

func (d *fastDecoder) member(key []byte) bool {
	if f := stringField(key); f >= 0 {
		if !d.mark(f) {
			return false
		}
		sp, ok := d.str()
		d.strs[f] = sp
		return ok
	}
	bit := -1
	switch string(key) {
	case "amount":
		bit = fAmountBit
	case "attempt":
		bit = fAttemptBit
	case "balance_after":
		bit = fBalanceBit
	case "latency_ms":
		bit = fLatencyBit
	case "geo":
		return d.mark(fGeoBit) && d.consume('{') && d.members(d.geoMember)
	default:
		return false
	}
	if !d.mark(bit) {
		return false
	}
	v, ok := d.integer()
	d.ints[bit-fAmountBit] = v
	return ok
}

func (d *fastDecoder) geoMember(key []byte) bool {
	var ok bool
	switch string(key) {
	case "country":
		if !d.mark(fGeoCountryBit) {
			return false
		}
		d.geo, ok = d.str()
	case "lat":
		if !d.mark(fGeoLatBit) {
			return false
		}
		d.lat, ok = d.float()
	case "lon":
		if !d.mark(fGeoLonBit) {
			return false
		}
		d.lon, ok = d.float()
	}
	return ok
}
