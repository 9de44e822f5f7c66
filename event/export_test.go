package event

// DecodeGoJSON is Decode without its fast path, for the tests that hold the
// two to agreeing.
var DecodeGoJSON = decodeGoJSON

// DecodesFast reports whether b takes the fast path.
func DecodesFast(b []byte) bool { var w wire; return decodeFast(b, &w, false) }
